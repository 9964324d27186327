"""Sphinx packets byte-compatible with Nym's `sphinx-packet` crate 0.6.0 (header version 259).

This module runs on the C core (csrc/sphinx.c through cffi); `loopix.sphinx.pure` is the readable
reference with the same API, and the tests hold the two to identical bytes.

    secret, public = keypair()
    pkt = build_packet(route=[Hop(public_key=..., address=...)], destination=..., message=...,
                       delays_ns=[...], identifier=bytes(16), payload_size=2048)
    res = process_packet(secret, pkt)   # Forward(...) or Final(...); SphinxError subclasses on failure

`PacketBuilder` and `PacketProcessor` are the batch entry points: one C call per batch, packets written
into a caller-provided buffer, no Python object per packet.
"""

from __future__ import annotations

import functools
import struct

from ._common import (
    Final,
    Forward,
    HeaderError,
    Hop,
    InvalidKeyError,
    MacError,
    PacketSizeError,
    ParameterError,
    PayloadError,
    Rejected,
    SphinxError,
    check_build_args,
    check_packet_length,
    packet_size,
)
from ._sphinx_c import ffi, lib
from .constants import (
    DROP_COVER_DESTINATION,
    HEADER_SIZE,
    IDENTIFIER_SIZE,
    KEY_SIZE,
    MAX_PATH_LENGTH,
    NODE_ADDRESS_SIZE,
    PACKET_SIZES,
    PAYLOAD_OVERHEAD,
    PAYLOAD_SIZE_FOR_PACKET,
    PAYLOAD_SIZES,
)

__all__ = [
    "DROP_COVER_DESTINATION",
    "HEADER_SIZE",
    "KEY_SIZE",
    "MAX_PATH_LENGTH",
    "NODE_ADDRESS_SIZE",
    "PACKET_SIZES",
    "PAYLOAD_OVERHEAD",
    "PAYLOAD_SIZES",
    "PAYLOAD_SIZE_FOR_PACKET",
    "Final",
    "Forward",
    "HeaderError",
    "Hop",
    "InvalidKeyError",
    "MacError",
    "PacketBuilder",
    "PacketProcessor",
    "PacketSizeError",
    "ParameterError",
    "PayloadError",
    "PublicKeyError",
    "Rejected",
    "SphinxError",
    "build_packet",
    "check_public_key",
    "keypair",
    "packet_size",
    "process_packet",
    "validate_node_key",
]

_U64 = struct.Struct("=Q")
# lx_processed as bytes: status, kind, delay_ns, message_offset, message_len, next_address,
# (destination at 64, identifier at 96: read only for a Final), replay_tag; checked against the
# compiler's layout below
_PROCESSED = struct.Struct("=iiQQQ32s48x32s")
assert _PROCESSED.size == ffi.sizeof("lx_processed") and [
    ffi.offsetof("lx_processed", f)
    for f in ("status", "kind", "delay_ns", "message_offset", "message_len", "next_address", "destination",
              "identifier", "replay_tag")
] == [0, 4, 8, 16, 24, 32, 64, 96, 112]
_FORWARD = lib.LX_FORWARD
_U32 = struct.Struct("=I")
_ZERO_IDENTIFIER = bytes(IDENTIFIER_SIZE)


class _SpecLayout:
    """Byte offsets inside `lx_packet_spec`, from cffi (the compiler's layout, not restated)."""

    size = ffi.sizeof("lx_packet_spec")
    n_hops = ffi.offsetof("lx_packet_spec", "n_hops")
    message_len = ffi.offsetof("lx_packet_spec", "message_len")
    message_offset = ffi.offsetof("lx_packet_spec", "message_offset")
    hops = ffi.offsetof("lx_packet_spec", "hops")
    destination = ffi.offsetof("lx_packet_spec", "destination")
    identifier = ffi.offsetof("lx_packet_spec", "identifier")
    use_ephemeral_secret = ffi.offsetof("lx_packet_spec", "use_ephemeral_secret")
    hop_size = ffi.sizeof("lx_hop")
    hop_key = ffi.offsetof("lx_hop", "public_key")
    hop_address = ffi.offsetof("lx_hop", "address")
    hop_delay = ffi.offsetof("lx_hop", "delay_ns")
    # set_packet_fast writes a hop's key and address as one precomputed run of bytes
    hop_key_and_address = 2 * KEY_SIZE
    assert hop_key == 0 and hop_address == KEY_SIZE and ffi.sizeof("uint32_t") == _U32.size


HOP_BYTES = _SpecLayout.hop_key_and_address
"""Length of the `public key ‖ address` run `set_packet_fast` takes per hop."""

