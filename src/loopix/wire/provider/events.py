"""What the provider protocol's state machines return: one frozen Struct per event.

Errors share one field name, `reason`: `ProtocolError` (the peer broke the protocol, see
wire/errors.py), `ProviderError` (the provider's ERROR message), `FleetClientRefused` and
`KeyRefused` (one identity of a fleet refused). The I/O layers dispatch on them with `match`.
"""

from __future__ import annotations

import msgspec

from loopix.wire.errors import ProtocolError

__all__ = [
    "AckReceived",
    "ChallengeReceived",
    "ClientEvent",
    "ClientHello",
    "ClientRegistered",
    "ClientUnregistered",
    "Delivered",
    "FleetClientEvent",
    "FleetClientRefused",
    "FleetClientRegistered",
    "InboxMessage",
    "KeyRefused",
    "KeyRegistered",
    "KeysUnregistered",
    "PacketSubmitted",
    "ProtocolError",
    "ProviderError",
    "ProviderEvent",
    "PullRequested",
    "PullResult",
    "RegistrationAccepted",
]

# --- what the provider's machine returns ----------------------------------------------------------


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


class ClientUnregistered(msgspec.Struct, frozen=True, gc=False):
    """A fleet client gives up these keys for good (they were registered on this connection);
    forget them here and answer `send_unregistered(keys)`."""

    client_keys: tuple[bytes, ...]


ProviderEvent = (
    ProtocolError
    | ClientHello
    | ClientRegistered
    | PacketSubmitted
    | AckReceived
    | PullRequested
    | FleetClientRegistered
    | FleetClientRefused
    | ClientUnregistered
)

# --- what the client machines return -------------------------------------------------------------


class InboxMessage(msgspec.Struct, frozen=True, gc=False):
    """A stored message as the provider hands it out; ACK `id` once it is safe."""

    id: int
    message: bytes


class ChallengeReceived(msgspec.Struct, frozen=True, gc=False):
    """Answer with `send_register()` (or `send_register_many()` on a fleet connection)."""

    nonce: bytes


class RegistrationAccepted(msgspec.Struct, frozen=True, gc=False):
    """The provider accepted the registration."""


class ProviderError(msgspec.Struct, frozen=True, gc=False):
    """The provider refused something and is closing the connection."""

    reason: str


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


class KeysUnregistered(msgspec.Struct, frozen=True, gc=False):
    """The provider forgot these identities (as asked with `send_unregister`): no more mail for
    them on this connection, and their registration and stored messages are gone."""

    client_keys: tuple[bytes, ...]


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
    | KeysUnregistered
    | ProviderError
    | Delivered
    | PullResult
)
