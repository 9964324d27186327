"""Types, errors and argument checks shared by the C-backed API and the pure-Python reference.

The sizes live in constants.py; the HKDF strings below are fixed by Nym's `sphinx-packet` crate 0.6.0
(header version 259), see docs/sphinx.md.
"""

from __future__ import annotations

import msgspec

from .constants import (
    DESTINATION_SIZE,
    IDENTIFIER_SIZE,
    KEY_SIZE,
    MAX_PATH_LENGTH,
    NODE_ADDRESS_SIZE,
    PACKET_SIZES,
    PAYLOAD_SIZE_FOR_PACKET,
    PAYLOAD_SIZES,
)

EXPANDED_SECRET_HKDF_INFO = (
    b"Dwste mou enan moxlo arketa makru kai ena upomoxlio gia na ton topothetisw kai tha kinisw thn gh."
)
PAYLOAD_KEY_HKDF_SALT = b"sphinx-payload-key-V01-CS01-HKDF:SHA256-SALT"
PAYLOAD_KEY_HKDF_INFO = b"sphinx-payload-key-V01-CS01-HKDF:SHA256-INFO"
# Our own choice: the crate pads the final hop's routing info with OS randomness; we derive the pad from
# the ephemeral secret so that a packet is a pure function of its inputs (and still random when the
# ephemeral secret is).
FINAL_PAD_PERSONAL = b"loopix sphinx final-hop padding"


class SphinxError(Exception):
    """Base class of every error the packet format raises."""


class ParameterError(SphinxError, ValueError):
    """Bad arguments to build_packet (route length, sizes, message too long)."""


class PacketSizeError(SphinxError):
    """A packet whose length is none of the five Nym packet sizes."""


class InvalidKeyError(SphinxError):
    """A public key or alpha that gives a low-order (all-zero) shared secret."""


class MacError(SphinxError):
    """The header MAC (gamma) does not match: wrong key or a tampered header."""


class HeaderError(SphinxError):
    """A header that authenticates but carries an unknown flag or version."""


class PayloadError(SphinxError):
    """The final payload fails its integrity check (tampered body or wrong keys)."""


class Hop(msgspec.Struct, frozen=True):
    """One mix on the route: its X25519 public key and its 32-byte Sphinx address."""

    public_key: bytes
    address: bytes


class Forward(msgspec.Struct, frozen=True, gc=False):
    """Result at a forwarding hop: send `packet` to `next_address` after `delay_ns`."""

    next_address: bytes
    delay_ns: int
    packet: bytes
    replay_tag: bytes


class Final(msgspec.Struct, frozen=True, gc=False):
    """Result at the last hop: the message for `destination`."""

    destination: bytes
    identifier: bytes
    message: bytes
    replay_tag: bytes


class Rejected(msgspec.Struct, frozen=True, gc=False):
    """A packet a batch unwrap refused; `reason` names why in snake_case (bad_mac, bad_key,
    bad_header, bad_payload, bad_size, sphinx_error), as the nodes count their drops."""

    reason: str


def packet_size(payload_size: int) -> int:
    """Length of a whole packet that carries messages of up to `payload_size` bytes."""
    try:
        return PACKET_SIZES[payload_size]
    except KeyError:
        raise ParameterError(
            f"payload_size must be one of {PAYLOAD_SIZES}, got {payload_size!r}"
        ) from None


def check_build_args(route, destination, message, delays_ns, identifier, payload_size, ephemeral_secret):
    """Validate build_packet's arguments once, with errors a caller can act on."""
    size = packet_size(payload_size)
    n = len(route)
    if not 1 <= n <= MAX_PATH_LENGTH:
        raise ParameterError(f"route must have 1..{MAX_PATH_LENGTH} hops, got {n}")
    if len(delays_ns) != n:
        raise ParameterError(f"need one delay per hop: {n} hops, {len(delays_ns)} delays")
    for i, hop in enumerate(route):
        if len(hop.public_key) != KEY_SIZE:
            raise ParameterError(
                f"hop {i}: public key must be {KEY_SIZE} bytes, got {len(hop.public_key)}"
            )
        if len(hop.address) != NODE_ADDRESS_SIZE:
            raise ParameterError(
                f"hop {i}: address must be {NODE_ADDRESS_SIZE} bytes, got {len(hop.address)}"
            )
    for i, d in enumerate(delays_ns):
        if not 0 <= d < 1 << 64:
            raise ParameterError(f"delay {i} must fit an unsigned 64-bit count of ns, got {d}")
    if len(destination) != DESTINATION_SIZE:
        raise ParameterError(f"destination must be {DESTINATION_SIZE} bytes, got {len(destination)}")
    if len(identifier) != IDENTIFIER_SIZE:
        raise ParameterError(f"identifier must be {IDENTIFIER_SIZE} bytes, got {len(identifier)}")
    if len(message) > payload_size:
        raise ParameterError(
            f"message of {len(message)} bytes does not fit payload_size {payload_size}"
        )
    if ephemeral_secret is not None and len(ephemeral_secret) != KEY_SIZE:
        raise ParameterError(f"ephemeral_secret must be {KEY_SIZE} bytes, got {len(ephemeral_secret)}")
    return size


def check_packet_length(packet) -> int:
    n = len(packet)
    if n not in PAYLOAD_SIZE_FOR_PACKET:
        raise PacketSizeError(
            f"packet of {n} bytes is none of the Nym sizes {sorted(PAYLOAD_SIZE_FOR_PACKET)}"
        )
    return n
