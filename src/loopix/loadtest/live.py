"""A run while it happens: a rich terminal view (or one plain line per second when stdout is not a
terminal: CI logs, tests, `| tee`), the summary table at the end, and a Prometheus endpoint.

Everything here reads HistoryRow/Summary values, never the aggregator's live state, so the
Prometheus thread sees only immutable snapshots published by `LoadMetrics.tick`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from loopix.loadtest.metrics import HistoryRow, LoadMetrics, Percentiles, Summary

__all__ = ["LiveView", "plain_line", "print_summary", "serve_prometheus", "summary_table"]


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}" if v < 10 else f"{v:.0f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.3g}%"


def _rate(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.3g}"


def plain_line(row: HistoryRow, duration_s: float) -> str:
    """The non-TTY form of a second: everything on one grep-able line."""
    left = max(0.0, duration_s - row.elapsed_s)
    parts = [
        f"[{row.elapsed_s:6.1f}s/{duration_s:g}s left {left:.0f}s]",
        f"payload {_rate(row.payload_per_s)}/s (real {_rate(row.real_per_s)})",
        f"loop {_rate(row.loop_per_s)}/s drop {_rate(row.drop_per_s)}/s",
        f"back {_rate(row.loops_back_per_s)}/s",
        f"rtt p50 {_ms(row.rtt_p50_ms)} p99 {_ms(row.rtt_p99_ms)} ms",
        f"loss {_pct(row.loss)} ({row.loops_lost} lost, {row.unsent} unsent)",
        f"lateness p99 {_ms(row.lateness_p99_ms)} ms",
    ]
    if row.messages_sent:
        parts.append(f"msgs {row.messages_delivered}/{row.messages_sent} lost {row.messages_lost}")
    parts.append(f"nodes {row.nodes}")
    return " | ".join(parts)


class LiveView:
    """`with LiveView(60) as view: view.update(metrics.tick(now))`; `finish(summary)` at the end.

    `plain=None` decides by whether `file` is a terminal."""

    def __init__(
        self,
        duration_s: float,
        *,
        file: TextIO | None = None,
        plain: bool | None = None,
        title: str = "loopix load test",
    ) -> None:
        self.duration_s = duration_s
        self.file = file or sys.stdout
        isatty = getattr(self.file, "isatty", lambda: False)()
        self.plain = (not isatty) if plain is None else plain
        self.title = title
        self.console = Console(file=self.file, width=None if isatty else 120)
        self._live: Live | None = None

    def __enter__(self) -> LiveView:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        if not self.plain and self._live is None:
            self._live = Live(
                Text(f"{self.title}: starting…"),
                console=self.console,
                refresh_per_second=4,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, row: HistoryRow, summary: Summary | None = None) -> None:
        """Show one second. `summary` (optional, `metrics.summary(histograms=False)`) adds the
        p90/p99.9/max of the whole run so far."""
        if self.plain:
            print(plain_line(row, self.duration_s), file=self.file, flush=True)
        elif self._live is not None:
            self._live.update(self._render(row, summary), refresh=True)

    def finish(self, summary: Summary) -> None:
        """Stop the live display and print the summary table."""
        self.stop()
        print_summary(summary, self.console)

    def _render(self, row: HistoryRow, summary: Summary | None) -> Group:
        left = max(0.0, self.duration_s - row.elapsed_s)
        head = Text.assemble(
            (self.title, "bold"),
            f"   {row.elapsed_s:.0f} s of {self.duration_s:g} s, ",
            (f"{left:.0f} s left", "bold cyan"),
            f"   nodes reporting: {row.nodes}",
        )
        bar = ProgressBar(
            total=max(self.duration_s, 1e-9), completed=min(row.elapsed_s, self.duration_s)
        )
        bar_row = Table.grid(expand=True)  # a ProgressBar alone ends without a newline
        bar_row.add_row(bar)
        rates = Table(box=None, padding=(0, 1))
        rates.add_column("packets", justify="left")
        for name in ("payload", "real", "loop", "drop", "loops back"):
            rates.add_column(name, justify="right")
        rates.add_row(
            "per second",
            *(
                _rate(v)
                for v in (
                    row.payload_per_s,
                    row.real_per_s,
                    row.loop_per_s,
                    row.drop_per_s,
                    row.loops_back_per_s,
                )
            ),
        )
        rates.add_row(
            "total",
            *(
                f"{v:,}"
                for v in (
                    row.payload_sent,
                    row.real_sent,
                    row.loops_sent,
                    row.drop_sent,
                    row.loops_back,
                )
            ),
        )
        lat = Table(box=None, padding=(0, 1))
        lat.add_column("latency (ms)", justify="left")
        for name in ("p50", "p99", "p90", "p99.9", "max"):
            lat.add_column(name, justify="right")
        rtt = summary.rtt if summary else Percentiles()
        lat.add_row("RTT this second", _ms(row.rtt_p50_ms), _ms(row.rtt_p99_ms), "", "", "")
        lat.add_row(
            "RTT so far",
            _ms(row.rtt_p50_cum_ms),
            _ms(row.rtt_p99_cum_ms),
            _ms(rtt.p90_ms),
            _ms(rtt.p999_ms),
            _ms(rtt.max_ms),
        )
        lat.add_row(
            "sched. lateness", _ms(row.lateness_p50_ms), _ms(row.lateness_p99_ms), "", "", ""
        )
        loss_style = "bold red" if row.loss else "green"
        loss = Text.assemble(
            "loops: sent ",
            f"{row.loops_sent:,}",
            ", back ",
            f"{row.loops_back:,}",
            ", judged ",
            f"{row.loops_settled:,}",
            ", lost ",
            (f"{row.loops_lost:,} ({_pct(row.loss)})", loss_style),
        )
        parts: list[Any] = [head, bar_row, rates, Text(""), lat, Text(""), loss]
        if row.messages_sent:
            parts.append(
                Text(
                    f"messages: sent {row.messages_sent:,}, delivered {row.messages_delivered:,}, "
                    f"lost {row.messages_lost:,}"
                )
            )
        return Group(*parts)


def summary_table(summary: Summary) -> Table:
    """The end-of-run table (also what a CI log shows)."""
    s = summary
    title = f"loopix load test: {s.duration_s:.1f} s" + (" (INTERRUPTED)" if s.interrupted else "")
    if s.meta is not None:
        title += f", started {s.meta.started_utc}, loopix {s.meta.loopix_version}"
    t = Table(title=title, title_justify="left")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("detail")
    if s.verdict is not None:
        style = {"ok": "bold green", "degraded": "bold yellow", "saturated": "bold red"}[s.verdict.status]
        first = s.verdict.reasons[0].message if s.verdict.reasons else "no rule fired (docs/loadtest.md)"
        t.add_row("VERDICT", f"[{style}]{s.verdict.status}[/]", first)
        for r in s.verdict.reasons[1:]:
            t.add_row("", f"[{style}]{r.level}[/]", r.message)
    for name in ("payload", "loop", "drop"):
        t.add_row(f"sent {name}", f"{s.sent.get(name, 0):,}", f"{s.rates.get(name, 0.0):.1f}/s")
    t.add_row("sent real", f"{s.real_sent:,}", f"{s.rates.get('real', 0.0):.1f}/s")
    lp = s.loops
    t.add_row("loops back", f"{lp.back:,}", f"{lp.late:,} after the grace period")
    ls = s.loss
    reasons = ", ".join(f"{r.replace('_', ' ')} {n:,}" for r, n in ls.by_reason.items() if n)
    t.add_row(
        "loss (every reason)",
        _pct(ls.loss),
        f"{ls.lost:,} of {ls.scheduled:,} loops scheduled and judged ({reasons or 'none'}), "
        f"{lp.pending:,} not yet judged",
    )
    if ls.unsent_total:
        t.add_row("never sent", f"{ls.unsent_total:,}", ", ".join(
            f"{r.replace('_', ' ')}: " + "/".join(f"{v.get(st, 0):,}" for st in ("payload", "loop", "drop"))
            for r, v in ls.unsent.items() if any(v.values())) + " (payload/loop/drop)")
    for label, p in (
        ("RTT", s.rtt),
        ("lateness", s.lateness),
        ("message latency", s.message_latency),
    ):
        if p.count or label != "message latency":
            window = s.meta.sender_coalesce_us if label == "lateness" and s.meta is not None else 0
            t.add_row(
                f"{label} p50/p99 ms",
                f"{_ms(p.p50_ms)} / {_ms(p.p99_ms)}",
                f"p90 {_ms(p.p90_ms)}, p99.9 {_ms(p.p999_ms)}, max {_ms(p.max_ms)}, n={p.count:,}"
                + (f"; up to {window / 1000:g} ms is the senders' coalescing window" if window else ""),
            )
    pred = s.predicted_rtt_ms
    ex = s.rtt_excess_ms
    ks = "–" if s.rtt_ks is None else f"{s.rtt_ks:.3f}"
    t.add_row(
        "model RTT p50/p99 ms",
        f"{_ms(pred.get('p50', 0.0))} / {_ms(pred.get('p99', 0.0))}",
        f"{s.rtt_model}, not fitted; excess p50 {_ms(ex.get('p50'))}, p99 {_ms(ex.get('p99'))} ms; KS {ks}",
    )
    m = s.messages
    if m.sent:
        t.add_row("delivery", _pct(m.delivery), f"{m.delivered:,} of {m.sent:,}, {m.lost:,} lost")
    if s.nodes:
        ours = [n for n in s.nodes if n.in_topology]
        reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(s.nodes_dropped_by_reason.items()) if n)
        t.add_row(
            "nodes",
            str(len(ours)),
            f"received {sum(n.received for n in ours):,}, dropped {sum(n.dropped for n in ours):,}"
            + (f" ({reasons})" if reasons else ""),
        )
        fl = s.node_forward_lateness
        t.add_row("node forwarding lateness p50/p99 ms", f"{_ms(fl.p50_ms)} / {_ms(fl.p99_ms)}",
                  f"late vs arrival + header delay; max {_ms(fl.max_ms)}, n={fl.count:,}; "
                  f"largest queue {max((n.queue_max for n in ours), default=0):,}")
        if s.unattributed_nodes:
            t.add_row("[yellow]not in topology[/]", str(len(s.unattributed_nodes)),
                      "reported counters but not in the run's topology, not summed: "
                      + ", ".join(s.unattributed_nodes[:5]))
    if s.resources:
        busiest = max(s.resources, key=lambda u: u.cpu_max_cores)
        client = [u for u in s.resources if u.role in ("coordinator", "worker", "sender")]
        t.add_row(
            "CPU busiest process",
            f"{busiest.cpu_max_cores:.2f} cores",
            f"{busiest.process} (mean {busiest.cpu_mean_cores:.2f}); client RSS max "
            f"{sum(u.rss_max_mib for u in client):.0f} MiB over {len(client)} processes",
        )
    for r in s.thresholds:
        t.add_row("threshold", "[green]pass[/]" if r.passed else "[bold red]FAIL[/]", r.message)
    return t


def print_summary(summary: Summary, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    console.print(summary_table(summary))


# --- Prometheus -----------------------------------------------------------------------------------


class _LoadCollector(Collector):
    """Exposes the last tick's row; counters are cumulative, gauges are this second's values."""

    def __init__(self, metrics: LoadMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        row = self.metrics.last_row
        if row is None:
            return
        sent = CounterMetricFamily(
            "loopix_loadtest_packets_sent", "Packets sent", labels=["stream"]
        )
        sent.add_metric(["payload"], row.payload_sent)
        sent.add_metric(["loop"], row.loops_sent)
        sent.add_metric(["drop"], row.drop_sent)
        yield sent
        yield CounterMetricFamily(
            "loopix_loadtest_real_sent", "Payload packets carrying real data", value=row.real_sent
        )
        yield CounterMetricFamily("loopix_loadtest_loops_back", "Loops back", value=row.loops_back)
        acks = self.metrics.acks
        frags = CounterMetricFamily(
            "loopix_loadtest_fragments", "Real fragments: first sends, acked, retransmitted",
            labels=["state"],
        )
        frags.add_metric(["sent"], acks.sent)
        frags.add_metric(["acked"], acks.acked)
        frags.add_metric(["retransmitted"], acks.retransmitted)
        yield frags
        yield GaugeMetricFamily(
            "loopix_loadtest_fragments_unacked", "Real fragments awaiting an ack", value=acks.unacked
        )
        if acks.rtt_p50_ms is not None:
            ack_rtt = GaugeMetricFamily(
                "loopix_loadtest_ack_rtt_seconds", "Ack round trip since start", labels=["quantile"]
            )
            ack_rtt.add_metric(["0.5"], acks.rtt_p50_ms / 1000)
            ack_rtt.add_metric(["0.99"], (acks.rtt_p99_ms or 0.0) / 1000)
            yield ack_rtt
        yield CounterMetricFamily(
            "loopix_loadtest_loops_lost", "Loops judged lost", value=row.loops_lost
        )
        yield CounterMetricFamily(
            "loopix_loadtest_messages_sent", "Real messages sent", value=row.messages_sent
        )
        yield CounterMetricFamily(
            "loopix_loadtest_messages_delivered",
            "Real messages delivered",
            value=row.messages_delivered,
        )
        yield GaugeMetricFamily(
            "loopix_loadtest_messages_lost",
            "Real messages not delivered in the grace period",
            value=row.messages_lost,
        )
        if row.loss is not None:
            yield GaugeMetricFamily(
                "loopix_loadtest_loss_ratio", "Fraction of judged loops lost", value=row.loss
            )
        rtt = GaugeMetricFamily(
            "loopix_loadtest_rtt_seconds", "Loop RTT in the last second", labels=["quantile"]
        )
        late = GaugeMetricFamily(
            "loopix_loadtest_lateness_seconds",
            "Scheduler lateness in the last second",
            labels=["quantile"],
        )
        for fam, p50, p99 in (
            (rtt, row.rtt_p50_ms, row.rtt_p99_ms),
            (late, row.lateness_p50_ms, row.lateness_p99_ms),
        ):
            for q, v in (("0.5", p50), ("0.99", p99)):
                if v is not None:
                    fam.add_metric([q], v / 1000)
            yield fam
        yield GaugeMetricFamily(
            "loopix_loadtest_elapsed_seconds", "Seconds since the load started", value=row.elapsed_s
        )
        yield GaugeMetricFamily(
            "loopix_loadtest_nodes", "Nodes reporting to the directory", value=row.nodes
        )


def serve_prometheus(metrics: LoadMetrics, port: int, addr: str = "127.0.0.1") -> tuple[Any, Any]:
    """`--metrics-port`: serve the load test's metrics on http://addr:port/metrics from a daemon
    thread. Returns (server, thread); `server.shutdown()` stops it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LoadCollector(metrics))
    return start_http_server(port, addr, registry=registry)