if lib.lx_init() != 0:  # pragma: no cover - libsodium refuses only on a broken system
    raise ImportError("libsodium failed to initialise")

# C status code -> (exception, message, the reason a node counts the drop under)
_ERRORS = {
    lib.LX_ERR_PARAM: (ParameterError, "bad parameters", "sphinx_error"),
    lib.LX_ERR_SIZE: (PacketSizeError, "packet length is none of the Nym sizes", "bad_size"),
    lib.LX_ERR_KEY: (InvalidKeyError, "X25519 gave the all-zero point (low-order key or alpha)", "bad_key"),
    lib.LX_ERR_MAC: (MacError, "header MAC mismatch (wrong key or tampered header)", "bad_mac"),
    lib.LX_ERR_HEADER: (HeaderError, "unknown routing flag or unsupported header version", "bad_header"),
    lib.LX_ERR_PAYLOAD: (
        PayloadError, "payload integrity check failed (tampered body or wrong route)", "bad_payload"
    ),
    lib.LX_ERR_CRYPTO: (SphinxError, "the crypto library failed", "sphinx_error"),
}
_REJECTED = {code: Rejected(reason) for code, (_, _, reason) in _ERRORS.items()}
_REJECTED_OTHER = Rejected("sphinx_error")


def error_for(code: int) -> SphinxError:
    """The exception for a C status code."""
    cls, text, _ = _ERRORS.get(code, (SphinxError, f"unknown error {code}", ""))
    return cls(text)


def keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 (secret, public) pair from the OS CSPRNG."""
    secret = ffi.new("unsigned char[]", KEY_SIZE)
    public = ffi.new("unsigned char[]", KEY_SIZE)
    lib.randombytes_buf(secret, KEY_SIZE)
    lib.crypto_scalarmult_base(public, secret)
    return bytes(secret), bytes(public)


def public_key(secret: bytes) -> bytes:
    """The X25519 public key of a (clamped) secret."""
    if len(secret) != KEY_SIZE:
        raise InvalidKeyError(f"secret key must be {KEY_SIZE} bytes, got {len(secret)}")
    out = ffi.new("unsigned char[]", KEY_SIZE)
    lib.crypto_scalarmult_base(out, secret)
    return bytes(out)


class PublicKeyError(InvalidKeyError, ValueError):
    """A node's public key that is not a point of order l (see `check_public_key`)."""

    def __init__(self, node: str, public_key: bytes):
        self.node = node
        self.public_key = bytes(public_key)
        super().__init__(
            f"node {node}: public key {self.public_key.hex()} is not an X25519 public key "
            "(not a canonical point of the prime-order subgroup: low-order, twist or "
            "mixed-order point)"
        )


def check_public_key(pk: bytes) -> bool:
    """True if `pk` is a canonical X25519 public key in the prime-order subgroup (l*PK is the
    identity), as every key made by `keypair` is. The build derives each hop's secret with one
    multiplication by a product of scalars mod l, which equals the crate's fold only for such keys."""
    pk = bytes(pk)
    return len(pk) == KEY_SIZE and lib.lx_check_public_key(pk) == 1


@functools.lru_cache(maxsize=4096)
def _key_ok(pk: bytes) -> bool:
    return lib.lx_check_public_key(pk) == 1


def validate_node_key(name: str, pk: bytes) -> bytes:
    """`pk` as bytes if it is a usable node key; otherwise `PublicKeyError` naming the node. Call it
    once per node when a topology is loaded."""
    pk = bytes(pk)
    if len(pk) != KEY_SIZE or not _key_ok(pk):
        raise PublicKeyError(name, pk)
    return pk


def _check_route_keys(route) -> None:
    # a cached check: a route's keys are seen over and over, the ladder runs once per new key
    for i, hop in enumerate(route):
        if not _key_ok(bytes(hop.public_key)):
            raise PublicKeyError(f"at hop {i}", hop.public_key)


def fill_spec(spec, route, destination, identifier, delays_ns, message_len, ephemeral_secret) -> None:
    """Write one packet's parameters into a C `lx_packet_spec` (validated by the caller)."""
    spec.n_hops = len(route)
    spec.message_len = message_len
    for i, hop in enumerate(route):
        h = spec.hops[i]
        ffi.memmove(h.public_key, hop.public_key, len(h.public_key))
        ffi.memmove(h.address, hop.address, len(h.address))
        h.delay_ns = delays_ns[i]
    ffi.memmove(spec.destination, destination, len(spec.destination))
    ffi.memmove(spec.identifier, identifier, len(spec.identifier))
    if ephemeral_secret is None:
        spec.use_ephemeral_secret = 0
    else:
        ffi.memmove(spec.ephemeral_secret, ephemeral_secret, len(spec.ephemeral_secret))
        spec.use_ephemeral_secret = 1


