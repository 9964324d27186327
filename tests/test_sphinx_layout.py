"""The packet format's one home: sphinx/constants.py, the cffi declarations and csrc/sphinx.h agree,
and the workers' `set_packet_fast` writes the bytes `set_packet` writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cffi import FFI
from hypothesis import given, settings
from hypothesis import strategies as st

from loopix import sphinx
from loopix.sphinx import _sphinx_c, constants, ffi, lib

SPHINX_H = Path(__file__).resolve().parents[1] / "csrc" / "sphinx.h"
_DEFINE = re.compile(r"#define\s+(LX_\w+)\s+\(?(-?\d+)\)?")


def _header() -> tuple[FFI, object, str]:
    """sphinx.h parsed by cffi on its own (preprocessor lines reduced to its integer defines), and
    bound to the built extension so its functions can be compared with the shipped declarations."""
    text = SPHINX_H.read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            m = _DEFINE.match(line)
            if m:
                lines.append(f"#define {m[1]} {m[2]}")
            continue
        lines.append(line)
    header = FFI()
    header.cdef("\n".join(lines))
    return header, header.dlopen(_sphinx_c.__file__), text


HEADER, HEADER_LIB, HEADER_TEXT = _header()
STRUCTS = ("lx_hop", "lx_packet_spec", "lx_processed")


def _layout(f: FFI, name: str) -> list[tuple[str, str, int]]:
    return [(field, t.type.cname, t.offset) for field, t in f.typeof(name).fields]


@pytest.mark.parametrize("name", STRUCTS)
def test_struct_declarations_match_the_header(name):
    assert _layout(ffi, name) == _layout(HEADER, name)
    assert ffi.sizeof(name) == HEADER.sizeof(name)


def test_function_declarations_match_the_header():
    names = sorted(set(re.findall(r"^\w[\w ]*?\b(lx_\w+)\(", HEADER_TEXT, re.M)))
    assert "lx_build_batch" in names and "lx_process_batch" in names
    for name in names:
        assert (
            ffi.typeof(getattr(lib, name)).cname == HEADER.typeof(getattr(HEADER_LIB, name)).cname
        ), name


def test_header_defines_match_cffi_and_constants():
    defines = {m[1]: int(m[2]) for m in _DEFINE.finditer(HEADER_TEXT)}
    declared = {name: value for name, value in defines.items() if hasattr(lib, name)}
    assert len(declared) >= 10  # the status codes, kinds and sizes the Python side uses
    for name, value in declared.items():
        assert getattr(lib, name) == value, name
    assert defines["LX_MAX_HOPS"] == constants.MAX_PATH_LENGTH
    assert defines["LX_HEADER_SIZE"] == constants.HEADER_SIZE
    assert defines["LX_PAYLOAD_OVERHEAD"] == constants.PAYLOAD_OVERHEAD
    assert defines["LX_EXPANDED_SIZE"] == constants.EXPANDED_SECRET_SIZE


def test_struct_field_sizes_are_the_constants():
    def length(struct: str, field: str) -> int:
        return dict(ffi.typeof(struct).fields)[field].type.length

    assert length("lx_hop", "public_key") == constants.KEY_SIZE
    assert length("lx_hop", "address") == constants.NODE_ADDRESS_SIZE
    assert length("lx_packet_spec", "hops") == constants.MAX_PATH_LENGTH
    assert length("lx_packet_spec", "destination") == constants.DESTINATION_SIZE
    assert length("lx_packet_spec", "identifier") == constants.IDENTIFIER_SIZE
    assert length("lx_packet_spec", "ephemeral_secret") == constants.KEY_SIZE
    assert length("lx_processed", "next_address") == constants.NODE_ADDRESS_SIZE
    assert length("lx_processed", "replay_tag") == constants.REPLAY_TAG_SIZE


KEYS = [sphinx.keypair() for _ in range(constants.MAX_PATH_LENGTH)]


@settings(deadline=None, max_examples=60)
@given(
    n_hops=st.integers(1, constants.MAX_PATH_LENGTH),
    seed=st.binary(min_size=32, max_size=32),
    delays=st.lists(st.integers(0, (1 << 64) - 1), min_size=5, max_size=5),
    message=st.binary(max_size=2048),
    slot=st.integers(0, 3),
)
def test_set_packet_fast_writes_what_set_packet_writes(n_hops, seed, delays, message, slot):
    route = [sphinx.Hop(KEYS[k][1], bytes([k + 1]) * 31 + seed[k : k + 1]) for k in range(n_hops)]
    destination = seed[::-1]
    offset = slot * 2048
    slow = sphinx.PacketBuilder(4)
    slow.set_packet(slot, route, destination, message, delays[:n_hops], message_offset=offset)
    fast = sphinx.PacketBuilder(4)
    fast.messages[offset : offset + len(message)] = message
    hops = [h.public_key + h.address for h in route]
    assert all(len(h) == sphinx.HOP_BYTES for h in hops)
    fast.set_packet_fast(slot, hops, delays[:n_hops], destination, len(message), offset)
    size = ffi.sizeof("lx_packet_spec")
    written = bytes(ffi.buffer(slow.specs))[slot * size : (slot + 1) * size]
    assert written == bytes(ffi.buffer(fast.specs))[slot * size : (slot + 1) * size]
    assert written != bytes(size)
    assert slow.messages == fast.messages


def test_unwrap_gives_typed_results_equal_to_process_packet():
    (s1, p1), (s2, p2) = KEYS[0], KEYS[1]
    route = [sphinx.Hop(p1, b"\x01" * 32), sphinx.Hop(p2, b"\x02" * 32)]
    packets = [
        sphinx.build_packet(route, b"\x07" * 32, b"m%d" % i, [1000 * (i + 1), 0]) for i in range(3)
    ]
    tampered = bytearray(packets[2])
    tampered[40] ^= 1
    run = [*packets[:2], bytes(tampered)]
    size = len(packets[0])
    proc = sphinx.PacketProcessor(s1, 4)
    out = bytearray(4 * size)
    first = proc.unwrap(b"".join(run), 3, size, out)
    assert first[:2] == [sphinx.process_packet(s1, p) for p in packets[:2]]
    assert first[2] == sphinx.Rejected("bad_mac")
    assert [r.delay_ns for r in first[:2]] == [1000, 2000]
    second = sphinx.PacketProcessor(s2, 4).unwrap(
        b"".join(r.packet for r in first[:2]), 2, size, out
    )
    assert all(isinstance(r, sphinx.Final) for r in second)
    assert [r.message for r in second] == [b"m0", b"m1"]
    assert second[0] == sphinx.process_packet(s2, first[0].packet)
    bad = sphinx.PacketProcessor(sphinx.keypair()[0], 1).unwrap(packets[0], 1, size, out)
    assert bad == [sphinx.Rejected("bad_mac")]


def test_pacer_header_matches_the_cffi_declarations():
    """csrc/pacer.h (the sender's C timing loop) declares what _build.py gives cffi."""
    text = (SPHINX_H.parent / "pacer.h").read_text()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    header = FFI()
    header.cdef("\n".join(lines))
    built = header.dlopen(_sphinx_c.__file__)
    for struct in ("lx_pace_totals", "lx_pace_second"):
        assert _layout(ffi, struct) == _layout(header, struct)
    names = sorted(set(re.findall(r"^\w[\w ]*?\*?\s*\b(lx_pacer_\w+)\(", text, re.M)))
    assert "lx_pacer_run" in names and "lx_pacer_send" in names and len(names) >= 15
    for name in names:  # the opaque lx_pacer prints as a struct from one side
        ours = ffi.typeof(getattr(lib, name)).cname.replace("struct lx_pacer", "lx_pacer")
        assert ours == header.typeof(getattr(built, name)).cname.replace(
            "struct lx_pacer", "lx_pacer"
        ), name
    defines = {m[1]: int(m[2]) for m in _DEFINE.finditer(text)}
    for name in ("LX_PACE_SECONDS", "LX_PACE_TRACE_RECORD", "LX_PACE_SEND_FULL", "LX_PACE_NO_LINK"):
        assert getattr(lib, name) == defines[name], name
