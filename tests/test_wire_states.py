"""The provider protocol's transition tables and their one lookup, and the shared frame reader."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_scalarmult_base

from loopix.wire.frames import LengthPrefixedReader
from loopix.wire.provider import (
    MAGIC,
    ClientSide,
    ClientState,
    FleetClientSide,
    MsgType,
    ProtocolError,
    ProtocolStateError,
    ProviderSide,
    ProviderState,
    TransitionError,
)
from loopix.wire.provider.codec import frame
from loopix.wire.provider.states import (
    CLIENT_TRANSITIONS,
    FLEET_CLIENT_TRANSITIONS,
    PROVIDER_TRANSITIONS,
    transition,
)

PROVIDER_SK = bytes(range(1, 33))
CLIENT_SK = bytes(range(33, 65))
PROVIDER_PK = crypto_scalarmult_base(PROVIDER_SK)

TABLES = [
    (PROVIDER_TRANSITIONS, ProviderState),
    (CLIENT_TRANSITIONS, ClientState),
    (FLEET_CLIENT_TRANSITIONS, ClientState),
]


@pytest.mark.parametrize(("table", "states"), TABLES)
def test_every_state_has_a_row_and_error_always_closes(table, states):
    closed = states.CLOSED
    for state, allowed in table.items():
        assert transition(table, state, MsgType.ERROR) is closed
        for trigger, after in allowed.items():
            assert transition(table, state, trigger) is after
    assert table[closed] == {MsgType.ERROR: closed}
    # every state a row leads to has a row of its own
    assert {after for allowed in table.values() for after in allowed.values()} <= set(table)


def test_the_lookup_raises_a_typed_error():
    with pytest.raises(TransitionError) as info:
        transition(PROVIDER_TRANSITIONS, ProviderState.HELLO, MsgType.DELIVER)
    assert isinstance(info.value, ProtocolStateError)
    assert info.value.state is ProviderState.HELLO and info.value.trigger is MsgType.DELIVER
    assert "DELIVER" in str(info.value) and "hello" in str(info.value)


def test_machines_walk_the_tables():
    client = ClientSide(CLIENT_SK, PROVIDER_PK)
    provider = ProviderSide(PROVIDER_SK)
    assert (client.state, provider.state) == (ClientState.NEW, ProviderState.AWAIT_MAGIC)
    provider.receive_data(client.send_hello())
    assert (client.state, provider.state) == (ClientState.HELLO_SENT, ProviderState.HELLO)
    client.receive_data(provider.send_challenge())
    assert (client.state, provider.state) == (ClientState.CHALLENGED, ProviderState.CHALLENGED)
    provider.receive_data(client.send_register())
    assert (client.state, provider.state) == (ClientState.REGISTERING, ProviderState.REGISTERED)
    client.receive_data(provider.send_registered())
    assert client.state is ClientState.REGISTERED
    client.receive_data(provider.send_error("bye"))
    assert (client.state, provider.state) == (ClientState.CLOSED, ProviderState.CLOSED)


def test_fleet_machines_walk_the_fleet_tables():
    client = FleetClientSide(PROVIDER_PK)
    provider = ProviderSide(PROVIDER_SK)
    provider.receive_data(client.send_hello())
    client.receive_data(provider.send_challenge())
    provider.receive_data(client.send_register_many([CLIENT_SK]))
    assert (client.state, provider.state) == (ClientState.FLEET, ProviderState.FLEET)
    with pytest.raises(TransitionError):
        provider.send_registered()


@pytest.mark.parametrize(
    "kind", [MsgType.CHALLENGE, MsgType.REGISTERED, MsgType.DELIVER, MsgType.ERROR]
)
def test_a_provider_refuses_the_messages_only_a_provider_sends(kind):
    provider = ProviderSide(PROVIDER_SK)
    provider.receive_data(MAGIC)
    provider.send_challenge()
    (event,) = provider.receive_data(frame(kind, b""))
    assert isinstance(event, ProtocolError) and f"message type {int(kind)}" in event.reason
    assert provider.closed


@pytest.mark.parametrize("kind", [MsgType.REGISTER, MsgType.SEND, MsgType.PULL_FOR])
def test_a_client_refuses_the_messages_only_a_client_sends(kind):
    client = ClientSide(CLIENT_SK, PROVIDER_PK)
    client.send_hello()
    (event,) = client.receive_data(frame(kind, b""))
    assert isinstance(event, ProtocolError) and client.closed


# --- the shared length-prefixed reader ------------------------------------------------------------


@settings(deadline=None, max_examples=100)
@given(
    st.sampled_from([2, 4, 8]),
    st.lists(st.binary(max_size=300), max_size=12),
    st.lists(st.integers(1, 400), min_size=1, max_size=20),
)
def test_reader_cuts_the_same_frames_however_the_bytes_arrive(prefix, frames, cuts):
    stream = b"".join(len(f).to_bytes(prefix, "big") + f for f in frames)
    reader = LengthPrefixedReader(prefix, 300)
    got, pos, i = [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        out, error = reader.feed(stream[pos : pos + step])
        assert error is None
        got += out
        pos, i = pos + step, i + 1
    assert got == frames
    assert reader.buffered == 0


def test_reader_refuses_a_prefix_out_of_bounds_and_then_everything():
    reader = LengthPrefixedReader(4, 10, min_frame=1)
    frames, error = reader.feed(b"\x00\x00\x00\x02ab" + b"\x00\x00\x00\x0b" + bytes(11))
    assert frames == [b"ab"] and "11 bytes exceeds the maximum of 10" in error
    assert reader.failed and reader.buffered == 0
    assert reader.feed(b"\x00\x00\x00\x01a") == ([], None)
    short = LengthPrefixedReader(4, 10, min_frame=1)
    frames, error = short.feed(bytes(4))
    assert frames == [] and "shorter than the minimum of 1" in error


def test_reader_holds_at_most_one_frame_in_progress():
    reader = LengthPrefixedReader(4, 1000)
    frame_bytes = (1000).to_bytes(4, "big") + bytes(1000)
    for _ in range(50):
        for k in range(0, len(frame_bytes), 333):
            reader.feed(frame_bytes[k : k + 333])
            assert reader.buffered <= len(frame_bytes)
        assert reader.buffered == 0


def test_delivery_and_pull_answers_take_the_connections_encoding():
    """One identity is a fleet of one: the provider's I/O layer names the key either way."""
    client = ClientSide(CLIENT_SK, PROVIDER_PK)
    provider = ProviderSide(PROVIDER_SK)
    provider.receive_data(client.send_hello())
    client.receive_data(provider.send_challenge())
    provider.receive_data(client.send_register())
    client.receive_data(provider.send_registered())
    key = client.client_key
    assert provider.send_delivery(key, 7, b"m") == provider.send_deliver(7, b"m")
    assert provider.send_pull_answer(key, [(7, b"m")]) == provider.send_pulled([(7, b"m")])
    with pytest.raises(ProtocolStateError):
        provider.send_delivery(bytes(32), 7, b"m")
    fleet = FleetClientSide(PROVIDER_PK)
    provider = ProviderSide(PROVIDER_SK)
    provider.receive_data(fleet.send_hello())
    fleet.receive_data(provider.send_challenge())
    provider.receive_data(fleet.send_register_many([CLIENT_SK]))
    assert provider.send_delivery(key, 7, b"m") == provider.send_deliver_to(key, 7, b"m")
    assert provider.send_pull_answer(key, []) == provider.send_pulled_for(key, [])
