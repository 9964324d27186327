"""What a load test measures: per-stream sends, loop round trips and loss, real-message delivery,
scheduler lateness and the nodes' own counters, aggregated per second and for the whole run.

The runtime feeds plain counts and CLOCK_MONOTONIC nanoseconds; nothing here knows how packets are
built or sent. Hot-path calls (`record_sent`, `record_loop_back`) are O(1) and touch one interval
histogram; percentiles are computed once a second in `tick`. Histograms are HdrHistograms in
microseconds (1 µs .. 60 s, 3 significant digits); longer values are clamped to 60 s and counted.

Loss is accounted by counts, not per packet: loops sent are bucketed by the second they were sent
in, returning loops by the second their embedded send time falls in. A second is judged once the
grace window has passed its end: lost = sent in judged seconds - returned with a send time in them.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import msgspec
from hdrh.histogram import HdrHistogram

__all__ = [
    "HIST_HIGHEST_US",
    "HIST_LOWEST_US",
    "HIST_SIGNIFICANT_DIGITS",
    "STREAMS",
    "AckStats",
    "HistoryRow",
    "LoadMetrics",
    "LoopStats",
    "MessageStats",
    "NodeSample",
    "NodeTotal",
    "Percentiles",
    "Summary",
    "ThresholdResult",
    "decode_histogram",
    "erlang_cdf",
    "erlang_quantile",
    "new_histogram",
    "percentiles_of",
    "predicted_rtt_quantiles",
]

STREAMS = ("payload", "loop", "drop")
"""Stream names, indexed like `loopix.client.schedule.Stream` (an int is accepted too)."""

HIST_LOWEST_US = 1
HIST_HIGHEST_US = 60_000_000
HIST_SIGNIFICANT_DIGITS = 3
_NS = 1_000_000_000
_SUMMARY_QUANTILES = (50.0, 90.0, 99.0, 99.9)


# --- histograms -----------------------------------------------------------------------------------


def new_histogram() -> HdrHistogram:
    """An empty µs histogram with the range and precision every loopix histogram shares."""
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_SIGNIFICANT_DIGITS)


def decode_histogram(encoded: str) -> HdrHistogram:
    """The inverse of `HdrHistogram.encode()` as stored in summary.json."""
    return HdrHistogram.decode(encoded.encode("ascii"))


def _encode(hist: HdrHistogram) -> str:
    return hist.encode().decode("ascii")


class Percentiles(msgspec.Struct, frozen=True):
    """A distribution in milliseconds; the fields are None when nothing was recorded."""

    count: int = 0
    min_ms: float | None = None
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None


def percentiles_of(hist: HdrHistogram) -> Percentiles:
    """Summary percentiles of a µs histogram, in ms (one pass over the counts)."""
    n = hist.get_total_count()
    if n == 0:
        return Percentiles()
    q = hist.get_percentile_to_value_dict(list(_SUMMARY_QUANTILES))
    return Percentiles(
        count=n,
        min_ms=hist.get_min_value() / 1000,
        mean_ms=hist.get_mean_value() / 1000,
        p50_ms=q[50.0] / 1000,
        p90_ms=q[90.0] / 1000,
        p99_ms=q[99.0] / 1000,
        p999_ms=q[99.9] / 1000,
        max_ms=hist.get_max_value() / 1000,
    )


def _two_quantiles(hist: HdrHistogram) -> tuple[float | None, float | None]:
    """(p50, p99) in ms, or (None, None) for an empty histogram."""
    if hist.get_total_count() == 0:
        return None, None
    q = hist.get_percentile_to_value_dict([50.0, 99.0])
    return q[50.0] / 1000, q[99.0] / 1000


def _clamp_us(value_ns: int) -> tuple[int, bool]:
    us = value_ns // 1000
    if us < 0:
        return 0, False
    if us > HIST_HIGHEST_US:
        return HIST_HIGHEST_US, True
    return us, False


# --- the predicted round trip ---------------------------------------------------------------------


def erlang_cdf(x_ms: float, k: int, mean_ms: float) -> float:
    """P(sum of k independent Exp(mean) delays <= x): 1 - sum_{n<k} e^{-λx}(λx)^n/n!."""
    if k <= 0 or mean_ms <= 0:
        return 1.0 if x_ms >= 0 else 0.0
    if x_ms <= 0:
        return 0.0
    lx = x_ms / mean_ms
    term = math.exp(-lx)
    tail = term
    for n in range(1, k):
        term *= lx / n
        tail += term
    return min(1.0, max(0.0, 1.0 - tail))


def erlang_quantile(p: float, k: int, mean_ms: float) -> float:
    """The x with erlang_cdf(x) = p, by bisection (closed form CDF; no scipy needed)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"quantile must be in [0, 1), got {p}")
    if k <= 0 or mean_ms <= 0 or p == 0.0:
        return 0.0
    lo, hi = 0.0, mean_ms * k
    while erlang_cdf(hi, k, mean_ms) < p:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if erlang_cdf(mid, k, mean_ms) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-9 * hi:
            break
    return (lo + hi) / 2


