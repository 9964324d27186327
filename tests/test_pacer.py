"""The sender's C pacing loop (client/pacer.py, csrc/pacer.c) on real rings and real TCP sockets on
127.0.0.1: packets leave whole, in schedule order, never early, counted by stream and identity; frames
Python sends in between are never cut into; real packets of a link that is down are handed back."""

from __future__ import annotations

import array
import socket
import struct
import time

import pytest

from conftest import wait_until
from loopix.client.pacer import NO_LINK, Pacer
from loopix.client.ring import Ring, slot_size_for
from loopix.client.trace import RECORD

WIRE = 100
N_IDS = 4


@pytest.fixture
def tcp_pair():
    """A connected TCP pair on 127.0.0.1: (the pacer's end, the reader's end)."""
    lst = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(lst.getsockname())
    b, _ = lst.accept()
    lst.close()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


class Harness:
    def __init__(self, rings: int = 1, gap_ns: int = 0, trace: bool = True):
        self.rings = [Ring.create(64, slot_size_for(WIRE)) for _ in range(rings)]
        self.pacer = Pacer(self.rings, samples=8, refs_cap=1024, trace_cap=1024 if trace else 0, held_cap=16,
                           link_buffer=1 << 16, seed=bytes(32))
        self.pacer.set_min_gap(gap_ns)
        self.ready = bytearray(b"\x01" * N_IDS)
        self.link_of = array.array("I", [0] * N_IDS)
        self.sent = [array.array("Q", bytes(8 * N_IDS)) for _ in range(3)]
        self.real = array.array("Q", bytes(8 * N_IDS))
        with self.pacer.locked():
            self.pacer.bind(self.ready, self.link_of, self.sent, self.real)
        self.writes = [0] * rings

    def put(self, k: int, t: int, identity: int, stream: int, real: bool, seq: int) -> bytes:
        ring = self.rings[k]
        w = self.writes[k]
        wire = struct.pack("<QIB", seq, identity, stream) + bytes([seq % 251]) * (WIRE - 13)
        ring.write_meta(w, t, identity, stream, WIRE, seq, 1 if real else 0)
        ring.wire_view(w)[:WIRE] = wire
        self.writes[k] = w + 1
        ring.publish(w + 1, t)
        return wire

    def close(self):
        self.pacer.close()
        for r in self.rings:
            r.close()


