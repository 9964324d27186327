"""The load-test aggregator and thresholds, fed synthetic streams with known answers."""

from __future__ import annotations

import argparse
import math
import random

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopix.loadtest.metrics import (
    HIST_HIGHEST_US,
    LoadMetrics,
    Summary,
    decode_histogram,
    erlang_cdf,
    erlang_quantile,
    new_histogram,
    node_totals,
    predicted_rtt_quantiles,
)
from loopix.loadtest.model import RttModel, ks_distance
from loopix.loadtest.thresholds import (
    EXIT_THRESHOLD_VIOLATED,
    METRICS,
    ThresholdError,
    ThresholdSet,
    argparse_threshold,
    parse_threshold,
)

S = 1_000_000_000
MS = 1_000_000


def exact_quantile(sorted_values: list[float], p: float) -> float:
    """HdrHistogram's definition: the smallest value with at least p of the samples <= it."""
    return sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)]


# --- the Erlang prediction ------------------------------------------------------------------------


def test_erlang_k1_is_exponential_and_k3_median():
    for x in (1.0, 50.0, 200.0):
        assert erlang_cdf(x, 1, 50.0) == pytest.approx(1 - math.exp(-x / 50.0), rel=1e-12)
    # the median of Erlang(3) is 2.67406 × the mean of one stage
    assert erlang_quantile(0.5, 3, 50.0) == pytest.approx(2.674060314 * 50.0, rel=1e-7)
    assert erlang_cdf(0.0, 3, 50.0) == 0.0
    assert erlang_quantile(0.0, 3, 50.0) == 0.0
    with pytest.raises(ValueError):
        erlang_quantile(1.0, 3, 50.0)


def test_erlang_without_delay_is_a_step():
    assert erlang_quantile(0.99, 3, 0.0) == 0.0
    assert erlang_cdf(0.1, 3, 0.0) == 1.0
    assert predicted_rtt_quantiles(0.0, 3, (0.5,)) == {0.5: 0.0}


@given(
    p=st.floats(0.001, 0.9999),
    k=st.integers(1, 8),
    mean=st.floats(0.01, 10_000.0),
)
def test_erlang_quantile_inverts_the_cdf(p, k, mean):
    x = erlang_quantile(p, k, mean)
    assert erlang_cdf(x, k, mean) == pytest.approx(p, abs=1e-9)


def test_predicted_quantiles_are_the_unshifted_erlang():
    q = predicted_rtt_quantiles(50.0, 3, (0.5, 0.99))
    assert q[0.5] == pytest.approx(erlang_quantile(0.5, 3, 50.0))
    assert q[0.99] > q[0.5]


def test_hypoexponential_matches_closed_forms():
    # two distinct rates: F(x) = 1 - (l2 e^{-l1 x} - l1 e^{-l2 x}) / (l2 - l1)
    l1, l2 = 1 / 20.0, 1 / 70.0
    model = RttModel((20.0, 70.0))
    for x in (1.0, 30.0, 90.0, 400.0):
        exact = 1 - (l2 * math.exp(-l1 * x) - l1 * math.exp(-l2 * x)) / (l2 - l1)
        assert model.cdf(x) == pytest.approx(exact, abs=1e-9)
    # repeated means mixed with another: the mean of the sum is the sum of the means
    mixed = RttModel((30.0, 30.0, 10.0))
    assert "hypoexponential" in mixed.name
    xs = [i * 0.5 for i in range(4000)]
    mean = sum((1 - mixed.cdf(x)) * 0.5 for x in xs)  # E[X] = integral of the survival function
    assert mean == pytest.approx(70.0, rel=0.01)
    assert RttModel((50.0,) * 3).name == "Erlang(k=3, mean 50 ms)"


def test_ks_distance_of_a_model_sample_is_small_and_of_a_shifted_one_large():
    rng = random.Random(5)
    model = RttModel((50.0, 50.0, 50.0))
    same, shifted = new_histogram(), new_histogram()
    for _ in range(20_000):
        us = int(sum(rng.expovariate(1 / 50.0) for _ in range(3)) * 1000)
        same.record_value(us)
        shifted.record_value(us + 40_000)  # 40 ms of queueing on top of the delays
    assert ks_distance(same, model) < 0.015  # 1.36/sqrt(n) = 0.0096 at the 5 % level
    assert ks_distance(shifted, model) > 0.15
    assert ks_distance(new_histogram(), model) is None