def predicted_rtt_quantiles(
    mean_hop_delay_ms: float,
    mix_layers: int = 3,
    quantiles: Sequence[float] = (0.5, 0.9, 0.99, 0.999),
    offset_ms: float = 0.0,
) -> dict[float, float]:
    """RTT quantiles (ms) a loop should show: `mix_layers` hops each holding it Exp(mean), i.e.
    Erlang(k=mix_layers, rate=1/mean), plus a constant `offset_ms` for transport and processing."""
    return {q: offset_ms + erlang_quantile(q, mix_layers, mean_hop_delay_ms) for q in quantiles}


# --- rows, totals, summary ------------------------------------------------------------------------


class HistoryRow(msgspec.Struct, frozen=True):
    """One second of a run (one history.csv row). Rates are over the interval since the previous
    tick; `*_cum_*` and the counts are cumulative; latencies in ms, None when nothing was seen."""

    elapsed_s: float
    interval_s: float
    payload_per_s: float
    real_per_s: float
    loop_per_s: float
    drop_per_s: float
    loops_back_per_s: float
    delivered_per_s: float
    rtt_p50_ms: float | None
    rtt_p99_ms: float | None
    rtt_p50_cum_ms: float | None
    rtt_p99_cum_ms: float | None
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None
    payload_sent: int
    real_sent: int
    loops_sent: int
    drop_sent: int
    loops_back: int
    loops_settled: int
    loops_lost: int
    loss: float | None
    messages_sent: int
    messages_delivered: int
    messages_lost: int
    nodes: int


class LoopStats(msgspec.Struct, frozen=True):
    """Loops: `settled` were sent in seconds older than the grace window; `lost` of those never
    came back; `late` came back after more than the grace period (and are not lost)."""

    sent: int
    back: int
    settled: int
    lost: int
    loss: float | None
    late: int
    pending: int
    rtt_clamped: int


class MessageStats(msgspec.Struct, frozen=True):
    """Real messages: `lost` were not delivered within the grace period (a later delivery moves one
    from lost to late); `unknown` deliveries matched no message sent in this run."""

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    late: int = 0
    pending: int = 0
    unknown: int = 0
    delivery: float | None = None


class AckStats(msgspec.Struct, frozen=True):
    """Real fragments and their SURB-acks over the run (the client's cumulative counters): first
    transmissions, acknowledged, sent again after their timer ran out, still unacknowledged at the
    end; ack round trip (send to ack, one client's HDR histogram) p50/p99 in ms."""

    sent: int = 0
    acked: int = 0
    retransmitted: int = 0
    unacked: int = 0
    rtt_p50_ms: float | None = None
    rtt_p99_ms: float | None = None


class NodeSample(msgspec.Struct, frozen=True):
    """One node report from the directory; counters cumulative since the node started.
    `t_s` is seconds since the run started (directory wall-clock timestamp mapped onto it)."""

    t_s: float
    pub_key: str
    kind: str
    layer: int | None
    host: str | None
    received: int
    sent: int
    forwarded: int
    dropped: int
    queue: int
    extra: dict[str, int] = {}


class NodeTotal(msgspec.Struct, frozen=True):
    """A node's counters over the run: increments from its baseline sample, restarts included."""

    pub_key: str
    kind: str
    layer: int | None
    host: str | None
    received: int
    sent: int
    forwarded: int
    dropped: int
    extra: dict[str, int]
    samples: int
    restarts: int


