"""Fleet connections at the provider: many identities on one connection.

The first part drives the provider's session code in process, over a fake transport (no sockets):
batched registration, routing, ACK ownership, takeover, presence. The second runs a real testnet
(directory, 3 mixnodes, a provider as processes) and a fleet of 200 identities over one TCP
connection. Waiting is always polling against a deadline.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

import msgspec
import pytest

from conftest import DEADLINE, make_testnet_fixture, wait_until, wait_until_async
from loopix.csprng import Csprng
from loopix.sphinx import Hop, build_packet, keypair
from loopix.testnet.directory import ProviderPresence, Registry
from loopix.testnet.inbox import Inbox
from loopix.testnet.launcher import Testnet
from loopix.testnet.node import NodeConfig
from loopix.testnet.provider import ClientSession, Provider
from loopix.topology import encode_topology, parse_topology
from loopix.wire.framing import encode_frame
from loopix.wire.provider import (
    ChallengeReceived,
    Delivered,
    FleetClientSide,
    KeyRefused,
    KeyRegistered,
    ProtocolError,
    ProviderError,
    PullResult,
)

# --- in process -----------------------------------------------------------------------------------


class FakeTransport:
    """What a ClientSession needs of an asyncio transport; keeps what is written."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closing = False
        self.reading = True
        self.pauses = 0

    def write(self, data: bytes) -> None:
        assert not self.closing
        self.data += data

    def take(self) -> bytes:
        out, self.data = bytes(self.data), bytearray()
        return out

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return 0  # everything written is taken at once


def make_provider(tmp_path, **kw: Any) -> Provider:
    secret, _ = keypair()
    return Provider(NodeConfig(port=9), secret, Inbox(tmp_path / "inbox.sqlite"), **kw)


async def settle() -> None:
    """Let sliced input and timers scheduled with call_soon run."""
    for _ in range(200):
        await asyncio.sleep(0)


class Conn:
    """A FleetClientSide wired to a ClientSession through a FakeTransport."""

    def __init__(self, provider: Provider, push: bool = True) -> None:
        self.transport = FakeTransport()
        self.session = ClientSession(provider, self.transport)  # type: ignore[arg-type]
        self.client = FleetClientSide(provider.public_key, push=push)
        self.session.data_received(self.client.send_hello())
        (event,) = self.client.receive_data(self.transport.take())
        assert isinstance(event, ChallengeReceived)

    async def send(self, data: bytes) -> list[Any]:
        self.session.data_received(data)
        await settle()
        return self.events()

    def events(self) -> list[Any]:
        return self.client.receive_data(self.transport.take())

    async def register(self, secrets: Iterable[bytes]) -> list[Any]:
        return await self.send(self.client.send_register_many(secrets))

    def close(self) -> None:
        self.transport.closing = True
        self.session.connection_lost(None)


def pairs(n: int) -> list[tuple[bytes, bytes]]:
    return [keypair() for _ in range(n)]


def test_one_transaction_per_read_and_fair_slicing(tmp_path):
    async def main():
        provider = make_provider(tmp_path)
        statements: list[str] = []
        provider.inbox._db.set_trace_callback(statements.append)
        conn = Conn(provider)
        ids = pairs(1000)
        data = conn.client.send_register_many(sk for sk, _ in ids[:200])  # 14 KiB: one slice
        events = await conn.send(data)
        assert events == [KeyRegistered(pk) for _, pk in ids[:200]]
        assert sum(s == "COMMIT" for s in statements) == 1
        statements.clear()
        events = await conn.register(sk for sk, _ in ids[200:])  # 57 KiB: four slices
        assert events == [KeyRegistered(pk) for _, pk in ids[200:]]
        commits = sum(s == "COMMIT" for s in statements)
        assert 1 <= commits <= 4, commits
        assert conn.transport.pauses == 1 and conn.transport.reading
        assert provider.inbox.clients() == sorted(pk for _, pk in ids)
        assert len(provider.fleet_routes) == 1000
        assert provider.metrics()["fleetClients"] == 1000
        conn.close()
        assert not provider.fleet_routes and not provider.fleet_sessions
        # a fleet connection closed for a protocol error leaves no routes behind either
        bad = Conn(provider)
        await bad.register([ids[0][0]])
        assert provider.fleet_routes[ids[0][1]] is bad.session
        (error,) = await bad.send(b"\x00\x00\x00\x01\xc8")  # a message of unknown type 200
        assert isinstance(error, ProviderError) and bad.transport.closing
        bad.session.connection_lost(None)
        assert not provider.fleet_routes and not provider.fleet_sessions
        provider.inbox.close()

    asyncio.run(main())