# --- RTT percentiles ------------------------------------------------------------------------------


def test_rtt_percentiles_within_hdr_precision_of_an_erlang_sample():
    rng = random.Random(11)
    mean_ms, offset_ms = 50.0, 5.0
    m = LoadMetrics(0, mean_ms, 3, grace_s=30, start_wall_ns=0)
    rtts_ms = []
    for sec in range(20):
        for i in range(2500):
            sent = sec * S + i * 400_000
            m.record_sent("loop", 1, sent)
            rtt_ns = int((sum(rng.expovariate(1 / mean_ms) for _ in range(3)) + offset_ms) * MS)
            m.record_loop_back(sent, sent + rtt_ns)
            rtts_ms.append((rtt_ns // 1000) / 1000)  # what the µs histogram sees
        m.tick((sec + 1) * S)
    s = m.summary()
    rtts_ms.sort()
    assert s.rtt.count == len(rtts_ms) == 50_000
    for p, got in (
        (0.5, s.rtt.p50_ms),
        (0.9, s.rtt.p90_ms),
        (0.99, s.rtt.p99_ms),
        (0.999, s.rtt.p999_ms),
        (1.0, s.rtt.max_ms),
    ):
        exact = exact_quantile(rtts_ms, p)
        # 3 significant digits: a reported value is within 1/1000 of the true one (+1 µs)
        assert got == pytest.approx(exact, rel=1e-3, abs=1e-3), p
    # and the sample agrees with the model it was drawn from (statistical tolerance)
    pred = predicted_rtt_quantiles(mean_ms, 3, (0.5, 0.9, 0.99))
    assert s.rtt.p50_ms == pytest.approx(pred[0.5] + offset_ms, rel=0.03)
    assert s.rtt.p90_ms == pytest.approx(pred[0.9] + offset_ms, rel=0.03)
    assert s.rtt.p99_ms == pytest.approx(pred[0.99] + offset_ms, rel=0.06)
    # the model is not shifted: the constant 5 ms shows up as excess, and in the KS distance
    assert s.rtt_excess_ms["p50"] == pytest.approx(offset_ms, abs=3.0)
    assert s.rtt_model == "Erlang(k=3, mean 50 ms)" and s.hop_means_ms == [50.0] * 3
    assert 0.01 < s.rtt_ks < 0.06
    assert s.predicted_rtt_ms["p50"] == pytest.approx(erlang_quantile(0.5, 3, mean_ms))
    assert set(s.predicted_rtt_ms) == {"p50", "p90", "p99", "p999"}
    # the per-second and cumulative columns
    last = m.history[-1]
    assert last.rtt_p50_cum_ms == s.rtt.p50_ms
    assert last.rtt_p99_cum_ms == s.rtt.p99_ms
    assert last.rtt_p50_ms is not None and last.loops_back_per_s == 2500


def test_loss_counts_every_reason_and_thresholds_see_it():
    m = LoadMetrics(0, 10.0, grace_s=1, start_wall_ns=0)
    m.record_sent("loop", 100, 0)
    for _ in range(95):
        m.record_loop_back(0, 200 * MS)  # 5 sent loops never come back
    m.record_unsent("link_down", "loop", 40, 500 * MS)  # the provider link was down
    m.record_unsent("link_down", "payload", 80, 500 * MS)
    m.record_unsent("no_route", 1, 10, 600 * MS)
    m.record_unsent("build_error", "drop", 3, 600 * MS)
    m.tick(3 * S)
    s = m.summary()
    assert s.loops.loss == pytest.approx(5 / 100)  # the network's own share
    assert s.loss.scheduled == 150 and s.loss.lost == 55
    assert s.loss.by_reason == {"not_back": 5, "link_down": 40, "no_route": 10, "build_error": 0}
    assert s.loss.loss == pytest.approx(55 / 150)
    assert s.loss.unsent["link_down"] == {"payload": 80, "loop": 40, "drop": 0}
    assert s.loss.unsent_total == 133 and m.history[-1].unsent == 133
    assert m.history[-1].loss == pytest.approx(55 / 150)
    t = ThresholdSet(["loss<1%", "loss_link_down<=0.2", "loss_not_back<10%", "unsent_build_error==3"])
    assert [r.passed for r in t.check(s)] == [False, False, True, True]
    with pytest.raises(ValueError):
        m.record_unsent("gremlins", "loop", 1, 0)


def test_rtt_above_the_histogram_range_is_clamped_and_counted():
    m = LoadMetrics(0, 50.0, grace_s=100, start_wall_ns=0)
    m.record_sent("loop", 2, 0)
    m.record_loop_back(0, 90 * S)
    m.record_loop_back(0, -5)  # clock nonsense: a negative RTT records as 0
    m.tick(91 * S)
    s = m.summary()
    assert s.loops.rtt_clamped == 1
    assert s.rtt.count == 2
    assert s.rtt.max_ms == pytest.approx(HIST_HIGHEST_US / 1000, rel=1e-3)
    assert s.rtt.min_ms == 0.0


# --- loss -----------------------------------------------------------------------------------------


def test_loss_is_judged_by_sent_second_after_the_grace_window():
    m = LoadMetrics(0, 50.0, 3, grace_s=2, start_wall_ns=0)
    # second 0: 100 loops, 90 back quickly; second 1: 100 loops, all back just before 3 s
    for i in range(100):
        m.record_sent("loop", 1, i * 10 * MS)
    for i in range(90):
        m.record_loop_back(i * 10 * MS, i * 10 * MS + 100 * MS)
    m.record_sent("loop", 100, S + 500 * MS)
    r1 = m.tick(1 * S)
    r2 = m.tick(2 * S)
    assert r1.loss is None and r2.loss is None and r2.loops_settled == 0
    m.record_loop_backs([S + 500 * MS] * 100, 2 * S + 900 * MS)
    r3 = m.tick(3 * S)  # second 0 is judged (it ended 3 s ago >= grace 2 s); second 1 not yet
    assert (r3.loops_settled, r3.loops_lost) == (100, 10)
    assert r3.loss == pytest.approx(0.10)
    # 5 of the missing 10 come back late: they leave the lost count and are counted as late
    for i in range(90, 95):
        m.record_loop_back(i * 10 * MS, 3 * S + 500 * MS)
    r4 = m.tick(4 * S)
    assert (r4.loops_settled, r4.loops_lost) == (200, 5)
    s = m.summary()
    assert (s.loops.sent, s.loops.back, s.loops.lost, s.loops.late) == (200, 195, 5, 5)
    assert s.loops.loss == pytest.approx(5 / 200)
    assert s.loops.pending == 0


def test_pending_loops_are_not_judged_yet():
    m = LoadMetrics(0, 50.0, grace_s=5, start_wall_ns=0)
    m.record_sent("loop", 10, 0)
    m.record_sent("loop", 10, 3 * S)
    m.record_loop_back(3 * S, 3 * S + 10 * MS)
    m.tick(6 * S)
    s = m.summary()
    assert (s.loops.settled, s.loops.lost, s.loops.pending) == (10, 10, 9)


loop_strategy = st.lists(
    st.tuples(
        st.integers(0, 8 * S - 1),  # sent at
        st.one_of(st.none(), st.integers(0, 4 * S)),  # rtt, or lost
    ),
    max_size=200,
)


@given(loops=loop_strategy, grace_s=st.sampled_from([0.5, 1.0, 2.5]))
def test_loss_rows_match_a_brute_force_count(loops, grace_s):
    m = LoadMetrics(0, 50.0, grace_s=grace_s, start_wall_ns=0)
    events = []
    for sent, rtt in loops:
        events.append((sent, 0, sent))
        if rtt is not None:
            events.append((sent + rtt, 1, sent))
    events.sort()
    grace_ns = int(grace_s * S)
    i = 0
    for t in range(1, 15):
        now = t * S
        while i < len(events) and events[i][0] < now:
            at, kind, sent = events[i]
            if kind == 0:
                m.record_sent("loop", 1, sent)
            else:
                m.record_loop_back(sent, at)
            i += 1
        row = m.tick(now)
        judged_seconds = max(0, (now - grace_ns) // S)
        settled = [(s, r) for s, r in loops if s // S < judged_seconds]
        lost = sum(1 for s, r in settled if r is None or s + r >= now)
        assert row.loops_settled == len(settled)
        assert row.loops_lost == lost
        assert row.loops_sent == sum(1 for s, _ in loops if s < now)
    s = m.summary()
    assert s.loops.lost == sum(1 for _, r in loops if r is None)
    assert s.loops.late == sum(1 for _, r in loops if r is not None and r > grace_ns)


# --- rates, lateness, messages --------------------------------------------------------------------


def test_rates_per_stream_and_irregular_ticks():
    m = LoadMetrics(0, 50.0, start_wall_ns=0)
    m.record_sent("payload", 300, 100 * MS)
    m.record_real_sent(30)
    m.record_sent(1, 150, 200 * MS)  # streams by index, as in client.schedule.Stream
    m.record_sent("drop", 60, 300 * MS)
    row = m.tick(1500 * MS)
    assert row.interval_s == pytest.approx(1.5)
    assert (row.payload_per_s, row.real_per_s, row.loop_per_s, row.drop_per_s) == (
        pytest.approx(200),
        pytest.approx(20),
        pytest.approx(100),
        pytest.approx(40),
    )
    row2 = m.tick(2500 * MS)
    assert row2.payload_per_s == 0 and row2.payload_sent == 300 and row2.real_sent == 30
    m.end_load(2 * S)
    s = m.summary()
    assert s.duration_s == 2.0 and s.elapsed_s == 2.5
    assert s.rates["payload"] == 150 and s.rates["real"] == 15 and s.rates["loop"] == 75
    assert s.sent == {"payload": 300, "loop": 150, "drop": 60}
    with pytest.raises(KeyError):
        m.record_sent("bogus", 1, 0)


def test_lateness_histogram():
    m = LoadMetrics(0, 50.0, start_wall_ns=0)
    for us in range(1, 1001):
        m.record_lateness(us * 1000)
    m.record_lateness(-3000)  # early: counts as 0
    row = m.tick(S)
    s = m.summary()
    assert s.lateness.count == 1001
    assert s.lateness.p50_ms == pytest.approx(0.5, rel=2e-3)
    assert s.lateness.p99_ms == pytest.approx(0.99, rel=2e-3)
    assert row.lateness_p99_ms == s.lateness.p99_ms
    assert s.lateness.min_ms == 0.0
    m.tick(2 * S)  # an empty interval leaves the cumulative minimum alone
    assert m.summary().lateness.count == 1001


def test_messages_delivery_loss_and_late():
    m = LoadMetrics(0, 50.0, grace_s=2, start_wall_ns=0)
    for k in range(10):
        m.record_message_sent(k, k * 10 * MS)
    for k in range(7):
        assert m.record_message_delivered(k, k * 10 * MS + 300 * MS)
    assert not m.record_message_delivered("stranger", S)
    row = m.tick(1 * S)
    assert (row.messages_sent, row.messages_delivered, row.messages_lost) == (10, 7, 0)
    assert row.delivered_per_s == 7
    row = m.tick(3 * S)
    assert row.messages_lost == 3
    assert m.record_message_delivered(7, 3500 * MS)  # late: moves from lost to late
    m.tick(4 * S)
    s = m.summary()
    assert (s.messages.delivered, s.messages.lost, s.messages.late, s.messages.unknown) == (
        8,
        2,
        1,
        1,
    )
    assert s.messages.delivery == pytest.approx(0.8)
    assert s.message_latency.count == 8
    assert s.message_latency.p50_ms == pytest.approx(300, rel=1e-3)
    assert s.message_latency.max_ms == pytest.approx(3430, rel=1e-3)


# --- node counters --------------------------------------------------------------------------------


def report(key, t_s, received, *, layer=1, dropped=0, **extra):
    base = {
        "pubKey": key,
        "timestamp": int(t_s * S),
        "host": f"10.0.0.{layer}:9000",
        "kind": "mixnode" if layer else "provider",
        "sent": {"10.0.0.9:1": received},
        "received": received,
        "forwarded": received,
        "dropped": {"x": dropped},
        "queue": 2,
    }
    if layer:
        base["layer"] = layer
    return base | extra


def test_node_counters_dedup_baseline_and_restart():
    m = LoadMetrics(0, 50.0, start_wall_ns=0)
    # the directory returns its whole window each time: overlapping snapshots
    assert m.record_node_counters([report("A", -2, 500), report("A", -1, 1000)]) == 2
    assert m.record_node_counters([report("A", -1, 1000), report("A", 1, 1100)]) == 1
    # node A restarts (counter goes down), node B appears mid-run
    m.record_node_counters([report("A", 2, 50, dropped=4), report("B", 2, 10, layer=2)])
    m.record_node_counters(report("B", 3, 40, layer=2))
    m.record_node_counters([{"garbage": True}, report("P", 3, 7, layer=0, stored=5)])
    row = m.tick(4 * S)
    assert row.nodes == 1  # the last snapshot named one valid node
    totals = {n.pub_key: n for n in m.summary().nodes}
    a = totals["A"]
    assert a.received == 100 + 50  # from the pre-run baseline (t=-1), then the restart
    assert a.restarts == 1 and a.samples == 3 and a.dropped == 4 and a.layer == 1
    b = totals["B"]
    assert b.received == 30 and b.layer == 2  # first sample is its baseline
    p = totals["P"]
    assert p.kind == "provider" and p.layer is None and p.extra == {"stored": 0}
    assert [n.pub_key for n in m.summary().nodes] == ["A", "B", "P"]
    samples = m.node_samples()
    assert len(samples) == 7 and samples[0].t_s == -2.0
    assert samples[-1].extra == {"stored": 5}


def test_node_forwarding_lateness_drops_by_reason_and_topology():
    from loopix.testnet.node_metrics import ForwardingMetrics

    fm = ForwardingMetrics()
    for ms in (1, 2, 3):  # before the run: the baseline
        fm.forwarded_late(ms / 1000)

    def node(key, t_s, received, drops, fm):
        fm.queue_seen(received // 10)
        return {**report(key, t_s, received), "dropped": drops, **fm.report()}

    m = LoadMetrics(0, 50.0, start_wall_ns=0)
    m.topology = {"A", "B"}
    m.record_node_counters(node("A", -1, 100, {"queue_full": 1, "backpressure": 0}, fm))
    fm.forwarded_late_runs([(500_000, 1), (250_000, 1)])  # 500 ms and 250 ms late
    m.record_node_counters(node("A", 1, 300, {"queue_full": 4, "backpressure": 7}, fm))
    fm_b = ForwardingMetrics()
    m.record_node_counters(node("B", 0, 0, {}, fm_b))
    fm_b.forwarded_late(0.010)
    m.record_node_counters(node("B", 1, 10, {"peer_down": 2}, fm_b))
    stranger = ForwardingMetrics()
    stranger.forwarded_late(9.0)
    m.record_node_counters(node("X", 0, 0, {}, stranger))
    m.record_node_counters(node("X", 1, 50, {"peer_down": 50}, stranger))
    m.tick(2 * S)
    s = m.summary()
    nodes = {n.pub_key: n for n in s.nodes}
    assert nodes["A"].dropped_by_reason == {"backpressure": 7, "queue_full": 3}
    assert nodes["A"].forward_lateness.count == 2  # the 3 baseline packets are not the run's
    assert nodes["A"].forward_lateness.max_ms == pytest.approx(500, rel=1e-3)
    assert nodes["A"].queue_max == 30
    # merged histograms (never averaged percentiles) over the topology's nodes only
    assert s.node_forward_lateness.count == 3
    assert s.node_forward_lateness.min_ms == pytest.approx(10, rel=1e-3)
    assert s.nodes_dropped_by_reason == {"backpressure": 7, "queue_full": 3, "peer_down": 2}
    assert not nodes["X"].in_topology and s.unattributed_nodes == ["10.0.0.1:9000"]
    assert METRICS["node_dropped"].get(s) == 12
    assert METRICS["node_lateness_max"].get(s) == pytest.approx(500, rel=1e-3)
    # a restart: the new process's histogram counts whole
    fm2 = ForwardingMetrics()
    fm2.forwarded_late(0.001)
    m.record_node_counters(node("A", 1.5, 5, {}, fm2))
    m.tick(3 * S)
    assert {n.pub_key: n for n in m.summary().nodes}["A"].forward_lateness.count == 3


def test_node_totals_of_nothing():
    assert node_totals([]) == []


# --- the summary ----------------------------------------------------------------------------------


def test_summary_round_trips_and_carries_decodable_histograms():
    m = LoadMetrics(0, 20.0, 2, grace_s=1, start_wall_ns=0, labels={"identities": "10"})
    for i in range(100):
        m.record_sent("loop", 1, i * MS)
        m.record_loop_back(i * MS, i * MS + (i + 1) * MS)
        m.record_lateness(i * 1000)
    m.tick(S)
    s = m.summary()
    again = msgspec.json.decode(msgspec.json.encode(s), type=Summary)
    assert again == s
    rtt = decode_histogram(s.histograms["rtt"])
    assert rtt.get_total_count() == 100
    assert rtt.get_value_at_percentile(50) / 1000 == s.rtt.p50_ms
    assert decode_histogram(s.histograms["message_latency"]).get_total_count() == 0
    assert s.labels == {"identities": "10"} and s.mix_layers == 2
    assert m.summary(histograms=False).histograms == {}


def test_summary_before_any_tick():
    s = LoadMetrics(0, 50.0, start_wall_ns=0).summary()
    assert s.duration_s == 0 and s.rtt.count == 0 and s.rtt.p50_ms is None and s.loops.loss is None


def test_default_grace_covers_the_delay_tail():
    assert LoadMetrics(0, 50.0).grace_s == 5.0
    slow = LoadMetrics(0, 2000.0, 3)
    assert slow.grace_s == pytest.approx(4 * erlang_quantile(0.9999, 3, 2000.0) / 1000)
    with pytest.raises(ValueError):
        LoadMetrics(0, 50.0, grace_s=0)


def test_wall_clock_mapping_of_node_reports():
    m = LoadMetrics(5 * S, 50.0, start_wall_ns=100 * S)
    m.record_node_counters(report("A", 103, 1))
    assert m.node_samples()[0].t_s == pytest.approx(3.0)


# --- thresholds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "metric", "op", "limit"),
    [
        ("rtt_p99<2s", "rtt_p99", "<", 2000.0),
        ("loss<0.1%", "loss", "<", 0.001),
        ("rtt_p50<=500ms", "rtt_p50", "<=", 500.0),
        ("lateness_p99<1ms", "lateness_p99", "<", 1.0),
        ("lateness_p99 < 250us", "lateness_p99", "<", 0.25),
        ("delivery>99%", "delivery", ">", 0.99),
        ("delivery>=0.995", "delivery", ">=", 0.995),
        ("rate_loop>=100", "rate_loop", ">=", 100.0),
        ("rate_loop>=100/s", "rate_loop", ">=", 100.0),
        (" rtt_p99.9 < 3 s ", "rtt_p999", "<", 3000.0),
        ("rtt_max!=0s", "rtt_max", "!=", 0.0),
        ("loss_count==0", "loss_count", "==", 0.0),
        ("latency_p99<1.5e3ms", "latency_p99", "<", 1500.0),
        ("rtt_p99<2m", "rtt_p99", "<", 120_000.0),
    ],
)
def test_threshold_parsing(expr, metric, op, limit):
    t = parse_threshold(expr)
    assert (t.metric, t.op) == (metric, op)
    assert t.limit == pytest.approx(limit)


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        ("rtt_p98<2s", "unknown metric 'rtt_p98'"),
        ("rtt_p99 2s", "expected METRIC OP VALUE"),
        ("rtt_p99<", "expected METRIC OP VALUE"),
        ("rtt_p99<2 minutes", "expected METRIC OP VALUE"),
        ("rtt_p99<5%", "is a duration"),
        ("rtt_p99<2", "needs a unit"),  # 2 ms or 2 s? never guessed
        ("lateness_p50<=0.5", "0.5ms"),
        ("loss<2ms", "is a ratio"),
        ("loss<5", "did you mean 5%"),
        ("rate_loop>10%", "packets per second"),
        ("loss_count<1s", "is a count"),
    ],
)
def test_threshold_errors_are_clear(expr, needle):
    with pytest.raises(ThresholdError) as exc:
        parse_threshold(expr)
    assert needle in str(exc.value)
    if "unknown" in needle or "expected" in needle:
        for name in ("rtt_p99", "loss", "delivery", "lateness_p99", "rate_loop"):
            assert name in str(exc.value)


def test_argparse_keeps_the_message(capsys):
    parser = argparse.ArgumentParser(prog="loadtest")
    parser.add_argument("--threshold", type=argparse_threshold, action="append")
    assert parser.parse_args(["--threshold", "loss<1%"]).threshold[0].limit == 0.01
    with pytest.raises(SystemExit):
        parser.parse_args(["--threshold", "los<1%"])
    assert "unknown metric 'los'" in capsys.readouterr().err


@given(
    value=st.floats(0, 1e6, allow_nan=False).map(lambda v: round(v, 3)),
    unit=st.sampled_from([("s", 1000.0), ("ms", 1.0), ("us", 0.001), ("m", 60_000.0)]),
    op=st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
)
def test_duration_units_are_canonical_ms(value, unit, op):
    t = parse_threshold(f"rtt_p90{op}{value}{unit[0]}")
    assert t.op == op and t.limit == pytest.approx(value * unit[1])


def summary_with(rtt_ms: list[float], loops_sent: int, lost: int) -> Summary:
    m = LoadMetrics(0, 50.0, grace_s=1, start_wall_ns=0)
    m.record_sent("loop", loops_sent, 0)
    for r in rtt_ms:
        m.record_loop_back(0, int(r * MS))
    for _ in range(loops_sent - lost - len(rtt_ms)):
        m.record_loop_back(0, 10 * MS)
    m.tick(5 * S)
    m.end_load(5 * S)
    return m.summary()


def test_threshold_evaluation_and_exit_code():
    s = summary_with([100.0] * 80 + [3000.0] * 20, loops_sent=1000, lost=1)
    ok = ThresholdSet(["rtt_p50<200ms", "loss<=0.1%", "rate_loop>=100", "delivery>99%"])
    results = ok.check(s)
    assert [r.passed for r in results] == [True, True, True, False]  # no messages: no data
    assert "no data" in results[3].message
    assert ok.exit_code(s) == EXIT_THRESHOLD_VIOLATED == 99
    bad = ThresholdSet(["rtt_p99<2s", "loss<0.05%"])
    violations = bad.evaluate(s)
    assert [v.metric for v in violations] == ["rtt_p99", "loss"]
    assert "VIOLATED" in violations[0].message and "rtt_p99 = 3" in violations[0].message
    assert "0.1%" in violations[1].message
    assert violations[0].actual == pytest.approx(3000, rel=1e-3)
    assert ThresholdSet(["rtt_p99<=3.1s", "loss_count==1"]).exit_code(s) == 0
    assert ThresholdSet().exit_code(s) == 0 and not ThresholdSet()


def test_every_metric_has_a_value_or_none():
    s = summary_with([100.0], loops_sent=1, lost=0)
    for name, metric in METRICS.items():
        v = metric.get(s)
        assert v is None or isinstance(v, int | float), name


def test_node_histograms_kept_only_where_needed():
    from loopix.testnet.node_metrics import ForwardingMetrics

    fm = ForwardingMetrics()
    m = LoadMetrics(0, 50.0, start_wall_ns=0)
    for t in range(-1, 30):
        fm.forwarded_late(0.001 * (t + 2))
        m.record_node_counters({**report("A", t, 100 * (t + 2)), **fm.report()})
    kept = [s.t_s for s in m.node_samples() if s.forward_lateness_hdrh]
    assert kept == [-1.0, 0.0, 29.0]  # baseline candidates (t <= 0) and the latest: memory stays flat on long runs
    m.tick(30 * S)
    assert m.summary().nodes[0].forward_lateness.count == 29  # still exact: after the t=0 baseline
