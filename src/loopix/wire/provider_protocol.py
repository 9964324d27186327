"""Client ↔ provider protocol, sans-IO: two state machines that turn bytes into events and back.

A provider listens on one port for mixnodes and clients alike. A client connection opens with the
magic `b"LPX1"`; its first byte (0x4C) is never a Nym frame version (7 or 8), so the provider can
tell the two apart from the first byte. After the magic both directions carry messages
`u32 BE length || u8 type || body`, where length counts the type byte and the body.

    provider → client  CHALLENGE   nonce(32)
    client → provider  REGISTER    client_pk(32) || proof(32) [|| flags(1)]
    provider → client  REGISTERED  (empty)              or  ERROR  utf-8 text (then it closes)
    client → provider  SEND        first_hop_address(32) || sphinx packet     (many per write)
    provider → client  DELIVER     u64 id || message                          (pushed)
    client → provider  ACK         u64 id ...                                 (deletes them)
    client → provider  PULL        (empty)
    provider → client  PULLED      u16 K || u32 C || K slots of
                                   u8 real || u64 id || u32 len || message padded to C bytes

proof = HMAC-SHA256(X25519(client_sk, provider_pk), b"loopix-register" || nonce || client_pk): only
the owner of client_sk can compute it, and the fresh nonce stops replays of an old registration.
The optional flags byte is our extension: bit 0 (`FLAG_NO_PUSH`) asks the provider not to push,
for Loopix-style clients that only pull. A PULLED response always has K slots of C bytes, so its
size says nothing about how many messages were waiting.

Fleet connections (flags bit 1, `FLAG_FLEET`) carry many identities on one connection, so a client
running thousands of them pays one socket and one handshake instead of one per identity. Each
identity sends its own REGISTER (with FLAG_FLEET) over the same nonce; the proof binds client_pk,
so sharing the nonce lets no identity stand in for another. Then, per key:

    provider → client  REGISTERED_KEY  client_pk(32)
    provider → client  REFUSED_KEY     client_pk(32) || utf-8 reason   (the connection stays open)
    provider → client  DELIVER_TO      client_pk(32) || u64 id || message
    client → provider  PULL_FOR        client_pk(32)
    provider → client  PULLED_FOR      client_pk(32) || the PULLED body

SEND and ACK are unchanged (message ids are unique per provider; the provider deletes only ids
whose recipient is registered on the connection that ACKs). `FleetClientSide` is the client end.

Nothing here raises on bad input: a malformed or out-of-order message becomes a `ProtocolError`
event and the machine refuses everything after it (the I/O layer sends ERROR and closes). Calling
a `send_*` method in the wrong state is a programming error and raises `ProtocolStateError`.
The full specification is docs/provider-protocol.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import Final

import msgspec
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base

from loopix.sphinx.constants import KEY_SIZE, LARGEST_PACKET_SIZE, NODE_ADDRESS_SIZE

__all__ = [
    "ADDRESS_SIZE",
    "DEFAULT_MAX_FLEET_KEYS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_PULL_SLOTS",
    "FLAG_FLEET",
    "FLAG_NO_PUSH",
    "KEY_SIZE",
    "MAGIC",
    "MAX_ACK_IDS",
    "NONCE_SIZE",
    "SEND_OVERHEAD",
    "AckReceived",
    "ChallengeReceived",
    "ClientEvent",
    "ClientHello",
    "ClientRegistered",
    "ClientSide",
    "Delivered",
    "FleetClientEvent",
    "FleetClientRefused",
    "FleetClientRegistered",
    "FleetClientSide",
    "InboxMessage",
    "KeyRefused",
    "KeyRegistered",
    "MsgType",
    "PacketSubmitted",
    "ProtocolError",
    "ProtocolStateError",
    "ProviderError",
    "ProviderEvent",
    "ProviderSide",
    "PullRequested",
    "PullResult",
    "RegistrationAccepted",
    "encode_send",
    "registration_proof",
    "send_header",
]

MAGIC: Final = b"LPX1"
NONCE_SIZE: Final = 32
PROOF_SIZE: Final = 32
ADDRESS_SIZE: Final = NODE_ADDRESS_SIZE
REGISTER_CONTEXT: Final = b"loopix-register"
FLAG_NO_PUSH: Final = 0x01
FLAG_FLEET: Final = 0x02
DEFAULT_MAX_FLEET_KEYS: Final = 100_000
"""Identities one fleet connection may register by default; more are refused one by one."""
DEFAULT_PULL_SLOTS: Final = 16
DEFAULT_MAX_MESSAGE_SIZE: Final = 2048
MAX_ACK_IDS: Final = 4096
MAX_ERROR_TEXT: Final = 1024
SEND_OVERHEAD: Final = 4 + 1 + ADDRESS_SIZE
"""Bytes a SEND adds in front of a Sphinx packet."""
PROVIDER_MAX_FRAME: Final = 1 + ADDRESS_SIZE + LARGEST_PACKET_SIZE
"""Largest client→provider message (a SEND of the largest packet); anything longer is refused."""
CLIENT_MAX_FRAME: Final = 8 << 20
"""Largest provider→client message a client accepts by default (a PULLED of big slots)."""

_LEN = struct.Struct(">I")
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


class ProtocolStateError(RuntimeError):
    """A `send_*` call that the protocol state does not allow (a bug in the caller)."""


# --- events --------------------------------------------------------------------------------------


class ProtocolError(msgspec.Struct, frozen=True, gc=False):
    """The peer broke the protocol; the machine is closed. Send ERROR (provider) and close."""

    reason: str


class ClientHello(msgspec.Struct, frozen=True, gc=False):
    """The magic arrived: answer with `send_challenge()`."""


class ClientRegistered(msgspec.Struct, frozen=True, gc=False):
    """The client proved it owns `client_key`; answer with `send_registered()`."""

    client_key: bytes
    push: bool = True


class PacketSubmitted(msgspec.Struct, frozen=True, gc=False):
    """A Sphinx packet to forward to the node whose 32-byte address is `first_hop`."""

    first_hop: bytes
    packet: bytes


class AckReceived(msgspec.Struct, frozen=True, gc=False):
    """The client has these messages; delete them from its inbox."""

    ids: tuple[int, ...]


class PullRequested(msgspec.Struct, frozen=True, gc=False):
    """Answer with `send_pulled(...)`, or on a fleet connection `send_pulled_for(client_key, ...)`.

    `client_key` is None for a single-identity connection; on a fleet connection it is a key
    registered on this connection (PULL_FOR of any other key becomes `FleetClientRefused`)."""

    client_key: bytes | None = None


class FleetClientRegistered(msgspec.Struct, frozen=True, gc=False):
    """One identity of a fleet connection proved its key; answer `send_registered_key(key)`.

    The key is already among `ProviderSide.client_keys`; to refuse it after all (say, a
    provider-wide quota), answer `send_refused_key(key, reason)` instead."""

    client_key: bytes
    push: bool = True


class FleetClientRefused(msgspec.Struct, frozen=True, gc=False):
    """A key this fleet connection may not use; answer `send_refused_key(key, reason)`.

    The connection stays open: one bad identity must not cost the fleet its other identities."""

    client_key: bytes
    reason: str


ProviderEvent = (
    ProtocolError
    | ClientHello
    | ClientRegistered
    | PacketSubmitted
    | AckReceived
    | PullRequested
    | FleetClientRegistered
    | FleetClientRefused
)


class InboxMessage(msgspec.Struct, frozen=True, gc=False):
    """A stored message as the provider hands it out; ACK `id` once it is safe."""

    id: int
    message: bytes


class ChallengeReceived(msgspec.Struct, frozen=True, gc=False):
    """Answer with `send_register()`."""

    nonce: bytes


class RegistrationAccepted(msgspec.Struct, frozen=True, gc=False):
    """The provider accepted the registration."""


class ProviderError(msgspec.Struct, frozen=True, gc=False):
    """The provider refused something and is closing the connection."""

    message: str


class Delivered(msgspec.Struct, frozen=True, gc=False):
    """A pushed message; on a fleet connection `client_key` names the identity it is for
    (always None on a single-identity connection)."""

    id: int
    message: bytes
    client_key: bytes | None = None


class PullResult(msgspec.Struct, frozen=True, gc=False):
    """The real messages of a PULLED response (dummy slots are dropped here); on a fleet
    connection `client_key` names the identity that pulled."""

    messages: tuple[InboxMessage, ...]
    client_key: bytes | None = None


class KeyRegistered(msgspec.Struct, frozen=True, gc=False):
    """The provider accepted this identity of the fleet connection."""

    client_key: bytes


class KeyRefused(msgspec.Struct, frozen=True, gc=False):
    """This identity is not (or, after another connection registered it, no longer) registered on
    this fleet connection; the connection and its other identities carry on."""

    client_key: bytes
    reason: str


ClientEvent = (
    ProtocolError
    | ChallengeReceived
    | RegistrationAccepted
    | ProviderError
    | Delivered
    | PullResult
)

FleetClientEvent = (
    ProtocolError
    | ChallengeReceived
    | KeyRegistered
    | KeyRefused
    | ProviderError
    | Delivered
    | PullResult
)


# --- shared pieces -------------------------------------------------------------------------------


def registration_proof(shared_secret: bytes, nonce: bytes, client_key: bytes) -> bytes:
    """HMAC-SHA256(shared, "loopix-register" || nonce || client_pk)."""
    return hmac.new(shared_secret, REGISTER_CONTEXT + nonce + client_key, hashlib.sha256).digest()


def _frame(kind: int, body: bytes | bytearray | memoryview = b"") -> bytes:
    return _HEAD.pack(len(body) + 1, kind) + body


def encode_send(first_hop: bytes, packet: bytes | bytearray | memoryview) -> bytes:
    """One SEND message (for callers that frame packets themselves)."""
    if len(first_hop) != ADDRESS_SIZE:
        raise ValueError(f"first hop address must be {ADDRESS_SIZE} bytes, got {len(first_hop)}")
    return _HEAD.pack(1 + ADDRESS_SIZE + len(packet), MsgType.SEND) + first_hop + packet


def send_header(packet_len: int) -> bytes:
    """The `length || SEND` bytes before a SEND's first hop and packet (workers write the rest)."""
    return _HEAD.pack(1 + ADDRESS_SIZE + packet_len, MsgType.SEND)