def test_delivery_routing_ack_ownership_and_pull(tmp_path):
    async def main():
        provider = make_provider(tmp_path)
        (a_sk, a), (b_sk, b), (c_sk, c) = pairs(3)
        one, two = Conn(provider), Conn(provider, push=False)
        await one.register([a_sk, b_sk])
        await two.register([c_sk])
        provider.on_finals([(a, b"for a"), (b, b"for b"), (c, b"for c"), (a, b"a again")])
        delivered = one.events()
        assert [(e.client_key, e.message) for e in delivered] == [
            (a, b"for a"),
            (a, b"a again"),
            (b, b"for b"),
        ]
        assert two.events() == []  # no push on that connection
        (pulled,) = await two.send(two.client.send_pull_for(c))
        assert pulled.client_key == c and [m.message for m in pulled.messages] == [b"for c"]
        # an ACK of someone else's id (c's, on one) deletes nothing
        c_id = pulled.messages[0].id
        await one.send(one.client.send_ack([c_id, delivered[0].id, 1 << 62]))
        assert provider.inbox.count(c) == 1 and provider.inbox.count(a) == 1
        assert provider.counters.extra["acks_ignored"] == 2
        await two.send(two.client.send_ack([c_id]))
        assert provider.inbox.count(c) == 0
        # PULL_FOR of a key this connection does not hold: refused, connection open
        assert await two.send(two.client.send_pull_for(a)) == [
            KeyRefused(a, "not registered on this connection")
        ]
        assert not two.transport.closing
        provider.inbox.close()

    asyncio.run(main())


def test_newest_connection_takes_over_a_key(tmp_path):
    async def main():
        provider = make_provider(tmp_path)
        (a_sk, a), (b_sk, b) = pairs(2)
        old, new = Conn(provider), Conn(provider)
        await old.register([a_sk, b_sk])
        provider.on_finals([(a, b"unacked")])
        (first,) = old.events()
        assert first.client_key == a
        # the new connection registers a: the old one is told, the unacked message comes again
        events = await new.register([a_sk])
        assert events[0] == KeyRegistered(a)
        assert [(e.client_key, e.message) for e in events[1:]] == [(a, b"unacked")]
        assert old.events() == [KeyRefused(a, "registered on a newer connection")]
        assert provider.fleet_routes[a] is new.session and provider.fleet_routes[b] is old.session
        provider.on_finals([(a, b"new mail"), (b, b"for b")])
        assert [e.message for e in new.events()] == [b"new mail"]
        assert [e.message for e in old.events()] == [b"for b"]
        # the old connection's ACK for a's message no longer counts; the new one's does
        await old.send(old.client.send_ack([first.id]))
        assert provider.inbox.count(a) == 2
        # closing the old connection leaves a's route alone
        old.close()
        assert provider.fleet_routes == {a: new.session}
        # a single registration of a is newer still
        provider.register(a, object())  # type: ignore[arg-type]
        assert new.events() == [KeyRefused(a, "registered on a newer connection")]
        assert a not in provider.fleet_routes
        provider.inbox.close()

    asyncio.run(main())


def test_fleet_window_is_shared_fairly(tmp_path):
    async def main():
        provider = make_provider(tmp_path, push_window=8, fleet_push_window=10)
        (a_sk, a), (b_sk, b) = pairs(2)
        conn = Conn(provider)
        await conn.register([a_sk, b_sk])
        provider.on_finals([(a, b"a%d" % i) for i in range(30)] + [(b, b"b0")])
        events = conn.events()
        # a takes its turn (8), then b, then a again up to the window of 10
        assert [e.message for e in events] == [b"a%d" % i for i in range(8)] + [b"b0", b"a8"]
        more = await conn.send(conn.client.send_ack([e.id for e in events]))
        assert [e.message for e in more] == [b"a%d" % i for i in range(9, 19)]
        provider.inbox.close()

    asyncio.run(main())


