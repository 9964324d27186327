"""The SURB-ack prefix every real or loop Sphinx message starts with (shared by client and provider).

    message = ack first hop (32, a node address) || ack packet (386, an `Ack`-size Sphinx packet) || inner

The sender builds the ack packet over a fresh route back to its own provider; the recipient's provider
stores `inner` durably, then writes the ack packet to the ack's first hop. An ack packet's own final
message (21 bytes, `ACK_PAYLOAD_SIZE`) carries no prefix. Drop cover carries none either (its provider
discards it unread). Pure functions, no I/O.
"""

from __future__ import annotations

from typing import Final

from loopix.sphinx.constants import NODE_ADDRESS_SIZE, PACKET_SIZES, PAYLOAD_SIZES

__all__ = ["ACK_PACKET_SIZE", "ACK_PAYLOAD_SIZE", "ACK_PREFIX_SIZE", "inner_size", "split_ack"]

ACK_PAYLOAD_SIZE: Final = PAYLOAD_SIZES[0]
"""21: the final message of an ack packet (Nym's `Ack` size tag)."""
ACK_PACKET_SIZE: Final = PACKET_SIZES[ACK_PAYLOAD_SIZE]
"""386 bytes on the wire."""
ACK_PREFIX_SIZE: Final = NODE_ADDRESS_SIZE + ACK_PACKET_SIZE
"""418: what the ack takes out of every real message's payload."""


def inner_size(payload_size: int) -> int:
    """What is left for the end-to-end layer (fragments, loops) in a payload of `payload_size`."""
    return payload_size - ACK_PREFIX_SIZE


def split_ack(message: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(ack first hop, ack packet, inner message) of a message that carries an ack prefix, else None
    (an ack's own 21-byte message, or anything too short to hold a prefix and one byte)."""
    if len(message) <= ACK_PREFIX_SIZE:
        return None
    view = memoryview(message)
    return (
        bytes(view[:NODE_ADDRESS_SIZE]),
        bytes(view[NODE_ADDRESS_SIZE:ACK_PREFIX_SIZE]),
        bytes(view[ACK_PREFIX_SIZE:]),
    )
