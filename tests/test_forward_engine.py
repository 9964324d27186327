"""The node's C forward engine (csrc/node.c) held to the Python statement of its rules.

The reference is what testnet/decisions.py says (HopPolicy with its ReplayFilter and DelayQueue)
over the typed unwrap, and wire/framing.py's FrameDecoder for the frames. Both are driven with
the same packets, times and chunkings; everything the engine hands back must match.
"""

from __future__ import annotations

import functools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopix.sphinx import Hop, PacketProcessor, build_packet, keypair
from loopix.testnet.decisions import (
    DelayQueue,
    Deliver,
    Drop,
    ForwardNow,
    Hold,
    HopPolicy,
    ReplayFilter,
)
from loopix.testnet.engine import ForwardEngine, LinkFrames
from loopix.wire.address import encode_node_address
from loopix.wire.errors import ProtocolError
from loopix.wire.framing import FrameDecoder, encode_frame

MS = 0.001
A = encode_node_address("127.0.0.1", 7001)
B = encode_node_address("127.0.0.1", 7002)
MAX_DELAY = 3.5 * MS


@functools.cache
def pool() -> tuple[bytes, list[bytes]]:
    """A node key and packets for it: forwards to two hops with delays around the cap (in half
    milliseconds, so no due time falls on the whole-millisecond clock), two packet sizes, finals,
    a tampered one and one for another key."""
    secret, public = keypair()
    _, other = keypair()
    _, next_public = keypair()
    packets = []
    for i, delay_ms in enumerate([0, 0, 0, 1.5, 2.5, 5.5, 0, 1.5]):
        hop = A if i % 2 else B
        route = [Hop(public, encode_node_address("127.0.0.1", 1)), Hop(next_public, hop)]
        size = 21 if i >= 6 else 2048
        packets.append(build_packet(route, bytes(32), b"m%d" % i, [int(delay_ms * 1e6), 0], payload_size=size))
    packets.append(build_packet([Hop(public, A)], b"d" * 32, b"final one", [0]))
    packets.append(build_packet([Hop(public, A)], b"e" * 32, b"final two", [0]))
    tampered = bytearray(packets[0])
    tampered[40] ^= 1
    packets.append(bytes(tampered))
    packets.append(build_packet([Hop(other, A), Hop(next_public, B)], bytes(32), b"x", [0, 0]))
    return secret, packets


class Reference:
    """The node's rules in Python: typed unwrap, HopPolicy, ReplayFilter, DelayQueue."""

    def __init__(self, secret: bytes, capacity: int, max_queue: int) -> None:
        self.processor = PacketProcessor(secret, 128)
        self.policy = HopPolicy(ReplayFilter(capacity).seen, MAX_DELAY, max_queue)
        self.queue: DelayQueue[tuple[bytes, bytes, float]] = DelayQueue()
        self.backlog: list[tuple[bytes, float]] = []

    def step(self, now: float, n: int):
        take, self.backlog = self.backlog[:n], self.backlog[n:]
        forwarded, late, drops, finals, capped = [], [], Counter(), [], 0
        for packet, arrival in take:
            out = bytearray(len(packet))
            (result,) = self.processor.unwrap(packet, 1, len(packet), out)
            action = self.policy.decide(result, now, len(self.queue))
            if type(action) is ForwardNow:
                forwarded.append((action.address, action.packet))
                late.append(now - arrival)
            elif type(action) is Hold:
                capped += action.capped
                self.queue.push(action.due, (action.address, action.packet, arrival + (action.due - now)))
            elif type(action) is Deliver:
                finals.append((action.destination, action.message))
            else:
                assert type(action) is Drop
                drops[action.reason] += 1
        return forwarded, late, drops, finals, capped

    def release(self, now: float):
        due = self.queue.pop_due(now)
        return [(a, p) for a, p, _t in due], [now - t for _a, _p, t in due]


def by_hop(forwarded):
    """Per next hop and packet size, in order (the engine's groups: one run of frames each)."""
    out: dict[tuple[bytes, int], list[bytes]] = {}
    for address, packet in forwarded:
        out.setdefault((address, len(packet)), []).append(packet)
    return out


def engine_forwarded(groups):
    out: dict[tuple[bytes, int], list[bytes]] = {}
    for address, length, count, frames in groups:
        step = length + 3
        assert len(frames) == count * step
        for i in range(count):
            frame = frames[i * step : (i + 1) * step]
            assert FrameDecoder().feed(frame)[0].packet == frame[3:]  # a valid version-7 frame
            out.setdefault((address, length), []).append(frame[3:])
    return out


def unrolled(late):
    return sorted(us for us, count in late for _ in range(count))