class ThresholdResult(msgspec.Struct, frozen=True):
    """One `--threshold` expression judged against a summary (see loadtest.thresholds)."""

    expression: str
    metric: str
    passed: bool
    actual: float | None
    message: str


class Summary(msgspec.Struct):
    """A whole run, enough to re-render the report: totals, rates, distributions (ms) and the
    encoded µs HdrHistograms (`hdrh` base64) under `histograms`. `duration_s` is the load (rates
    are over it); `elapsed_s` adds the drain after it, until the last tick."""

    duration_s: float
    elapsed_s: float
    started_wall_ns: int
    mean_hop_delay_ms: float
    mix_layers: int
    grace_s: float
    sent: dict[str, int]
    real_sent: int
    rates: dict[str, float]
    loops: LoopStats
    rtt: Percentiles
    predicted_rtt_ms: dict[str, float]
    rtt_offset_ms: float | None
    messages: MessageStats
    message_latency: Percentiles
    lateness: Percentiles
    nodes: list[NodeTotal]
    histograms: dict[str, str]
    labels: dict[str, str] = {}
    thresholds: list[ThresholdResult] = []
    acks: AckStats = AckStats()
    version: int = 1


def _quantile_key(q: float) -> str:
    """0.999 -> "p999", 0.5 -> "p50"."""
    return "p" + f"{q * 100:g}".replace(".", "")


# --- node reports ---------------------------------------------------------------------------------

_KNOWN_NODE_FIELDS = frozenset(
    {
        "pubKey",
        "host",
        "kind",
        "layer",
        "timestamp",
        "sent",
        "received",
        "forwarded",
        "dropped",
        "queue",
    }
)


def _total(value: Any) -> int:
    if isinstance(value, dict):
        return sum(v for v in value.values() if isinstance(v, int))
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _node_sample(report: dict[str, Any], start_wall_ns: int) -> NodeSample | None:
    key = report.get("pubKey")
    ts = report.get("timestamp")
    if not isinstance(key, str) or not isinstance(ts, int):
        return None
    layer = report.get("layer")
    layer = layer if isinstance(layer, int) and not isinstance(layer, bool) else None
    kind = report.get("kind")
    if not isinstance(kind, str):
        kind = "mixnode" if layer is not None else "node"
    host = report.get("host")
    extra = {
        k: v
        for k, v in report.items()
        if k not in _KNOWN_NODE_FIELDS and isinstance(v, int) and not isinstance(v, bool)
    }
    return NodeSample(
        t_s=(ts - start_wall_ns) / _NS,
        pub_key=key,
        kind=kind,
        layer=layer,
        host=host if isinstance(host, str) else None,
        received=_total(report.get("received")),
        sent=_total(report.get("sent")),
        forwarded=_total(report.get("forwarded")),
        dropped=_total(report.get("dropped")),
        queue=_total(report.get("queue")),
        extra=extra,
    )


def _increments(values: Iterable[int]) -> int:
    """Sum of increments of a cumulative counter; a decrease is a restart from zero."""
    total = 0
    prev: int | None = None
    for v in values:
        if prev is not None:
            total += v - prev if v >= prev else v
        prev = v
    return total


def node_totals(samples: Sequence[NodeSample]) -> list[NodeTotal]:
    """Per node, counter increments over the run. The baseline is the last sample at or before the
    run start (t_s <= 0) if there is one, otherwise the node's first sample: traffic before the
    first report we saw cannot be attributed, so poll the directory once before the load starts."""
    by_node: dict[str, list[NodeSample]] = {}
    for s in samples:
        by_node.setdefault(s.pub_key, []).append(s)
    out = []
    for key, series in by_node.items():
        series.sort(key=lambda s: s.t_s)
        before = [i for i, s in enumerate(series) if s.t_s <= 0]
        series = series[before[-1] if before else 0 :]
        last = series[-1]
        extra_names = sorted({k for s in series for k in s.extra})
        out.append(
            NodeTotal(
                pub_key=key,
                kind=last.kind,
                layer=last.layer,
                host=last.host,
                received=_increments(s.received for s in series),
                sent=_increments(s.sent for s in series),
                forwarded=_increments(s.forwarded for s in series),
                dropped=_increments(s.dropped for s in series),
                extra={k: _increments(s.extra.get(k, 0) for s in series) for k in extra_names},
                samples=len(series),
                restarts=sum(b.received < a.received for a, b in itertools.pairwise(series)),
            )
        )
    out.sort(key=lambda n: (n.kind != "mixnode", n.layer or 0, n.host or "", n.pub_key))
    return out