class _Reader:
    """Cuts `u32 length || u8 type || body` messages out of a byte stream, within `max_frame`."""

    __slots__ = ("_buf", "_max", "_pos")

    def __init__(self, max_frame: int) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max = max_frame

    def feed(
        self, data: bytes | bytearray | memoryview
    ) -> tuple[list[tuple[int, bytes]], str | None]:
        """The complete messages, and an error text if the stream is unusable from there on."""
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos, end, error = self._pos, len(buf), None
        while end - pos >= 4:
            (length,) = _LEN.unpack_from(buf, pos)
            if length == 0:
                error = "message with zero length (no type byte)"
                break
            if length > self._max:
                error = f"message of {length} bytes exceeds the limit of {self._max}"
                break
            if end - pos < 4 + length:
                break
            out.append((buf[pos + 4], bytes(buf[pos + 5 : pos + 4 + length])))
            pos += 4 + length
        if error is not None or pos == end:
            buf.clear()
            pos = 0
        elif pos > 65536 or pos * 2 >= end:
            del buf[:pos]
            pos = 0
        self._pos = pos
        return out, error


def _pulled_body(messages: Sequence[tuple[int, bytes]], k: int, cap: int) -> bytearray:
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


def _parse_pulled(body: bytes, start: int = 0) -> tuple[InboxMessage, ...] | str:
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


