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
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import msgspec
from hdrh.histogram import HdrHistogram

from .metadata import RunMetadata
from .model import RttModel, erlang_cdf, erlang_quantile, ks_distance, loop_hop_means
from .resources import ProcessSample, ProcessUsage, usage_of
from .verdict import Verdict, judge

__all__ = [
    "HIST_HIGHEST_US",
    "HIST_LOWEST_US",
    "HIST_SIGNIFICANT_DIGITS",
    "LOSS_REASONS",
    "STREAMS",
    "UNSENT_REASONS",
    "HistoryRow",
    "IntervalPart",
    "LoadMetrics",
    "LoopStats",
    "LossStats",
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
UNSENT_REASONS = ("link_down", "no_route", "build_error")
"""Why a packet the schedule asked for never went out: its identity's provider link was down (the
sender skipped it), no route (e.g. its provider left the topology), the C build failed."""
LOSS_REASONS = ("not_back", *UNSENT_REASONS)
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


def predicted_rtt_quantiles(
    mean_hop_delay_ms: float,
    mix_layers: int = 3,
    quantiles: Sequence[float] = (0.5, 0.9, 0.99, 0.999),
) -> dict[float, float]:
    """RTT quantiles (ms) of the delay model alone: `mix_layers` hops each holding the loop
    Exp(mean). Never shifted by anything measured (see loadtest.model)."""
    model = RttModel(loop_hop_means(mean_hop_delay_ms, mix_layers))
    return {q: model.quantile(q) for q in quantiles}


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
    unsent: int = 0  # cumulative, every stream and reason
    cpu_busiest_cores: float | None = None  # the busiest process of the run this second...
    cpu_busiest_process: str | None = None  # ...and its name
    client_cpu_cores: float | None = None  # coordinator + workers + sender
    client_rss_mib: float | None = None
    nodes_cpu_cores: float | None = None  # the testnet's processes, when the run started them
    nodes_rss_mib: float | None = None


class IntervalPart(msgspec.Struct, frozen=True):
    """What one tick closed, in a form another LoadMetrics merges exactly (a distributed run: each
    worker's runtime ships these, the master folds them together). Seconds count from the run's
    start; histograms are encoded µs HdrHistograms ("" when empty)."""

    tick: int = 0
    sent: dict[str, int] = {}
    real: int = 0
    back: int = 0
    late: int = 0
    clamped: int = 0
    loops_by_second: dict[int, int] = {}  # loops sent, by the second they were sent in
    back_by_second: dict[int, int] = {}  # loops back, by the second they were sent in
    rtt: str = ""
    lateness: str = ""


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


class LossStats(msgspec.Struct, frozen=True):
    """Every loop the schedule asked for in judged seconds and did not get back, by reason:
    `not_back` were sent and never returned, the others never went out (UNSENT_REASONS).
    `loss` = all of them / loops scheduled. `unsent` holds the unsent packets of every stream."""

    scheduled: int
    lost: int
    loss: float | None
    by_reason: dict[str, int]
    ratio_by_reason: dict[str, float | None]
    unsent: dict[str, dict[str, int]]
    unsent_total: int


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
    not_sent: int = 0  # the client refused them (no route, queue full ...): counted as not delivered


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
    dropped_by_reason: dict[str, int] = {}
    queue_peak: int = 0  # the largest queue since the node's previous report
    forward_lateness_hdrh: str | None = None  # cumulative µs HdrHistogram (testnet/node_metrics.py)


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
    dropped_by_reason: dict[str, int] = {}
    queue_max: int = 0
    forward_lateness: Percentiles = Percentiles()
    in_topology: bool = True  # False: not a node of the run's topology; never summed
    forward_lateness_hdrh: str = ""


class ThresholdResult(msgspec.Struct, frozen=True):
    """One `--threshold` expression judged against a summary (see loadtest.thresholds)."""

    expression: str
    metric: str
    passed: bool
    actual: float | None
    message: str


class Summary(msgspec.Struct, kw_only=True):
    """A whole run, enough to re-render the report: totals, rates, distributions (ms) and the
    encoded µs HdrHistograms (`hdrh` base64) under `histograms`. `duration_s` is the load (rates
    are over it); `elapsed_s` adds the drain after it, until the last tick. `verdict` first."""

    verdict: Verdict | None = None
    meta: RunMetadata | None = None  # reproducibility: when, what, where (loadtest.metadata)
    interrupted: bool = False  # the run was stopped (Ctrl-C, SIGTERM) before its end
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
    loss: LossStats
    rtt: Percentiles
    predicted_rtt_ms: dict[str, float]
    rtt_model: str
    hop_means_ms: list[float]
    rtt_excess_ms: dict[str, float | None]
    rtt_ks: float | None
    messages: MessageStats
    message_latency: Percentiles
    lateness: Percentiles
    nodes: list[NodeTotal]
    histograms: dict[str, str]
    node_forward_lateness: Percentiles = Percentiles()  # merged over the topology's nodes
    nodes_dropped_by_reason: dict[str, int] = {}  # summed over the topology's nodes
    unattributed_nodes: list[str] = []  # reporting nodes outside the run's topology (flagged)
    resources: list[ProcessUsage] = []  # CPU and RSS of every process of the run
    labels: dict[str, str] = {}
    thresholds: list[ThresholdResult] = []
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
        "queue_peak",
        "forward_lateness_hdrh",
        "forward_lateness_count",
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
    dropped = report.get("dropped")
    by_reason = (
        {k: v for k, v in dropped.items() if isinstance(k, str) and _total(v) == v}
        if isinstance(dropped, dict) else {}
    )
    hdrh = report.get("forward_lateness_hdrh")
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
        dropped_by_reason=by_reason,
        queue_peak=_total(report.get("queue_peak")),
        forward_lateness_hdrh=hdrh if isinstance(hdrh, str) and len(hdrh) < 1_000_000 else None,
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


def _hist_increment(series: Sequence[NodeSample], restarted: Sequence[bool]) -> HdrHistogram:
    """What a node's cumulative lateness histogram gained over `series`: the last one minus the
    baseline (the first sample), plus, after each restart, all the new process accumulated."""
    out = new_histogram()
    segments: list[list[int]] = []
    for i, restart in enumerate(restarted):
        if restart or not segments:
            segments.append([])
        segments[-1].append(i)
    for number, segment in enumerate(segments):
        hists = [_decoded(series[i].forward_lateness_hdrh) for i in segment]
        later = next((h for h in reversed(hists) if h is not None), None)
        if later is not None:
            _add_difference(out, later, hists[0] if number == 0 else None)
    return out


def _decoded(encoded: str | None) -> HdrHistogram | None:
    if not encoded:
        return None
    try:
        return decode_histogram(encoded)
    except Exception:  # a report we cannot decode adds nothing
        return None


def _add_difference(out: HdrHistogram, later: HdrHistogram, earlier: HdrHistogram | None) -> None:
    for item in later.get_recorded_iterator():
        value = item.value_iterated_to
        n = item.count_at_value_iterated_to
        if earlier is not None:
            n -= earlier.get_count_at_value(value)
        if n > 0:
            out.record_value(value, n)


def node_totals(samples: Sequence[NodeSample], topology: set[str] | None = None) -> list[NodeTotal]:
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
        reasons = sorted({k for s in series for k in s.dropped_by_reason})
        restarted = [False, *(b.received < a.received for a, b in itertools.pairwise(series))]
        lateness = _hist_increment(series, restarted)
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
                restarts=sum(restarted),
                dropped_by_reason={
                    k: _increments(s.dropped_by_reason.get(k, 0) for s in series) for k in reasons
                },
                queue_max=max(max(s.queue_peak, s.queue) for s in series),
                forward_lateness=percentiles_of(lateness),
                forward_lateness_hdrh=_encode(lateness) if lateness.get_total_count() else "",
                in_topology=topology is None or key in topology,
            )
        )
    out.sort(key=lambda n: (n.kind != "mixnode", n.layer or 0, n.host or "", n.pub_key))
    return out


