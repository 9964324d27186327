"""The master's merge, sans-IO: frames from each worker's child go in, one `LoadMetrics` fed with
the union of their intervals comes out, so the distributed summary, history and thresholds are
those of a single-machine run over all the samples (histograms merge exactly, counts add).

Time is the workers' own: each worker's seconds count from its own load start, and the master
closes its tick t once every worker still alive has shipped its tick t, at the earliest elapsed time
those ticks report (a runtime's tick comes late on a loaded machine). Loops sent in a
second are merged together with the loops back from that second once the second is past the
grace window, so a worker that dies takes its unjudged seconds with it: they stay "not yet judged"
(and are counted against it in the breakdown) instead of showing up as network loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import msgspec

from loopix.loadtest.metrics import (
    HistoryRow,
    IntervalPart,
    LoadMetrics,
    Summary,
)

from .protocol import Done, Failed, Frame, Started, Tick

_NS = 1_000_000_000
State = Literal["waiting", "running", "done", "missing", "failed"]


class WorkerRecord(msgspec.Struct, kw_only=True):
    """One worker in the report's breakdown (workers.json); the numbers are its own."""

    rank: int
    worker: str  # Locust's client id
    identities: int
    state: State = "waiting"
    reason: str = ""
    ticks: int = 0
    sent: dict[str, int] = {}  # packets per stream (when done)
    loops_sent: int = 0
    loops_back: int = 0
    loops_lost: int = 0
    unjudged_loops: int = 0  # sent in seconds it never judged (it died): not counted as loss
    payload_per_s: float | None = None
    loop_per_s: float | None = None
    rtt_p50_ms: float | None = None
    rtt_p99_ms: float | None = None
    lateness_p99_ms: float | None = None
    exit_code: int | None = None
    load_s: float | None = None  # how long its load actually ran (its summary's duration_s)
    histograms: dict[str, str] = {}  # its own run's encoded µs HdrHistograms (when done)


class _Worker:
    def __init__(self, record: WorkerRecord) -> None:
        self.record = record
        self.started: Started | None = None
        self.parts: dict[int, tuple[IntervalPart, float]] = {}  # not yet merged: tick -> (part, elapsed s)
        self.held_sent: dict[int, int] = {}  # loop buckets waiting for their second to settle
        self.held_back: dict[int, int] = {}
        self.last_row: HistoryRow | None = None

    @property
    def alive(self) -> bool:
        return self.record.state in ("waiting", "running")