def test_refused_registration_is_answered_and_limit_applies(tmp_path):
    async def main():
        provider = make_provider(tmp_path, max_fleet_keys=2)
        conn = Conn(provider)
        ids = pairs(3)
        events = await conn.register(sk for sk, _ in ids)
        assert events[:2] == [KeyRegistered(pk) for _, pk in ids[:2]]
        assert isinstance(events[2], KeyRefused) and "limit" in events[2].reason
        assert provider.counters.extra["fleet_refused"] == 1
        assert ids[2][1] not in provider.registered
        provider.inbox.close()

    asyncio.run(main())


def test_presence_lists_clients_up_to_a_limit_then_counts_them(tmp_path):
    async def main():
        provider = make_provider(tmp_path, presence_client_limit=5)
        conn = Conn(provider)
        ids = pairs(8)
        await conn.register(sk for sk, _ in ids[:5])
        path, body = provider.presence()
        assert path == "/api/presence/mixproviders"
        assert len(body["registeredClients"]) == 5 and "registeredClientCount" not in body
        await conn.register(sk for sk, _ in ids[5:])
        _, body = provider.presence()
        assert body["registeredClients"] == [] and body["registeredClientCount"] == 8
        # the directory and the topology parser take it
        registry = Registry()
        registry.announce_provider(msgspec.convert(body, ProviderPresence))
        topo = parse_topology(encode_topology(registry.topology()))
        assert topo.providers[0].pub_key == provider.public_key
        assert topo.providers[0].registered_clients == []
        provider.inbox.close()

    asyncio.run(main())


def test_presence_posts_are_coalesced(tmp_path):
    async def main():
        provider = make_provider(tmp_path)
        kicks: list[float] = []
        loop = asyncio.get_running_loop()
        provider.announce_soon = lambda: kicks.append(loop.time())  # type: ignore[method-assign]
        conn = Conn(provider)
        ids = pairs(2000)
        reads = [
            conn.client.send_register_many(sk for sk, _ in ids[i : i + 100])
            for i in range(0, 2000, 100)
        ]
        t0 = loop.time()
        for data in reads:  # 20 reads, within well under 0.5 s
            await conn.send(data)
        assert len(kicks) == 1  # the first registration is announced at once
        await wait_until_async(lambda: len(kicks) >= 2, "the announcement after the burst", 3)
        assert len(kicks) == 2  # and the burst once more after it settled
        assert kicks[1] - t0 >= 0.5
        # that no third announcement follows is PresenceDebounce's rule, tested on a fake clock
        # in test_testnet_decisions.py
        provider.inbox.close()

    asyncio.run(main())


# --- against a real testnet -----------------------------------------------------------------------

PRESENCE = 0.5


net = make_testnet_fixture(
    "net", layers=3, mixnodes_per_layer=1, providers=1, presence_interval=PRESENCE, metrics_interval=0.2
)


class FleetClient:
    """A minimal asyncio fleet client over `FleetClientSide`."""

    def __init__(self, provider_key: bytes, push: bool = True) -> None:
        self.side = FleetClientSide(provider_key, push=push)
        self.events: list[Any] = []

    async def connect(self, address: tuple[str, int], secrets: list[bytes]) -> FleetClient:
        self.reader, self.writer = await asyncio.open_connection(*address)
        self.writer.write(self.side.send_hello())
        assert isinstance(await self.next_event(), ChallengeReceived)
        self.writer.write(self.side.send_register_many(secrets))
        for _ in secrets:
            event = await self.next_event()
            assert isinstance(event, KeyRegistered), event
        return self

    async def next_event(self, timeout: float = DEADLINE) -> Any:
        while not self.events:
            data = await asyncio.wait_for(self.reader.read(1 << 16), timeout)
            if not data:
                raise ConnectionError("provider closed the connection")
            self.events += self.side.receive_data(data)
        event = self.events.pop(0)
        assert not isinstance(event, ProtocolError | ProviderError), event
        return event

    async def expect(self, kind: type, timeout: float = DEADLINE) -> Any:
        event = await self.next_event(timeout)
        assert isinstance(event, kind), event
        return event

    async def pull_until_message(self, key: bytes) -> PullResult:
        deadline = time.monotonic() + DEADLINE
        while True:
            self.writer.write(self.side.send_pull_for(key))
            result = await self.expect(PullResult)
            assert result.client_key == key
            if result.messages or time.monotonic() > deadline:
                return result
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def route(net: Testnet) -> tuple[list[Hop], bytes]:
    topo = net.topology()
    nodes = topo.choose_route(Csprng.seeded(1), net.nodes["provider-1"].public_key)
    return [Hop(n.pub_key, n.sphinx_address) for n in nodes], nodes[0].sphinx_address