# --- the aggregator -------------------------------------------------------------------------------


class LoadMetrics:
    """The aggregator a load test feeds. Not thread-safe: feed it from one thread (the sender's
    loop) and call `tick` once a second from the same thread."""

    def __init__(
        self,
        start_ns: int,
        mean_hop_delay_ms: float,
        mix_layers: int = 3,
        *,
        grace_s: float | None = None,
        start_wall_ns: int | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        """`start_ns` is CLOCK_MONOTONIC (time.monotonic_ns) when the load started. `grace_s`
        defaults to max(5 s, 4 × the predicted p99.99 RTT). `start_wall_ns` maps the directory's
        wall-clock report timestamps onto the run; it defaults to now's wall/monotonic offset."""
        self.start_ns = start_ns
        self.mean_hop_delay_ms = mean_hop_delay_ms
        self.mix_layers = mix_layers
        if grace_s is None:
            grace_s = max(5.0, 4 * erlang_quantile(0.9999, mix_layers, mean_hop_delay_ms) / 1000)
        if grace_s <= 0:
            raise ValueError("grace_s must be positive")
        self.grace_s = grace_s
        self._grace_ns = int(grace_s * _NS)
        if start_wall_ns is None:
            start_wall_ns = start_ns + (time.time_ns() - time.monotonic_ns())
        self.start_wall_ns = start_wall_ns
        self.labels = dict(labels or {})

        self._sent = {s: 0 for s in STREAMS}
        self._i_sent = {s: 0 for s in STREAMS}
        self._real = self._i_real = 0
        self._loops_by_second: list[int] = []  # loops sent, by the second they were sent in
        self._back_by_second: list[int] = []  # loops back, by the second they were SENT in
        self._back = self._i_back = 0
        self._late = 0
        self._clamped = 0
        self._rtt = new_histogram()
        self._i_rtt = new_histogram()
        self._lateness = new_histogram()
        self._i_lateness = new_histogram()
        self._msg_latency = new_histogram()
        self._pending: dict[Hashable, int] = {}  # insertion (= send) order: oldest first
        self._expired: dict[Hashable, int] = {}
        self._msg = {"sent": 0, "delivered": 0, "late": 0, "unknown": 0}
        self._i_delivered = 0
        self._node_samples: list[NodeSample] = []
        self._node_seen: set[tuple[str, int]] = set()
        self._nodes_now = 0
        self._last_tick_ns = start_ns
        self._end_ns: int | None = None
        self.history: list[HistoryRow] = []
        self.last_row: HistoryRow | None = None
        self.acks = AckStats()

    # --- hot path ---------------------------------------------------------------------------------

    def record_sent(self, stream: str | int, n: int, now_ns: int) -> None:
        """`n` packets of `stream` went on the wire at `now_ns`. For loops, pass the same time the
        loop carries in its payload, so that sent and returned loops land in the same second."""
        if not isinstance(stream, str):
            stream = STREAMS[stream]
        self._i_sent[stream] += n
        if stream == "loop":
            sec = max(0, (now_ns - self.start_ns) // _NS)
            buckets = self._loops_by_second
            if sec >= len(buckets):
                buckets.extend([0] * (sec + 1 - len(buckets)))
            buckets[sec] += n

    def record_acks(self, acks: AckStats) -> None:
        """The client's latest cumulative fragment and ack counters."""
        self.acks = acks

    def record_real_sent(self, n: int = 1) -> None:
        """`n` of the payload packets just recorded carried real traffic (the rest were cover)."""
        self._i_real += n

    def record_loop_back(self, sent_ns: int, now_ns: int) -> None:
        """A loop sent at `sent_ns` (from its payload) came back at `now_ns`."""
        rtt_ns = now_ns - sent_ns
        us, clamped = _clamp_us(rtt_ns)
        self._i_rtt.record_value(us)
        if clamped:
            self._clamped += 1
        if rtt_ns > self._grace_ns:
            self._late += 1
        sec = max(0, (sent_ns - self.start_ns) // _NS)
        buckets = self._back_by_second
        if sec >= len(buckets):
            buckets.extend([0] * (sec + 1 - len(buckets)))
        buckets[sec] += 1
        self._i_back += 1

    def record_loop_backs(self, sent_ns: Iterable[int], now_ns: int) -> None:
        """Several loops back at once (one receive batch)."""
        for s in sent_ns:
            self.record_loop_back(s, now_ns)

    def record_lateness(self, lateness_ns: int) -> None:
        """Scheduler lateness (actual - scheduled send time) of one packet; early counts as 0.
        Feeding a sample (say one packet in 16) is enough for the percentiles."""
        us, _ = _clamp_us(lateness_ns)
        self._i_lateness.record_value(us)

    def record_message_sent(self, msg_id: Hashable, now_ns: int) -> None:
        """A real message (all its fragments) was handed to the runtime at `now_ns`."""
        self._pending[msg_id] = now_ns
        self._msg["sent"] += 1

    def record_message_delivered(self, msg_id: Hashable, now_ns: int) -> bool:
        """A real message was reassembled at its recipient. False if it matches nothing pending."""
        sent = self._pending.pop(msg_id, None)
        if sent is None:
            sent = self._expired.pop(msg_id, None)
            if sent is None:
                self._msg["unknown"] += 1
                return False
            self._msg["late"] += 1
        us, _ = _clamp_us(now_ns - sent)
        self._msg_latency.record_value(us)
        self._msg["delivered"] += 1
        self._i_delivered += 1
        return True

    # --- node counters ----------------------------------------------------------------------------

    def record_node_counters(self, snapshot: list[dict[str, Any]] | dict[str, Any]) -> int:
        """The directory's `GET /api/metrics/mixes` payload (a list of reports, or one report).
        Reports already seen (same node and timestamp) are skipped; returns how many were new."""
        reports = [snapshot] if isinstance(snapshot, dict) else snapshot
        new = 0
        nodes = set()
        for report in reports:
            sample = _node_sample(report, self.start_wall_ns)
            if sample is None:
                continue
            nodes.add(sample.pub_key)
            ident = (sample.pub_key, report["timestamp"])
            if ident in self._node_seen:
                continue
            self._node_seen.add(ident)
            self._node_samples.append(sample)
            new += 1
        self._nodes_now = len(nodes)
        return new

    def node_samples(self) -> list[NodeSample]:
        """Every node report kept, in arrival order (the report's nodes.csv)."""
        return list(self._node_samples)

    def end_load(self, now_ns: int) -> None:
        """The load stopped (the runtime now only waits for stragglers): rates in the summary are
        over [start, now_ns], not over the drain that follows."""
        self._end_ns = now_ns

    # --- once a second ----------------------------------------------------------------------------

    def tick(self, now_ns: int) -> HistoryRow:
        """Close the interval since the previous tick: compute its rates and percentiles, fold its
        histograms into the cumulative ones, judge loops and messages past the grace window."""
        dt = max(now_ns - self._last_tick_ns, 1) / _NS
        self._last_tick_ns = now_ns
        rtt50, rtt99 = _two_quantiles(self._i_rtt)
        late50, late99 = _two_quantiles(self._i_lateness)
        for total, interval in ((self._rtt, self._i_rtt), (self._lateness, self._i_lateness)):
            if interval.get_total_count():  # adding an empty one would set the minimum to 0
                total.add(interval)
                interval.reset()
        rtt50c, rtt99c = _two_quantiles(self._rtt)

        i_sent = self._i_sent
        for s in STREAMS:
            self._sent[s] += i_sent[s]
        self._real += self._i_real
        self._back += self._i_back
        self._expire_messages(now_ns)
        loops = self._loop_stats(now_ns)
        row = HistoryRow(
            elapsed_s=(now_ns - self.start_ns) / _NS,
            interval_s=dt,
            payload_per_s=i_sent["payload"] / dt,
            real_per_s=self._i_real / dt,
            loop_per_s=i_sent["loop"] / dt,
            drop_per_s=i_sent["drop"] / dt,
            loops_back_per_s=self._i_back / dt,
            delivered_per_s=self._i_delivered / dt,
            rtt_p50_ms=rtt50,
            rtt_p99_ms=rtt99,
            rtt_p50_cum_ms=rtt50c,
            rtt_p99_cum_ms=rtt99c,
            lateness_p50_ms=late50,
            lateness_p99_ms=late99,
            payload_sent=self._sent["payload"],
            real_sent=self._real,
            loops_sent=self._sent["loop"],
            drop_sent=self._sent["drop"],
            loops_back=self._back,
            loops_settled=loops.settled,
            loops_lost=loops.lost,
            loss=loops.loss,
            messages_sent=self._msg["sent"],
            messages_delivered=self._msg["delivered"],
            messages_lost=len(self._expired),
            nodes=self._nodes_now,
        )
        for s in STREAMS:
            i_sent[s] = 0
        self._i_real = self._i_back = self._i_delivered = 0
        self.history.append(row)
        self.last_row = row
        return row

    def _expire_messages(self, now_ns: int) -> None:
        cutoff = now_ns - self._grace_ns
        expired = []
        for msg_id, sent in self._pending.items():
            if sent > cutoff:
                break
            expired.append(msg_id)
        for msg_id in expired:
            self._expired[msg_id] = self._pending.pop(msg_id)

    def _loop_stats(self, now_ns: int) -> LoopStats:
        judged = max(
            0, (now_ns - self._grace_ns - self.start_ns) // _NS
        )  # seconds fully past grace
        settled = sum(self._loops_by_second[:judged])
        back = sum(self._back_by_second[:judged])
        lost = max(0, settled - back)
        sent = self._sent["loop"]  # as of the last tick, like every other total
        return LoopStats(
            sent=sent,
            back=self._back,
            settled=settled,
            lost=lost,
            loss=lost / settled if settled else None,
            late=self._late,
            pending=max(0, sent - settled - (self._back - back)),
            rtt_clamped=self._clamped,
        )

    # --- the whole run ----------------------------------------------------------------------------

    def summary(self, *, histograms: bool = True) -> Summary:
        """The run up to the last tick (call `tick` first: samples since it are not included).
        `histograms=False` skips encoding them, for a cheap summary every second."""
        now_ns = self._last_tick_ns
        end_ns = now_ns if self._end_ns is None else min(self._end_ns, now_ns)
        duration = (end_ns - self.start_ns) / _NS
        rates = {s: (n / duration if duration > 0 else 0.0) for s, n in self._sent.items()}
        rates["real"] = self._real / duration if duration > 0 else 0.0
        rates["loop_back"] = self._back / duration if duration > 0 else 0.0
        rtt = percentiles_of(self._rtt)
        predicted = predicted_rtt_quantiles(self.mean_hop_delay_ms, self.mix_layers)
        offset = None
        if rtt.p50_ms is not None:
            offset = max(0.0, rtt.p50_ms - predicted[0.5])
        m = self._msg
        lost = len(self._expired)
        judged = m["delivered"] + lost  # delivered (on time or late) or given up on
        messages = MessageStats(
            sent=m["sent"],
            delivered=m["delivered"],
            lost=lost,
            late=m["late"],
            pending=len(self._pending),
            unknown=m["unknown"],
            delivery=m["delivered"] / judged if judged else None,
        )
        hists = {}
        if histograms:
            hists = {
                "rtt": _encode(self._rtt),
                "lateness": _encode(self._lateness),
                "message_latency": _encode(self._msg_latency),
            }
        return Summary(
            duration_s=duration,
            elapsed_s=(now_ns - self.start_ns) / _NS,
            started_wall_ns=self.start_wall_ns,
            mean_hop_delay_ms=self.mean_hop_delay_ms,
            mix_layers=self.mix_layers,
            grace_s=self.grace_s,
            sent=dict(self._sent),
            real_sent=self._real,
            rates=rates,
            loops=self._loop_stats(now_ns),
            rtt=rtt,
            predicted_rtt_ms={_quantile_key(q): v for q, v in predicted.items()},
            rtt_offset_ms=offset,
            messages=messages,
            message_latency=percentiles_of(self._msg_latency),
            lateness=percentiles_of(self._lateness),
            nodes=node_totals(self._node_samples),
            histograms=hists,
            labels=dict(self.labels),
            acks=self.acks,
        )