def as_us(seconds):
    return sorted(round(s * 1e6) for s in seconds)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.lists(st.integers(0, 11), min_size=1, max_size=12)),
        st.tuples(st.just("step"), st.integers(1, 8)),
        st.tuples(st.just("tick"), st.integers(1, 4)),
    ),
    max_size=30,
)


@settings(deadline=None, max_examples=120)
@given(ops, st.integers(1, 6), st.integers(0, 5))
def test_engine_decides_what_the_reference_decides(script, capacity, max_queue):
    secret, packets = pool()
    engine = ForwardEngine(secret, batch=8, replay_capacity=capacity, max_queue=max_queue, max_delay=MAX_DELAY)
    ref = Reference(secret, capacity, max_queue)
    now_ms = 1000
    for op, arg in script:
        now = now_ms * MS
        if op == "push":
            batch = [packets[i] for i in arg]
            assert engine.push(batch, now) == len(batch)
            ref.backlog += [(p, now) for p in batch]
        elif op == "step":
            forwarded, late, drops, finals, capped = ref.step(now, arg)
            out = engine.step(now, arg)
            assert out.failed == 0
            assert engine_forwarded(out.groups) == by_hop(forwarded)
            assert out.forwarded == len(forwarded)
            assert dict(out.drops) == dict(drops)
            assert [(d, bytes(m)) for d, m in out.finals] == finals
            assert out.capped == capped
            assert unrolled(out.late) == as_us(late)
        else:
            now_ms += arg
            now = now_ms * MS
            forwarded, late = ref.release(now)
            out = engine.release(now)
            assert engine_forwarded(out.groups) == by_hop(forwarded)
            assert all(abs(a - b) <= 1 for a, b in zip(unrolled(out.late), as_us(late), strict=True))
        assert engine.backlog == len(ref.backlog)
        assert engine.held == len(ref.queue)
        due = ref.queue.next_due()
        assert (engine.next_due() is None) == (due is None)
        if due is not None:
            assert engine.next_due() == pytest.approx(due, abs=1e-9)


def test_release_goes_in_due_order_ties_in_arrival_order():
    secret, packets = pool()
    engine = ForwardEngine(secret, batch=64, replay_capacity=100, max_queue=100, max_delay=1.0)
    late, early = packets[4], packets[3]  # 2.5 ms, then 1.5 ms, both to A... or B
    engine.push([late, early], 1.0)
    engine.step(1.0)
    out = engine.release(1.0 + 3 * MS)
    sent = [p for ps in engine_forwarded(out.groups).values() for p in ps]
    assert len(sent) == 2 and engine.held == 0
    assert out.late == [(1500, 1), (500, 1)]  # the 1.5 ms one first, 1.5 ms late; then 0.5 ms


def test_frames_handed_out_stay_intact_while_held():
    """A socket may keep a view of one step's frames after the node moved on (a partial write):
    later steps and releases must not write over it."""
    secret, packets = pool()
    engine = ForwardEngine(secret, batch=8, replay_capacity=100, max_queue=10, max_delay=1.0)
    engine.push([packets[0], packets[1]], 1.0)
    first = engine.step(1.0).groups
    kept = [bytes(frames) for _a, _n, _c, frames in first]
    engine.push([packets[2], packets[6], packets[3]], 1.0)
    engine.step(1.0)
    engine.release(2.0)
    assert [bytes(frames) for _a, _n, _c, frames in first] == kept


@settings(deadline=None, max_examples=200)
@given(st.lists(st.integers(0, 50), max_size=200), st.integers(1, 20))
def test_replay_window_matches_the_reference(stream, capacity):
    secret, _ = pool()
    engine = ForwardEngine(secret, batch=8, replay_capacity=capacity, max_queue=0, max_delay=1.0)
    ref = ReplayFilter(capacity)
    for x in stream:
        tag = x.to_bytes(32, "big")
        assert engine.replay_seen(tag) == ref.seen(tag)
        assert engine.replay_count == len(ref) <= 2 * capacity


def test_replay_dump_and_load_keep_the_window_under_the_same_key_only():
    secret, _ = pool()
    engine = ForwardEngine(secret, batch=8, replay_capacity=3, max_queue=0, max_delay=1.0)
    tags = [bytes([i]) * 32 for i in range(5)]
    for tag in tags:
        engine.replay_seen(tag)
    dump = engine.replay_dump(b"K" * 32)
    assert dump.endswith(b"".join(tags[3:]))  # tags 0..2 rotated out with the third add
    again = ForwardEngine(secret, batch=8, replay_capacity=3, max_queue=0, max_delay=1.0)
    assert again.replay_load(dump, b"K" * 32) == engine.replay_count
    assert all(again.replay_seen(t) for t in tags[3:])
    assert not again.replay_load(dump, b"L" * 32)