def build_packet(
    route,
    destination: bytes,
    message: bytes,
    delays_ns,
    identifier: bytes = _ZERO_IDENTIFIER,
    payload_size: int = 2048,
    ephemeral_secret: bytes | None = None,
) -> bytes:
    """A Sphinx packet that takes `message` through `route` (1..5 hops) to `destination`.

    `delays_ns[i]` is how long hop i holds the packet (the last one is not encoded, as in the crate).
    With `ephemeral_secret` given the packet is a pure function of the arguments.
    """
    size = check_build_args(route, destination, message, delays_ns, identifier, payload_size, ephemeral_secret)
    _check_route_keys(route)
    spec = ffi.new("lx_packet_spec *")
    fill_spec(spec, route, destination, identifier, delays_ns, len(message), ephemeral_secret)
    out = bytearray(size)
    rc = lib.lx_build_packet(spec, ffi.from_buffer(message), len(message), payload_size, ffi.from_buffer(out), size)
    if rc != 0:
        raise error_for(rc)
    return bytes(out)


def process_packet(secret: bytes, packet: bytes) -> Forward | Final:
    """Unwrap one layer with a node's secret key: `Forward` to the next hop or `Final` for the last."""
    n = check_packet_length(packet)
    if len(secret) != KEY_SIZE:
        raise InvalidKeyError(f"secret key must be {KEY_SIZE} bytes, got {len(secret)}")
    out = bytearray(n)
    res = ffi.new("lx_processed *")
    rc = lib.lx_process_packet(secret, ffi.from_buffer(packet), n, ffi.from_buffer(out), n, res)
    if rc != 0:
        raise error_for(rc)
    tag = bytes(ffi.buffer(res.replay_tag))
    if res.kind == lib.LX_FORWARD:
        return Forward(bytes(ffi.buffer(res.next_address)), res.delay_ns, bytes(out), tag)
    start = res.message_offset
    return Final(
        bytes(ffi.buffer(res.destination)),
        bytes(ffi.buffer(res.identifier)),
        bytes(out[start : start + res.message_len]),
        tag,
    )


class PacketBuilder:
    """Builds up to `capacity` packets per C call into one preallocated buffer.

    Workers fill `specs[i]` (an `lx_packet_spec`) and the message arena, then call `build(count, out)`
    where `out` is any writable buffer (a shared-memory ring slot run): no Python object per packet.
    """

    def __init__(self, capacity: int, payload_size: int = 2048, message_arena: int | None = None):
        self.capacity = capacity
        self.payload_size = payload_size
        self.packet_size = packet_size(payload_size)
        self.specs = ffi.new("lx_packet_spec[]", capacity)
        self.status = ffi.new("int32_t[]", capacity)
        self.messages = bytearray(message_arena or capacity * payload_size)
        self._messages_c = ffi.from_buffer(self.messages)
        self.arena = self._messages_c  # the message arena as a C pointer (for in-place fills)
        self._spec_view = memoryview(ffi.buffer(self.specs))

    def set_packet(self, i, route, destination, message, delays_ns, identifier=_ZERO_IDENTIFIER,
                   ephemeral_secret=None, message_offset: int | None = None) -> None:
        """Convenience for one slot: validates, copies the message into the arena at slot i."""
        check_build_args(route, destination, message, delays_ns, identifier, self.payload_size, ephemeral_secret)
        _check_route_keys(route)
        off = i * self.payload_size if message_offset is None else message_offset
        if off + len(message) > len(self.messages):
            raise ParameterError("message arena too small")
        self.messages[off : off + len(message)] = message
        spec = self.specs[i]
        fill_spec(spec, route, destination, identifier, delays_ns, len(message), ephemeral_secret)
        spec.message_offset = off

    def set_packet_fast(self, i: int, hops: list[bytes], delays_ns: list[int], destination: bytes,
                        message_len: int, message_offset: int) -> None:
        """The workers' path: no validation, no cffi attribute access. `hops[k]` is the `HOP_BYTES`
        public key ‖ address of hop k (precomputed per node), the message is already in the arena
        at message_offset, and the identifier is zero. A bad spec fails in C with a status code.
        Writes the same bytes as `set_packet` (tests/test_sphinx_layout.py checks it)."""
        lay, view = _SpecLayout, self._spec_view
        base = i * lay.size
        _U32.pack_into(view, base + lay.n_hops, len(hops))
        _U32.pack_into(view, base + lay.message_len, message_len)
        _U64.pack_into(view, base + lay.message_offset, message_offset)
        at = base + lay.hops
        for hop, delay in zip(hops, delays_ns, strict=True):
            view[at : at + lay.hop_key_and_address] = hop
            _U64.pack_into(view, at + lay.hop_delay, delay)
            at += lay.hop_size
        dest = base + lay.destination
        view[dest : dest + len(destination)] = destination
        ident = base + lay.identifier
        view[ident : ident + IDENTIFIER_SIZE] = _ZERO_IDENTIFIER
        _U32.pack_into(view, base + lay.use_ephemeral_secret, 0)

    def set_message(self, i: int, destination: bytes, message_len: int, message_offset: int) -> None:
        """Everything of slot i but the route: for workers whose routes and delays are drawn in C
        (`lx_draw_routes`), with the message already in the arena at message_offset."""
        lay, view = _SpecLayout, self._spec_view
        base = i * lay.size
        _U32.pack_into(view, base + lay.message_len, message_len)
        _U64.pack_into(view, base + lay.message_offset, message_offset)
        dest = base + lay.destination
        view[dest : dest + len(destination)] = destination
        ident = base + lay.identifier
        view[ident : ident + IDENTIFIER_SIZE] = _ZERO_IDENTIFIER
        _U32.pack_into(view, base + lay.use_ephemeral_secret, 0)

    def first_hop_address(self, i: int) -> memoryview:
        """The address of slot i's first hop (where the packet goes on the wire)."""
        at = i * _SpecLayout.size + _SpecLayout.hops + _SpecLayout.hop_address
        return self._spec_view[at : at + NODE_ADDRESS_SIZE]

    def build(self, count: int, out, stride: int | None = None) -> int:
        """Build specs[0:count] into `out` (packet i at i*stride). Returns how many succeeded; the
        per-packet codes are in `status`."""
        if not 0 <= count <= self.capacity:
            raise ParameterError(f"count must be 0..{self.capacity}")
        stride = stride or self.packet_size
        view = ffi.from_buffer(out, require_writable=True)
        n = lib.lx_build_batch(self.specs, count, self._messages_c, len(self.messages), self.payload_size,
                               view, len(view), stride, self.status)
        if n < 0:
            raise error_for(n)
        return n


