"""The provider protocol's bytes: message types, sizes, framing and the bodies that need parsing.

Every message is `u32 BE length || u8 type || body` (length counts the type byte and the body),
cut out of the stream by the shared `LengthPrefixedReader`. docs/provider-protocol.md is the
specification; this module holds no state. The package's __init__ names what is public.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import Final

from loopix.sphinx.constants import KEY_SIZE, LARGEST_PACKET_SIZE, NODE_ADDRESS_SIZE
from loopix.wire.frames import LengthPrefixedReader

from .events import InboxMessage

MAGIC: Final = b"LPX1"
NONCE_SIZE: Final = 32
PROOF_SIZE: Final = 32
ADDRESS_SIZE: Final = NODE_ADDRESS_SIZE
REGISTER_CONTEXT: Final = b"loopix-register"
FLAG_NO_PUSH: Final = 0x01
FLAG_FLEET: Final = 0x02
DEFAULT_MAX_FLEET_KEYS: Final = 100_000
"""Identities one fleet connection may register (each costs the provider a set entry)."""
DEFAULT_PULL_SLOTS: Final = 16
DEFAULT_MAX_MESSAGE_SIZE: Final = 2048
MAX_ACK_IDS: Final = 4096
MAX_UNREGISTER_KEYS: Final = 1024
"""Keys one UNREGISTER (and its UNREGISTERED answer) may name: 32 KiB, under the frame limit."""
MAX_ERROR_TEXT: Final = 1024
SEND_OVERHEAD: Final = 4 + 1 + ADDRESS_SIZE
"""Bytes a SEND adds to a packet: length, type, first hop."""
PROVIDER_MAX_FRAME: Final = 1 + ADDRESS_SIZE + LARGEST_PACKET_SIZE
"""The largest message a client may send: a SEND with an Extended32 packet."""
CLIENT_MAX_FRAME: Final = 8 << 20
"""The largest message a client accepts from its provider (a PULLED of many large slots)."""

_HEAD = struct.Struct(">IB")
_U64 = struct.Struct(">Q")
_PULLED_HEAD = struct.Struct(">HI")
_SLOT_HEAD = struct.Struct(">BQI")


class MsgType(IntEnum):
    CHALLENGE = 1
    REGISTER = 2
    REGISTERED = 3
    ERROR = 4
    SEND = 5
    DELIVER = 6
    ACK = 7
    PULL = 8
    PULLED = 9
    REGISTERED_KEY = 10
    REFUSED_KEY = 11
    DELIVER_TO = 12
    PULL_FOR = 13
    PULLED_FOR = 14
    UNREGISTER = 15
    UNREGISTERED = 16


def message_reader(max_frame: int) -> LengthPrefixedReader:
    """The reader for one direction of a connection: u32 prefix, at least the type byte."""
    return LengthPrefixedReader(4, max_frame, min_frame=1)


def frame(kind: int, body: bytes | bytearray | memoryview = b"") -> bytes:
    """One message: length, type, body."""
    return _HEAD.pack(len(body) + 1, kind) + body


def registration_proof(shared_secret: bytes, nonce: bytes, client_key: bytes) -> bytes:
    """HMAC-SHA256(shared, "loopix-register" || nonce || client_pk)."""
    return hmac.new(shared_secret, REGISTER_CONTEXT + nonce + client_key, hashlib.sha256).digest()


def send_header(packet_len: int) -> bytes:
    """The `length || SEND` bytes before a SEND's first hop and packet (workers write the rest)."""
    return _HEAD.pack(1 + ADDRESS_SIZE + packet_len, MsgType.SEND)


def encode_send(first_hop: bytes, packet: bytes | bytearray | memoryview) -> bytes:
    """One SEND message (for callers that frame packets themselves)."""
    if len(first_hop) != ADDRESS_SIZE:
        raise ValueError(f"first hop address must be {ADDRESS_SIZE} bytes, got {len(first_hop)}")
    return send_header(len(packet)) + first_hop + packet


def encode_ack(ids: Sequence[int]) -> bytes:
    """ACK messages (split into several ACKs above `MAX_ACK_IDS`)."""
    out = bytearray()
    for i in range(0, len(ids), MAX_ACK_IDS):
        chunk = ids[i : i + MAX_ACK_IDS]
        out += frame(MsgType.ACK, struct.pack(f">{len(chunk)}Q", *chunk))
    return bytes(out)


