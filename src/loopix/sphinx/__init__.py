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
    HEADER_SIZE,
    MAX_PATH_LENGTH,
    PACKET_SIZES,
    PAYLOAD_OVERHEAD,
    PAYLOAD_SIZE_FOR_PACKET,
    PAYLOAD_SIZES,
    Final,
    Forward,
    HeaderError,
    Hop,
    InvalidKeyError,
    MacError,
    PacketSizeError,
    ParameterError,
    PayloadError,
    SphinxError,
    check_build_args,
    check_packet_length,
    packet_size,
)
from ._sphinx_c import ffi, lib

__all__ = [
    "HEADER_SIZE",
    "MAX_PATH_LENGTH",
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
    "SphinxError",
    "build_packet",
    "check_public_key",
    "keypair",
    "packet_size",
    "process_packet",
    "validate_node_key",
]

_SPEC_HEAD = struct.Struct("=IIQ")
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")
_HOP_SIZE = ffi.sizeof("lx_hop")
_ZERO16 = bytes(16)

if lib.lx_init() != 0:  # pragma: no cover - libsodium refuses only on a broken system
    raise ImportError("libsodium failed to initialise")

_ERRORS = {
    lib.LX_ERR_PARAM: (ParameterError, "bad parameters"),
    lib.LX_ERR_SIZE: (PacketSizeError, "packet length is none of the Nym sizes"),
    lib.LX_ERR_KEY: (InvalidKeyError, "X25519 gave the all-zero point (low-order key or alpha)"),
    lib.LX_ERR_MAC: (MacError, "header MAC mismatch (wrong key or tampered header)"),
    lib.LX_ERR_HEADER: (HeaderError, "unknown routing flag or unsupported header version"),
    lib.LX_ERR_PAYLOAD: (PayloadError, "payload integrity check failed (tampered body or wrong route)"),
    lib.LX_ERR_CRYPTO: (SphinxError, "the crypto library failed"),
}


def error_for(code: int) -> SphinxError:
    """The exception for a C status code."""
    cls, text = _ERRORS.get(code, (SphinxError, f"unknown error {code}"))
    return cls(text)


def keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 (secret, public) pair from the OS CSPRNG."""
    secret = ffi.new("unsigned char[32]")
    public = ffi.new("unsigned char[32]")
    lib.randombytes_buf(secret, 32)
    lib.crypto_scalarmult_base(public, secret)
    return bytes(secret), bytes(public)


def public_key(secret: bytes) -> bytes:
    """The X25519 public key of a (clamped) secret."""
    if len(secret) != 32:
        raise InvalidKeyError(f"secret key must be 32 bytes, got {len(secret)}")
    out = ffi.new("unsigned char[32]")
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
    return len(pk) == 32 and lib.lx_check_public_key(pk) == 1


@functools.lru_cache(maxsize=4096)
def _key_ok(pk: bytes) -> bool:
    return lib.lx_check_public_key(pk) == 1


def validate_node_key(name: str, pk: bytes) -> bytes:
    """`pk` as bytes if it is a usable node key; otherwise `PublicKeyError` naming the node. Call it
    once per node when a topology is loaded."""
    pk = bytes(pk)
    if len(pk) != 32 or not _key_ok(pk):
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
        ffi.memmove(h.public_key, hop.public_key, 32)
        ffi.memmove(h.address, hop.address, 32)
        h.delay_ns = delays_ns[i]
    ffi.memmove(spec.destination, destination, 32)
    ffi.memmove(spec.identifier, identifier, 16)
    if ephemeral_secret is None:
        spec.use_ephemeral_secret = 0
    else:
        ffi.memmove(spec.ephemeral_secret, ephemeral_secret, 32)
        spec.use_ephemeral_secret = 1


def build_packet(
    route,
    destination: bytes,
    message: bytes,
    delays_ns,
    identifier: bytes = bytes(16),
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
    if len(secret) != 32:
        raise InvalidKeyError(f"secret key must be 32 bytes, got {len(secret)}")
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
        self._spec_view = memoryview(ffi.buffer(self.specs))
        self._spec_size = ffi.sizeof("lx_packet_spec")
        self._hops_at = ffi.offsetof("lx_packet_spec", "hops")
        self._dest_at = ffi.offsetof("lx_packet_spec", "destination")
        self._ident_at = ffi.offsetof("lx_packet_spec", "identifier")
        self._use_eph_at = ffi.offsetof("lx_packet_spec", "use_ephemeral_secret")

    def set_packet(self, i, route, destination, message, delays_ns, identifier=bytes(16),
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
        """The workers' path: no validation, no cffi attribute access. `hops[k]` is the 64 bytes
        public key ‖ address of hop k (precomputed per node), the message is already in the arena
        at message_offset, and the identifier is zero. A bad spec fails in C with a status code."""
        view, base = self._spec_view, i * self._spec_size
        _SPEC_HEAD.pack_into(view, base, len(hops), message_len, message_offset)
        at = base + self._hops_at
        for hop, delay in zip(hops, delays_ns, strict=True):
            view[at : at + 64] = hop
            _U64.pack_into(view, at + 64, delay)
            at += _HOP_SIZE
        view[base + self._dest_at : base + self._dest_at + 32] = destination
        view[base + self._ident_at : base + self._ident_at + 16] = _ZERO16
        _U32.pack_into(view, base + self._use_eph_at, 0)

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
    """Unwraps a run of same-size packets with one C call (a mixnode's hot path)."""

    def __init__(self, secret: bytes, capacity: int):
        if len(secret) != 32:
            raise InvalidKeyError("secret key must be 32 bytes")
        self._secret = ffi.new("uint8_t[32]", secret)
        self.capacity = capacity
        self.results = ffi.new("lx_processed[]", capacity)

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
