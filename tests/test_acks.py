"""SURB-acks and retransmission timers as pure parts: the ack payload only its client reads, the
timer rule, the prefix a provider splits, and the testnet's injected drop."""

from __future__ import annotations

import os

import msgspec
import pytest

from loopix import config as cfg
from loopix.client.acks import COVER_REF, AckCodec, AckConfig, Retransmissions
from loopix.sphinx import Final, Forward
from loopix.testnet.decisions import Drop, ForwardNow, HopPolicy
from loopix.wire.ack import (
    ACK_PACKET_SIZE,
    ACK_PAYLOAD_SIZE,
    ACK_PREFIX_SIZE,
    inner_size,
    split_ack,
)

S = 1_000_000_000


def test_ack_payload_round_trip_and_only_its_key_reads_it():
    codec = AckCodec()
    a, b = codec.encode(7), codec.encode(7)
    assert len(a) == ACK_PAYLOAD_SIZE == 21
    assert a != b, "two acks of one fragment must not be linkable"
    assert codec.decode(a) == codec.decode(b) == 7
    assert codec.decode(codec.encode(COVER_REF)) == COVER_REF
    assert codec.decode(codec.encode(2**64 - 1)) == 2**64 - 1
    other = AckCodec()
    forged = sum(other.decode(codec.encode(5)) is not None for _ in range(200))
    assert forged == 0
    assert sum(codec.decode(os.urandom(21)) is not None for _ in range(2000)) == 0
    assert codec.decode(b"short") is None and codec.decode(bytes(22)) is None
    assert AckCodec(codec.key).decode(a) == 7
    with pytest.raises(ValueError):
        AckCodec(b"x" * 5)


def test_prefix_layout():
    assert ACK_PACKET_SIZE == 386 and ACK_PREFIX_SIZE == 418 and inner_size(2048) == 1630
    msg = os.urandom(2048)
    hop, packet, inner = split_ack(msg)
    assert hop == msg[:32] and packet == msg[32:418] and inner == msg[418:]
    assert split_ack(os.urandom(21)) is None and split_ack(bytes(ACK_PREFIX_SIZE)) is None


def test_timer_starts_when_sent_and_follows_the_rule():
    r = Retransmissions(AckConfig(wait_multiplier=1.5, wait_addition_s=1.5))
    r.track([1, 2])
    r.built(1, 200_000_000)  # forward + ack delays sampled by the worker
    r.built(2, 0)
    assert r.due(100 * S) == [], "queued fragments have no timer"
    r.sent_at(1, 10 * S)
    deadline = 10 * S + int(0.2 * 1.5 * S) + int(1.5 * S)
    assert r.due(deadline - 1) == []
    assert r.due(deadline) == [1]
    assert r.due(deadline + S) == [], "stopped until it is sent again"
    r.sent_at(1, 20 * S)
    assert (r.sent, r.retransmitted) == (1, 1)
    assert r.acked_at(1, 20 * S + 300_000_000)
    assert r.rtt_ns == [] and r.acked == 1, "Karn: no round trip from a retransmitted fragment"
    assert not r.acked_at(1, 21 * S) and r.duplicate_acks == 1
    assert not r.acked_at(COVER_REF, 21 * S) and r.duplicate_acks == 1
    assert len(r) == 1
    r.unsent(2)
    assert r.due(0 + 1) == [2]
    r.retry_later(2, 5 * S)
    assert r.due(5 * S + int(1.5 * S) - 1) == [] and r.due(5 * S + int(1.5 * S)) == [2]


def test_round_trip_of_a_fragment_sent_once_even_if_its_ack_beats_the_report():
    r = Retransmissions()
    r.track([1, 2])
    r.sent_at(1, 10 * S)
    assert r.acked_at(1, 10 * S + 80_000_000)
    assert r.acked_at(2, 11 * S)  # before the sender said it left
    assert r.sent == 1
    r.sent_at(2, 11 * S - 50_000_000)
    assert r.rtt_ns == [80_000_000, 50_000_000] and r.sent == r.acked == 2 and len(r) == 0


def test_retry_limit_gives_up_and_says_so():
    r = Retransmissions(AckConfig(max_retransmissions=1))
    r.track([9])
    r.sent_at(9, 0)
    assert r.due(2 * S) == [9]
    r.sent_at(9, 2 * S)
    assert r.due(4 * S) == []
    assert r.gave_up == 1 and r.abandoned == [9] and len(r) == 0


def test_injected_drop_only_on_forwarding():
    draws = iter([0.005, 0.5, 0.0])
    policy = HopPolicy(lambda tag: False, 10.0, 100, drop_rate=0.01, draw=lambda: next(draws))
    fwd = Forward(next_address=bytes(32), delay_ns=0, packet=b"p", replay_tag=b"a")
    assert policy.decide(fwd, 0.0, 0) == Drop("injected")
    assert isinstance(policy.decide(fwd, 0.0, 0), ForwardNow)
    final = Final(destination=bytes(32), identifier=bytes(16), message=b"m", replay_tag=b"b")
    assert not isinstance(policy.decide(final, 0.0, 0), Drop), "a provider stores what reached it"
    assert HopPolicy(lambda tag: False, 10.0, 100).drop_rate == 0.0


def test_ack_timer_config_defaults_and_refusals():
    c = cfg.AcksSection()
    assert (c.wait_multiplier, c.wait_addition_s, c.max_retransmissions) == (1.5, 1.5, 0)
    for bad in ({"wait_addition_s": 0}, {"wait_multiplier": -1}, {"max_retransmissions": -1}, {"nope": 1}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, cfg.AcksSection)


def test_standby_provider_choice_is_round_robin_over_the_others():
    from loopix.client.coordinator import choose_standby

    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    assert [choose_standby(i, b, [c, b, a]) for i in range(4)] == [a, c, a, c]
    assert choose_standby(0, a, [a]) is None