def _check_key(key: bytes, what: str) -> bytes:
    key = bytes(key)
    if len(key) != KEY_SIZE:
        raise ValueError(f"{what} must be {KEY_SIZE} bytes, got {len(key)}")
    return key


# --- provider side -------------------------------------------------------------------------------


class ProviderSide:
    """The provider's view of one client connection (after it saw the first byte 0x4C).

    Flow: `receive_data` → `ClientHello` → `send_challenge()`; → `ClientRegistered` →
    `send_registered()`; then `PacketSubmitted` / `AckReceived` / `PullRequested` events, and
    `send_deliver` / `send_pulled` at will. On `ProtocolError` write `send_error(reason)`, close.

    Fleet connections: `FleetClientRegistered` → `send_registered_key(key)`, `FleetClientRefused`
    → `send_refused_key(key, reason)`, any number of times; `PullRequested(client_key)` →
    `send_pulled_for`; pushes with `send_deliver_to`. An ACK may name ids of any recipient: the I/O
    layer deletes only those whose recipient is in `client_keys`.
    """

    _MAGIC, _HELLO, _CHALLENGED, _REGISTERED, _CLOSED, _FLEET = range(6)

    def __init__(
        self,
        provider_secret: bytes,
        *,
        pull_slots: int = DEFAULT_PULL_SLOTS,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_frame: int = PROVIDER_MAX_FRAME,
        max_fleet_keys: int = DEFAULT_MAX_FLEET_KEYS,
    ) -> None:
        if not 1 <= pull_slots <= 0xFFFF:
            raise ValueError("pull_slots must be 1..65535")
        if not 0 < max_message_size < 1 << 31:
            raise ValueError("max_message_size must be positive")
        if max_fleet_keys < 1:
            raise ValueError("max_fleet_keys must be positive")
        self._secret = _check_key(provider_secret, "provider secret")
        self.pull_slots = pull_slots
        self.max_message_size = max_message_size
        self.max_fleet_keys = max_fleet_keys
        self._reader = _Reader(max_frame)
        self._state = self._MAGIC
        self._magic = b""
        self._nonce = b""
        self.client_key: bytes | None = None
        self.push = True
        self._keys: set[bytes] = set()
        self._fleet = False

    def __repr__(self) -> str:  # the secret stays out of logs
        if self._state == self._FLEET:
            return f"ProviderSide(state={self._state}, fleet of {len(self._keys)} keys)"
        return f"ProviderSide(state={self._state}, client={self.client_key!r})"

    @property
    def registered(self) -> bool:
        """A single registration, or a fleet connection with at least one key."""
        return self._state == self._REGISTERED or (self._state == self._FLEET and bool(self._keys))

    @property
    def fleet(self) -> bool:
        """The connection is (or, once closed, was) a fleet connection: its first REGISTER
        carried FLAG_FLEET. Stays true after close, so the I/O layer can drop its routes."""
        return self._fleet

    @property
    def client_keys(self) -> set[bytes]:
        """Keys registered on this connection (one on a single connection); do not modify."""
        return self._keys

    @property
    def closed(self) -> bool:
        return self._state == self._CLOSED

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ProviderEvent]:
        """Events for the bytes just read (empty once closed)."""
        if self._state == self._CLOSED or not data:
            return []
        events: list[ProviderEvent] = []
        if self._state == self._MAGIC:
            need = len(MAGIC) - len(self._magic)
            self._magic += bytes(data[:need])
            data = data[need:]
            if not MAGIC.startswith(self._magic):
                return [self._fail("not a loopix client connection (bad magic)")]
            if len(self._magic) < len(MAGIC):
                return []
            self._state = self._HELLO
            events.append(ClientHello())
            if not data:
                return events
        messages, error = self._reader.feed(data)
        for kind, body in messages:
            event = self._handle(kind, body)
            if event is not None:
                events.append(event)
            if self._state == self._CLOSED:
                return events
        if error is not None:
            events.append(self._fail(error))
        return events

    def _fail(self, reason: str) -> ProtocolError:
        self._state = self._CLOSED
        return ProtocolError(reason)

    def _handle(self, kind: int, body: bytes) -> ProviderEvent | None:
        if self._state == self._FLEET:
            return self._handle_fleet(kind, body)
        if self._state == self._REGISTERED:
            if kind == MsgType.SEND:
                if len(body) <= ADDRESS_SIZE:
                    return self._fail("SEND without a packet")
                return PacketSubmitted(body[:ADDRESS_SIZE], body[ADDRESS_SIZE:])
            if kind == MsgType.ACK:
                n, rest = divmod(len(body), 8)
                if rest or not n or n > MAX_ACK_IDS:
                    return self._fail(f"ACK body of {len(body)} bytes is not 1..{MAX_ACK_IDS} ids")
                return AckReceived(struct.unpack(f">{n}Q", body))
            if kind == MsgType.PULL:
                return PullRequested() if not body else self._fail("PULL carries no body")
            if kind == MsgType.REGISTER:
                return self._fail("already registered")
            return self._fail(f"unexpected message type {kind} from a client")
        if kind != MsgType.REGISTER:
            if kind in (MsgType.SEND, MsgType.ACK, MsgType.PULL, MsgType.PULL_FOR):
                return self._fail("not registered: register before sending or reading")
            return self._fail(f"unexpected message type {kind} from a client")
        if self._state != self._CHALLENGED:
            return self._fail("REGISTER before the challenge")
        return self._register(body)

    def _register(self, body: bytes) -> ProviderEvent:
        if len(body) not in (KEY_SIZE + PROOF_SIZE, KEY_SIZE + PROOF_SIZE + 1):
            return self._fail(f"REGISTER body must be 64 or 65 bytes, got {len(body)}")
        client_key, proof = body[:KEY_SIZE], body[KEY_SIZE : KEY_SIZE + PROOF_SIZE]
        flags = body[KEY_SIZE + PROOF_SIZE] if len(body) > KEY_SIZE + PROOF_SIZE else 0
        if flags & FLAG_FLEET:
            self._state = self._FLEET
            self._fleet = True
            self.push = not flags & FLAG_NO_PUSH
            return self._register_fleet(body)
        try:
            shared = crypto_scalarmult(self._secret, client_key)
        except Exception:  # libsodium refuses low-order points (all-zero shared secret)
            return self._fail("registration refused: invalid client key")
        expected = registration_proof(shared, self._nonce, client_key)
        if not hmac.compare_digest(expected, proof):
            return self._fail("registration refused: bad proof of key ownership")
        self._state = self._REGISTERED
        self.client_key = client_key
        self._keys = {client_key}
        self.push = not flags & FLAG_NO_PUSH
        return ClientRegistered(client_key, self.push)

    def _handle_fleet(self, kind: int, body: bytes) -> ProviderEvent:
        if kind == MsgType.SEND:
            if not self._keys:
                return self._fail("not registered: no key of this fleet connection is registered")
            if len(body) <= ADDRESS_SIZE:
                return self._fail("SEND without a packet")
            return PacketSubmitted(body[:ADDRESS_SIZE], body[ADDRESS_SIZE:])
        if kind == MsgType.ACK:
            n, rest = divmod(len(body), 8)
            if rest or not n or n > MAX_ACK_IDS:
                return self._fail(f"ACK body of {len(body)} bytes is not 1..{MAX_ACK_IDS} ids")
            return AckReceived(struct.unpack(f">{n}Q", body))
        if kind == MsgType.PULL_FOR:
            if len(body) != KEY_SIZE:
                return self._fail(f"PULL_FOR body must be {KEY_SIZE} bytes, got {len(body)}")
            if body not in self._keys:
                return FleetClientRefused(body, "not registered on this connection")
            return PullRequested(body)
        if kind == MsgType.REGISTER:
            return self._register_fleet(body)
        if kind == MsgType.PULL:
            return self._fail("PULL on a fleet connection: use PULL_FOR")
        return self._fail(f"unexpected message type {kind} from a fleet client")

    def _register_fleet(self, body: bytes) -> ProviderEvent:
        """One identity of a fleet: refusals name the key and keep the connection open."""
        if len(body) != KEY_SIZE + PROOF_SIZE + 1 or not body[-1] & FLAG_FLEET:
            return self._fail(
                "a fleet connection takes only fleet REGISTERs (65 bytes, FLAG_FLEET)"
            )
        client_key, proof = body[:KEY_SIZE], body[KEY_SIZE : KEY_SIZE + PROOF_SIZE]
        if (not body[-1] & FLAG_NO_PUSH) != self.push:
            return FleetClientRefused(client_key, "push flag differs from this connection's")
        if client_key not in self._keys and len(self._keys) >= self.max_fleet_keys:
            # before the X25519: a flood beyond the limit costs the provider no crypto
            return FleetClientRefused(
                client_key, f"limit of {self.max_fleet_keys} identities per connection reached"
            )
        try:
            shared = crypto_scalarmult(self._secret, client_key)
        except Exception:  # libsodium refuses low-order points (all-zero shared secret)
            return FleetClientRefused(client_key, "invalid client key")
        expected = registration_proof(shared, self._nonce, client_key)
        if not hmac.compare_digest(expected, proof):
            return FleetClientRefused(client_key, "bad proof of key ownership")
        self._keys.add(client_key)
        return FleetClientRegistered(client_key, self.push)

    def send_challenge(self, nonce: bytes | None = None) -> bytes:
        """The CHALLENGE (a fresh random nonce unless one is given, for tests)."""
        if self._state != self._HELLO:
            raise ProtocolStateError("send_challenge() is only valid right after ClientHello")
        self._nonce = os.urandom(NONCE_SIZE) if nonce is None else bytes(nonce)
        if len(self._nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        self._state = self._CHALLENGED
        return _frame(MsgType.CHALLENGE, self._nonce)

    def send_registered(self) -> bytes:
        if self._state != self._REGISTERED:
            raise ProtocolStateError("send_registered() before a ClientRegistered event")
        return _frame(MsgType.REGISTERED)

    def send_error(self, text: str) -> bytes:
        """An ERROR message; the machine is closed afterwards (close the connection)."""
        self._state = self._CLOSED
        data = text.encode("utf-8", "replace")[:MAX_ERROR_TEXT]
        return _frame(MsgType.ERROR, data)

    def _need_registered(self, what: str) -> None:
        if self._state != self._REGISTERED:
            raise ProtocolStateError(f"{what} to an unregistered connection")

    def send_deliver(self, message_id: int, message: bytes) -> bytes:
        """Push one stored message."""
        self._need_registered("send_deliver()")
        return _HEAD.pack(9 + len(message), MsgType.DELIVER) + _U64.pack(message_id) + message

    def send_pulled(self, messages: Sequence[tuple[int, bytes]]) -> bytes:
        """PULLED with `messages` (at most `pull_slots`) and dummies in the remaining slots."""
        if self._state != self._REGISTERED:
            raise ProtocolStateError("send_pulled() to a connection without a single registration")
        return _frame(
            MsgType.PULLED, _pulled_body(messages, self.pull_slots, self.max_message_size)
        )

    # --- fleet connections ---

    def _need_fleet_key(self, what: str, key: bytes) -> None:
        if self._state != self._FLEET:
            raise ProtocolStateError(f"{what} on a connection that is not a fleet")
        if key not in self._keys:
            raise ProtocolStateError(f"{what} for a key not registered on this connection")

    def send_registered_key(self, client_key: bytes) -> bytes:
        """REGISTERED_KEY answering a `FleetClientRegistered`."""
        self._need_fleet_key("send_registered_key()", client_key)
        return _frame(MsgType.REGISTERED_KEY, client_key)

    def send_refused_key(self, client_key: bytes, reason: str) -> bytes:
        """REFUSED_KEY; the key leaves `client_keys` (if it was there) and the connection stays.

        Also how a provider takes a key away when a newer connection registers it."""
        if self._state != self._FLEET:
            raise ProtocolStateError("send_refused_key() on a connection that is not a fleet")
        key = _check_key(client_key, "client key")
        self._keys.discard(key)
        text = reason.encode("utf-8", "replace")[:MAX_ERROR_TEXT]
        return _frame(MsgType.REFUSED_KEY, key + text)

    def send_deliver_to(self, client_key: bytes, message_id: int, message: bytes) -> bytes:
        """Push one stored message to one identity of the fleet."""
        self._need_fleet_key("send_deliver_to()", client_key)
        return (
            _HEAD.pack(1 + KEY_SIZE + 8 + len(message), MsgType.DELIVER_TO)
            + client_key
            + _U64.pack(message_id)
            + message
        )

    def send_pulled_for(self, client_key: bytes, messages: Sequence[tuple[int, bytes]]) -> bytes:
        """PULLED_FOR: the key, then the same fixed-size body as PULLED."""
        self._need_fleet_key("send_pulled_for()", client_key)
        body = _pulled_body(messages, self.pull_slots, self.max_message_size)
        return _frame(MsgType.PULLED_FOR, client_key + body)


# --- client side ---------------------------------------------------------------------------------


class _ClientBase:
    """What both client ends share: the hello and challenge, SEND and ACK, and event decoding."""

    _NEW, _HELLO_SENT, _CHALLENGED, _REGISTERING, _REGISTERED, _CLOSED = range(6)
    _SENDING: tuple[int, ...] = ()  # states in which SEND/ACK/PULL may be written
    _SEND_AFTER = ""  # the call that must come first, for the error message

    def __init__(self, provider_key: bytes, push: bool, max_frame: int) -> None:
        self.provider_key = _check_key(provider_key, "provider key")
        self.push = push
        self._reader = _Reader(max_frame)
        self._state = self._NEW
        self._nonce = b""

    @property
    def closed(self) -> bool:
        return self._state == self._CLOSED

    def send_hello(self) -> bytes:
        if self._state != self._NEW:
            raise ProtocolStateError("send_hello() twice")
        self._state = self._HELLO_SENT
        return MAGIC

    def _can_send(self, what: str) -> None:
        if self._state not in self._SENDING:
            raise ProtocolStateError(f"{what} before {self._SEND_AFTER}")

    def send_packet(self, first_hop: bytes, packet: bytes | bytearray | memoryview) -> bytes:
        self._can_send("send_packet()")
        return encode_send(first_hop, packet)

    def send_packets(self, items: Iterable[tuple[bytes, bytes | bytearray | memoryview]]) -> bytes:
        """Many SENDs in one buffer, for one write."""
        self._can_send("send_packets()")
        return b"".join([encode_send(hop, packet) for hop, packet in items])

    def send_ack(self, ids: Sequence[int]) -> bytes:
        """ACK messages (split into several ACKs above `MAX_ACK_IDS`)."""
        self._can_send("send_ack()")
        out = bytearray()
        for i in range(0, len(ids), MAX_ACK_IDS):
            chunk = ids[i : i + MAX_ACK_IDS]
            out += _frame(MsgType.ACK, struct.pack(f">{len(chunk)}Q", *chunk))
        return bytes(out)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list:
        """Events for the bytes just read (empty once closed)."""
        if self._state == self._CLOSED or not data:
            return []
        messages, error = self._reader.feed(data)
        events = []
        for kind, body in messages:
            events.append(self._handle(kind, body))
            if self._state == self._CLOSED:
                return events
        if error is not None:
            events.append(self._fail(error))
        return events

    def _fail(self, reason: str) -> ProtocolError:
        self._state = self._CLOSED
        return ProtocolError(reason)

    def _handle(self, kind: int, body: bytes):
        if kind == MsgType.ERROR:
            self._state = self._CLOSED
            return ProviderError(body[:MAX_ERROR_TEXT].decode("utf-8", "replace"))
        if kind == MsgType.CHALLENGE:
            if self._state != self._HELLO_SENT:
                return self._fail("unexpected CHALLENGE")
            if len(body) != NONCE_SIZE:
                return self._fail(f"CHALLENGE nonce must be {NONCE_SIZE} bytes")
            self._nonce = body
            self._state = self._CHALLENGED
            return ChallengeReceived(body)
        return self._handle_session(kind, body)

    def _handle_session(self, kind: int, body: bytes):
        raise NotImplementedError


class ClientSide(_ClientBase):
    """The client's end of a provider connection.

    Flow: write `send_hello()`; on `ChallengeReceived` write `send_register()`; after that the
    client may pipeline `send_packets` / `send_pull` / `send_ack` (the provider handles them in
    order, after the registration); `RegistrationAccepted` confirms it. Pushed messages arrive as
    `Delivered`, pulls as `PullResult`; ACK each id once the message is safely kept.
    """

    _SENDING = (_ClientBase._REGISTERING, _ClientBase._REGISTERED)
    _SEND_AFTER = "send_register()"

    def __init__(
        self,
        client_secret: bytes,
        provider_key: bytes,
        *,
        push: bool = True,
        max_frame: int = CLIENT_MAX_FRAME,
    ) -> None:
        self._secret = _check_key(client_secret, "client secret")
        super().__init__(provider_key, push, max_frame)
        self.client_key = crypto_scalarmult_base(self._secret)

    def __repr__(self) -> str:  # the secret stays out of logs
        return f"ClientSide(state={self._state}, client={self.client_key.hex()[:16]}...)"

    @property
    def registered(self) -> bool:
        return self._state == self._REGISTERED

    def send_register(self) -> bytes:
        """REGISTER answering the challenge."""
        if self._state != self._CHALLENGED:
            raise ProtocolStateError("send_register() before ChallengeReceived")
        shared = crypto_scalarmult(self._secret, self.provider_key)
        proof = registration_proof(shared, self._nonce, self.client_key)
        body = self.client_key + proof + (b"" if self.push else bytes((FLAG_NO_PUSH,)))
        self._state = self._REGISTERING
        return _frame(MsgType.REGISTER, body)

    def send_pull(self) -> bytes:
        self._can_send("send_pull()")
        return _frame(MsgType.PULL)

    def _handle_session(self, kind: int, body: bytes) -> ClientEvent:
        if kind == MsgType.REGISTERED:
            if self._state != self._REGISTERING or body:
                return self._fail("unexpected REGISTERED")
            self._state = self._REGISTERED
            return RegistrationAccepted()
        if self._state != self._REGISTERED:
            return self._fail(f"message type {kind} before registration completed")
        if kind == MsgType.DELIVER:
            if len(body) < 8:
                return self._fail("DELIVER shorter than its id")
            return Delivered(_U64.unpack_from(body)[0], body[8:])
        if kind == MsgType.PULLED:
            messages = _parse_pulled(body)
            if isinstance(messages, str):
                return self._fail(messages)
            return PullResult(messages)
        return self._fail(f"unexpected message type {kind} from a provider")


class FleetClientSide(_ClientBase):
    """The client's end of a fleet connection: many identities over one provider connection.

    Flow: write `send_hello()`; on `ChallengeReceived` write `send_register_many(secrets)` (and
    again whenever identities join; each costs two X25519 here and one at the provider). Every key
    is answered by `KeyRegistered` or `KeyRefused`; a refusal ends nothing but that identity.
    Pushed messages arrive as `Delivered(id, message, client_key)`, pulls (`send_pull_for`) as
    `PullResult(messages, client_key)`. SEND and ACK are as on a single connection and may be
    pipelined after the first `send_register_many` (the provider handles them in order).

    Memory: one 32-byte key per identity in `registered_keys` (or `pending` until answered).
    A provider without fleet support answers REGISTERED; that becomes a `ProtocolError`.
    """

    _FLEET = _ClientBase._REGISTERING  # at least one REGISTER written
    _SENDING = (_FLEET,)
    _SEND_AFTER = "send_register_many()"

    def __init__(
        self, provider_key: bytes, *, push: bool = True, max_frame: int = CLIENT_MAX_FRAME
    ) -> None:
        super().__init__(provider_key, push, max_frame)
        self._flags = bytes((FLAG_FLEET | (0 if push else FLAG_NO_PUSH),))
        self.pending: set[bytes] = set()
        """Keys sent in a REGISTER and not answered yet."""
        self.registered_keys: set[bytes] = set()
        """Keys the provider accepted on this connection (and has not taken back)."""

    def __repr__(self) -> str:
        return (
            f"FleetClientSide(state={self._state}, registered={len(self.registered_keys)}, "
            f"pending={len(self.pending)})"
        )

    def send_register_many(self, secrets: Iterable[bytes | tuple[bytes, bytes]]) -> bytes:
        """REGISTERs (FLAG_FLEET) for these X25519 secret keys, in one buffer for one write.

        An item may be a `(secret, public)` pair, which saves the X25519 that derives the public
        key (a wrong public key only earns a `KeyRefused`). Keys already registered or pending on
        this connection are skipped (b"" if none is left). Raises ValueError for a key that is not
        32 bytes, before anything is recorded.
        """
        if self._state not in (self._CHALLENGED, self._FLEET):
            raise ProtocolStateError("send_register_many() before ChallengeReceived")
        nonce, provider_key, flags = self._nonce, self.provider_key, self._flags
        head = _HEAD.pack(1 + KEY_SIZE + PROOF_SIZE + 1, MsgType.REGISTER)
        out: list[bytes] = []
        keys: list[bytes] = []
        seen = set()
        for item in secrets:
            if isinstance(item, tuple):
                secret = _check_key(item[0], "client secret")
                key = _check_key(item[1], "client public key")
            else:
                secret = _check_key(item, "client secret")
                key = crypto_scalarmult_base(secret)
            if key in self.registered_keys or key in self.pending or key in seen:
                continue
            seen.add(key)
            proof = registration_proof(crypto_scalarmult(secret, provider_key), nonce, key)
            out.append(head + key + proof + flags)
            keys.append(key)
        self.pending.update(keys)
        if self._state == self._CHALLENGED:
            self._state = self._FLEET
        return b"".join(out)

    def send_pull_for(self, client_key: bytes) -> bytes:
        """PULL_FOR one identity; a key not registered here is answered by `KeyRefused`."""
        self._can_send("send_pull_for()")
        return _frame(MsgType.PULL_FOR, _check_key(client_key, "client key"))

    def _handle_session(self, kind: int, body: bytes) -> FleetClientEvent:
        if self._state != self._FLEET:
            return self._fail(f"message type {kind} before any fleet registration")
        if kind == MsgType.DELIVER_TO:
            if len(body) < KEY_SIZE + 8:
                return self._fail("DELIVER_TO shorter than its key and id")
            key = body[:KEY_SIZE]
            if key not in self.registered_keys:
                return self._fail("DELIVER_TO for a key not registered on this connection")
            return Delivered(_U64.unpack_from(body, KEY_SIZE)[0], body[KEY_SIZE + 8 :], key)
        if kind == MsgType.PULLED_FOR:
            key = body[:KEY_SIZE]
            if len(key) != KEY_SIZE or key not in self.registered_keys:
                return self._fail("PULLED_FOR for a key not registered on this connection")
            messages = _parse_pulled(body, KEY_SIZE)
            if isinstance(messages, str):
                return self._fail(messages)
            return PullResult(messages, key)
        if kind == MsgType.REGISTERED_KEY:
            if len(body) != KEY_SIZE or body not in self.pending:
                return self._fail("REGISTERED_KEY for a key this connection did not register")
            self.pending.discard(body)
            self.registered_keys.add(body)
            return KeyRegistered(body)
        if kind == MsgType.REFUSED_KEY:
            if len(body) < KEY_SIZE:
                return self._fail("REFUSED_KEY shorter than its key")
            key = body[:KEY_SIZE]
            self.pending.discard(key)
            self.registered_keys.discard(key)
            reason = body[KEY_SIZE : KEY_SIZE + MAX_ERROR_TEXT].decode("utf-8", "replace")
            return KeyRefused(key, reason)
        if kind == MsgType.REGISTERED:
            return self._fail("the provider answered a fleet REGISTER as a single one (no fleets)")
        return self._fail(f"unexpected message type {kind} on a fleet connection")