def read_exactly(sock: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "connection closed early"
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("gap_us", [0, 300])
def test_packets_leave_whole_in_order_never_early_and_counted(tcp_pair, gap_us):
    a, b = tcp_pair
    h = Harness(rings=2, gap_ns=gap_us * 1000)
    try:
        h.pacer.set_link(0, a.fileno())
        a.detach()  # the pacer owns the descriptor now
        h.pacer.start()
        now = time.monotonic_ns()
        expected = {}
        n = 40
        for i in range(n):
            t = now + 20_000_000 + i * 250_000
            expected[i] = (t, h.put(i % 2, t, i % N_IDS, i % 3, i % 5 == 0, i))
        data = read_exactly(b, n * WIRE)
        seqs = [struct.unpack_from("<Q", data, j * WIRE)[0] for j in range(n)]
        assert sorted(seqs) == list(range(n))
        for k in range(2):  # each ring in its order (packets due together share a write, ring by ring)
            assert [s for s in seqs if s % 2 == k] == list(range(k, n, 2))
        assert all(data[j * WIRE : (j + 1) * WIRE] == expected[s][1] for j, s in enumerate(seqs))
        wait_until(lambda: sum(h.pacer.totals()["sent"]) == n, "every packet sent", 10.0, 0.002)
        totals = h.pacer.totals()
        assert totals["sent"] == [len(range(s, n, 3)) for s in range(3)]
        assert totals["real_sent"] == len(range(0, n, 5)) and totals["error"] == 0
        assert [list(a) for a in h.sent] == [[sum(1 for i in range(n) if i % 3 == s and i % N_IDS == k)
                                              for k in range(N_IDS)] for s in range(3)]
        refs, sent_ns = h.pacer.take_refs()
        assert sorted(refs) == list(range(0, n, 5))  # in sending order: due together, ring by ring
        raw = h.pacer.take_trace()
        assert len(raw) == n * RECORD.size
        trace = list(RECORD.iter_unpack(raw))
        by_seq = {}
        for sched, actual, identity, stream, real in trace:
            assert actual >= sched  # never early
            assert actual - sched < 500_000_000
            by_seq[sched] = (identity, stream, real)
        assert {expected[i][0]: (i % N_IDS, i % 3, int(i % 5 == 0)) for i in range(n)} == by_seq
        assert sent_ns == [tr[1] for tr in trace if tr[4]]
        seconds = h.pacer.take_seconds()
        assert sum(c[0] + c[1] + c[2] for _, c in seconds) == n and sum(c[3] for _, c in seconds) == 8
        late, seen = h.pacer.take_lateness()
        assert seen == n and len(late) == 8 and all(x >= 0 for x in late)
        assert h.pacer.take_seconds() == [] and h.pacer.take_lateness() == ([], 0)
        if gap_us:
            assert totals["writes"] < n  # packets due within the gap shared a write
    finally:
        h.close()


def test_coalescing_waits_for_the_last_packet_due_in_the_window_and_never_longer(tcp_pair):
    """Three packets due within 300 µs go in one write at the last one's time; a packet 50 ms later
    has nobody in its window, so it is not held back for it."""
    a, b = tcp_pair
    h = Harness(rings=2)
    h.pacer.set_coalesce(300_000)  # with 0 the first packet leaves at its own time: the test fails
    try:
        h.pacer.set_link(0, a.fileno())
        a.detach()
        now = time.monotonic_ns()
        due = [now + 30_000_000, now + 30_100_000, now + 30_250_000, now + 80_000_000]
        for i, t in enumerate(due):  # before the loop starts, so the window sees them all
            h.put(i % 2, t, i % N_IDS, 1, False, i)
        h.pacer.start()
        data = read_exactly(b, len(due) * WIRE)
        assert sorted(struct.unpack_from("<Q", data, j * WIRE)[0] for j in range(len(due))) == [0, 1, 2, 3]
        wait_until(lambda: sum(h.pacer.totals()["sent"]) == len(due), "every packet sent", 10.0, 0.002)
        trace = {sched: actual for sched, actual, *_ in RECORD.iter_unpack(h.pacer.take_trace())}
        first = [trace[t] for t in due[:3]]
        assert len(set(first)) == 1 and first[0] >= due[2]  # one round, not before the last was due
        assert trace[due[3]] >= due[3]
        assert h.pacer.totals()["writes"] <= 2  # the three shared one
    finally:
        h.close()


def test_python_frames_are_never_cut_into_by_packets(tcp_pair):
    a, b = tcp_pair
    h = Harness()
    try:
        h.pacer.set_link(0, a.fileno())
        a.detach()
        h.pacer.start()
        now = time.monotonic_ns()
        n = 60
        for i in range(n):
            h.put(0, now + i * 100_000, 0, 1, False, i)
        frame = b"F" * 7 + b"!"
        frames = 0

        def sent() -> int:
            return sum(h.pacer.totals()["sent"])

        while (before := sent()) < n:  # a frame, then the next packet: the two interleave throughout
            assert h.pacer.send(0, frame) == 0
            frames += 1
            wait_until(lambda: sent() > before, "the pacer to send its next packet", 10.0, 0.0002)
        data = read_exactly(b, n * WIRE + frames * len(frame))
        j = seen = 0
        while j < len(data):  # whole units only: a frame or a packet, never one inside the other
            if data[j : j + len(frame)] == frame:
                j += len(frame)
            else:
                assert struct.unpack_from("<Q", data, j)[0] == seen
                seen += 1
                j += WIRE
        assert seen == n and frames > 0
    finally:
        h.close()


def test_a_link_down_hands_back_real_packets_and_counts_cover():
    h = Harness()
    try:
        h.pacer.start()  # link 0 has no connection
        now = time.monotonic_ns()
        wires = [h.put(0, now + i * 1000, 1, i % 3, i % 2 == 0, 100 + i) for i in range(6)]
        held = []
        wait_until(lambda: held.extend(h.pacer.take_held()) or len(held) == 3, "three held packets", 10.0, 0.002)
        assert [(x[1], x[2], x[3], x[4], x[5]) for x in held] == [
            (1, i % 3, 1, 100 + i, wires[i]) for i in range(0, 6, 2)]
        totals = h.pacer.totals()
        assert totals["unconnected"] == [1, 1, 1] and totals["held"] == 3 and sum(totals["sent"]) == 0
        assert h.rings[0].read_index == 6  # the slots are free again
        assert h.pacer.send(0, b"x") == NO_LINK
        # Python sends a held one itself when the link is back: accounted the same way
        assert h.pacer.account(held[0][0], time.monotonic_ns(), 1, held[0][2], 1, held[0][4])
        assert h.pacer.totals()["real_sent"] == 1 and h.real[1] == 1
        assert h.pacer.take_refs()[0] == [100]
    finally:
        h.close()


def test_a_corrupt_slot_stops_the_pacer_with_an_error():
    h = Harness()
    try:
        h.rings[0].write_meta(0, time.monotonic_ns(), 0, 7, WIRE)  # no stream 7
        h.rings[0].publish(1)
        h.pacer.start()
        wait_until(lambda: not h.pacer.alive, "the pacer to stop", 10.0, 0.002)
        assert h.pacer.totals()["error"] != 0
    finally:
        h.close()


def test_merged_sender_stats_sum_counts_and_weight_lateness_by_packets():
    from loopix.client import control
    from loopix.client.coordinator import merge_sender_stats
    from loopix.csprng import Csprng

    def report(sent, late, seen, seconds):
        return control.SenderStats(sent=sent, real_sent=sent[0], loops_back=1, loops_sent_by_second={7: sent[1]},
                                   loop_back_sent_ns=[1], loop_back_rtt_ns=[2], lateness_us=late, connected=2,
                                   dropped_unconnected=1, received=3, unsent_by_stream=[1, 0, 0],
                                   sent_by_second=seconds, lateness_seen=seen)

    a = report([30, 10, 5], [1.0] * 2000, 3000, {7: [30, 10, 5, 30]})
    b = report([10, 5, 5], [2.0] * 1000, 1000, {7: [10, 5, 5, 10], 8: [1, 0, 0, 0]})
    m = merge_sender_stats([[a], [b]], [a, b], Csprng())
    assert m.sent == [40, 15, 10] and m.real_sent == 40 and m.connected == 4 and m.received == 6
    assert m.sent_by_second == {7: [40, 15, 10, 40], 8: [1, 0, 0, 0]} and m.loops_sent_by_second == {7: 15}
    assert m.unsent_by_stream == [2, 0, 0] and m.dropped_unconnected == 2 and m.lateness_seen == 4000
    # one uniform sample of the 4,000 packets: 3/4 from the first sender's, 1/4 from the second's
    assert m.lateness_us.count(1.0) == 1500 and m.lateness_us.count(2.0) == 500
    small = merge_sender_stats([[report([1, 0, 0], [5.0], 1, {})], [report([1, 0, 0], [6.0], 1, {})]],
                               [a, b], Csprng())
    assert sorted(small.lateness_us) == [5.0, 6.0]  # samples that are every packet are kept whole