class DistributedMerge:
    """Feed `on_frame`/`on_lost` as messages arrive, then `advance` (or `finish` at the end)."""

    def __init__(self, workers: Sequence[tuple[str, int]], duration_s: float,
                 labels: dict[str, str] | None = None) -> None:
        """`workers`: (Locust client id, identities) in rank order."""
        self.duration_s = duration_s
        self.labels = dict(labels or {})
        self.workers = {cid: _Worker(WorkerRecord(rank=i, worker=cid, identities=n))
                        for i, (cid, n) in enumerate(workers)}
        self.metrics: LoadMetrics | None = None
        self.ticks = 0  # master ticks closed
        self._last_tick_ns = 0
        self._node_reports: list[dict] = []  # collected before the metrics exist

    # --- input ------------------------------------------------------------------------------------

    def on_frame(self, worker: str, frame: Frame) -> None:
        w = self.workers.get(worker)
        if w is None or not w.alive:
            return  # not one of ours, or already written off
        if isinstance(frame, Started):
            w.started = frame
            w.record.state = "running"
        elif isinstance(frame, Tick):
            w.parts[frame.part.tick] = (frame.part, frame.row.elapsed_s)
            w.last_row = frame.row
            w.record.ticks = max(w.record.ticks, frame.part.tick)
        elif isinstance(frame, Done):
            w.record.state = "done"
            w.record.exit_code = frame.exit_code
            s = frame.summary
            w.record.loops_sent, w.record.loops_back, w.record.loops_lost = s.loops.sent, s.loops.back, s.loops.lost
            w.record.payload_per_s = s.rates.get("payload")
            w.record.loop_per_s = s.rates.get("loop")
            w.record.rtt_p50_ms, w.record.rtt_p99_ms = s.rtt.p50_ms, s.rtt.p99_ms
            w.record.lateness_p99_ms = s.lateness.p99_ms
            w.record.histograms = dict(s.histograms)
            w.record.sent = dict(s.sent)
            w.record.load_s = s.duration_s
        elif isinstance(frame, Failed):
            self._write_off(w, "failed", frame.reason)

    def on_lost(self, worker: str, reason: str) -> None:
        """Locust marked the worker missing, or it quit before its child finished."""
        w = self.workers.get(worker)
        if w is not None and w.alive:
            self._write_off(w, "missing", reason)

    def on_node_counters(self, reports: list[dict]) -> None:
        if self.metrics is None:
            self._node_reports.extend(reports)
        else:
            self.metrics.record_node_counters(reports)

    def _write_off(self, w: _Worker, state: State, reason: str) -> None:
        w.record.state = state
        w.record.reason = reason
        if w.last_row is not None:
            r = w.last_row  # its last reported second: cumulative counts and percentiles so far
            w.record.loops_sent, w.record.loops_back, w.record.loops_lost = r.loops_sent, r.loops_back, r.loops_lost
            w.record.rtt_p50_ms, w.record.rtt_p99_ms = r.rtt_p50_cum_ms, r.rtt_p99_cum_ms
        w.record.unjudged_loops = sum(w.held_sent.values()) + sum(
            sum(p.loops_by_second.values()) for p, _ in w.parts.values())

    # --- merging ----------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """Every worker finished or was written off."""
        return not any(w.alive for w in self.workers.values())

    def _begin(self) -> bool:
        if self.metrics is not None:
            return True
        if any(w.alive and w.started is None for w in self.workers.values()):
            return False
        started = [w.started for w in self.workers.values() if w.started is not None]
        if not started:
            return False
        first = min(started, key=lambda s: s.start_wall_ns)
        self.metrics = LoadMetrics(0, first.mean_hop_delay_ms, first.mix_layers,
                                   grace_s=max(s.grace_s for s in started),
                                   start_wall_ns=first.start_wall_ns, labels=self.labels)
        self.metrics.end_load(int(self.duration_s * _NS))
        self.metrics.record_node_counters(self._node_reports)
        self._node_reports.clear()
        return True

    def advance(self) -> list[HistoryRow]:
        """Close every tick all live workers have shipped; returns the new rows."""
        rows: list[HistoryRow] = []
        if not self._begin():
            return rows
        assert self.metrics is not None
        while True:
            t = self.ticks + 1
            ws = [w for w in self.workers.values() if w.started is not None]
            if any(w.alive and t not in w.parts for w in ws):
                break
            shipped = [(w, w.parts.pop(t)) for w in ws if t in w.parts]
            if not shipped:
                break  # nobody has this tick: the end
            for w, (part, elapsed_s) in shipped:
                # that worker has seen every loop back from the seconds past its own grace window
                self._merge(w, part, math.floor(elapsed_s - self.metrics.grace_s))
            # a tick closes when the runtime gets to it, late on a loaded machine: close the merged
            # one at the earliest of the workers' (their seconds are all settled by then)
            now_ns = max(self._last_tick_ns + 1, round(min(e for _, (_, e) in shipped) * _NS))
            self._last_tick_ns = now_ns
            rows.append(self.metrics.tick(now_ns))
            self.ticks = t
        return rows

    def _merge(self, w: _Worker, part: IntervalPart, settled: int) -> None:
        assert self.metrics is not None
        for held, add in ((w.held_sent, part.loops_by_second), (w.held_back, part.back_by_second)):
            for sec, n in add.items():
                held[sec] = held.get(sec, 0) + n
        now_sent = _take(w.held_sent, settled, everything=False)
        now_back = _take(w.held_back, settled, everything=False)
        self.metrics.merge_interval(msgspec.structs.replace(
            part, loops_by_second=now_sent, back_by_second=now_back))

    def finish(self, node_reports: list[dict] | None = None) -> Summary:
        """The merged summary once `complete`: workers that finished hand over their last loop
        buckets (their own runs judged them); the final node counters go in last."""
        self.advance()
        if self.metrics is None:
            raise RuntimeError("no worker started its load")
        m = self.metrics
        for w in self.workers.values():
            if w.record.state == "done":
                m.merge_interval(IntervalPart(loops_by_second=_take(w.held_sent, 0, everything=True),
                                              back_by_second=_take(w.held_back, 0, everything=True)))
            else:
                w.record.unjudged_loops = sum(w.held_sent.values())
        if self.ticks == 0:
            m.tick(_NS)
            self.ticks, self._last_tick_ns = 1, _NS
        # a worker's load stops at its first tick after the duration (later on a loaded machine):
        # rates are over the longest load that actually ran, as a single machine's are over its own
        loads = [w.record.load_s for w in self.workers.values() if w.record.load_s is not None]
        if loads:
            m.end_load(int(max(loads) * _NS))
        if node_reports:
            m.record_node_counters(node_reports)
        records = self.records()
        done = sum(r.state == "done" for r in records)
        m.labels["workers"] = f"{done} of {len(records)} finished"
        for r in records:
            m.labels[f"worker {r.rank}"] = describe(r)
        return m.summary()

    def records(self) -> list[WorkerRecord]:
        return sorted((w.record for w in self.workers.values()), key=lambda r: r.rank)

    def live(self) -> dict:
        """Merged so far and each worker's latest second, for the web UI."""
        row = None if self.metrics is None else self.metrics.last_row
        merged = None if row is None else msgspec.to_builtins(row)
        workers = []
        for w in sorted(self.workers.values(), key=lambda w: w.record.rank):
            r = w.last_row
            record = {k: v for k, v in msgspec.to_builtins(w.record).items() if k != "histograms"}
            workers.append({**record,
                            "now": None if r is None else {
                                "elapsed_s": r.elapsed_s, "payload_per_s": r.payload_per_s,
                                "loop_per_s": r.loop_per_s, "loops_back_per_s": r.loops_back_per_s,
                                "rtt_p99_ms": r.rtt_p99_ms, "lateness_p99_ms": r.lateness_p99_ms,
                                "rtt_p50_cum_ms": r.rtt_p50_cum_ms, "rtt_p99_cum_ms": r.rtt_p99_cum_ms}})
        return {"merged": merged, "ticks": self.ticks, "workers": workers}


def _take(held: dict[int, int], settled: int, *, everything: bool) -> dict[int, int]:
    keys = [s for s in held if everything or s < settled]
    return {s: held.pop(s) for s in keys}


def describe(r: WorkerRecord) -> str:
    """One line per worker for the report's run table."""
    def ms(v: float | None) -> str:
        return "–" if v is None else f"{v:.4g} ms"

    head = f"{r.state}, {r.identities} identities, {r.ticks} s reported"
    if r.state != "done":
        head += f" ({r.reason})" if r.reason else ""
        if r.unjudged_loops:
            head += f"; {r.unjudged_loops} loops sent in its last seconds never judged"
    rates = "" if r.loop_per_s is None else f", {r.payload_per_s:.1f} payload/s, {r.loop_per_s:.1f} loops/s"
    return (f"{head}{rates}; loops sent {r.loops_sent}, back {r.loops_back}, lost {r.loops_lost}; "
            f"rtt p50 {ms(r.rtt_p50_ms)}, p99 {ms(r.rtt_p99_ms)}; lateness p99 {ms(r.lateness_p99_ms)}")
