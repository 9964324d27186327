"""The provider's end of a client connection, sans-IO: bytes in, events out; `send_*` give bytes.

Every state change goes through `states.transition` and PROVIDER_TRANSITIONS; this module adds what
a table cannot say (the proof of key ownership, the fleet's per-key bookkeeping, body checks).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Sequence
from typing import ClassVar

from nacl.bindings import crypto_scalarmult

from loopix.wire.errors import ProtocolStateError

from .codec import (
    ADDRESS_SIZE,
    DEFAULT_MAX_FLEET_KEYS,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PULL_SLOTS,
    FLAG_FLEET,
    FLAG_NO_PUSH,
    KEY_SIZE,
    MAGIC,
    NONCE_SIZE,
    PROOF_SIZE,
    PROVIDER_MAX_FRAME,
    MsgType,
    check_key,
    encode_deliver,
    encode_keys,
    error_text,
    frame,
    parse_ack,
    parse_keys,
    pulled_body,
    registration_proof,
)
from .events import (
    AckReceived,
    ClientHello,
    ClientRegistered,
    ClientUnregistered,
    FleetClientRefused,
    FleetClientRegistered,
    PacketSubmitted,
    ProviderEvent,
    PullRequested,
)
from .machine import Machine
from .states import (
    MAGIC_SEEN,
    PROVIDER_TRANSITIONS,
    REGISTER_FLEET,
    ProviderState,
    Trigger,
    allowed,
)

__all__ = ["ProviderSide"]

_S = ProviderState
_FLEET = ProviderState.FLEET
_REGISTER = MsgType.REGISTER
_REQUESTS = (MsgType.SEND, MsgType.ACK, MsgType.PULL, MsgType.PULL_FOR, MsgType.UNREGISTER)
_FROM_CLIENT = {int(t): t for t in (MsgType.REGISTER, *_REQUESTS)}
"""The message types a client sends: any other type from a client closes the connection."""


def _refusal(state: ProviderState, kind: int) -> str:
    """Why a client message the table does not allow in `state` closes the connection."""
    if state is _S.REGISTERED:
        if kind == MsgType.REGISTER:
            return "already registered"
        if kind == MsgType.UNREGISTER:
            return "UNREGISTER is for fleet connections (a single one ends by closing)"
        return f"unexpected message type {kind} from a client"
    if state is _S.FLEET:
        if kind == MsgType.PULL:
            return "PULL on a fleet connection: use PULL_FOR"
        if kind == MsgType.REGISTER:
            return "a fleet connection takes only fleet REGISTERs (65 bytes, FLAG_FLEET)"
        return f"unexpected message type {kind} from a fleet client"
    if kind in _REQUESTS:
        return "not registered: register before sending or reading"
    if kind == MsgType.REGISTER:
        return "REGISTER before the challenge"
    return f"unexpected message type {kind} from a client"


class ProviderSide(Machine):
    """The provider's view of one client connection (after it saw the first byte 0x4C).

    Flow: `receive_data` → `ClientHello` → `send_challenge()`; → `ClientRegistered` →
    `send_registered()`; then `PacketSubmitted` / `AckReceived` / `PullRequested` events, and
    `send_deliver` / `send_pulled` at will. On `ProtocolError` write `send_error(reason)`, close.

    Fleet connections: `FleetClientRegistered` → `send_registered_key(key)`, `FleetClientRefused`
    → `send_refused_key(key, reason)`, any number of times; `PullRequested(client_key)` →
    `send_pulled_for`; pushes with `send_deliver_to`; `ClientUnregistered(keys)` →
    `send_unregistered(keys)`. An ACK may name ids of any recipient: the I/O
    layer deletes only those whose recipient is in `client_keys`.
    """

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
        self._secret = check_key(provider_secret, "provider secret")
        super().__init__(PROVIDER_TRANSITIONS, _S.AWAIT_MAGIC, _S.CLOSED, max_frame)
        self.pull_slots = pull_slots
        self.max_message_size = max_message_size
        self.max_fleet_keys = max_fleet_keys
        self._magic = b""
        self._nonce = b""
        self.client_key: bytes | None = None
        self.push = True
        self._keys: set[bytes] = set()
        self._fleet = False

    def __repr__(self) -> str:  # the secret stays out of logs
        if self.state is _S.FLEET:
            return f"ProviderSide(state={self.state.value}, fleet of {len(self._keys)} keys)"
        return f"ProviderSide(state={self.state.value}, client={self.client_key!r})"

    @property
    def registered(self) -> bool:
        """A single registration, or a fleet connection with at least one key."""
        return self.state is _S.REGISTERED or (self.state is _S.FLEET and bool(self._keys))

    @property
    def fleet(self) -> bool:
        """The connection is (or, once closed, was) a fleet connection: its first REGISTER
        carried FLAG_FLEET. Stays true after close, so the I/O layer can drop its routes."""
        return self._fleet

    @property
    def client_keys(self) -> set[bytes]:
        """Keys registered on this connection (one on a single connection); do not modify."""
        return self._keys

    # --- input ---

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ProviderEvent]:
        """Events for the bytes just read (empty once closed)."""
        if self.state is _S.CLOSED or not data:
            return []
        events: list[ProviderEvent] = []
        if self.state is _S.AWAIT_MAGIC:
            need = len(MAGIC) - len(self._magic)
            self._magic += bytes(data[:need])
            data = data[need:]
            if not MAGIC.startswith(self._magic):
                return [self._fail("not a loopix client connection (bad magic)")]
            if len(self._magic) < len(MAGIC):
                return []
            self._move(MAGIC_SEEN)
            events.append(ClientHello())
            if not data:
                return events
        return self._read(data, events)

    def _handle(self, kind: int, body: bytes) -> ProviderEvent | None:
        trigger: MsgType | Trigger | None = _FROM_CLIENT.get(kind)
        if trigger is None:
            return self._fail(_refusal(self.state, kind))
        if (
            trigger is _REGISTER
            and len(body) == KEY_SIZE + PROOF_SIZE + 1
            and body[-1] & FLAG_FLEET
        ):
            trigger = REGISTER_FLEET
        after = allowed(PROVIDER_TRANSITIONS, self.state, trigger)
        if after is None:
            return self._fail(_refusal(self.state, kind))
        return self._ON_MESSAGE[trigger](self, body, after)

    # one handler per client message the table allowed; `after` is the state it leads to

    def _on_send(self, body: bytes, after: ProviderState) -> ProviderEvent:
        if after is _FLEET and not self._keys:
            return self._fail("not registered: no key of this fleet connection is registered")
        if len(body) <= ADDRESS_SIZE:
            return self._fail("SEND without a packet")
        return PacketSubmitted(body[:ADDRESS_SIZE], body[ADDRESS_SIZE:])

    def _on_ack(self, body: bytes, after: ProviderState) -> ProviderEvent:
        ids = parse_ack(body)
        return self._fail(ids) if isinstance(ids, str) else AckReceived(ids)

    def _on_pull(self, body: bytes, after: ProviderState) -> ProviderEvent:
        return PullRequested() if not body else self._fail("PULL carries no body")

    def _on_pull_for(self, body: bytes, after: ProviderState) -> ProviderEvent:
        if len(body) != KEY_SIZE:
            return self._fail(f"PULL_FOR body must be {KEY_SIZE} bytes, got {len(body)}")
        if body not in self._keys:
            return FleetClientRefused(body, "not registered on this connection")
        return PullRequested(body)

    def _on_unregister(self, body: bytes, after: ProviderState) -> ProviderEvent | None:
        keys = parse_keys(body, "UNREGISTER")
        if isinstance(keys, str):
            return self._fail(keys)
        mine = tuple(dict.fromkeys(k for k in keys if k in self._keys))
        # keys not (or no longer) registered here are ignored: another connection may hold them
        return ClientUnregistered(mine) if mine else None

    def _on_register(self, body: bytes, after: ProviderState) -> ProviderEvent:
        return self._register(body)

    def _on_register_fleet(self, body: bytes, after: ProviderState) -> ProviderEvent:
        if self.state is not after:  # the first fleet REGISTER makes this a fleet connection
            self.state = after
            self._fleet = True
            self.push = not body[-1] & FLAG_NO_PUSH
        return self._register_fleet(body)

    _ON_MESSAGE: ClassVar[dict[MsgType | Trigger, Callable[..., ProviderEvent | None]]] = {
        MsgType.SEND: _on_send,
        MsgType.ACK: _on_ack,
        MsgType.PULL: _on_pull,
        MsgType.PULL_FOR: _on_pull_for,
        MsgType.UNREGISTER: _on_unregister,
        MsgType.REGISTER: _on_register,
        REGISTER_FLEET: _on_register_fleet,
    }

    def _register(self, body: bytes) -> ProviderEvent:
        if len(body) not in (KEY_SIZE + PROOF_SIZE, KEY_SIZE + PROOF_SIZE + 1):
            return self._fail(f"REGISTER body must be 64 or 65 bytes, got {len(body)}")
        client_key, proof = body[:KEY_SIZE], body[KEY_SIZE : KEY_SIZE + PROOF_SIZE]
        flags = body[KEY_SIZE + PROOF_SIZE] if len(body) > KEY_SIZE + PROOF_SIZE else 0
        try:
            shared = crypto_scalarmult(self._secret, client_key)
        except Exception:  # libsodium refuses low-order points (all-zero shared secret)
            return self._fail("registration refused: invalid client key")
        expected = registration_proof(shared, self._nonce, client_key)
        if not hmac.compare_digest(expected, proof):
            return self._fail("registration refused: bad proof of key ownership")
        self.state = _S.REGISTERED
        self.client_key = client_key
        self._keys = {client_key}
        self.push = not flags & FLAG_NO_PUSH
        return ClientRegistered(client_key, self.push)

    def _register_fleet(self, body: bytes) -> ProviderEvent:
        """One identity of a fleet: refusals name the key and keep the connection open."""
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

    # --- output ---

    def send_challenge(self, nonce: bytes | None = None) -> bytes:
        """The CHALLENGE (a fresh random nonce unless one is given, for tests)."""
        nonce = os.urandom(NONCE_SIZE) if nonce is None else bytes(nonce)
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        self._move(MsgType.CHALLENGE)
        self._nonce = nonce
        return frame(MsgType.CHALLENGE, nonce)

    def send_registered(self) -> bytes:
        self._move(MsgType.REGISTERED)
        return frame(MsgType.REGISTERED)

    def send_error(self, text: str) -> bytes:
        """An ERROR message; the machine is closed afterwards (close the connection)."""
        self._move(MsgType.ERROR)
        return frame(MsgType.ERROR, error_text(text))

    def send_deliver(self, message_id: int, message: bytes) -> bytes:
        """Push one stored message."""
        self._move(MsgType.DELIVER)
        return encode_deliver(message_id, message)

    def send_pulled(self, messages: Sequence[tuple[int, bytes]]) -> bytes:
        """PULLED with `messages` (at most `pull_slots`) and dummies in the remaining slots."""
        self._move(MsgType.PULLED)
        return frame(MsgType.PULLED, pulled_body(messages, self.pull_slots, self.max_message_size))

    # --- either kind: one identity is a fleet of one ---

    def _own_key(self, what: str, client_key: bytes) -> None:
        if client_key != self.client_key:
            raise ProtocolStateError(f"{what} for a key this single connection did not register")

    def send_delivery(self, client_key: bytes, message_id: int, message: bytes) -> bytes:
        """Push one stored message to `client_key`: DELIVER_TO on a fleet connection, DELIVER on a
        single one (whose key `client_key` must be)."""
        if self.state is _S.FLEET:
            return self.send_deliver_to(client_key, message_id, message)
        self._own_key("send_delivery()", client_key)
        return self.send_deliver(message_id, message)

    def send_pull_answer(self, client_key: bytes, messages: Sequence[tuple[int, bytes]]) -> bytes:
        """Answer `PullRequested` for `client_key`: PULLED_FOR on a fleet connection, PULLED on a
        single one (whose key `client_key` must be)."""
        if self.state is _S.FLEET:
            return self.send_pulled_for(client_key, messages)
        self._own_key("send_pull_answer()", client_key)
        return self.send_pulled(messages)

    # --- fleet connections ---

    def _need_key(self, trigger: MsgType, key: bytes) -> None:
        self._move(trigger)
        if key not in self._keys:
            raise ProtocolStateError(f"{trigger.name} for a key not registered on this connection")

    def send_registered_key(self, client_key: bytes) -> bytes:
        """REGISTERED_KEY answering a `FleetClientRegistered`."""
        self._need_key(MsgType.REGISTERED_KEY, client_key)
        return frame(MsgType.REGISTERED_KEY, client_key)

    def send_refused_key(self, client_key: bytes, reason: str) -> bytes:
        """REFUSED_KEY; the key leaves `client_keys` (if it was there) and the connection stays.

        Also how a provider takes a key away when a newer connection registers it."""
        self._move(MsgType.REFUSED_KEY)
        key = check_key(client_key, "client key")
        self._keys.discard(key)
        return frame(MsgType.REFUSED_KEY, key + error_text(reason))

    def send_unregistered(self, client_keys: Sequence[bytes]) -> bytes:
        """UNREGISTERED answering a `ClientUnregistered`; the keys leave `client_keys`."""
        self._move(MsgType.UNREGISTERED)
        keys = [check_key(k, "client key") for k in client_keys]
        for key in keys:
            self._keys.discard(key)
        return encode_keys(MsgType.UNREGISTERED, keys) if keys else b""

    def send_deliver_to(self, client_key: bytes, message_id: int, message: bytes) -> bytes:
        """Push one stored message to one identity of the fleet."""
        self._need_key(MsgType.DELIVER_TO, client_key)
        return encode_deliver(message_id, message, client_key)

    def send_pulled_for(self, client_key: bytes, messages: Sequence[tuple[int, bytes]]) -> bytes:
        """PULLED_FOR: the key, then the same fixed-size body as PULLED."""
        self._need_key(MsgType.PULLED_FOR, client_key)
        body = pulled_body(messages, self.pull_slots, self.max_message_size)
        return frame(MsgType.PULLED_FOR, client_key + body)
