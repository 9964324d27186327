"""The client↔provider protocol state machines, driven against each other without sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopix.sphinx import keypair
from loopix.wire.provider import (
    FLAG_FLEET,
    FLAG_NO_PUSH,
    MAGIC,
    AckReceived,
    ChallengeReceived,
    ClientHello,
    ClientRegistered,
    ClientSide,
    Delivered,
    FleetClientRefused,
    FleetClientRegistered,
    FleetClientSide,
    InboxMessage,
    KeyRefused,
    KeyRegistered,
    MsgType,
    PacketSubmitted,
    ProtocolError,
    ProtocolStateError,
    ProviderError,
    ProviderSide,
    PullRequested,
    PullResult,
    RegistrationAccepted,
)

PROVIDER_SK, PROVIDER_PK = keypair()
CLIENT_SK, CLIENT_PK = keypair()
HOP = bytes([4, 0x23, 0x28, 127, 0, 0, 1]) + bytes(25)


def handshake(push: bool = True, pull_slots: int = 4, cap: int = 64):
    """A registered (client, provider) pair."""
    client = ClientSide(CLIENT_SK, PROVIDER_PK, push=push)
    provider = ProviderSide(PROVIDER_SK, pull_slots=pull_slots, max_message_size=cap)
    assert provider.receive_data(client.send_hello()) == [ClientHello()]
    events = client.receive_data(provider.send_challenge())
    assert isinstance(events[0], ChallengeReceived)
    assert provider.receive_data(client.send_register()) == [ClientRegistered(CLIENT_PK, push)]
    assert client.receive_data(provider.send_registered()) == [RegistrationAccepted()]
    assert client.registered and provider.registered
    return client, provider


def frame(kind: int, body: bytes = b"") -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def test_register_send_deliver_ack():
    client, provider = handshake()
    packets = [(HOP, bytes([i]) * 2413) for i in range(3)]
    assert provider.receive_data(client.send_packets(packets)) == [
        PacketSubmitted(h, p) for h, p in packets
    ]
    assert client.receive_data(provider.send_deliver(7, b"hello")) == [Delivered(7, b"hello")]
    assert provider.receive_data(client.send_ack([7, 9])) == [AckReceived((7, 9))]


def test_pull_response_size_does_not_depend_on_the_number_of_messages():
    client, provider = handshake(pull_slots=4, cap=64)
    assert provider.receive_data(client.send_pull()) == [PullRequested()]
    sizes = set()
    for n in range(5):
        messages = [(i + 1, bytes([i]) * (10 + i)) for i in range(n)]
        data = provider.send_pulled(messages)
        sizes.add(len(data))
        (result,) = client.receive_data(data)
        assert result == PullResult(tuple(InboxMessage(i, m) for i, m in messages))
    assert len(sizes) == 1
    with pytest.raises(ValueError):
        provider.send_pulled([(i, b"") for i in range(5)])
    with pytest.raises(ValueError):
        provider.send_pulled([(1, bytes(65))])


def test_no_push_flag():
    _, provider = handshake(push=False)
    assert provider.push is False


def test_byte_by_byte_delivery():
    client = ClientSide(CLIENT_SK, PROVIDER_PK)
    provider = ProviderSide(PROVIDER_SK)
    events = []
    for b in client.send_hello():
        events += provider.receive_data(bytes([b]))
    assert events == [ClientHello()]
    for b in provider.send_challenge():
        events += client.receive_data(bytes([b]))
    reg = client.send_register() + client.send_packet(HOP, b"x" * 100)
    for b in reg:
        events += provider.receive_data(bytes([b]))
    assert events[-2:] == [ClientRegistered(CLIENT_PK), PacketSubmitted(HOP, b"x" * 100)]


def test_wrong_key_cannot_register():
    other_sk, _ = keypair()
    provider = ProviderSide(PROVIDER_SK)
    provider.receive_data(MAGIC)
    nonce = provider.send_challenge()
    # Claims CLIENT_PK but proves with another secret.
    impostor = ClientSide(other_sk, PROVIDER_PK)
    impostor.send_hello()
    impostor.receive_data(nonce)
    body = impostor.send_register()
    forged = body[:5] + CLIENT_PK + body[5 + 32 :]
    (event,) = provider.receive_data(forged)
    assert isinstance(event, ProtocolError) and "proof" in event.reason
    assert provider.closed and not provider.registered
    assert provider.receive_data(frame(MsgType.PULL)) == []


def test_low_order_key_refused():
    provider = ProviderSide(PROVIDER_SK)
    provider.receive_data(MAGIC)
    provider.send_challenge()
    (event,) = provider.receive_data(frame(MsgType.REGISTER, bytes(64)))
    assert isinstance(event, ProtocolError)


def test_replayed_registration_fails_with_new_nonce():
    client = ClientSide(CLIENT_SK, PROVIDER_PK)
    p1 = ProviderSide(PROVIDER_SK)
    p1.receive_data(client.send_hello())
    client.receive_data(p1.send_challenge())
    register = client.send_register()
    p2 = ProviderSide(PROVIDER_SK)
    p2.receive_data(MAGIC)
    p2.send_challenge()
    (event,) = p2.receive_data(register)
    assert isinstance(event, ProtocolError)


@pytest.mark.parametrize("kind", [MsgType.SEND, MsgType.ACK, MsgType.PULL])
def test_unregistered_cannot_send_or_read(kind):
    provider = ProviderSide(PROVIDER_SK)
    provider.receive_data(MAGIC)
    provider.send_challenge()
    (event,) = provider.receive_data(frame(kind, HOP + b"x" if kind == MsgType.SEND else b""))
    assert isinstance(event, ProtocolError) and "not registered" in event.reason
    with pytest.raises(ProtocolStateError):
        provider.send_deliver(1, b"x")


def test_bad_magic_and_oversize_and_zero_length():
    p = ProviderSide(PROVIDER_SK)
    assert isinstance(p.receive_data(b"LPX2")[0], ProtocolError)
    _, p = handshake()
    (event,) = p.receive_data(struct.pack(">I", 1 << 20))
    assert isinstance(event, ProtocolError) and "exceeds" in event.reason
    _, p = handshake()
    (event,) = p.receive_data(struct.pack(">I", 0))
    assert isinstance(event, ProtocolError)


def test_malformed_messages_from_a_registered_client():
    for data in (
        frame(MsgType.ACK, b"123"),
        frame(MsgType.ACK, b""),
        frame(MsgType.PULL, b"x"),
        frame(MsgType.SEND, HOP),
        frame(MsgType.DELIVER, b"12345678"),
        frame(MsgType.REGISTER, bytes(64)),
        frame(200),
    ):
        _, p = handshake()
        (event,) = p.receive_data(data)
        assert isinstance(event, ProtocolError), data


def test_client_sees_provider_error_and_malformed_pulled():
    client, provider = handshake()
    (event,) = client.receive_data(provider.send_error("go away"))
    assert event == ProviderError("go away") and client.closed
    client, _ = handshake(cap=8)
    (event,) = client.receive_data(frame(MsgType.PULLED, struct.pack(">HI", 2, 8) + bytes(13)))
    assert isinstance(event, ProtocolError)


def test_client_state_errors():
    client = ClientSide(CLIENT_SK, PROVIDER_PK)
    with pytest.raises(ProtocolStateError):
        client.send_packet(HOP, b"x")
    with pytest.raises(ProtocolStateError):
        client.send_register()
    client.send_hello()
    (event,) = client.receive_data(frame(MsgType.DELIVER, bytes(9)))
    assert isinstance(event, ProtocolError)


def test_secrets_not_in_repr():
    client, provider = handshake()
    assert CLIENT_SK.hex() not in repr(client)
    assert PROVIDER_SK.hex() not in repr(provider)


@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=8))
def test_fuzz_provider_never_raises(data, cuts):
    _, provider = handshake()
    pos = 0
    for cut in [*cuts, len(data)]:
        for event in provider.receive_data(data[pos : pos + cut]):
            assert isinstance(event, ProtocolError | PacketSubmitted | AckReceived | PullRequested)
        pos += cut


@given(st.binary(max_size=300))
def test_fuzz_unregistered_provider_and_client_never_raise(data):
    provider = ProviderSide(PROVIDER_SK)
    events = provider.receive_data(MAGIC + data)
    assert all(isinstance(e, ProtocolError | ClientHello) for e in events)
    client, _ = handshake()
    client.receive_data(data)


def test_single_registration_bytes_are_unchanged():
    """Fleets must not change what a single-identity client puts on the wire."""
    for push, size in ((True, 64), (False, 65)):
        client = ClientSide(CLIENT_SK, PROVIDER_PK, push=push)
        client.send_hello()
        client.receive_data(frame(MsgType.CHALLENGE, bytes(32)))
        register = client.send_register()
        assert register[:5] == struct.pack(">IB", size + 1, MsgType.REGISTER)
        if not push:
            assert register[-1] == FLAG_NO_PUSH


# --- fleet connections ----------------------------------------------------------------------------

FLEET = [keypair() for _ in range(6)]


def fleet_pair(push: bool = True, max_fleet_keys: int = 100, pull_slots: int = 4, cap: int = 64):
    """A fleet client and its provider, challenged and not yet registered."""
    client = FleetClientSide(PROVIDER_PK, push=push)
    provider = ProviderSide(
        PROVIDER_SK, max_fleet_keys=max_fleet_keys, pull_slots=pull_slots, max_message_size=cap
    )
    assert provider.receive_data(client.send_hello()) == [ClientHello()]
    (event,) = client.receive_data(provider.send_challenge())
    assert isinstance(event, ChallengeReceived)
    return client, provider


def answer(provider: ProviderSide, events) -> bytes:
    """What the provider's I/O layer writes for registration events."""
    out = b""
    for e in events:
        if isinstance(e, FleetClientRegistered):
            out += provider.send_registered_key(e.client_key)
        elif isinstance(e, FleetClientRefused):
            out += provider.send_refused_key(e.client_key, e.reason)
    return out