_CLIENT_ROLES = ("coordinator", "worker", "sender")


def _resource_columns(samples: Sequence[ProcessSample]) -> dict[str, Any]:
    """history.csv's resource columns for one second's readings (None when nothing was read)."""
    if not samples:
        return {}
    busiest = max(samples, key=lambda s: s.cpu_cores)
    client = [s for s in samples if s.role in _CLIENT_ROLES]
    nodes = [s for s in samples if s.role not in _CLIENT_ROLES]
    out: dict[str, Any] = {
        "cpu_busiest_cores": busiest.cpu_cores,
        "cpu_busiest_process": busiest.process,
    }
    if client:
        out["client_cpu_cores"] = round(sum(s.cpu_cores for s in client), 4)
        out["client_rss_mib"] = round(sum(s.rss_mib for s in client), 2)
    if nodes:
        out["nodes_cpu_cores"] = round(sum(s.cpu_cores for s in nodes), 4)
        out["nodes_rss_mib"] = round(sum(s.rss_mib for s in nodes), 2)
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
        self._msg = {"sent": 0, "delivered": 0, "late": 0, "unknown": 0, "not_sent": 0}
        self._unsent = {r: {s: 0 for s in STREAMS} for r in UNSENT_REASONS}
        self._unsent_loops_by_second = {r: [] for r in UNSENT_REASONS}  # by second, like loops sent
        self._i_delivered = 0
        self._node_samples: list[NodeSample] = []
        self._node_seen: set[tuple[str, int]] = set()
        self._last_of_node: dict[str, int] = {}  # index of each node's latest sample
        self._first_of_node: dict[str, int] = {}
        self._nodes_now = 0
        self.topology: set[str] | None = None  # the run's nodes (base64url keys); None: any
        self.metadata: RunMetadata | None = None
        self.interrupted = False
        self.resource_samples: list[ProcessSample] = []
        self._i_resources: list[ProcessSample] = []
        self._last_tick_ns = start_ns
        self._end_ns: int | None = None
        self.history: list[HistoryRow] = []
        self.last_row: HistoryRow | None = None
        self.interval_listeners: list[Callable[[IntervalPart], None]] = []
        self._shipped: tuple[list[int], list[int], list[int]] = ([], [], [0, 0])  # buckets; late, clamped

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

    def record_unsent(self, reason: str, stream: str | int, n: int, now_ns: int) -> None:
        """`n` packets of `stream` the schedule asked for around `now_ns` never went out."""
        if reason not in self._unsent:
            raise ValueError(f"unknown unsent reason {reason!r}")
        if not isinstance(stream, str):
            stream = STREAMS[stream]
        self._unsent[reason][stream] += n
        if stream == "loop":
            sec = max(0, (now_ns - self.start_ns) // _NS)
            buckets = self._unsent_loops_by_second[reason]
            if sec >= len(buckets):
                buckets.extend([0] * (sec + 1 - len(buckets)))
            buckets[sec] += n

    def record_message_not_sent(self, n: int = 1) -> None:
        """A real message the runtime refused: it will never be delivered."""
        self._msg["not_sent"] += n

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
            self._forget_histogram(sample)
            self._first_of_node.setdefault(sample.pub_key, len(self._node_samples))
            self._last_of_node[sample.pub_key] = len(self._node_samples)
            self._node_samples.append(sample)
            new += 1
        self._nodes_now = len(nodes)
        return new

    def _forget_histogram(self, new: NodeSample) -> None:
        """Bound memory on long runs: a node's lateness histogram (KBs each second) is needed only
        at its baseline, before a restart and at its latest report, so the previous report's is
        dropped when a newer one arrives, unless the previous is one of those."""
        i = self._last_of_node.get(new.pub_key)
        if i is None:
            return
        prev = self._node_samples[i]
        if prev.forward_lateness_hdrh is None or prev.t_s <= 0 or new.received < prev.received:
            return
        if i == self._first_of_node.get(new.pub_key):
            return
        self._node_samples[i] = msgspec.structs.replace(prev, forward_lateness_hdrh=None)

    def node_samples(self) -> list[NodeSample]:
        """Every node report kept, in arrival order (the report's nodes.csv)."""
        return list(self._node_samples)

    def record_resources(self, samples: Iterable[ProcessSample]) -> None:
        """This second's CPU/RSS readings of the run's processes (loadtest.resources)."""
        samples = list(samples)
        self.resource_samples.extend(samples)
        self._i_resources.extend(samples)

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
        if self.interval_listeners:
            part = self._interval_part()
            for listener in self.interval_listeners:
                listener(part)
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
        loss = self._loss_stats(now_ns, loops)
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
            loops_lost=loss.lost,
            loss=loss.loss,
            messages_sent=self._msg["sent"],
            messages_delivered=self._msg["delivered"],
            messages_lost=len(self._expired),
            nodes=self._nodes_now,
            unsent=loss.unsent_total,
            **_resource_columns(self._i_resources),
        )
        self._i_resources = []
        for s in STREAMS:
            i_sent[s] = 0
        self._i_real = self._i_back = self._i_delivered = 0
        self.history.append(row)
        self.last_row = row
        return row

    # --- distributed runs: ship an interval, merge one -----------------------------------------------

    def _interval_part(self) -> IntervalPart:
        def delta(now: list[int], shipped: list[int]) -> dict[int, int]:
            out = {i: n - (shipped[i] if i < len(shipped) else 0) for i, n in enumerate(now)}
            shipped[:] = now
            return {i: n for i, n in out.items() if n}

        late, clamped = self._shipped[2]
        self._shipped[2][:] = [self._late, self._clamped]
        return IntervalPart(
            tick=len(self.history) + 1,
            sent=dict(self._i_sent),
            real=self._i_real,
            back=self._i_back,
            late=self._late - late,
            clamped=self._clamped - clamped,
            loops_by_second=delta(self._loops_by_second, self._shipped[0]),
            back_by_second=delta(self._back_by_second, self._shipped[1]),
            rtt=_encode(self._i_rtt) if self._i_rtt.get_total_count() else "",
            lateness=_encode(self._i_lateness) if self._i_lateness.get_total_count() else "",
        )

    def merge_interval(self, part: IntervalPart) -> None:
        """Add another runtime's interval to the current one: counts add, histograms merge exactly."""
        for stream, n in part.sent.items():
            self._i_sent[stream] += n
        self._i_real += part.real
        self._i_back += part.back
        self._late += part.late
        self._clamped += part.clamped
        for buckets, add in ((self._loops_by_second, part.loops_by_second),
                             (self._back_by_second, part.back_by_second)):
            for sec, n in add.items():
                if sec >= len(buckets):
                    buckets.extend([0] * (sec + 1 - len(buckets)))
                buckets[sec] += n
        if part.rtt:
            self._i_rtt.add(decode_histogram(part.rtt))
        if part.lateness:
            self._i_lateness.add(decode_histogram(part.lateness))

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

    def _loss_stats(self, now_ns: int, loops: LoopStats) -> LossStats:
        judged = max(0, (now_ns - self._grace_ns - self.start_ns) // _NS)
        by_reason = {"not_back": loops.lost}
        for reason, buckets in self._unsent_loops_by_second.items():
            by_reason[reason] = sum(buckets[:judged])
        lost = sum(by_reason.values())
        scheduled = loops.settled + lost - loops.lost
        unsent = {r: dict(v) for r, v in self._unsent.items()}
        return LossStats(
            scheduled=scheduled,
            lost=lost,
            loss=lost / scheduled if scheduled else None,
            by_reason=by_reason,
            ratio_by_reason={r: (n / scheduled if scheduled else None) for r, n in by_reason.items()},
            unsent=unsent,
            unsent_total=sum(n for v in unsent.values() for n in v.values()),
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
        model = RttModel(loop_hop_means(self.mean_hop_delay_ms, self.mix_layers))
        predicted = {q: model.quantile(q) for q in (0.5, 0.9, 0.99, 0.999)}
        excess = {
            "p50": None if rtt.p50_ms is None else rtt.p50_ms - predicted[0.5],
            "p99": None if rtt.p99_ms is None else rtt.p99_ms - predicted[0.99],
        }
        m = self._msg
        lost = len(self._expired)
        loops = self._loop_stats(now_ns)
        nodes = node_totals(self._node_samples, self.topology)
        node_lateness = new_histogram()
        dropped: dict[str, int] = {}
        for n in nodes:
            if not n.in_topology:
                continue
            if n.forward_lateness_hdrh:
                node_lateness.add(decode_histogram(n.forward_lateness_hdrh))
            for reason, count in n.dropped_by_reason.items():
                dropped[reason] = dropped.get(reason, 0) + count
        judged = m["delivered"] + lost + m["not_sent"]  # delivered, given up on, or never sent
        messages = MessageStats(
            sent=m["sent"],
            delivered=m["delivered"],
            lost=lost,
            late=m["late"],
            pending=len(self._pending),
            unknown=m["unknown"],
            delivery=m["delivered"] / judged if judged else None,
            not_sent=m["not_sent"],
        )
        hists = {}
        if histograms:
            hists = {
                "rtt": _encode(self._rtt),
                "lateness": _encode(self._lateness),
                "message_latency": _encode(self._msg_latency),
                "node_forward_lateness": _encode(node_lateness),
            }
        summary = Summary(
            duration_s=duration,
            elapsed_s=(now_ns - self.start_ns) / _NS,
            started_wall_ns=self.start_wall_ns,
            mean_hop_delay_ms=self.mean_hop_delay_ms,
            mix_layers=self.mix_layers,
            grace_s=self.grace_s,
            sent=dict(self._sent),
            real_sent=self._real,
            rates=rates,
            loops=loops,
            loss=self._loss_stats(now_ns, loops),
            rtt=rtt,
            predicted_rtt_ms={_quantile_key(q): v for q, v in predicted.items()},
            rtt_model=model.name,
            hop_means_ms=list(model.hop_means_ms),
            rtt_excess_ms=excess,
            rtt_ks=ks_distance(self._rtt, model),
            messages=messages,
            message_latency=percentiles_of(self._msg_latency),
            lateness=percentiles_of(self._lateness),
            nodes=nodes,
            node_forward_lateness=percentiles_of(node_lateness),
            nodes_dropped_by_reason=dropped,
            unattributed_nodes=[n.host or n.pub_key for n in nodes if not n.in_topology],
            resources=usage_of(self.resource_samples),
            histograms=hists,
            labels=dict(self.labels),
        )
        summary.meta = self.metadata
        summary.interrupted = self.interrupted
        summary.verdict = judge(summary, self.history)
        return summary
