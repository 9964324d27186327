"""Per-client limits at a provider (issue 11, section 3): registrations capped per provider with
idle ones giving way and expiring, inbox quotas, a maximum message age, and UNREGISTER.

The decisions are pure objects driven with a fake clock; the provider's session code runs in
process over the fake transport of test_provider_fleet (no sockets); the inbox is a real SQLite
file. The sender's side of UNREGISTER is covered end to end by test_fleet (identities removed
from a running fleet leave their provider).
"""

from __future__ import annotations

import asyncio
import sqlite3

from loopix.sphinx import keypair
from loopix.testnet.client_limits import (
    Admit,
    ClientLimits,
    InboxQuota,
    Refuse,
    RegistrationTable,
)
from loopix.testnet.inbox import Inbox
from loopix.testnet.node import NodeConfig
from loopix.testnet.provider import ClientSession, Provider
from loopix.wire.provider import (
    MAX_UNREGISTER_KEYS,
    ClientSide,
    Delivered,
    FleetClientSide,
    KeyRefused,
    KeyRegistered,
    KeysUnregistered,
    ProtocolError,
    ProviderError,
    ProviderSide,
)
from test_provider_fleet import Conn, FakeTransport, pairs

K = [bytes([i]) * 32 for i in range(10)]


# --- the pure decisions ------------------------------------------------------------------------


def test_registrations_give_way_idle_longest_first_and_expire():
    table = RegistrationTable(ClientLimits(max_clients=3, registration_ttl_s=100))
    for key in K[:3]:
        assert table.admit(key) == Admit(new=True)
        table.held(key)
    assert table.admit(K[0]) == Admit(new=False)  # known keys always may
    assert table.admit(K[3]) == Refuse(
        "provider full: 3 clients registered, all connected"
    )  # all live: refused
    table.released(K[1], now=10.0)
    table.released(K[0], now=20.0)
    assert table.admit(K[3]) == Admit(new=True, evict=(K[1], K[0]))  # idle the longest first
    table.forget(K[1])
    table.held(K[0])  # (the provider would have forgotten it; here it comes back)
    table.released(K[0], now=20.0)
    table.held(K[3])
    assert table.expired(119.9) == []
    assert table.expired(120.0) == [K[0]]
    table.held(K[0])  # came back: live again, never expires while held
    assert table.expired(10_000.0) == []
    assert len(table) == 3 and K[1] not in table


def test_registrations_from_the_file_start_idle_in_last_seen_order():
    table = RegistrationTable(
        ClientLimits(max_clients=2, registration_ttl_s=5), [(K[0], 9.0), (K[1], 3.0)]
    )
    assert table.admit(K[2]) == Admit(new=True, evict=(K[1], K[0]))
    assert table.expired(9.0) == [K[1]]
    assert table.expired(14.0) == [K[1], K[0]]


def test_inbox_quota_counts_messages_and_bytes():
    quota = InboxQuota(ClientLimits(inbox_max_messages=2, inbox_max_bytes=100), [(K[0], 1, 60)])
    assert quota.refusal(K[0], 41) == "inbox_bytes"
    assert quota.refusal(K[0], 40) is None
    quota.added(K[0], 40)
    assert quota.refusal(K[0], 1) == "inbox_full"
    quota.removed(K[0], 60)
    assert quota.of(K[0]) == (1, 40) and quota.refusal(K[0], 60) is None
    assert quota.refusal(K[1], 101) == "inbox_bytes" and quota.refusal(K[1], 100) is None
    quota.removed(K[0], 40)
    assert quota.of(K[0]) == (0, 0) and K[0] not in quota.usage


def test_limits_are_checked():
    assert ClientLimits().check() is None
    assert ClientLimits(max_clients=0).check() is not None
    assert ClientLimits(inbox_max_bytes=0).check() is not None
    assert ClientLimits(message_max_age_s=0).check() is not None
    assert ClientLimits(registration_ttl_s=0.2, message_max_age_s=10).sweep_interval_s == 0.05


# --- the protocol: UNREGISTER ----------------------------------------------------------------------