def fleet(n: int = 3, push: bool = True, **kw):
    """A fleet connection with the first `n` identities of FLEET registered."""
    client, provider = fleet_pair(push, **kw)
    events = provider.receive_data(client.send_register_many(sk for sk, _ in FLEET[:n]))
    assert events == [FleetClientRegistered(pk, push) for _, pk in FLEET[:n]]
    assert client.receive_data(answer(provider, events)) == [
        KeyRegistered(pk) for _, pk in FLEET[:n]
    ]
    assert provider.fleet and provider.registered and provider.push is push
    assert provider.client_keys == client.registered_keys == {pk for _, pk in FLEET[:n]}
    assert not client.pending
    return client, provider


def test_fleet_registers_many_identities_on_one_connection():
    client, provider = fleet(3)
    # one REGISTER per identity, FLAG_FLEET set, the proof over the connection's nonce
    again = FleetClientSide(PROVIDER_PK)
    again.send_hello()
    again.receive_data(frame(MsgType.CHALLENGE, bytes(32)))
    data = again.send_register_many([FLEET[0][0]])
    assert len(data) == 5 + 65 and data[4] == MsgType.REGISTER and data[-1] == FLAG_FLEET
    # more identities later, on the same connection; known ones are skipped
    assert client.send_register_many([FLEET[0][0], FLEET[1][0]]) == b""
    events = provider.receive_data(client.send_register_many([FLEET[3][0], FLEET[3][0]]))
    assert events == [FleetClientRegistered(FLEET[3][1])]
    assert client.receive_data(answer(provider, events)) == [KeyRegistered(FLEET[3][1])]
    assert len(provider.client_keys) == 4
    assert "fleet of 4 keys" in repr(provider)
    # (secret, public) pairs skip deriving the key; a wrong public key is refused, nothing else
    sk4, pk4 = FLEET[4]
    sk5, _ = FLEET[5]
    events = provider.receive_data(client.send_register_many([(sk4, pk4), (sk5, CLIENT_PK)]))
    assert events[0] == FleetClientRegistered(pk4)
    assert events[1] == FleetClientRefused(CLIENT_PK, "bad proof of key ownership")


