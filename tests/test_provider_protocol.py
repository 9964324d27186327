"""The client↔provider protocol state machines, driven against each other without sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopix.sphinx import keypair
from loopix.wire.provider_protocol import (
    MAGIC,
    AckReceived,
    ChallengeReceived,
    ClientHello,
    ClientRegistered,
    ClientSide,
    Delivered,
    InboxMessage,
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