def test_unregister_round_trip_in_the_machines():
    provider_sk, provider_pk = keypair()
    side = ProviderSide(provider_sk)
    client = FleetClientSide(provider_pk)
    side.receive_data(client.send_hello())
    client.receive_data(side.send_challenge())
    ids = pairs(3)
    side.receive_data(client.send_register_many(ids))
    client.receive_data(b"".join(side.send_registered_key(pk) for _, pk in ids))
    assert client.registered_keys == {pk for _, pk in ids}
    stranger = keypair()[1]
    assert client.send_unregister([stranger]) == b""  # nothing of ours: nothing sent
    data = client.send_unregister([ids[0][1], stranger, ids[1][1], ids[0][1]])
    (event,) = side.receive_data(data)  # the stranger is not the provider's either: left out
    assert event.client_keys == (ids[0][1], ids[1][1])
    assert client.receive_data(side.send_unregistered(event.client_keys)) == [
        KeysUnregistered((ids[0][1], ids[1][1]))
    ]
    assert side.client_keys == client.registered_keys == {ids[2][1]}
    # an UNREGISTERED for a key the client does not hold, or a malformed UNREGISTER, is an error
    assert isinstance(client.receive_data(side.send_unregistered([stranger]))[0], ProtocolError)
    (bad,) = side.receive_data(b"\x00\x00\x00\x03\x0f\x00\x00")  # 2 bytes: not a key
    assert isinstance(bad, ProtocolError) and "UNREGISTER body" in bad.reason


def test_unregister_is_fleet_only_and_bounded():
    provider_sk, provider_pk = keypair()
    side = ProviderSide(provider_sk)
    sk, pk = keypair()
    client = ClientSide(sk, provider_pk)
    side.receive_data(client.send_hello())
    client.receive_data(side.send_challenge())
    side.receive_data(client.send_register())
    client.receive_data(side.send_registered())
    (error,) = side.receive_data(b"\x00\x00\x00\x21\x0f" + pk)  # UNREGISTER on a single one
    assert isinstance(error, ProtocolError) and "fleet" in error.reason
    assert FleetClientSide(provider_pk).send_unregister([pk]) == b""  # nothing registered here
    assert MAX_UNREGISTER_KEYS * 32 + 1 <= 1 + 32 + 33133  # a full UNREGISTER fits a client frame


# --- the provider ---------------------------------------------------------------------------------


def make_provider(tmp_path, limits: ClientLimits) -> Provider:
    secret, _ = keypair()
    return Provider(NodeConfig(port=9), secret, Inbox(tmp_path / "inbox.sqlite"), limits=limits)


def test_provider_full_refuses_typed_then_idle_registrations_give_way(tmp_path):
    async def main():
        provider = make_provider(tmp_path, ClientLimits(max_clients=3))
        ids = pairs(5)
        first = Conn(provider)
        assert await first.register([ids[0][0]]) == [KeyRegistered(ids[0][1])]
        other = Conn(provider)
        events = await other.register(sk for sk, _ in ids[1:4])
        assert events[:2] == [KeyRegistered(pk) for _, pk in ids[1:3]]
        assert events[2] == KeyRefused(
            ids[3][1], "provider full: 3 clients registered, all connected"
        )
        assert provider.counters.extra["registrations_refused"] == 1
        provider.on_finals([(ids[0][1], b"for 0")])
        assert [e.message for e in first.events()] == [b"for 0"]  # not ACKed: still stored
        first.close()  # all idle now: they give way to a new key (a batch), with their mail
        other.close()
        second = Conn(provider)
        assert await second.register([ids[4][0]]) == [KeyRegistered(ids[4][1])]
        assert provider.counters.extra["registrations_evicted"] == 3
        assert provider.counters.dropped == {"registration_evicted": 1}
        assert provider.registered == {ids[4][1]}
        assert ids[0][1] not in provider.inbox.clients() and provider.inbox.count(ids[0][1]) == 0
        provider.inbox.close()

    asyncio.run(main())


def test_single_connection_refused_when_full(tmp_path):
    async def main():
        provider = make_provider(tmp_path, ClientLimits(max_clients=1))
        conn = Conn(provider)
        await conn.register([keypair()[0]])
        sk, _ = keypair()
        transport = FakeTransport()
        session = ClientSession(provider, transport)  # type: ignore[arg-type]
        client = ClientSide(sk, provider.public_key)
        session.data_received(client.send_hello())
        client.receive_data(transport.take())
        session.data_received(client.send_register())
        (event,) = client.receive_data(transport.take())
        assert isinstance(event, ProviderError) and "provider full" in event.reason
        assert transport.closing
        provider.inbox.close()

    asyncio.run(main())