def test_fleet_push_pull_and_ack():
    client, provider = fleet(3, pull_slots=4, cap=64)
    (_, a), (_, b), _ = FLEET[:3]
    assert client.receive_data(
        provider.send_deliver_to(a, 7, b"for a") + provider.send_deliver_to(b, 8, b"for b")
    ) == [Delivered(7, b"for a", a), Delivered(8, b"for b", b)]
    assert provider.receive_data(client.send_pull_for(b)) == [PullRequested(b)]
    sizes = set()
    for n in range(5):
        messages = [(i + 1, bytes([i]) * (3 + i)) for i in range(n)]
        data = provider.send_pulled_for(b, messages)
        sizes.add(len(data))
        (result,) = client.receive_data(data)
        assert result == PullResult(tuple(InboxMessage(i, m) for i, m in messages), b)
    assert len(sizes) == 1  # as PULLED: the size says nothing about waiting mail
    assert provider.receive_data(client.send_ack([7, 8, 1])) == [AckReceived((7, 8, 1))]
    packets = [(HOP, bytes([i]) * 2413) for i in range(2)]
    assert provider.receive_data(client.send_packets(packets)) == [
        PacketSubmitted(h, p) for h, p in packets
    ]


def test_fleet_pipelines_after_registration():
    client, provider = fleet_pair()
    data = client.send_register_many([FLEET[0][0]])
    data += client.send_packet(HOP, b"x" * 100) + client.send_pull_for(FLEET[0][1])
    events = []
    for i in range(0, len(data), 7):  # in small pieces
        events += provider.receive_data(data[i : i + 7])
    assert events == [
        FleetClientRegistered(FLEET[0][1]),
        PacketSubmitted(HOP, b"x" * 100),
        PullRequested(FLEET[0][1]),
    ]


