"""Single-use reply blocks (SURBs): a Sphinx header built by the one who will receive the reply,
and the payload keys to fill it, for someone who must not learn where it goes.

    block = make_reply_block(route, destination, delays_ns)       # the receiver-to-be, once per SURB
    packet = use_reply_block(block, message, payload_size)       # the replier: header ‖ LIONESS body

The header is exactly what `build_packet` would put in front of a packet over `route` (Nym's v259
layout: each hop derives its payload key from a 16-byte seed in its expanded secret), so nodes
process a reply like any packet. The block carries the route's first hop, the header and one seed
per hop; nothing in it names the destination except under the hops' encryption. A block is single
use: a second packet with the same header carries the same replay tag and is dropped by the first
mix. Built with the pure reference (a few X25519 and one LIONESS per hop, well under a millisecond):
replies are rare next to the payload stream, which stays on the C core.
"""

from __future__ import annotations

import os
import struct

import msgspec

from . import pure
from ._common import Hop, ParameterError, check_build_args
from .constants import HEADER_SIZE, NODE_ADDRESS_SIZE, PAYLOAD_OVERHEAD, SECURITY_PARAMETER

__all__ = ["ReplyBlock", "make_reply_block", "use_reply_block"]

SEED_SIZE = 16
_SEED_AT = 32  # the payload-key seed's offset in an expanded secret


class ReplyBlock(msgspec.Struct, frozen=True, array_like=True):
    """First hop address, the header, one payload-key seed per hop (in route order)."""

    first_hop: bytes
    header: bytes
    seeds: list[bytes]

    def to_bytes(self) -> bytes:
        return self.first_hop + self.header + struct.pack("B", len(self.seeds)) + b"".join(self.seeds)

    @classmethod
    def from_bytes(cls, data: bytes) -> ReplyBlock:
        fixed = NODE_ADDRESS_SIZE + HEADER_SIZE
        if len(data) < fixed + 1:
            raise ParameterError("reply block too short")
        n = data[fixed]
        if not 1 <= n <= 5 or len(data) != fixed + 1 + n * SEED_SIZE:
            raise ParameterError("reply block has a bad length")
        seeds = [bytes(data[fixed + 1 + i * SEED_SIZE : fixed + 1 + (i + 1) * SEED_SIZE]) for i in range(n)]
        return cls(bytes(data[:NODE_ADDRESS_SIZE]), bytes(data[NODE_ADDRESS_SIZE:fixed]), seeds)


def make_reply_block(route: list[Hop], destination: bytes, delays_ns: list[int],
                     identifier: bytes = bytes(16)) -> ReplyBlock:
    """A reply block over `route` (its last hop delivers to `destination`)."""
    check_build_args(route, destination, b"", delays_ns, identifier, 21, None)
    x = os.urandom(32)
    header = pure.build_packet(route, destination, b"", delays_ns, identifier, 21, x)[:HEADER_SIZE]
    seeds = [e[_SEED_AT : _SEED_AT + SEED_SIZE] for e in pure.derive_hop_secrets(x, route)]
    return ReplyBlock(bytes(route[0].address), header, seeds)


def use_reply_block(block: ReplyBlock, message: bytes, payload_size: int) -> bytes:
    """The packet carrying `message` through `block` (header ‖ body of `payload_size` + 17)."""
    if len(message) > payload_size:
        raise ParameterError(f"message of {len(message)} bytes does not fit payload_size {payload_size}")
    body = bytes(SECURITY_PARAMETER) + bytes(message) + b"\x01"
    body += bytes(payload_size + PAYLOAD_OVERHEAD - len(body))
    for seed in reversed(block.seeds):
        body = pure.lioness_encrypt(pure.payload_key(bytes(_SEED_AT) + seed), body)
    return block.header + body
