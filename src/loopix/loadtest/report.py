"""A run's report: `summary.json`, `history.csv` (one row per second), `nodes.csv` (the directory's
node reports) and `report.html` with the figures embedded as base64 PNG.

The HTML is a pure function of those data files, so `render_report(DIR)` (`loopix-client report
DIR`) reproduces it later, e.g. after a matplotlib upgrade or a fix to a figure.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import msgspec
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from loopix.loadtest.metrics import (
    HistoryRow,
    NodeSample,
    Percentiles,
    Summary,
    decode_histogram,
)
from loopix.loadtest.model import RttModel
from loopix.loadtest.resources import ProcessSample

__all__ = [
    "HISTORY_FILE",
    "NODES_FILE",
    "REPORT_FILE",
    "SUMMARY_FILE",
    "ReportError",
    "load_report_data",
    "read_history",
    "read_nodes",
    "render_html",
    "render_report",
    "write_report",
]

SUMMARY_FILE = "summary.json"
HISTORY_FILE = "history.csv"
NODES_FILE = "nodes.csv"
RESOURCES_FILE = "resources.csv"
REPORT_FILE = "report.html"

HISTORY_FIELDS = HistoryRow.__struct_fields__
NODE_FIELDS = NodeSample.__struct_fields__
RESOURCE_FIELDS = ProcessSample.__struct_fields__

COLORS = {
    "payload": "#1f77b4",
    "real": "#9467bd",
    "loop": "#2ca02c",
    "drop": "#7f7f7f",
    "loop_back": "#ff7f0e",
    "delivered": "#d62728",
}
_RC = {
    "figure.dpi": 100,
    "font.size": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}


class ReportError(Exception):
    """A report directory we cannot read; the message names the file."""


# --- data files -----------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return msgspec.json.encode(value).decode()
    return str(value)  # str(float) is the shortest repr that round-trips


def _write_csv(path: Path, fields: Sequence[str], rows: Sequence[msgspec.Struct]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for row in rows:
            w.writerow([_cell(getattr(row, name)) for name in fields])


T = TypeVar("T")


def _read_csv(path: Path, cls: type[T], json_fields: tuple[str, ...] = ()) -> list[T]:
    try:
        with path.open(newline="") as f:
            out = []
            for i, raw in enumerate(csv.DictReader(f), start=2):
                data: dict[str, Any] = {k: (None if v == "" else v) for k, v in raw.items()}
                for k in json_fields:
                    data[k] = msgspec.json.decode(data[k]) if data.get(k) else {}
                try:
                    out.append(msgspec.convert(data, cls, strict=False))
                except msgspec.ValidationError as exc:
                    raise ReportError(f"{path}: line {i}: {exc}") from None
            return out
    except OSError as exc:
        raise ReportError(f"{path}: {exc.strerror}") from None


def read_history(path: Path) -> list[HistoryRow]:
    return _read_csv(path, HistoryRow)


def read_nodes(path: Path) -> list[NodeSample]:
    return _read_csv(path, NodeSample, ("extra", "dropped_by_reason"))


def read_resources(path: Path) -> list[ProcessSample]:
    return _read_csv(path, ProcessSample)


def load_report_data(out_dir: str | Path) -> tuple[Summary, list[HistoryRow], list[NodeSample]]:
    """summary.json, history.csv and (if present) nodes.csv of a report directory."""
    out = Path(out_dir)
    path = out / SUMMARY_FILE
    try:
        summary = msgspec.json.decode(path.read_bytes(), type=Summary)
    except OSError as exc:
        raise ReportError(f"{path}: {exc.strerror}") from None
    except msgspec.DecodeError as exc:
        raise ReportError(f"{path}: {exc}") from None
    history = read_history(out / HISTORY_FILE)
    nodes = read_nodes(out / NODES_FILE) if (out / NODES_FILE).exists() else []
    return summary, history, nodes


def write_report(
    out_dir: str | Path,
    summary: Summary,
    history: Sequence[HistoryRow],
    node_series: Sequence[NodeSample] = (),
    resources: Sequence[ProcessSample] = (),
) -> Path:
    """Write the data files, then render report.html from what was written (so a later
    `render_report` gives the same page). Returns the path of report.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(summary), indent=2))
    _write_csv(out / HISTORY_FILE, HISTORY_FIELDS, history)
    _write_csv(out / NODES_FILE, NODE_FIELDS, node_series)
    _write_csv(out / RESOURCES_FILE, RESOURCE_FIELDS, resources)
    return render_report(out)