def test_fleet_bad_proof_refuses_that_key_only():
    client, provider = fleet_pair()
    (sk0, pk0), (sk1, pk1), (sk2, pk2) = FLEET[:3]
    data = bytearray(client.send_register_many([sk0, sk1, sk2]))
    data[70 + 5 + 32] ^= 1  # second REGISTER: flip a proof bit
    events = provider.receive_data(bytes(data))
    assert events[0] == FleetClientRegistered(pk0) and events[2] == FleetClientRegistered(pk2)
    assert isinstance(events[1], FleetClientRefused) and events[1].client_key == pk1
    assert "proof" in events[1].reason
    assert not provider.closed and provider.client_keys == {pk0, pk2}
    (e0, e1, e2) = client.receive_data(answer(provider, events))
    assert e0 == KeyRegistered(pk0) and e2 == KeyRegistered(pk2)
    assert isinstance(e1, KeyRefused) and e1.client_key == pk1 and "proof" in e1.reason
    assert client.registered_keys == {pk0, pk2} and not client.pending


def test_fleet_low_order_and_claimed_keys_refused_without_closing():
    _, provider = fleet(1)
    low = frame(MsgType.REGISTER, bytes(64) + bytes((FLAG_FLEET,)))
    (event,) = provider.receive_data(low)
    assert isinstance(event, FleetClientRefused) and event.client_key == bytes(32)
    # someone claims CLIENT_PK with a proof made by another secret
    other = FleetClientSide(PROVIDER_PK)
    other.send_hello()
    other.receive_data(frame(MsgType.CHALLENGE, provider._nonce))
    forged = bytearray(other.send_register_many([FLEET[5][0]]))
    forged[5:37] = CLIENT_PK
    (event,) = provider.receive_data(bytes(forged))
    assert event == FleetClientRefused(CLIENT_PK, "bad proof of key ownership")
    assert not provider.closed and CLIENT_PK not in provider.client_keys