def parse_ack(body: bytes) -> tuple[int, ...] | str:
    """The ids of an ACK body, or what is wrong with it."""
    n, rest = divmod(len(body), 8)
    if rest or not n or n > MAX_ACK_IDS:
        return f"ACK body of {len(body)} bytes is not 1..{MAX_ACK_IDS} ids"
    return struct.unpack(f">{n}Q", body)


def encode_keys(kind: MsgType, keys: Sequence[bytes]) -> bytes:
    """UNREGISTER or UNREGISTERED messages for `keys` (split above `MAX_UNREGISTER_KEYS`)."""
    out = bytearray()
    for i in range(0, len(keys), MAX_UNREGISTER_KEYS):
        out += frame(kind, b"".join(keys[i : i + MAX_UNREGISTER_KEYS]))
    return bytes(out)


def parse_keys(body: bytes, what: str) -> tuple[bytes, ...] | str:
    """The 32-byte keys of an UNREGISTER or UNREGISTERED body, or what is wrong with it."""
    n, rest = divmod(len(body), KEY_SIZE)
    if rest or not n or n > MAX_UNREGISTER_KEYS:
        return f"{what} body of {len(body)} bytes is not 1..{MAX_UNREGISTER_KEYS} keys"
    return tuple(body[i : i + KEY_SIZE] for i in range(0, len(body), KEY_SIZE))


def encode_deliver(message_id: int, message: bytes, client_key: bytes | None = None) -> bytes:
    """DELIVER, or DELIVER_TO when a fleet connection names the identity."""
    if client_key is None:
        return _HEAD.pack(9 + len(message), MsgType.DELIVER) + _U64.pack(message_id) + message
    return (
        _HEAD.pack(1 + KEY_SIZE + 8 + len(message), MsgType.DELIVER_TO)
        + client_key
        + _U64.pack(message_id)
        + message
    )


def parse_deliver(body: bytes, start: int = 0) -> tuple[int, bytes] | None:
    """(id, message) of a DELIVER body that begins at `start`, or None if it is too short."""
    if len(body) < start + 8:
        return None
    return _U64.unpack_from(body, start)[0], body[start + 8 :]


def pulled_body(messages: Sequence[tuple[int, bytes]], k: int, cap: int) -> bytearray:
    """A PULLED body: K slots of C bytes whatever the number of messages."""
    if len(messages) > k:
        raise ValueError(f"at most {k} messages fit in one PULLED")
    slot = _SLOT_HEAD.size + cap
    body = bytearray(_PULLED_HEAD.size + k * slot)  # zeros: dummy slots stay zero
    _PULLED_HEAD.pack_into(body, 0, k, cap)
    pos = _PULLED_HEAD.size
    for message_id, message in messages:
        if len(message) > cap:
            raise ValueError(f"message of {len(message)} bytes exceeds the slot size {cap}")
        _SLOT_HEAD.pack_into(body, pos, 1, message_id, len(message))
        body[pos + _SLOT_HEAD.size : pos + _SLOT_HEAD.size + len(message)] = message
        pos += slot
    return body


def parse_pulled(body: bytes, start: int = 0) -> tuple[InboxMessage, ...] | str:
    """The real messages of a PULLED body that begins at `start`, or what is wrong with it."""
    if len(body) - start < _PULLED_HEAD.size:
        return "PULLED shorter than its header"
    k, cap = _PULLED_HEAD.unpack_from(body, start)
    slot = _SLOT_HEAD.size + cap
    if len(body) - start != _PULLED_HEAD.size + k * slot:
        return f"PULLED of {len(body) - start} bytes does not hold {k} slots of {cap}"
    messages = []
    for pos in range(start + _PULLED_HEAD.size, len(body), slot):
        real, message_id, length = _SLOT_HEAD.unpack_from(body, pos)
        if real not in (0, 1) or length > cap:
            return "malformed PULLED slot"
        if real:
            begin = pos + _SLOT_HEAD.size
            messages.append(InboxMessage(message_id, body[begin : begin + length]))
    return tuple(messages)


def error_text(reason: str) -> bytes:
    """The body of an ERROR or the reason of a REFUSED_KEY: UTF-8, at most MAX_ERROR_TEXT bytes."""
    return reason.encode("utf-8", "replace")[:MAX_ERROR_TEXT]


def check_key(key: bytes, what: str) -> bytes:
    """`key` as bytes if it is KEY_SIZE long; ValueError naming `what` otherwise."""
    key = bytes(key)
    if len(key) != KEY_SIZE:
        raise ValueError(f"{what} must be {KEY_SIZE} bytes, got {len(key)}")
    return key
