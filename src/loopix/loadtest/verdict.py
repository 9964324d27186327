"""The verdict at the top of every report: did the run measure the mixnet, or a network (or a
machine) past what it can carry? `ok`, `degraded` or `saturated`, with every rule that fired.

A pure function of the summary and the per-second history, so a report re-rendered later says the
same; the rules and their limits are in RULES and documented in docs/loadtest.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from .metrics import HistoryRow, Summary

__all__ = ["CAPACITY_DROP_REASONS", "RULES", "Verdict", "VerdictReason", "judge"]

Level = Literal["ok", "degraded", "saturated"]
_RANK = {"ok": 0, "degraded": 1, "saturated": 2}

CAPACITY_DROP_REASONS = frozenset({"backpressure", "queue_full", "peer_queue_full"})
"""Node drops that mean a node or link could not keep up (the others are failures or attacks)."""


class Limits(msgspec.Struct, frozen=True):
    """Where each rule fires. Milliseconds, cores, ratios."""

    rtt_trend_degraded: float = 1.25  # late-load RTT p50 / early-load RTT p50
    rtt_trend_saturated: float = 1.5
    rtt_trend_min_ms: float = 20.0  # ...and up by at least this much (noise on short delays)
    loops_back_degraded: float = 0.95  # loops back / loops sent over the second half of the load
    loops_back_saturated: float = 0.8
    loss_degraded: float = 0.01
    node_lateness_p99_degraded_ms: float = 20.0
    node_lateness_p50_saturated_ms: float = 5.0
    cpu_mean_saturated: float = 0.9  # cores: a process pegged on one core for the whole run
    cpu_max_degraded: float = 0.98  # ...or pegged in some second
    scheduler_p90_degraded_ms: float = 1.0
    scheduler_p50_saturated_ms: float = 1.0


RULES = Limits()


class VerdictReason(msgspec.Struct, frozen=True):
    rule: str
    level: Level
    message: str


class Verdict(msgspec.Struct, frozen=True):
    status: Level = "ok"
    reasons: list[VerdictReason] = []


def _load_rows(summary: Summary, history: Sequence[HistoryRow]) -> list[HistoryRow]:
    return [r for r in history if r.elapsed_s <= summary.duration_s + 0.5]


def _rtt_trend(summary: Summary, rows: Sequence[HistoryRow], lim: Limits) -> VerdictReason | None:
    p50s = [r.rtt_p50_ms for r in rows if r.rtt_p50_ms is not None]
    if len(p50s) < 6:
        return None
    third = len(p50s) // 3
    early, late = statistics.median(p50s[:third]), statistics.median(p50s[-third:])
    if early <= 0 or late - early < lim.rtt_trend_min_ms:
        return None
    ratio = late / early
    level: Level | None = (
        "saturated" if ratio >= lim.rtt_trend_saturated else "degraded" if ratio >= lim.rtt_trend_degraded else None
    )
    if level is None:
        return None
    return VerdictReason("rtt_trend", level, f"RTT p50 rose from {early:.0f} ms to {late:.0f} ms during the load "
                         f"(×{ratio:.2f}): queues were growing")


def _loops_behind(summary: Summary, rows: Sequence[HistoryRow], lim: Limits) -> VerdictReason | None:
    half = [r for r in rows if r.elapsed_s > summary.duration_s / 2]
    sent = sum(r.loop_per_s * r.interval_s for r in half)
    back = sum(r.loops_back_per_s * r.interval_s for r in half)
    if sent < 20:
        return None
    ratio = back / sent
    level: Level | None = (
        "saturated" if ratio < lim.loops_back_saturated else "degraded" if ratio < lim.loops_back_degraded else None
    )
    if level is None:
        return None
    return VerdictReason("loops_behind", level, f"loops came back at {ratio:.0%} of the rate they were sent "
                         "over the second half of the load")


def _loss(summary: Summary, lim: Limits) -> VerdictReason | None:
    loss = summary.loss.loss
    if loss is None or loss <= lim.loss_degraded:
        return None
    reasons = ", ".join(f"{r.replace('_', ' ')} {n:,}" for r, n in summary.loss.by_reason.items() if n)
    return VerdictReason("loss", "degraded", f"{loss:.2%} of the loops scheduled were lost ({reasons})")


def _node_drops(summary: Summary) -> VerdictReason | None:
    drops = {r: n for r, n in summary.nodes_dropped_by_reason.items() if n}
    if not drops:
        return None
    text = ", ".join(f"{r} {n:,}" for r, n in sorted(drops.items()))
    if CAPACITY_DROP_REASONS & drops.keys():
        return VerdictReason("node_drops", "saturated", f"nodes dropped packets for lack of capacity: {text}")
    return VerdictReason("node_drops", "degraded", f"nodes dropped packets: {text}")


def _node_lateness(summary: Summary, lim: Limits) -> VerdictReason | None:
    fl = summary.node_forward_lateness
    if fl.count == 0 or fl.p50_ms is None or fl.p99_ms is None:
        return None
    if fl.p50_ms > lim.node_lateness_p50_saturated_ms:
        return VerdictReason("node_lateness", "saturated", f"nodes forwarded half the packets over "
                             f"{fl.p50_ms:.1f} ms after arrival + header delay (p99 {fl.p99_ms:.0f} ms)")
    if fl.p99_ms > lim.node_lateness_p99_degraded_ms:
        return VerdictReason("node_lateness", "degraded", f"nodes' forwarding lateness p99 is {fl.p99_ms:.0f} ms "
                             "after arrival + header delay")
    return None


def _cpu(summary: Summary, lim: Limits) -> VerdictReason | None:
    pegged = [u for u in summary.resources if u.cpu_mean_cores >= lim.cpu_mean_saturated]
    if pegged:
        names = ", ".join(f"{u.process} {u.cpu_mean_cores:.2f}" for u in pegged)
        return VerdictReason("cpu", "saturated", f"processes used a full core on average ({names} cores): "
                             "the run measured the machine")
    peaks = [u for u in summary.resources if u.cpu_max_cores >= lim.cpu_max_degraded]
    if peaks:
        names = ", ".join(f"{u.process} {u.cpu_max_cores:.2f}" for u in peaks)
        return VerdictReason("cpu", "degraded", f"processes hit a full core in some second ({names} cores)")
    return None


def _scheduler(summary: Summary, lim: Limits) -> VerdictReason | None:
    lt = summary.lateness
    if lt.count == 0 or lt.p50_ms is None or lt.p90_ms is None:
        return None
    if lt.p50_ms > lim.scheduler_p50_saturated_ms:
        return VerdictReason("scheduler", "saturated", f"the load generator sent half its packets over "
                             f"{lt.p50_ms:.1f} ms late: the figures measure the load generator")
    if lt.p90_ms > lim.scheduler_p90_degraded_ms:
        return VerdictReason("scheduler", "degraded", f"the load generator's lateness p90 is {lt.p90_ms:.1f} ms: "
                             "the figures include the load generator falling behind")
    return None


def judge(summary: Summary, history: Sequence[HistoryRow], limits: Limits = RULES) -> Verdict:
    """Every rule, worst level wins; `ok` when none fires."""
    rows = _load_rows(summary, history)
    found = [
        _rtt_trend(summary, rows, limits),
        _loops_behind(summary, rows, limits),
        _loss(summary, limits),
        _node_drops(summary),
        _node_lateness(summary, limits),
        _cpu(summary, limits),
        _scheduler(summary, limits),
    ]
    reasons = [r for r in found if r is not None]
    status: Level = max((r.level for r in reasons), key=_RANK.__getitem__, default="ok")
    return Verdict(status, reasons)