def test_fleet_limit_per_connection():
    client, provider = fleet_pair(max_fleet_keys=2)
    events = provider.receive_data(client.send_register_many(sk for sk, _ in FLEET[:4]))
    assert events[:2] == [FleetClientRegistered(pk) for _, pk in FLEET[:2]]
    for event, (_, pk) in zip(events[2:], FLEET[2:4], strict=True):
        assert isinstance(event, FleetClientRefused) and event.client_key == pk
        assert "limit of 2" in event.reason
    assert len(provider.client_keys) == 2
    client.receive_data(answer(provider, events))
    assert len(client.registered_keys) == 2
    with pytest.raises(ValueError):
        ProviderSide(PROVIDER_SK, max_fleet_keys=0)


def test_fleet_push_flag_and_mismatch():
    _, provider = fleet(2, push=False)
    assert provider.push is False
    client = FleetClientSide(PROVIDER_PK, push=True)  # same nonce, other push mode
    client.send_hello()
    client.receive_data(frame(MsgType.CHALLENGE, provider._nonce))
    (event,) = provider.receive_data(client.send_register_many([FLEET[4][0]]))
    assert isinstance(event, FleetClientRefused) and "push" in event.reason


def test_fleet_pull_for_foreign_key_refused_not_closed():
    client, provider = fleet(1)
    (event,) = provider.receive_data(client.send_pull_for(FLEET[4][1]))
    assert event == FleetClientRefused(FLEET[4][1], "not registered on this connection")
    (refused,) = client.receive_data(answer(provider, [event]))
    assert refused == KeyRefused(FLEET[4][1], "not registered on this connection")
    assert not provider.closed and not client.closed


def test_taking_a_key_away():
    """What the provider does when a newer connection registers the key."""
    client, provider = fleet(2)
    a = FLEET[0][1]
    (event,) = client.receive_data(provider.send_refused_key(a, "registered on a newer connection"))
    assert event == KeyRefused(a, "registered on a newer connection")
    assert a not in provider.client_keys and a not in client.registered_keys
    with pytest.raises(ProtocolStateError):
        provider.send_deliver_to(a, 1, b"x")
    with pytest.raises(ProtocolStateError):
        provider.send_pulled_for(a, [])
    (event,) = provider.receive_data(client.send_pull_for(a))
    assert isinstance(event, FleetClientRefused)
    # the client registers it again on this connection
    client_again = client.send_register_many([FLEET[0][0]])
    (event,) = provider.receive_data(client_again)
    assert event == FleetClientRegistered(a)


@pytest.mark.parametrize(
    "data",
    [
        frame(MsgType.REGISTER, bytes(64)),  # a single REGISTER on a fleet connection
        frame(MsgType.REGISTER, bytes(66)),
        frame(MsgType.PULL),  # fleets pull with PULL_FOR
        frame(MsgType.PULL_FOR, bytes(31)),
        frame(MsgType.ACK, b"123"),
        frame(MsgType.SEND, HOP),
        frame(MsgType.DELIVER_TO, bytes(41)),
        frame(200),
    ],
)
def test_fleet_malformed_messages_close(data):
    _, provider = fleet(1)
    (event,) = provider.receive_data(data)
    assert isinstance(event, ProtocolError), data
    assert provider.closed


def test_fleet_without_registered_keys_cannot_send():
    client, provider = fleet_pair()
    data = bytearray(client.send_register_many([FLEET[0][0]]))
    data[40] ^= 1
    (event,) = provider.receive_data(bytes(data))
    assert isinstance(event, FleetClientRefused)
    assert provider.fleet and not provider.registered
    (event,) = provider.receive_data(client.send_packet(HOP, b"x"))
    assert isinstance(event, ProtocolError) and "not registered" in event.reason