def packet_for(net: Testnet, recipient: bytes, message: bytes) -> bytes:
    hops, _ = route(net)
    return build_packet(hops, recipient, message, [1_000_000] * len(hops), identifier=bytes(16))


def send_raw(net: Testnet, *packets: bytes) -> None:
    """Nym-framed packets straight into the first mixnode, as a node would send them."""
    with socket.create_connection(net.nodes["mix-1-1"].address, timeout=5) as s:
        s.sendall(b"".join(encode_frame(p) for p in packets))


@pytest.mark.timeout(120)
def test_fleet_of_200_on_a_real_testnet(net):
    ids = pairs(200)
    provider = net.nodes["provider-1"]
    targets = [ids[i] for i in (0, 17, 99, 150, 199)]
    keys = [pk for _, pk in targets]

    async def main():
        t0 = time.monotonic()
        one = await FleetClient(provider.public_key).connect(
            provider.address, [sk for sk, _ in ids]
        )
        assert len(one.side.registered_keys) == 200 and time.monotonic() - t0 < DEADLINE
        # through mix-1 → mix-2 → mix-3 → provider: three injected at mix-1, two sent over the
        # fleet connection itself (SEND)
        messages = {pk: os.urandom(64) for pk in keys}
        send_raw(net, *(packet_for(net, pk, messages[pk]) for pk in keys[:3]))
        _, first_hop = route(net)
        one.writer.write(
            one.side.send_packets((first_hop, packet_for(net, pk, messages[pk])) for pk in keys[3:])
        )
        got: dict[bytes, Delivered] = {}
        while len(got) < len(keys):
            event = await one.expect(Delivered)
            assert event.client_key in messages and event.message == messages[event.client_key]
            got[event.client_key] = event
        one.writer.write(one.side.send_ack([e.id for e in got.values()]))

        # a second connection takes two keys over (one pulls: push=False); the ACK deleted
        # their messages, otherwise a new connection would be handed them again
        two = await FleetClient(provider.public_key, push=False).connect(
            provider.address, [sk for sk, _ in targets[:2]]
        )
        refused = {(await one.expect(KeyRefused)).client_key for _ in range(2)}
        assert refused == set(keys[:2]) and not one.side.registered_keys & refused
        for pk in keys[:2]:
            two.writer.write(two.side.send_pull_for(pk))
            assert await two.expect(PullResult) == PullResult((), pk)
        # pull-for works on the new connection
        send_raw(net, packet_for(net, keys[0], b"pulled by the new connection"))
        pulled = await two.pull_until_message(keys[0])
        assert [m.message for m in pulled.messages] == [b"pulled by the new connection"]
        two.writer.write(two.side.send_ack([m.id for m in pulled.messages]))

        # a third connection takes a pushed key over: new mail goes there, not to `one`
        three = await FleetClient(provider.public_key).connect(provider.address, [targets[2][0]])
        assert await one.expect(KeyRefused) == KeyRefused(
            keys[2], "registered on a newer connection"
        )
        send_raw(
            net,
            packet_for(net, keys[2], b"to the newest"),
            packet_for(net, keys[3], b"still on one"),
        )
        event = await three.expect(Delivered)
        assert (event.client_key, event.message) == (keys[2], b"to the newest")
        event = await one.expect(Delivered)
        assert (event.client_key, event.message) == (keys[3], b"still on one")
        three.writer.write(three.side.send_ack([event.id]))  # not three's: ignored
        one.writer.write(one.side.send_ack([event.id]))
        with pytest.raises(TimeoutError):
            await one.next_event(timeout=0.3)
        for c in (one, two, three):
            await c.close()

    asyncio.run(asyncio.wait_for(main(), 90))

    def report() -> dict[str, Any]:
        return net.latest_metrics("provider-1") or {}

    r = wait_until(
        lambda: (r := report()).get("acked", 0) >= 7 and r.get("fleetConnections", 1) == 0 and r,
        "the provider's report of the acks and the closed connections",
        interval=0.1,
    )
    assert r["acked"] == 7 and r["acks_ignored"] == 1 and r["fleet_registered"] == 203
    assert r["fleetConnections"] == 0 and r["fleetClients"] == 0
    # 200 clients, above the default presence limit of 1000? No: listed in the topology
    listed = net.topology().providers[0].registered_clients
    assert {pk for _, pk in ids} <= set(listed)