def test_inbox_quota_refuses_without_an_ack_and_age_drops_stored(tmp_path):
    async def main():
        provider = make_provider(
            tmp_path, ClientLimits(inbox_max_messages=2, inbox_max_bytes=1000, message_max_age_s=60)
        )
        conn = Conn(provider, push=False)
        ((sk, pk),) = pairs(1)
        await conn.register([sk])
        provider.on_finals([(pk, b"a"), (pk, b"b"), (pk, b"c"), (pk, b"x" * 999)])
        assert provider.inbox.count(pk) == 2
        assert provider.counters.dropped == {"inbox_full": 2}
        assert provider.counters.extra["stored"] == 2
        # a restart reads the usage back from the file
        again = Provider(NodeConfig(port=9), keypair()[0], provider.inbox, limits=provider.limits)
        assert again.quota.of(pk) == (2, 2)
        # messages older than the limit go, counted; the quota follows
        provider.sweep(now=10**10)
        assert provider.inbox.count(pk) == 0 and provider.quota.of(pk) == (0, 0)
        assert provider.counters.dropped["message_expired"] == 2
        provider.inbox.close()

    asyncio.run(main())


def test_acked_messages_free_their_quota(tmp_path):
    async def main():
        provider = make_provider(tmp_path, ClientLimits(inbox_max_messages=1))
        conn = Conn(provider)
        ((sk, pk),) = pairs(1)
        await conn.register([sk])
        provider.on_finals([(pk, b"one")])
        (delivered,) = conn.events()
        assert isinstance(delivered, Delivered)
        provider.on_finals([(pk, b"two")])  # full
        await conn.send(conn.client.send_ack([delivered.id]))
        provider.on_finals([(pk, b"three")])
        assert [e.message for e in conn.events()] == [b"three"]
        assert provider.counters.dropped == {"inbox_full": 1}
        provider.inbox.close()

    asyncio.run(main())


def test_idle_registrations_expire_and_last_seen_survives_a_restart(tmp_path):
    async def main():
        limits = ClientLimits(registration_ttl_s=1000, message_max_age_s=1e12)
        provider = make_provider(tmp_path, limits)
        conn = Conn(provider)
        ids = pairs(2)
        await conn.register(sk for sk, _ in ids)
        provider.on_finals([(ids[0][1], b"waiting")])
        provider.sweep(now=10**10)  # held by a live connection: never expires
        assert len(provider.registered) == 2
        conn.close()
        await asyncio.sleep(0)  # the last-seen write runs on the next loop turn
        seen = dict(provider.inbox.clients_seen())
        assert all(t > 0 for t in seen.values())
        restarted = Provider(NodeConfig(port=9), keypair()[0], provider.inbox, limits=limits)
        assert restarted.registrations.idle.keys() == set(seen)
        restarted.sweep(now=max(seen.values()) + 999)
        assert len(restarted.registered) == 2
        restarted.sweep(now=max(seen.values()) + 1000)
        assert len(restarted.registered) == 0 and restarted.inbox.clients() == []
        assert restarted.counters.extra["registrations_expired"] == 2
        assert restarted.counters.dropped == {"registration_expired": 1}
        provider.inbox.close()

    asyncio.run(main())


def test_unregister_forgets_keys_and_their_mail_unless_held_elsewhere(tmp_path):
    async def main():
        provider = make_provider(tmp_path, ClientLimits())
        conn = Conn(provider, push=False)
        ids = pairs(3)
        await conn.register(sk for sk, _ in ids)
        provider.on_finals([(ids[0][1], b"unread")])
        other = Conn(provider, push=False)  # takes ids[2] over (the newest wins)
        await other.register([ids[2][0]])
        conn.events()
        events = await conn.send(conn.client.send_unregister([pk for _, pk in ids]))
        assert events == [KeysUnregistered((ids[0][1], ids[1][1]))]
        assert provider.counters.extra["unregistered"] == 2
        assert provider.counters.dropped == {"unregistered": 1}
        assert provider.registered == {ids[2][1]} and provider.inbox.clients() == [ids[2][1]]
        assert ids[0][1] not in provider.fleet_routes
        provider.inbox.close()

    asyncio.run(main())


def test_an_inbox_file_from_before_the_age_columns_is_upgraded(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, recipient BLOB NOT NULL,"
        " message BLOB NOT NULL); CREATE TABLE clients (key BLOB PRIMARY KEY) WITHOUT ROWID;"
    )
    db.execute("INSERT INTO clients VALUES (?)", (K[0],))
    db.execute("INSERT INTO messages (recipient, message) VALUES (?, ?)", (K[0], b"old"))
    db.commit()
    db.close()
    with Inbox(path) as inbox:
        ((key, seen),) = inbox.clients_seen()
        assert key == K[0] and seen > 1e9  # dated when the file was opened
        assert inbox.usage() == [(K[0], 1, 3)]
        assert inbox.expire(before=seen - 1) == []
        assert inbox.expire(before=seen + 1) == [(K[0], 3)]