def test_single_and_fleet_frames_do_not_mix():
    # PULL_FOR on a single connection, or before registering
    _, single = handshake()
    (event,) = single.receive_data(frame(MsgType.PULL_FOR, CLIENT_PK))
    assert isinstance(event, ProtocolError)
    p = ProviderSide(PROVIDER_SK)
    p.receive_data(MAGIC)
    p.send_challenge()
    (event,) = p.receive_data(frame(MsgType.PULL_FOR, CLIENT_PK))
    assert isinstance(event, ProtocolError) and "not registered" in event.reason
    # a fleet REGISTER on a registered single connection
    _, single = handshake()
    (event,) = single.receive_data(frame(MsgType.REGISTER, bytes(64) + bytes((FLAG_FLEET,))))
    assert isinstance(event, ProtocolError) and "already registered" in event.reason
    # single-connection answers and sends on a fleet connection
    _, provider = fleet(1)
    with pytest.raises(ProtocolStateError):
        provider.send_registered()
    with pytest.raises(ProtocolStateError):
        provider.send_deliver(1, b"x")
    with pytest.raises(ProtocolStateError):
        provider.send_pulled([])
    with pytest.raises(ProtocolStateError):
        single.send_deliver_to(CLIENT_PK, 1, b"x")


def test_fleet_client_refuses_what_it_did_not_ask_for():
    a = FLEET[0][1]
    unknown = FLEET[5][1]
    cases = [
        frame(MsgType.REGISTERED),  # a provider without fleet support
        frame(MsgType.REGISTERED_KEY, unknown),
        frame(MsgType.REGISTERED_KEY, a),  # already registered, not pending
        frame(MsgType.DELIVER_TO, unknown + bytes(8) + b"x"),
        frame(MsgType.DELIVER_TO, a + bytes(7)),
        frame(MsgType.PULLED_FOR, unknown + struct.pack(">HI", 0, 8)),
        frame(MsgType.PULLED_FOR, a + struct.pack(">HI", 2, 8) + bytes(13)),
        frame(MsgType.REFUSED_KEY, bytes(31)),
        frame(MsgType.DELIVER),
        frame(MsgType.CHALLENGE, bytes(32)),
    ]
    for data in cases:
        client, _ = fleet(1)
        (event,) = client.receive_data(data)
        assert isinstance(event, ProtocolError), data
        assert client.closed and client.receive_data(data) == []
    client, provider = fleet(1)
    (event,) = client.receive_data(provider.send_error("bye"))
    assert event == ProviderError("bye") and client.closed


def test_fleet_client_state_errors():
    client = FleetClientSide(PROVIDER_PK)
    with pytest.raises(ProtocolStateError):
        client.send_register_many([CLIENT_SK])
    client.send_hello()
    with pytest.raises(ProtocolStateError):
        client.send_hello()
    with pytest.raises(ProtocolStateError):
        client.send_ack([1])
    with pytest.raises(ProtocolStateError):
        client.send_pull_for(CLIENT_PK)
    (event,) = client.receive_data(frame(MsgType.DELIVER_TO, CLIENT_PK + bytes(9)))
    assert isinstance(event, ProtocolError)
    client, _ = fleet_pair()
    with pytest.raises(ValueError):
        client.send_register_many([CLIENT_SK, b"short"])
    assert not client.pending  # nothing recorded from a batch that failed
    with pytest.raises(ProtocolStateError):
        client.send_packet(HOP, b"x")


@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=8))
def test_fuzz_fleet_provider_never_raises(data, cuts):
    _, provider = fleet(2)
    pos = 0
    for cut in [*cuts, len(data)]:
        for event in provider.receive_data(data[pos : pos + cut]):
            assert isinstance(
                event,
                ProtocolError
                | PacketSubmitted
                | AckReceived
                | PullRequested
                | FleetClientRegistered
                | FleetClientRefused,
            )
        pos += cut


@given(st.binary(max_size=300))
def test_fuzz_fleet_client_never_raises(data):
    client, _ = fleet(2)
    client.receive_data(data)
    client = FleetClientSide(PROVIDER_PK)
    client.send_hello()
    client.receive_data(data)


@given(st.sampled_from(list(MsgType)), st.binary(max_size=120))
def test_fuzz_fleet_frames_of_every_type(kind, body):
    """Well-framed messages of every type with random bodies: never an exception."""
    client, provider = fleet(2)
    provider.receive_data(frame(kind, body))
    client.receive_data(frame(kind, body))
    client.receive_data(frame(kind, FLEET[0][1] + body))
