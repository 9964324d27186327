"""The testnet nodes' decisions as pure objects, driven by a fake clock: what happens to an
unwrapped packet, when a provider announces new clients, and what a connection is pushed."""

from __future__ import annotations

import argparse
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopix.sphinx import Final, Forward, Rejected
from loopix.testnet.decisions import (
    Deliver,
    Drop,
    ForwardNow,
    Hold,
    HopPolicy,
    PresenceDebounce,
    ReplayFilter,
)
from loopix.testnet.delivery import DeliveryPolicy, PushRequest
from loopix.testnet.node import NodeConfig, add_node_arguments, node_config_from_args

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def forward(delay_ns: int, tag: bytes = b"t" * 32) -> Forward:
    return Forward(next_address=A, delay_ns=delay_ns, packet=b"packet", replay_tag=tag)


def policy(max_delay: float = 10.0, max_queue: int = 3) -> HopPolicy:
    return HopPolicy(ReplayFilter(100).seen, max_delay, max_queue)


# --- a hop's decision ------------------------------------------------------------------------------


def test_hop_policy_forwards_holds_delivers_and_drops():
    p = policy()
    now = 1000.0
    assert p.decide(Rejected("bad_mac"), now, 0) == Drop("bad_mac")
    assert p.decide(forward(0, b"1" * 32), now, 0) == ForwardNow(A, b"packet")
    assert p.decide(forward(2_500_000, b"2" * 32), now, 0) == Hold(now + 0.0025, A, b"packet")
    final = Final(destination=B, identifier=bytes(16), message=b"hi", replay_tag=b"3" * 32)
    assert p.decide(final, now, 0) == Deliver(B, b"hi")
    assert p.decide(final, now + 1, 0) == Drop("replay")  # the same tag again, later


def test_hop_policy_caps_delays_and_bounds_the_queue():
    p = policy(max_delay=2.0, max_queue=3)
    assert p.decide(forward(5_000_000_000, b"1" * 32), 7.0, 0) == Hold(
        9.0, A, b"packet", capped=True
    )
    assert p.decide(forward(2_000_000_000, b"2" * 32), 7.0, 2) == Hold(
        9.0, A, b"packet", capped=False
    )
    assert p.decide(forward(1, b"3" * 32), 7.0, 3) == Drop("queue_full")
    assert p.decide(forward(0, b"4" * 32), 7.0, 3) == ForwardNow(A, b"packet")  # no wait, no queue
    assert p.decide(forward(1, b"3" * 32), 7.0, 0) == Drop(
        "replay"
    )  # a refused packet was still seen


@given(st.integers(0, (1 << 64) - 1), st.floats(0, 1e6))
def test_hold_is_due_after_the_header_delay_at_most_max_delay(delay_ns, now):
    action = policy(max_delay=10.0, max_queue=1).decide(forward(delay_ns), now, 0)
    if delay_ns == 0:
        assert isinstance(action, ForwardNow)
    else:
        assert isinstance(action, Hold)
        assert action.due == pytest.approx(now + min(delay_ns * 1e-9, 10.0))
        assert action.capped == (delay_ns > 10_000_000_000)


# --- the presence debounce -------------------------------------------------------------------------


def test_a_lone_change_is_announced_at_once():
    d = PresenceDebounce(0.5)
    assert d.changed(100.0) and d.due is None
    assert d.changed(101.0)  # a second later: at once again


def test_a_burst_is_announced_twice_first_and_after_it_settles():
    d = PresenceDebounce(0.5)
    announced = [t for t in (0.0, 0.01, 0.1, 0.2, 0.3) if d.changed(t)]
    assert announced == [0.0]
    assert d.due == pytest.approx(0.8)  # settle after the last change
    assert not d.fire(0.79)  # early: nothing yet
    assert d.fire(0.8) and d.due is None
    assert not d.fire(2.0)  # nothing gathered, nothing to announce: no third announcement
    assert not d.changed(1.0)  # within settle of the last announcement: gathered
    assert d.fire(d.due)


@given(st.lists(st.floats(0, 0.1), min_size=1, max_size=50))
def test_announcements_never_come_closer_than_settle(gaps):
    d = PresenceDebounce(0.5)
    now, announced = 0.0, []
    for gap in gaps:
        now += gap
        due = d.due
        if due is not None and due <= now and d.fire(due):
            announced.append(due)
        if d.changed(now):
            announced.append(now)
    due = d.due
    if due is not None:
        assert d.fire(due)
        announced.append(due)
    assert all(b - a >= 0.5 - 1e-9 for a, b in itertools.pairwise(announced))


# --- delivery ------------------------------------------------------------------------------------


def test_single_identity_is_a_fleet_of_one():
    d = DeliveryPolicy(key_window=3, connection_window=3)
    d.has_mail(A)
    request = d.next_push()
    assert request == PushRequest(A, 0, 3)
    d.pushed(request, [4, 5, 6])  # a full round: there may be more
    assert d.next_push() is None  # window full
    d.acked([4])
    assert d.next_push() == PushRequest(A, 6, 1)  # resumes after the cursor, one slot free


def test_keys_take_turns_within_the_connection_window():
    d = DeliveryPolicy(key_window=2, connection_window=5)
    for key in (A, B, C):
        d.has_mail(key)
    served = []
    ids = iter(range(1, 100))
    while (request := d.next_push()) is not None:
        served.append((request.key, request.limit))
        d.pushed(request, [next(ids) for _ in range(request.limit)])
    # A, B get 2 each, C the last slot; A and B wait again, C too (its round was full)
    assert served == [(A, 2), (B, 2), (C, 1)]
    assert list(d.waiting) == [A, B, C]
    d.acked([1, 2, 3])
    assert d.next_push() == PushRequest(A, 2, 2)


def test_a_short_round_ends_a_keys_turn_and_pulls_share_the_cursor():
    d = DeliveryPolicy(key_window=4, connection_window=8)
    d.has_mail(A)
    request = d.next_push()
    d.pushed(request, [7])
    assert d.next_push() is None and not d.waiting
    assert d.pull_after(A) == 7
    d.pulled(A, [9, 11])
    d.has_mail(A)
    assert d.next_push() == PushRequest(A, 11, 4)  # one of 8 in flight: room for a full turn


def test_forgetting_keys_frees_their_window():
    d = DeliveryPolicy(key_window=2, connection_window=2)
    d.has_mail(A)
    d.pushed(d.next_push(), [1, 2])
    d.has_mail(B)
    assert d.next_push() is None
    assert d.forget({A})
    assert d.next_push() == PushRequest(B, 0, 2)
    assert not d.forget({C})


# --- the node's flags ------------------------------------------------------------------------------


def test_node_flags_default_to_node_config():
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    args = parser.parse_args(["--port", "9", "--key-file", "k.pem"])
    assert node_config_from_args(args) == NodeConfig(port=9)
    args = parser.parse_args(
        ["--port", "9", "--key-file", "k.pem", "--max-delay", "3", "--max-queue", "7"]
    )
    assert node_config_from_args(args) == NodeConfig(port=9, max_delay=3.0, max_queue=7)
