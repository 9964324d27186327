"""Client ↔ provider protocol, sans-IO: state machines that turn bytes into events and back.

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
    client → provider  UNREGISTER      client_pk(32) ... (identities leaving for good)
    provider → client  UNREGISTERED    client_pk(32) ... (those it forgot, with their mail)

SEND and ACK are unchanged (message ids are unique per provider; the provider deletes only ids
whose recipient is registered on the connection that ACKs). `FleetClientSide` is the client end.

The modules: events.py (what the machines return), codec.py (bytes), states.py (the transition
tables and their one lookup), provider.py and client.py (the machines). Errors follow wire/'s rule:
a malformed or out-of-order message from the peer becomes a `ProtocolError` event and the machine
refuses everything after it (the I/O layer sends ERROR and closes); a `send_*` call in the wrong
state raises `ProtocolStateError`. The full specification is docs/provider-protocol.md.
"""

from loopix.wire.errors import ProtocolError, ProtocolStateError

from .client import ClientSide, FleetClientSide
from .codec import (
    ADDRESS_SIZE,
    CLIENT_MAX_FRAME,
    DEFAULT_MAX_FLEET_KEYS,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PULL_SLOTS,
    FLAG_FLEET,
    FLAG_NO_PUSH,
    KEY_SIZE,
    MAGIC,
    MAX_ACK_IDS,
    MAX_UNREGISTER_KEYS,
    NONCE_SIZE,
    PROVIDER_MAX_FRAME,
    SEND_OVERHEAD,
    MsgType,
    encode_send,
    registration_proof,
    send_header,
)
from .events import (
    AckReceived,
    ChallengeReceived,
    ClientEvent,
    ClientHello,
    ClientRegistered,
    ClientUnregistered,
    Delivered,
    FleetClientEvent,
    FleetClientRefused,
    FleetClientRegistered,
    InboxMessage,
    KeyRefused,
    KeyRegistered,
    KeysUnregistered,
    PacketSubmitted,
    ProviderError,
    ProviderEvent,
    PullRequested,
    PullResult,
    RegistrationAccepted,
)
from .provider import ProviderSide
from .states import ClientState, ProviderState, TransitionError

__all__ = [
    "ADDRESS_SIZE",
    "CLIENT_MAX_FRAME",
    "DEFAULT_MAX_FLEET_KEYS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_PULL_SLOTS",
    "FLAG_FLEET",
    "FLAG_NO_PUSH",
    "KEY_SIZE",
    "MAGIC",
    "MAX_ACK_IDS",
    "MAX_UNREGISTER_KEYS",
    "NONCE_SIZE",
    "PROVIDER_MAX_FRAME",
    "SEND_OVERHEAD",
    "AckReceived",
    "ChallengeReceived",
    "ClientEvent",
    "ClientHello",
    "ClientRegistered",
    "ClientSide",
    "ClientState",
    "ClientUnregistered",
    "Delivered",
    "FleetClientEvent",
    "FleetClientRefused",
    "FleetClientRegistered",
    "FleetClientSide",
    "InboxMessage",
    "KeyRefused",
    "KeyRegistered",
    "KeysUnregistered",
    "MsgType",
    "PacketSubmitted",
    "ProtocolError",
    "ProtocolStateError",
    "ProviderError",
    "ProviderEvent",
    "ProviderSide",
    "ProviderState",
    "PullRequested",
    "PullResult",
    "RegistrationAccepted",
    "TransitionError",
    "encode_send",
    "registration_proof",
    "send_header",
]