def render_report(out_dir: str | Path) -> Path:
    """Re-render report.html from the directory's data files."""
    out = Path(out_dir)
    resources = read_resources(out / RESOURCES_FILE) if (out / RESOURCES_FILE).exists() else []
    page = render_html(*load_report_data(out), resources=resources)
    path = out / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path


# --- figures --------------------------------------------------------------------------------------


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(nrows: int = 1, ncols: int = 1, height: float = 3.6, **kw: Any) -> tuple[Figure, Any]:
    fig = Figure(figsize=(11, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot: no display, no global figure state
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _xs(history: Sequence[HistoryRow]) -> list[float]:
    return [r.elapsed_s for r in history]


def _series(
    history: Sequence[HistoryRow], get: Callable[[HistoryRow], float | None]
) -> list[float]:
    return [math.nan if (v := get(r)) is None else v for r in history]


def _time_axis(ax: Axes, summary: Summary, history: Sequence[HistoryRow]) -> None:
    """x from the start to the last tick, and a dashed line where the load stopped when the run
    went on draining after it."""
    ax.set_xlim(0, max(1.0, history[-1].elapsed_s if history else 0.0))
    if summary.elapsed_s > summary.duration_s + 0.5:
        ax.axvline(summary.duration_s, color="#777777", linewidth=0.9, linestyle="--")


def _kw(history: Sequence[HistoryRow]) -> dict[str, Any]:
    """Markers on short runs, where a line of a few points is hard to see."""
    return {"marker": "o", "markersize": 3} if len(history) <= 30 else {}


def fig_throughput(summary: Summary, history: Sequence[HistoryRow]) -> Figure:
    """Packets per second on the wire, per stream, and loops coming back."""
    fig, axes = _figure()
    ax: Axes = axes[0][0]
    xs = _xs(history)
    lines = [
        ("payload (real + cover)", "payload", lambda r: r.payload_per_s, "-"),
        ("real", "real", lambda r: r.real_per_s, "-"),
        ("loop", "loop", lambda r: r.loop_per_s, "-"),
        ("drop", "drop", lambda r: r.drop_per_s, "-"),
        ("loops back", "loop_back", lambda r: r.loops_back_per_s, "--"),
        ("messages delivered", "delivered", lambda r: r.delivered_per_s, ":"),
    ]
    for label, color, get, style in lines:
        ys = _series(history, get)
        if any(y > 0 for y in ys):
            ax.plot(xs, ys, style, label=label, color=COLORS[color], linewidth=1.4, **_kw(history))
    ax.set_xlabel("elapsed (s)")
    ax.set_ylabel("packets / s")
    ax.set_ylim(bottom=0)
    ax.set_title("Throughput per stream (per second)")
    _time_axis(ax, summary, history)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower center", ncols=6, bbox_to_anchor=(0.5, -0.32))
    return fig


def fig_rtt_over_time(summary: Summary, history: Sequence[HistoryRow]) -> Figure | None:
    """RTT percentiles per second and the loss judged so far."""
    if all(r.rtt_p50_cum_ms is None and r.loss is None for r in history):
        return None
    kw = _kw(history)
    fig, axes = _figure(2, 1, height=2.6, sharex=True)
    ax, ax_loss = axes[0][0], axes[1][0]
    xs = _xs(history)
    ax.plot(
        xs,
        _series(history, lambda r: r.rtt_p50_ms),
        label="p50 (this second)",
        color="#1f77b4",
        **kw,
    )
    ax.plot(
        xs,
        _series(history, lambda r: r.rtt_p99_ms),
        label="p99 (this second)",
        color="#d62728",
        **kw,
    )
    ax.plot(
        xs,
        _series(history, lambda r: r.rtt_p99_cum_ms),
        "--",
        label="p99 (so far)",
        color="#d62728",
        alpha=0.6,
    )
    ax.set_ylabel("loop RTT (ms)")
    highest = [v for r in history for v in (r.rtt_p99_ms, r.rtt_p99_cum_ms) if v is not None]
    ax.set_ylim(0, max([1.0, *highest]) * 1.3)  # headroom for the legend
    ax.set_title("Loop round-trip time over time, and loss")
    ax.legend(loc="upper left", ncols=3)
    loss = _series(history, lambda r: None if r.loss is None else r.loss * 100)
    ax_loss.plot(xs, loss, color="#8c564b", label="loops lost so far (%)", **kw)
    ax_loss.set_ylabel("loss (%)")
    ax_loss.set_xlabel("elapsed (s)")
    ax_loss.set_ylim(0, max([1.0, *(v for v in loss if not math.isnan(v))]) * 1.3)
    ax_loss.legend(loc="upper left")
    _time_axis(ax, summary, history)
    _time_axis(ax_loss, summary, history)
    return fig


def _cdf_points(encoded: str) -> tuple[list[float], list[float]]:
    """(value ms, fraction <= value) at every recorded histogram bucket."""
    hist = decode_histogram(encoded)
    total = hist.get_total_count()
    xs: list[float] = []
    ps: list[float] = []
    if total == 0:
        return xs, ps
    for item in hist.get_recorded_iterator():
        xs.append(hist.get_highest_equivalent_value(item.value_iterated_to) / 1000)
        ps.append(item.total_count_to_this_value / total)
    return xs, ps


def fig_rtt_distribution(summary: Summary) -> Figure | None:
    """Observed RTT CDF against the delay model alone (never shifted to fit the data)."""
    xs, ps = _cdf_points(summary.histograms.get("rtt", ""))
    if not xs:
        return None
    model = RttModel(tuple(summary.hop_means_ms))
    top = max(summary.rtt.p999_ms or 0.0, model.quantile(0.999)) * 1.15
    grid = [top * i / 400 for i in range(401)]
    pred = [model.cdf(x) for x in grid]
    fig, axes = _figure(1, 2, height=4.0)
    ax: Axes = axes[0][0]
    tail: Axes = axes[0][1]
    ax.step(xs, ps, where="post", color="#1f77b4", linewidth=1.8, label="observed")
    ks = "" if summary.rtt_ks is None else f", KS distance {summary.rtt_ks:.3f}"
    ax.plot(grid, pred, color="#d62728", linewidth=1.4, label=f"model: {summary.rtt_model}{ks}")
    ax.set_xlim(0, top)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("loop RTT (ms)")
    ax.set_ylabel("fraction of loops ≤ RTT")
    ax.set_title("RTT distribution vs prediction (CDF)")
    ax.legend(loc="lower right")
    # the tail on a log scale: 1 - CDF, where p99 and p99.9 live
    n = summary.rtt.count
    floor = 0.5 / n if n else 1e-6
    obs_tail = [max(1.0 - p, floor) for p in ps]
    tail.step(xs, obs_tail, where="post", color="#1f77b4", linewidth=1.8, label="observed")
    tail.plot(
        grid, [max(1.0 - p, floor) for p in pred], color="#d62728", linewidth=1.4, label="predicted"
    )
    tail.set_yscale("log")
    tail.set_ylim(floor, 1.2)
    tail.set_xlim(0, max(top, xs[-1] * 1.02))
    tail.set_xlabel("loop RTT (ms)")
    tail.set_ylabel("fraction of loops > RTT")
    tail.set_title("Tail (log scale)")
    for q, label in ((0.01, "p99"), (0.001, "p99.9")):
        if q > floor:
            tail.axhline(q, color="#999999", linewidth=0.8, linestyle="--")
            tail.text(tail.get_xlim()[1], q, f" {label}", va="center", fontsize=8, color="#666666")
    tail.legend(loc="upper right")
    return fig


_PCT_TICKS = [0.0, 0.9, 0.99, 0.999, 0.9999, 0.99999]


def _pct_axis(ax: Axes, top: float) -> None:
    """x as -log10(1 - p), labelled by percentile: the HdrHistogram percentile plot."""
    ticks = [t for t in _PCT_TICKS if t <= top]
    ax.xaxis.set_major_locator(FixedLocator([-math.log10(1 - t) for t in ticks]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(
        FuncFormatter(lambda v, _pos: f"{100 * (1 - 10**-v):.5g}%" if v else "0%")
    )
    ax.set_xlabel("percentile")


def _spectrum(encoded: str) -> tuple[list[float], list[float], float]:
    """(x = -log10(1 - p), value ms) along a histogram's percentiles, and the highest p shown."""
    hist = decode_histogram(encoded)
    total = hist.get_total_count()
    if total == 0:
        return [], [], 0.0
    xs, ys = [], []
    cum = 0
    for item in hist.get_recorded_iterator():
        before = cum / total
        cum = item.total_count_to_this_value
        after = min(cum / total, 1 - 0.5 / total)
        v = hist.get_highest_equivalent_value(item.value_iterated_to) / 1000
        for p in (before, after):
            xs.append(-math.log10(1 - p))
            ys.append(v)
    return xs, ys, 1 - 0.5 / total


def fig_lateness(summary: Summary, history: Sequence[HistoryRow]) -> Figure | None:
    """Scheduler lateness: the percentile spectrum, and p50/p99 per second."""
    xs, ys, top = _spectrum(summary.histograms.get("lateness", ""))
    if not xs:
        return None
    fig, axes = _figure(1, 2, height=3.6)
    ax: Axes = axes[0][0]
    ax.plot(xs, ys, color="#9467bd", linewidth=1.6)
    _pct_axis(ax, top)
    ax.set_ylabel("lateness (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title("Scheduler lateness by percentile")
    over: Axes = axes[0][1]
    t = _xs(history)
    kw = _kw(history)
    over.plot(t, _series(history, lambda r: r.lateness_p50_ms), color="#1f77b4", label="p50", **kw)
    over.plot(t, _series(history, lambda r: r.lateness_p99_ms), color="#d62728", label="p99", **kw)
    _time_axis(over, summary, history)
    over.set_xlabel("elapsed (s)")
    over.set_ylabel("lateness (ms)")
    over.set_ylim(bottom=0)
    over.set_title("Lateness per second")
    over.legend(loc="upper left")
    return fig


def fig_message_latency(summary: Summary) -> Figure | None:
    """End-to-end latency of real messages by percentile."""
    if summary.messages.sent == 0:
        return None
    xs, ys, top = _spectrum(summary.histograms.get("message_latency", ""))
    if not xs:
        return None
    fig, axes = _figure(height=3.4)
    ax: Axes = axes[0][0]
    ax.plot(xs, ys, color=COLORS["delivered"], linewidth=1.6)
    _pct_axis(ax, top)
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title("Real-message delivery latency by percentile")
    return fig


def _group(sample: NodeSample) -> str:
    if sample.kind == "mixnode" and sample.layer is not None:
        return f"mix layer {sample.layer}"
    return sample.kind + "s" if not sample.kind.endswith("s") else sample.kind


def node_rates(
    samples: Sequence[NodeSample],
) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """group -> node label -> (t_s, packets received per second) from consecutive reports."""
    by_node: dict[str, list[NodeSample]] = {}
    for s in samples:
        by_node.setdefault(s.pub_key, []).append(s)
    groups: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for key, series in sorted(by_node.items(), key=lambda kv: (kv[1][-1].host or "", kv[0])):
        series.sort(key=lambda s: s.t_s)
        ts, rates = [], []
        for a, b in itertools.pairwise(series):
            dt = b.t_s - a.t_s
            if dt <= 0:
                continue
            delta = b.received - a.received if b.received >= a.received else b.received
            ts.append(b.t_s)
            rates.append(delta / dt)
        if ts:
            label = series[-1].host or key[:8]
            groups.setdefault(_group(series[-1]), {})[label] = (ts, rates)
    return dict(sorted(groups.items(), key=lambda g: (not g[0].startswith("mix"), g[0])))


def fig_node_load(samples: Sequence[NodeSample], duration_s: float) -> Figure | None:
    """Packets each node received per second, one panel per mix layer (and providers)."""
    groups = node_rates(samples)
    if not groups:
        return None
    all_t = [t for nodes in groups.values() for ts, _ in nodes.values() for t in ts]
    lo, hi = min([0.0, *all_t]), max([duration_s, *all_t])
    fig, axes = _figure(len(groups), 1, height=2.3, sharex=True)
    for (name, nodes), row in zip(groups.items(), axes, strict=True):
        ax: Axes = row[0]
        top = 0.0
        for label, (ts, rates) in nodes.items():
            ax.plot(ts, rates, linewidth=1.2, label=label)
            top = max([top, *rates])
        ax.set_ylabel("received / s")
        ax.set_ylim(0, max(1.0, top * 1.1))
        ax.set_xlim(lo, hi)
        ax.set_title(f"{name}: {len(nodes)} node{'s' if len(nodes) != 1 else ''}", loc="left")
        if lo < 0:
            ax.axvspan(lo, 0, color="#cccccc", alpha=0.35, linewidth=0)
        ax.axvline(duration_s, color="#777777", linewidth=0.9, linestyle="--")
        if len(nodes) <= 12:
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    axes[-1][0].set_xlabel("elapsed (s); shaded: before the load, dashed line: the load's end")
    return fig


def fig_resources(summary: Summary, samples: Sequence[ProcessSample]) -> Figure | None:
    """Cores used and RSS per process over time: client processes solid, nodes thin."""
    if not samples:
        return None
    by: dict[str, list[ProcessSample]] = {}
    for s in samples:
        by.setdefault(s.process, []).append(s)
    fig, axes = _figure(1, 2, height=3.8)
    cpu: Axes = axes[0][0]
    rss: Axes = axes[0][1]
    for name, series in by.items():
        client = series[0].role in ("coordinator", "worker", "sender")
        kw = {"linewidth": 1.6 if client else 0.8, "alpha": 1.0 if client else 0.6}
        ts = [s.t_s for s in series]
        cpu.plot(ts, [s.cpu_cores for s in series], label=name, **kw)
        rss.plot(ts, [s.rss_mib for s in series], label=name, **kw)
    cpu.axhline(1.0, color="#d62728", linewidth=0.9, linestyle="--")
    cpu.set_ylim(0, max(1.2, max(s.cpu_cores for s in samples) * 1.1))
    cpu.set_ylabel("cores used")
    cpu.set_title("CPU per process (dashed: one full core)")
    rss.set_ylim(bottom=0)
    rss.set_ylabel("RSS (MiB)")
    rss.set_title("Resident memory per process")
    for ax in (cpu, rss):
        ax.set_xlabel("elapsed (s)")
        ax.axvline(summary.duration_s, color="#777777", linewidth=0.9, linestyle="--")
    if len(by) <= 16:
        rss.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return fig


# --- the page -------------------------------------------------------------------------------------


def _fmt(v: float | int | None, unit: str = "", digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v:,.{digits}g}{unit}" if abs(v) < 10**digits else f"{v:,.0f}{unit}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.4g}%"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def _dist_row(name: str, p: Percentiles) -> list[str]:
    return [
        name,
        _fmt(p.count),
        *(
            _fmt(getattr(p, f))
            for f in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms")
        ),
    ]


def _interrupted_html(s: Summary) -> str:
    if not s.interrupted:
        return ""
    return ('<section class="verdict saturated"><h2>INTERRUPTED</h2><p>The run was stopped before its '
            "end; these are the figures measured until then (loops still in flight are not judged)."
            "</p></section>")


def _meta_html(s: Summary) -> str:
    m = s.meta
    if m is None:
        return ""
    h = m.host
    rates = ", ".join(f"{k} {v:g}/s" for k, v in m.rates_per_identity.items())
    rows = [
        ("started (UTC)", m.started_utc),
        ("loopix", m.loopix_version + (f" (git {m.git_commit})" if m.git_commit else "")),
        ("command", m.command_line),
        ("host", f"{h.hostname}: {h.cpu_model or '?'}, {h.cores or '?'} cores, "
                 f"{h.memory_mib or '?'} MiB, {h.kernel}, {h.python}"
                 + (f"; load average at start {' / '.join(f'{x:g}' for x in h.load_average)}"
                    if h.load_average else "")),
        ("traffic", f"{m.identities:,} identities × ({rates}); real messages {m.messages_per_s:g}/s"),
        ("packets", f"payload {m.packet_payload_size} bytes; mean hop delay {m.mean_hop_delay_ms:g} ms; "
                    f"workers {m.workers or 'one per core'}; sender coalescing window "
                    f"{m.sender_coalesce_us} µs (scheduler lateness up to it is by design)"),
        ("topology", f"{m.topology.source}: mixnodes per layer {m.topology.mixnodes_per_layer}, "
                     f"{m.topology.providers} providers"),
    ]
    return f"<section><h2>Run metadata</h2>{_kv(rows)}</section>"


def _verdict_html(s: Summary) -> str:
    v = s.verdict
    if v is None:
        return ""
    items = "".join(
        f"<li><b>{html.escape(r.level)}</b> ({html.escape(r.rule)}): {html.escape(r.message)}</li>"
        for r in v.reasons
    ) or "<li>no rule fired (rules: docs/loadtest.md)</li>"
    return f'<section class="verdict {v.status}"><h2>Verdict: {v.status.upper()}</h2><ul>{items}</ul></section>'


def _summary_html(s: Summary) -> str:
    drain = s.elapsed_s - s.duration_s
    run = [
        ("load", f"{s.duration_s:.1f} s" + (f" (+ {drain:.1f} s drain)" if drain >= 0.5 else "")),
        ("mean hop delay", f"{s.mean_hop_delay_ms:g} ms × {s.mix_layers} mix layers"),
        ("grace period", f"{s.grace_s:g} s"),
        *((k, v) for k, v in s.labels.items()),
    ]
    traffic = [
        [name, _fmt(s.sent.get(name, 0)), _fmt(s.rates.get(name), "/s")]
        for name in ("payload", "loop", "drop")
    ]
    traffic.insert(1, ["  of which real", _fmt(s.real_sent), _fmt(s.rates.get("real"), "/s")])
    traffic.append(["loops back", _fmt(s.loops.back), _fmt(s.rates.get("loop_back"), "/s")])
    lp = s.loops
    ls = s.loss
    loops = [
        ("loops sent", _fmt(lp.sent)),
        ("judged (sent ≥ grace ago)", _fmt(lp.settled)),
        ("loss, every reason", f"{_fmt(ls.lost)} of {_fmt(ls.scheduled)} scheduled ({_pct(ls.loss)})"),
        *(
            (f"  {reason.replace('_', ' ')}", f"{_fmt(n)} ({_pct(ls.ratio_by_reason.get(reason))})")
            for reason, n in ls.by_reason.items()
        ),
        (
            "never sent (payload/loop/drop)",
            "; ".join(
                f"{r.replace('_', ' ')} " + "/".join(_fmt(v.get(st, 0)) for st in ("payload", "loop", "drop"))
                for r, v in ls.unsent.items()
            ),
        ),
        ("back after the grace period", _fmt(lp.late)),
        ("not yet judged", _fmt(lp.pending)),
    ]
    a = s.acks
    acks = []
    if a.sent:
        acks.extend([
            ("real fragments sent (first time)", _fmt(a.sent)),
            ("acknowledged", _fmt(a.acked)),
            ("retransmitted", f"{_fmt(a.retransmitted)} ({_pct(a.retransmitted / a.sent)} of fragments)"),
            ("unacknowledged at the end", _fmt(a.unacked)),
            ("ack RTT p50 / p99", f"{_fmt(a.rtt_p50_ms)} / {_fmt(a.rtt_p99_ms)} ms"),
        ])
    m = s.messages
    dists = [_dist_row("loop RTT", s.rtt)]
    pred = s.predicted_rtt_ms
    dists.append(
        [
            "model RTT (delays alone)",
            "",
            *(_fmt(pred.get(k, math.nan)) for k in ("p50", "p90", "p99", "p999")),
            "",
            _fmt(sum(s.hop_means_ms)),
        ]
    )
    if m.sent:
        dists.append(_dist_row("message latency", s.message_latency))
    dists.append(_dist_row("scheduler lateness", s.lateness))
    parts = [
        '<div class="grid">',
        f"<section><h2>Run</h2>{_kv(run)}</section>",
        "<section><h2>Traffic</h2>"
        + _table(["stream", "packets", "rate"], traffic, "num")
        + "</section>",
        f"<section><h2>Loops</h2>{_kv(loops)}</section>",
        *([f"<section><h2>Acknowledgements</h2>{_kv(acks)}</section>"] if acks else []),
    ]
    if m.sent:
        msgs = [
            ("sent", _fmt(m.sent)),
            ("delivered", f"{_fmt(m.delivered)} ({_pct(m.delivery)})"),
            ("lost", _fmt(m.lost)),
            ("late", _fmt(m.late)),
            ("pending", _fmt(m.pending)),
        ]
        parts.append(f"<section><h2>Messages</h2>{_kv(msgs)}</section>")
    parts.append("</div>")
    parts.append(
        "<section><h2>Distributions (ms)</h2>"
        + _table(["", "count", "p50", "p90", "p99", "p99.9", "max", "mean"], dists, "num")
        + f'<p class="note">Model: {html.escape(s.rtt_model)}, the configured delays alone, not '
        f"fitted to the data. Excess (observed − model): p50 {_fmt(s.rtt_excess_ms.get('p50'))} ms, "
        f"p99 {_fmt(s.rtt_excess_ms.get('p99'))} ms; KS distance {_fmt(s.rtt_ks, digits=3)}."
        "</p></section>"
    )
    if s.resources:
        rows_r = [
            [u.process, u.role, str(u.pid), _fmt(u.cpu_mean_cores, digits=3), _fmt(u.cpu_max_cores, digits=3),
             _fmt(u.rss_max_mib, digits=4), str(u.samples)]
            for u in s.resources
        ]
        parts.append(
            "<section><h2>Processes (CPU in cores, from /proc each second)</h2>"
            + _table(["process", "role", "pid", "CPU mean", "CPU max", "RSS max MiB", "samples"], rows_r, "num")
            + "</section>"
        )
    if s.thresholds:
        rows = "".join(
            f'<tr class="{"pass" if t.passed else "fail"}"><td>{"pass" if t.passed else "FAIL"}</td>'
            f"<td><code>{html.escape(t.expression)}</code></td><td>{html.escape(t.message)}</td></tr>"
            for t in s.thresholds
        )
        parts.append(
            "<section><h2>Thresholds</h2><table><thead><tr><th></th><th>expression</th>"
            f"<th>result</th></tr></thead><tbody>{rows}</tbody></table></section>"
        )
    if s.nodes:
        rows_n = [
            [
                n.kind + ("" if n.in_topology else " (NOT IN TOPOLOGY, not summed)"),
                "" if n.layer is None else str(n.layer),
                n.host or n.pub_key[:12],
                _fmt(n.received),
                _fmt(n.sent),
                _fmt(n.dropped),
                ", ".join(f"{r} {c:,}" for r, c in sorted(n.dropped_by_reason.items()) if c) or "–",
                f"{_fmt(n.forward_lateness.p50_ms)} / {_fmt(n.forward_lateness.p99_ms)} / "
                f"{_fmt(n.forward_lateness.max_ms)}",
                _fmt(n.queue_max),
                str(n.samples),
                str(n.restarts),
            ]
            for n in s.nodes
        ]
        fl = s.node_forward_lateness
        parts.append(
            "<section><h2>Nodes (their own counters over the run)</h2>"
            + _table(
                ["kind", "layer", "node", "received", "sent", "dropped", "drops by reason",
                 "fwd lateness p50/p99/max ms", "max queue", "reports", "restarts"],
                rows_n,
                "num",
            )
            + f'<p class="note">Forwarding lateness: how long after its arrival + header delay a node '
            f"forwarded each packet (HdrHistograms merged over the topology's nodes): p50 "
            f"{_fmt(fl.p50_ms)} ms, p99 {_fmt(fl.p99_ms)} ms, max {_fmt(fl.max_ms)} ms, "
            f"{_fmt(fl.count)} packets. Drops by reason over the topology: "
            f"{html.escape(', '.join(f'{r} {c:,}' for r, c in sorted(s.nodes_dropped_by_reason.items())) or 'none')}."
            + (
                f" Not in the run's topology (flagged, not summed): "
                f"{html.escape(', '.join(s.unattributed_nodes))}."
                if s.unattributed_nodes else ""
            )
            + "</p></section>"
        )
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1160px;
color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.1em;margin:18px 0 6px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:0 24px}
table{border-collapse:collapse;font-size:0.9em;margin:4px 0}
th,td{padding:3px 10px;border-bottom:1px solid #e4e4e4;text-align:left}
table.num td+td,table.num th+th{text-align:right}
table.kv th{font-weight:normal;color:#555;white-space:nowrap}
tr.fail td{background:#fde8e8;color:#a00}tr.pass td:first-child{color:#080}
figure{margin:18px 0 28px}figure img{max-width:100%;height:auto}
.verdict{padding:4px 14px;border-left:6px solid #2ca02c;background:#eef8ee}
.verdict.degraded{border-color:#e6a700;background:#fff7e0}.verdict.saturated{border-color:#d62728;background:#fde8e8}
figcaption{color:#555;font-size:0.9em;max-width:900px}.note{color:#555;font-size:0.85em}
"""

_CAPTIONS = {
    "throughput": "Packets per second on the wire per stream (payload counts real and cover), "
    "with loops coming back. Flat lines at the configured rates mean the scheduler kept up.",
    "rtt_time": "Loop RTT percentiles in each second (solid) and over the run so far (dashed); "
    "below, the fraction of judged loops (sent more than the grace period ago) that never came back.",
    "rtt_dist": "Observed loop RTT against the model: the sum of the exponential delays the "
    "loop's hops carry (Erlang(k, mean hop delay) for equal means), not fitted to the data. The gap "
    "between the curves is what transport, processing and queueing added (the excess); the KS "
    "distance is the largest vertical gap. Right: the tail on a log scale.",
    "lateness": "How late the sender put packets on the wire relative to their Poisson schedule. "
    "The schedule is open loop, so lateness is not hidden from the RTT (no coordinated omission).",
    "messages": "Latency from handing a real message to the client to its reassembly at the "
    "recipient.",
    "resources": "CPU (cores used, from /proc) and resident memory of every process of the run, "
    "sampled each second. A process near 1 core is saturated: the figures then describe the machine "
    "as much as the mixnet.",
    "nodes": "Packets each node received per second, from the directory's metrics reports "
    "(the nodes' own counters), grouped by mix layer.",
}


def render_html(
    summary: Summary,
    history: Sequence[HistoryRow],
    nodes: Sequence[NodeSample] = (),
    resources: Sequence[ProcessSample] = (),
) -> str:
    """The self-contained page (no external assets) for a run's data."""
    figs: list[tuple[str, str, Figure | None]] = []
    with matplotlib.rc_context(_RC):
        figs.append(
            ("Throughput", "throughput", fig_throughput(summary, history) if history else None)
        )
        figs.append(
            (
                "RTT and loss over time",
                "rtt_time",
                fig_rtt_over_time(summary, history) if history else None,
            )
        )
        figs.append(("RTT distribution", "rtt_dist", fig_rtt_distribution(summary)))
        figs.append(("Scheduler lateness", "lateness", fig_lateness(summary, history)))
        figs.append(("Message latency", "messages", fig_message_latency(summary)))
        figs.append(("Per-node load", "nodes", fig_node_load(nodes, summary.duration_s)))
        figs.append(("CPU and memory", "resources", fig_resources(summary, resources)))
        rendered = [(title, key, _png(fig)) for title, key, fig in figs if fig is not None]
    blocks = [
        f'<figure id="{key}"><h2>{html.escape(title)}</h2>'
        f'<img alt="{html.escape(title)}" src="data:image/png;base64,{png}">'
        f"<figcaption>{html.escape(_CAPTIONS[key])}</figcaption></figure>"
        for title, key, png in rendered
    ]
    missing = [title for title, _key, fig in figs if fig is None]
    note = f'<p class="note">No data for: {html.escape(", ".join(missing))}.</p>' if missing else ""
    title = f"loopix load test — {summary.duration_s:.0f} s"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{_interrupted_html(summary)}{_verdict_html(summary)}"
        f"{_meta_html(summary)}{_summary_html(summary)}{note}"
        f"{''.join(blocks)}"
        "</body></html>\n"
    )