class PacketProcessor:
    """Unwraps a run of same-size packets with one C call (a mixnode's hot path).

    `unwrap` gives a typed result per packet (`Forward`, `Final` or `Rejected`), so callers never
    read the C structs; `process` leaves the raw results in `results` for benchmarks and tests."""

    def __init__(self, secret: bytes, capacity: int):
        if len(secret) != KEY_SIZE:
            raise InvalidKeyError(f"secret key must be {KEY_SIZE} bytes")
        self._secret = ffi.new("uint8_t[]", secret)
        self.capacity = capacity
        self.results = ffi.new("lx_processed[]", capacity)
        self._results_view = memoryview(ffi.buffer(self.results))

    def process(self, packets, count: int, packet_len: int, out) -> int:
        if not 0 <= count <= self.capacity:
            raise ParameterError(f"count must be 0..{self.capacity}")
        src = ffi.from_buffer(packets)
        dst = ffi.from_buffer(out, require_writable=True)
        if len(src) < count * packet_len:
            raise ParameterError("input buffer shorter than count packets")
        n = lib.lx_process_batch(self._secret, src, count, packet_len, dst, len(dst), self.results)
        if n < 0:
            raise error_for(n)
        return n

    def unwrap(self, packets, count: int, packet_len: int, out) -> list[Forward | Final | Rejected]:
        """Unwrap `count` packets of `packet_len` bytes (back to back in `packets`) with one C call;
        `out` is scratch space for count * packet_len bytes. One typed result per packet, in order.
        The C results are read with one `struct.iter_unpack` over their bytes, not field by field
        through cffi (which cost a mixnode ~2 µs per packet)."""
        self.process(packets, count, packet_len, out)
        typed: list[Forward | Final | Rejected] = []
        append = typed.append
        view = memoryview(out)
        start = 0
        results = self._results_view
        at = 0
        for status, kind, delay, m_off, m_len, nxt, tag in _PROCESSED.iter_unpack(results[: count * _PROCESSED.size]):
            if status:
                append(_REJECTED.get(status, _REJECTED_OTHER))
            elif kind == _FORWARD:
                append(Forward(nxt, delay, bytes(view[start : start + packet_len]), tag))
            else:
                m = start + m_off
                append(Final(results[at + 64 : at + 96].tobytes(), results[at + 96 : at + 112].tobytes(),
                             bytes(view[m : m + m_len]), tag))
            start += packet_len
            at += _PROCESSED.size
        return typed
