"""The packet format's one home: sphinx/constants.py and csrc/sphinx.h agree, cffi declares what the
headers declare, and the workers' `set_packet_fast` writes the bytes `set_packet` writes."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopix import sphinx
from loopix.sphinx import constants, ffi, lib

ROOT = Path(__file__).resolve().parents[1]


def _build_script():
    """The repository's cffi build script (read from the tree: an installed copy has no csrc/)."""
    spec = importlib.util.spec_from_file_location(
        "loopix_build", ROOT / "src" / "loopix" / "sphinx" / "_build.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _build_script()
_FUNCTION = re.compile(r"^\w[\w ]*?\*?\s*\b(lx_\w+)\(", re.M)


@pytest.mark.parametrize("header", BUILD.HEADERS)
def test_the_extension_declares_each_header_as_written(header):
    """One home per declaration: cffi reads csrc's headers themselves, so every function and integer
    constant a header declares is in the built extension, with the header's value."""
    text = (ROOT / "csrc" / header).read_text()
    functions = set(_FUNCTION.findall(BUILD._COMMENT.sub("", text)))
    assert functions, header
    for name in functions:
        assert callable(getattr(lib, name)), name
    defines = {m[1]: int(m[2], 0) for m in map(BUILD._DEFINE.match, text.splitlines()) if m}
    for name, value in defines.items():
        assert getattr(lib, name) == value, name


def test_the_packet_format_constants_are_the_headers():
    text = (ROOT / "csrc" / "sphinx.h").read_text()
    defines = {m[1]: int(m[2], 0) for m in map(BUILD._DEFINE.match, text.splitlines()) if m}
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
