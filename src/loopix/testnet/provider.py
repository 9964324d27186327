"""A provider of the local testnet: the clients' entry to and exit from the mixnet.

    python -m loopix.testnet.provider --port 9007 --key-file provider.pem \
        --directory http://127.0.0.1:9000 [--inbox inbox.sqlite]

One port serves both sides; the first byte of a connection tells them apart (Nym frames start
with version 7 or 8, clients with the magic "LPX1", see docs/provider-protocol.md).
- Mixnode side: packets are unwrapped like at a mixnode. A `Forward` is forwarded (a provider may
  be a middle hop). A `Final` addressed to all zeros is drop cover: discarded and counted. Any
  other `Final` goes into the inbox of the client whose public key is its destination, if that
  client ever registered here; otherwise it is dropped and counted.
- Client side: a client proves its key (challenge and response), then its SENDs are forwarded to
  the first hop it names, and its inbox is pushed to it (unless it asked not to) and pulled by it.
  Messages leave the inbox only when the owner ACKs them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from loopix.testnet.inbox import Inbox
from loopix.testnet.node import (
    Node,
    NodeConfig,
    NodeLink,
    add_node_arguments,
    load_or_create_secret,
    node_config_from_args,
    run_node,
)
from loopix.wire.b64 import b64url_encode
from loopix.wire.framing import PACKET_SIZES
from loopix.wire.provider_protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PULL_SLOTS,
    MAGIC,
    AckReceived,
    ClientHello,
    ClientRegistered,
    PacketSubmitted,
    ProtocolError,
    ProviderSide,
    PullRequested,
)

__all__ = ["ClientSession", "Provider", "main"]

log = logging.getLogger(__name__)

DROP_COVER = bytes(32)
_VALID_SIZES = frozenset(PACKET_SIZES.values())


class ClientSession:
    """One client connection: I/O around a `ProviderSide` machine.

    `cursor` is the highest message id handed to this connection; unacknowledged messages below
    it are not handed out again on this connection (a new connection starts from zero, so they
    are redelivered after a reconnect). At most `window` pushed messages are unacknowledged.
    """

    def __init__(self, provider: Provider, transport: asyncio.Transport) -> None:
        self.provider = provider
        self.transport = transport
        self.side = ProviderSide(
            provider._secret,
            pull_slots=provider.pull_slots,
            max_message_size=provider.max_message_size,
        )
        self.key: bytes | None = None
        self.cursor = 0
        self.in_flight: set[int] = set()
        self.window = provider.push_window

    def data_received(self, data: bytes) -> None:
        provider = self.provider
        try:
            events = self.side.receive_data(data)
            for event in events:
                if isinstance(event, PacketSubmitted):
                    provider.submit(event.first_hop, event.packet)
                elif isinstance(event, AckReceived):
                    self._ack(event.ids)
                elif isinstance(event, PullRequested):
                    self._pull()
                elif isinstance(event, ClientHello):
                    self.transport.write(self.side.send_challenge())
                elif isinstance(event, ClientRegistered):
                    self._registered(event.client_key)
                elif isinstance(event, ProtocolError):
                    provider.counters.bump("client_errors")
                    log.info("client protocol error: %s", event.reason)
                    self.transport.write(self.side.send_error(event.reason))
                    self.transport.close()
                    break
        except Exception:  # a bug: lose this connection, keep the provider
            log.exception("provider: error in a client session")
            self.transport.abort()
        provider.forwarder.flush()

    def _registered(self, key: bytes) -> None:
        self.key = key
        self.provider.register(key, self)
        self.transport.write(self.side.send_registered())
        if self.side.push:
            self.push_more()

    def _ack(self, ids: tuple[int, ...]) -> None:
        assert self.key is not None
        deleted = self.provider.inbox.delete(self.key, ids)
        self.provider.counters.bump("acked", deleted)
        self.in_flight.difference_update(ids)
        if self.side.push:
            self.push_more()

    def _pull(self) -> None:
        assert self.key is not None
        found = self.provider.inbox.pending(self.key, self.side.pull_slots, self.cursor)
        if found:
            self.cursor = found[-1].id
        self.provider.counters.bump("pulled", len(found))
        self.transport.write(self.side.send_pulled([(m.id, m.message) for m in found]))

    def push_more(self) -> None:
        """Push stored messages, keeping at most `window` unacknowledged."""
        if self.key is None or self.transport.is_closing():
            return
        room = self.window - len(self.in_flight)
        if room <= 0:
            return
        found = self.provider.inbox.pending(self.key, room, self.cursor)
        if not found:
            return
        self.cursor = found[-1].id
        self.in_flight.update(m.id for m in found)
        self.provider.counters.bump("pushed", len(found))
        self.transport.write(b"".join(self.side.send_deliver(m.id, m.message) for m in found))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.key is not None:
            self.provider.unregister_session(self.key, self)


class _PortProtocol(asyncio.Protocol):
    """Sniffs the first byte: "L" starts a client session, anything else a Nym-framed link.

    A connection that has neither sent a byte nor (as a client) registered within
    `HANDSHAKE_TIMEOUT` seconds is closed, so idle sockets cannot pile up.
    """

    HANDSHAKE_TIMEOUT = 10.0

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.transport: asyncio.Transport | None = None
        self.delegate: ClientSession | NodeLink | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.HANDSHAKE_TIMEOUT, self._handshake_expired)

    def _handshake_expired(self) -> None:
        self._timer = None
        d = self.delegate
        if d is None or (isinstance(d, ClientSession) and not d.side.registered):
            self.provider.counters.bump("handshake_timeouts")
            if self.transport is not None:
                self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.delegate is None:
            assert self.transport is not None
            if data[0] == MAGIC[0]:
                self.delegate = ClientSession(self.provider, self.transport)
            else:
                link = NodeLink(self.provider)
                link.connection_made(self.transport)
                self.delegate = link
        self.delegate.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.delegate is not None:
            self.delegate.connection_lost(exc)


class Provider(Node):
    kind = "provider"

    def __init__(
        self,
        config: NodeConfig,
        secret: bytes,
        inbox: Inbox,
        *,
        pull_slots: int = DEFAULT_PULL_SLOTS,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        push_window: int = 128,
    ) -> None:
        super().__init__(config, secret)
        self._secret = secret  # for the sessions' challenge-response; never logged
        self.inbox = inbox
        self.pull_slots = pull_slots
        self.max_message_size = max_message_size
        self.push_window = push_window
        self.registered: set[bytes] = set(inbox.clients())
        self.sessions: dict[bytes, set[ClientSession]] = {}

    def __repr__(self) -> str:
        return f"Provider({self.host}, {self.public_b64})"

    def protocol_factory(self) -> asyncio.Protocol:
        return _PortProtocol(self)

    # --- clients ---

    def register(self, key: bytes, session: ClientSession) -> None:
        if key not in self.registered:
            self.registered.add(key)
            self.inbox.register_client(key)
            self.announce_soon()  # senders look recipients up in the topology
        self.sessions.setdefault(key, set()).add(session)

    def unregister_session(self, key: bytes, session: ClientSession) -> None:
        sessions = self.sessions.get(key)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.sessions[key]

    def submit(self, first_hop: bytes, packet: bytes) -> None:
        """A packet from a client, into the mixnet (no delay here: the route carries them)."""
        self.counters.bump("from_clients")
        if len(packet) not in _VALID_SIZES:
            self.counters.drop("bad_client_packet")
            return
        self.forwarder.send(first_hop, packet)

    # --- last hop ---

    def on_finals(self, finals: list[tuple[bytes, bytes]]) -> None:
        keep = []
        counters = self.counters
        for destination, message in finals:
            if destination == DROP_COVER:
                counters.bump("drop_cover")
            elif destination not in self.registered:
                counters.drop("unknown_recipient")
            elif len(message) > self.max_message_size:
                counters.drop("oversize_message")
            else:
                keep.append((destination, message))
        if not keep:
            return
        self.inbox.store_many(keep)
        counters.bump("stored", len(keep))
        for destination in {d for d, _ in keep}:
            for session in self.sessions.get(destination, ()):
                if session.side.push:
                    session.push_more()

    # --- directory ---

    def presence(self) -> tuple[str, dict[str, Any]]:
        return "/api/presence/mixproviders", {
            "host": self.host,
            "pubKey": self.public_b64,
            "registeredClients": [{"pubKey": b64url_encode(k)} for k in sorted(self.registered)],
        }

    def metrics(self) -> dict[str, Any]:
        return {
            **super().metrics(),
            "clients": len(self.registered),
            "connectedClients": len(self.sessions),
        }

    async def close(self) -> None:
        await super().close()
        self.inbox.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loopix.testnet.provider", description=__doc__)
    add_node_arguments(parser)
    parser.add_argument("--inbox", default=None, help="SQLite file (default: beside the key)")
    parser.add_argument("--pull-slots", type=int, default=DEFAULT_PULL_SLOTS)
    parser.add_argument("--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE_SIZE)
    args = parser.parse_args(argv)
    if not 1 <= args.pull_slots <= 0xFFFF or args.max_message_size < 1:
        parser.error("--pull-slots must be 1..65535 and --max-message-size positive")
    config = node_config_from_args(args)
    inbox_path = Path(args.inbox or Path(args.key_file).with_name("inbox.sqlite"))

    def make() -> Provider:
        secret = load_or_create_secret(args.key_file)
        return Provider(
            config,
            secret,
            Inbox(inbox_path),
            pull_slots=args.pull_slots,
            max_message_size=args.max_message_size,
        )

    return run_node(make, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
