"""The verdict: each rule fires on a run built to trigger it, and a quiet run triggers none.
Runs are synthetic (fed to the real aggregator); the real idle run is in test_loadtest_truth."""

from __future__ import annotations

import msgspec
import pytest

from loopix.loadtest.metrics import LoadMetrics, Percentiles
from loopix.loadtest.resources import ProcessSample
from loopix.loadtest.verdict import RULES, judge

S = 1_000_000_000
MS = 1_000_000


def run(seconds=20, *, rtt_ms=lambda sec: 100.0, back_share=1.0, lateness_ms=0.05, unsent=0, cpu=0.2,
        cpu_peak=None):
    """A synthetic run: 100 loops/s for `seconds`, each back after rtt_ms(sec) (`back_share` of
    them), scheduler lateness, and one sender process at `cpu` cores (`cpu_peak` in one second)."""
    m = LoadMetrics(0, 30.0, 3, grace_s=1, start_wall_ns=0)
    for sec in range(seconds + 2):
        if sec < seconds:
            for i in range(100):
                sent = sec * S + i * 10 * MS
                m.record_sent("loop", 1, sent)
                if i < 100 * back_share:
                    m.record_loop_back(sent, sent + int(rtt_ms(sec) * MS))
                m.record_lateness(int(lateness_ms * MS))
            if unsent:
                m.record_unsent("link_down", "loop", unsent, sec * S)
            load = cpu_peak if cpu_peak is not None and sec == 5 else cpu
            m.record_resources([ProcessSample(sec + 1.0, "sender", "sender", 42, load, 60.0)])
        if sec == seconds:
            m.end_load((sec) * S)
        m.tick((sec + 1) * S)
    return m


def verdict_of(m, **replace):
    s = m.summary()
    if replace:
        s = msgspec.structs.replace(s, **replace)
    return judge(s, m.history)


def rules(v):
    return {r.rule: r.level for r in v.reasons}


def test_a_quiet_run_triggers_no_rule():
    m = run()
    v = m.summary().verdict
    assert v.status == "ok" and v.reasons == [], v


def test_rtt_trending_up_is_saturation():
    v = verdict_of(run(rtt_ms=lambda sec: 100.0 + 20.0 * sec))  # 100 ms -> 480 ms
    assert rules(v) == {"rtt_trend": "saturated"} and v.status == "saturated"
    mild = verdict_of(run(rtt_ms=lambda sec: 100.0 + 2.5 * sec))  # ×1.35
    assert rules(mild) == {"rtt_trend": "degraded"}
    # short delays: noise of a few ms is not a trend
    assert rules(verdict_of(run(rtt_ms=lambda sec: 5.0 + 0.5 * sec))) == {}


def test_loops_coming_back_slower_than_sent():
    v = verdict_of(run(back_share=0.7))
    assert rules(v)["loops_behind"] == "saturated"
    assert rules(verdict_of(run(back_share=0.9)))["loops_behind"] == "degraded"


def test_loss_of_any_reason_degrades():
    v = verdict_of(run(unsent=10))  # ~9 % of the loops never sent: link down
    assert rules(v) == {"loss": "degraded"}
    assert "link down" in v.reasons[0].message


def test_node_drops_by_reason():
    m = run()
    assert rules(verdict_of(m, nodes_dropped_by_reason={"queue_full": 10, "replay": 1})) == {"node_drops": "saturated"}
    v = verdict_of(m, nodes_dropped_by_reason={"peer_down": 3})
    assert rules(v) == {"node_drops": "degraded"} and "peer_down 3" in v.reasons[0].message


def test_node_forwarding_lateness():
    m = run()
    late = Percentiles(count=1000, p50_ms=12.0, p99_ms=80.0)
    assert rules(verdict_of(m, node_forward_lateness=late)) == {"node_lateness": "saturated"}
    tail = Percentiles(count=1000, p50_ms=0.2, p99_ms=RULES.node_lateness_p99_degraded_ms + 5)
    assert rules(verdict_of(m, node_forward_lateness=tail)) == {"node_lateness": "degraded"}


def test_a_process_on_a_full_core():
    v = verdict_of(run(cpu=0.97))
    assert rules(v) == {"cpu": "saturated"} and "sender" in v.reasons[0].message
    assert rules(verdict_of(run(cpu=0.3, cpu_peak=1.0))) == {"cpu": "degraded"}


def test_scheduler_lateness_means_the_load_generator_is_measured():
    v = verdict_of(run(lateness_ms=3.0))
    assert rules(v) == {"scheduler": "saturated"} and "load generator" in v.reasons[0].message
    m = run()
    spread = m.summary().lateness
    assert rules(verdict_of(m, lateness=msgspec.structs.replace(spread, p90_ms=1.5))) == {"scheduler": "degraded"}


def test_worst_level_wins_and_every_reason_is_listed():
    v = verdict_of(run(back_share=0.9, cpu=0.97))
    assert v.status == "saturated"
    assert rules(v) == {"loops_behind": "degraded", "loss": "degraded", "cpu": "saturated"}


@pytest.mark.parametrize("status", ["ok", "saturated"])
def test_the_verdict_is_in_the_summary_json(status):
    m = run(cpu=0.97 if status == "saturated" else 0.2)
    s = m.summary()
    data = msgspec.json.decode(msgspec.json.encode(s))
    assert next(iter(data)) == "verdict" and data["verdict"]["status"] == status
