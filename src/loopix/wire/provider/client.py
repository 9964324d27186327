"""The client's ends of a provider connection, sans-IO: one identity (`ClientSide`) or many over
one connection (`FleetClientSide`). Every state change goes through `states.transition`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableSet, Sequence

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base

from loopix.sphinx._sphinx_c import ffi, lib

from .codec import (
    CLIENT_MAX_FRAME,
    FLAG_FLEET,
    FLAG_NO_PUSH,
    KEY_SIZE,
    MAGIC,
    MAX_ERROR_TEXT,
    NONCE_SIZE,
    PROOF_SIZE,
    MsgType,
    check_key,
    encode_ack,
    encode_keys,
    encode_send,
    frame,
    parse_deliver,
    parse_keys,
    parse_pulled,
    registration_proof,
)
from .events import (
    ChallengeReceived,
    ClientEvent,
    Delivered,
    FleetClientEvent,
    KeyRefused,
    KeyRegistered,
    KeysUnregistered,
    ProviderError,
    PullResult,
    RegistrationAccepted,
)
from .machine import Machine
from .states import (
    CLIENT_TRANSITIONS,
    FLEET_CLIENT_TRANSITIONS,
    MAGIC_SEEN,
    REGISTER_FLEET,
    ClientState,
    Trigger,
    allowed,
    transition,
)

__all__ = ["ClientSide", "FleetClientSide"]

_S = ClientState
_FROM_PROVIDER = {
    int(t): t
    for t in (
        MsgType.CHALLENGE,
        MsgType.REGISTERED,
        MsgType.ERROR,
        MsgType.DELIVER,
        MsgType.PULLED,
        MsgType.REGISTERED_KEY,
        MsgType.REFUSED_KEY,
        MsgType.DELIVER_TO,
        MsgType.PULLED_FOR,
        MsgType.UNREGISTERED,
    )
}
"""The message types a provider sends: any other type from a provider closes the connection."""


class _ClientBase(Machine):
    """What both client ends share: the hello and challenge, SEND and ACK, and event decoding."""

    _TABLE: Mapping[ClientState, Mapping[MsgType | Trigger, ClientState]]

    def __init__(self, provider_key: bytes, push: bool, max_frame: int) -> None:
        super().__init__(self._TABLE, _S.NEW, _S.CLOSED, max_frame)
        self.provider_key = check_key(provider_key, "provider key")
        self.push = push
        self._nonce = b""

    def send_hello(self) -> bytes:
        self._move(MAGIC_SEEN)
        return MAGIC

    def send_packet(self, first_hop: bytes, packet: bytes | bytearray | memoryview) -> bytes:
        self._move(MsgType.SEND)
        return encode_send(first_hop, packet)

    def send_packets(self, items: Iterable[tuple[bytes, bytes | bytearray | memoryview]]) -> bytes:
        """Many SENDs in one buffer, for one write."""
        self._move(MsgType.SEND)
        return b"".join([encode_send(hop, packet) for hop, packet in items])

    def send_ack(self, ids: Sequence[int]) -> bytes:
        """ACK messages (split into several ACKs above `MAX_ACK_IDS`)."""
        self._move(MsgType.ACK)
        return encode_ack(ids)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list:
        """Events for the bytes just read (empty once closed)."""
        if self.state is _S.CLOSED or not data:
            return []
        return self._read(data, [])

    def _handle(self, kind: int, body: bytes):
        trigger = _FROM_PROVIDER.get(kind)
        if trigger is MsgType.ERROR:
            self.state = _S.CLOSED
            return ProviderError(body[:MAX_ERROR_TEXT].decode("utf-8", "replace"))
        if trigger is MsgType.CHALLENGE:
            if self.state is not _S.HELLO_SENT:
                return self._fail("unexpected CHALLENGE")
            if len(body) != NONCE_SIZE:
                return self._fail(f"CHALLENGE nonce must be {NONCE_SIZE} bytes")
            self._nonce = body
            self.state = _S.CHALLENGED
            return ChallengeReceived(body)
        if trigger is None:
            return self._fail(self._refusal(kind))
        after = allowed(self._TABLE, self.state, trigger)
        if after is None:
            return self._fail(self._refusal(kind))
        return self._handle_session(trigger, body, after)

    def _refusal(self, kind: int) -> str:
        raise NotImplementedError

    def _handle_session(self, trigger: MsgType, body: bytes, after: ClientState):
        raise NotImplementedError


class ClientSide(_ClientBase):
    """The client's end of a provider connection.

    Flow: write `send_hello()`; on `ChallengeReceived` write `send_register()`; after that the
    client may pipeline `send_packets` / `send_pull` / `send_ack` (the provider handles them in
    order, after the registration); `RegistrationAccepted` confirms it. Pushed messages arrive as
    `Delivered`, pulls as `PullResult`; ACK each id once the message is safely kept.
    """

    _TABLE = CLIENT_TRANSITIONS

    def __init__(
        self,
        client_secret: bytes,
        provider_key: bytes,
        *,
        push: bool = True,
        max_frame: int = CLIENT_MAX_FRAME,
    ) -> None:
        self._secret = check_key(client_secret, "client secret")
        super().__init__(provider_key, push, max_frame)
        self.client_key = crypto_scalarmult_base(self._secret)

    def __repr__(self) -> str:  # the secret stays out of logs
        return f"ClientSide(state={self.state.value}, client={self.client_key.hex()[:16]}...)"

    @property
    def registered(self) -> bool:
        return self.state is _S.REGISTERED

    def send_register(self) -> bytes:
        """REGISTER answering the challenge."""
        self._move(MsgType.REGISTER)
        shared = crypto_scalarmult(self._secret, self.provider_key)
        proof = registration_proof(shared, self._nonce, self.client_key)
        body = self.client_key + proof + (b"" if self.push else bytes((FLAG_NO_PUSH,)))
        return frame(MsgType.REGISTER, body)

    def send_pull(self) -> bytes:
        self._move(MsgType.PULL)
        return frame(MsgType.PULL)

    def _refusal(self, kind: int) -> str:
        if kind == MsgType.REGISTERED:
            return "unexpected REGISTERED"
        if self.state is not _S.REGISTERED:
            return f"message type {kind} before registration completed"
        return f"unexpected message type {kind} from a provider"

    def _handle_session(self, trigger: MsgType, body: bytes, after: ClientState) -> ClientEvent:
        match trigger:
            case MsgType.REGISTERED:
                if body:
                    return self._fail("unexpected REGISTERED")
                self.state = after
                return RegistrationAccepted()
            case MsgType.DELIVER:
                delivered = parse_deliver(body)
                if delivered is None:
                    return self._fail("DELIVER shorter than its id")
                return Delivered(*delivered)
            case _:  # PULLED
                messages = parse_pulled(body)
                if isinstance(messages, str):
                    return self._fail(messages)
                return PullResult(messages)


def _shared_secret(secret: bytes, provider_key: bytes) -> bytes:
    """X25519(secret, provider_key), as crypto_scalarmult computes it, through the C core's table of
    the provider key's multiples (built once per key and thread): a fleet registers thousands of
    identities at one provider, at about a third of the cost of a ladder each."""
    k = bytearray(secret)
    k[0] &= 248  # RFC 7748 clamping: the table path takes the scalar as given
    k[31] = (k[31] & 127) | 64
    out = ffi.new("uint8_t[32]")
    if lib.lx_x25519_keyed(out, bytes(k), provider_key) == 0:
        return ffi.buffer(out)[:]
    # a key the table path refuses (not of prime order): the ladder decides, as before
    return crypto_scalarmult(secret, provider_key)


class FleetClientSide(_ClientBase):
    """The client's end of a fleet connection: many identities over one provider connection.

    Flow: write `send_hello()`; on `ChallengeReceived` write `send_register_many(secrets)` (and
    again whenever identities join; each costs two X25519 here and one at the provider). Every key
    is answered by `KeyRegistered` or `KeyRefused`; a refusal ends nothing but that identity.
    Pushed messages arrive as `Delivered(id, message, client_key)`, pulls (`send_pull_for`) as
    `PullResult(messages, client_key)`. Identities leaving for good: `send_unregister(keys)`,
    answered by `KeysUnregistered`. SEND and ACK are as on a single connection and may be
    pipelined after the first `send_register_many` (the provider handles them in order).
    One identity is simply a fleet of one.

    Memory: one 32-byte key per identity in `registered_keys` (or `pending` until answered),
    unless the caller gives a more compact set-like.
    A provider without fleet support answers REGISTERED; that becomes a `ProtocolError`.
    """

    _TABLE = FLEET_CLIENT_TRANSITIONS

    def __init__(
        self,
        provider_key: bytes,
        *,
        push: bool = True,
        max_frame: int = CLIENT_MAX_FRAME,
        registered: MutableSet[bytes] | None = None,
    ) -> None:
        super().__init__(provider_key, push, max_frame)
        self._flags = bytes((FLAG_FLEET | (0 if push else FLAG_NO_PUSH),))
        self.pending: set[bytes] = set()
        """Keys sent in a REGISTER and not answered yet."""
        self.registered_keys: MutableSet[bytes] = set() if registered is None else registered
        """Keys the provider accepted on this connection (and has not taken back). `registered`:
        an empty set-like to keep them in instead (a large fleet keeps a flag per identity)."""

    def __repr__(self) -> str:
        return (
            f"FleetClientSide(state={self.state.value}, registered={len(self.registered_keys)}, "
            f"pending={len(self.pending)})"
        )

    def send_register_many(self, secrets: Iterable[bytes | tuple[bytes, bytes]]) -> bytes:
        """REGISTERs (FLAG_FLEET) for these X25519 secret keys, in one buffer for one write.

        An item may be a `(secret, public)` pair, which saves the X25519 that derives the public
        key (a wrong public key only earns a `KeyRefused`). Keys already registered or pending on
        this connection are skipped (b"" if none is left). Raises ValueError for a key that is not
        32 bytes, before anything is recorded.
        """
        after = transition(self._TABLE, self.state, REGISTER_FLEET)
        nonce, provider_key, flags = self._nonce, self.provider_key, self._flags
        head = frame(MsgType.REGISTER, bytes(KEY_SIZE + PROOF_SIZE + 1))[:5]
        out: list[bytes] = []
        keys: list[bytes] = []
        seen = set()
        for item in secrets:
            if isinstance(item, tuple):
                secret = check_key(item[0], "client secret")
                key = check_key(item[1], "client public key")
            else:
                secret = check_key(item, "client secret")
                key = crypto_scalarmult_base(secret)
            if key in self.registered_keys or key in self.pending or key in seen:
                continue
            seen.add(key)
            proof = registration_proof(_shared_secret(secret, provider_key), nonce, key)
            out.append(head + key + proof + flags)
            keys.append(key)
        self.pending.update(keys)
        self.state = after
        return b"".join(out)

    def send_pull_for(self, client_key: bytes) -> bytes:
        """PULL_FOR one identity; a key not registered here is answered by `KeyRefused`."""
        self._move(MsgType.PULL_FOR)
        return frame(MsgType.PULL_FOR, check_key(client_key, "client key"))

    def send_unregister(self, client_keys: Iterable[bytes]) -> bytes:
        """UNREGISTER for those of `client_keys` registered (or pending) on this connection, b""
        if none is: the provider forgets them and their stored mail, and answers
        `KeysUnregistered`. Mail pushed for them before that still arrives (and may be ACKed)."""
        keys = [
            k
            for k in dict.fromkeys(check_key(k, "client key") for k in client_keys)
            if k in self.registered_keys or k in self.pending
        ]
        if not keys:
            return b""
        self._move(MsgType.UNREGISTER)
        return encode_keys(MsgType.UNREGISTER, keys)

    def _refusal(self, kind: int) -> str:
        if self.state is not _S.FLEET:
            return f"message type {kind} before any fleet registration"
        if kind == MsgType.REGISTERED:
            return "the provider answered a fleet REGISTER as a single one (no fleets)"
        return f"unexpected message type {kind} on a fleet connection"

    def _handle_session(
        self, trigger: MsgType, body: bytes, after: ClientState
    ) -> FleetClientEvent:
        key = body[:KEY_SIZE]
        match trigger:
            case MsgType.DELIVER_TO:
                delivered = parse_deliver(body, KEY_SIZE)
                if delivered is None:
                    return self._fail("DELIVER_TO shorter than its key and id")
                if key not in self.registered_keys:
                    return self._fail("DELIVER_TO for a key not registered on this connection")
                return Delivered(*delivered, key)
            case MsgType.PULLED_FOR:
                if len(key) != KEY_SIZE or key not in self.registered_keys:
                    return self._fail("PULLED_FOR for a key not registered on this connection")
                messages = parse_pulled(body, KEY_SIZE)
                if isinstance(messages, str):
                    return self._fail(messages)
                return PullResult(messages, key)
            case MsgType.REGISTERED_KEY:
                if len(body) != KEY_SIZE or body not in self.pending:
                    return self._fail("REGISTERED_KEY for a key this connection did not register")
                self.pending.discard(body)
                self.registered_keys.add(body)
                return KeyRegistered(body)
            case MsgType.UNREGISTERED:
                keys = parse_keys(body, "UNREGISTERED")
                if isinstance(keys, str):
                    return self._fail(keys)
                if any(k not in self.registered_keys for k in keys):
                    return self._fail("UNREGISTERED for a key not registered on this connection")
                self.registered_keys.difference_update(keys)
                return KeysUnregistered(keys)
            case _:  # REFUSED_KEY
                if len(body) < KEY_SIZE:
                    return self._fail("REFUSED_KEY shorter than its key")
                self.pending.discard(key)
                self.registered_keys.discard(key)
                reason = body[KEY_SIZE : KEY_SIZE + MAX_ERROR_TEXT].decode("utf-8", "replace")
                return KeyRefused(key, reason)