def test_backlog_is_bounded_and_counts_what_it_refused():
    secret, packets = pool()
    engine = ForwardEngine(secret, batch=8, replay_capacity=10, max_queue=0, max_delay=1.0)
    ack = packets[6]  # the smallest packets: the count bound, 16,384, comes first
    assert engine.push([ack] * 16_000, 0.0) == 16_000
    assert engine.push([ack] * 1_000, 0.0) == 384
    stream = encode_frame(ack) * 10
    r = engine.ingest(stream, 0.0)
    assert (r.frames, r.backlog_full, r.consumed) == (10, 10, len(stream))
    while engine.backlog:
        engine.step(0.0)
    assert engine.push([ack], 0.0) == 1  # room again


def test_injected_drops_take_forwards_only_after_the_replay_check():
    secret, packets = pool()
    for rate, injected in ((0.0, 0), (1.0, 3)):
        engine = ForwardEngine(secret, batch=128, replay_capacity=100, max_queue=10, max_delay=1.0,
                               drop_rate=rate, seed=bytes(32))  # fmt: skip
        out = engine.step(0.0) if engine.push([packets[0], packets[1], packets[3], packets[0], packets[8]], 0.0) else None
        drops = dict(out.drops)
        assert drops.get("injected", 0) == injected
        assert drops["replay"] == 1
        assert len(out.finals) == 1  # a provider stores what reached it
        assert out.forwarded + engine.held == 3 - injected


def test_refuses_settings_it_cannot_honour():
    secret, _ = pool()
    for bad in ({"replay_capacity": 0}, {"batch": 0}, {"drop_rate": 1.5}):
        kwargs = {"batch": 8, "replay_capacity": 10, "max_queue": 0, "max_delay": 1.0, **bad}
        with pytest.raises(ValueError):
            ForwardEngine(secret, **kwargs)
    with pytest.raises(ValueError):
        ForwardEngine(b"short", batch=8, replay_capacity=10, max_queue=0, max_delay=1.0)


# --- frames ---------------------------------------------------------------------------------------

sizes = st.sampled_from([0, 1])  # which pool packet: a regular one, an ack-sized one
headers = st.sampled_from([(7, 0), (8, 0), (8, 2)])
corruption = st.one_of(
    st.none(),
    st.tuples(st.integers(0, 10_000), st.sampled_from([0, 6, 9, 255]), st.integers(0, 3)),
)


@settings(deadline=None, max_examples=150)
@given(
    st.lists(st.tuples(sizes, headers), max_size=8),
    st.lists(st.integers(1, 6000), max_size=12),
    corruption,
)
def test_link_frames_match_the_frame_decoder(specs, cuts, corrupt):
    secret, packets = pool()
    chosen = [(packets[0] if s == 0 else packets[6], v, r) for s, (v, r) in specs]
    stream = bytearray(b"".join(encode_frame(p, v, r) for p, v, r in chosen))
    if corrupt is not None and stream:
        at, value, field = corrupt
        stream[at % len(stream)] = value if field else stream[at % len(stream)] ^ value
    engine = ForwardEngine(secret, batch=64, replay_capacity=100, max_queue=0, max_delay=1.0)
    link, decoder = LinkFrames(engine), FrameDecoder()
    expected, got, error, pos = [], 0, None, 0
    for cut in [*cuts, len(stream)]:
        chunk = bytes(stream[pos : pos + cut])
        pos += len(chunk)
        for item in decoder.feed(chunk):
            if isinstance(item, ProtocolError):
                error = item.reason
            else:
                expected.append(item.packet)
        frames, full, failed = link.feed(chunk, 0.0)
        assert full == 0
        got += frames
        if failed is not None:
            assert failed.reason == error
            assert link.dead
    assert got == len(expected)
    assert link.dead == (error is not None)
    if error is None:
        assert link.pending == decoder.pending
    assert engine.backlog == len(expected)
    out = engine.step(0.0, 64)
    assert out.processed == len(expected)
    if corrupt is None:  # the packets came through intact: each unwraps, or repeats an earlier one
        assert out.forwarded + dict(out.drops).get("replay", 0) == len(expected)


def test_link_frames_eof_in_the_middle_of_a_frame():
    secret, packets = pool()
    engine = ForwardEngine(secret, batch=8, replay_capacity=10, max_queue=0, max_delay=1.0)
    link = LinkFrames(engine)
    frame = encode_frame(packets[0])
    assert link.feed(frame + frame[:100], 0.0) == (1, 0, None)
    error = link.eof()
    assert error is not None and "100 bytes pending" in error.reason and str(len(frame)) in error.reason
