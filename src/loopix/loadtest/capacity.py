"""`loopix-client loadtest --find-capacity`: the highest aggregate rate the network carries while
every threshold and the verdict hold.

Open loop, like every run: each step is a whole load test at a fixed aggregate rate (the
per-identity rates of --payload-rate/--loop-rate/--drop-rate scaled together), with a warm-up the
figures exclude. The rate grows by a factor until a step fails, then the interval between the last
pass and the first failure is bisected to the asked precision. The pure part (`CapacitySearch`:
which rate next, what the answer is) is apart from the runs that feed it.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import html
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import msgspec

from .metrics import Summary
from .model import RttModel, loop_hop_means

__all__ = ["CapacityResult", "CapacitySearch", "CapacitySettings", "StepResult", "add_capacity_arguments",
           "find_capacity", "run_capacity_command", "step_result"]

_RANK = {"ok": 0, "degraded": 1, "saturated": 2}


class CapacitySettings(msgspec.Struct, frozen=True, kw_only=True):
    start_rate: float = 200.0  # aggregate packets/s of the first step
    factor: float = 2.0  # step-up factor until a step fails
    max_rate: float = 100_000.0
    step_s: float = 10.0  # measured part of a step
    warmup_s: float = 5.0  # load before it, not measured
    precision: float = 0.1  # bisect until (first fail - last pass) / last pass <= this
    # the worst verdict a passing step may have; "saturated": judged by the thresholds alone
    accept: Literal["ok", "degraded", "saturated"] = "degraded"
    confirm: bool = True  # run a failing rate again: it fails only if both runs fail
    max_steps: int = 16


class StepResult(msgspec.Struct, frozen=True, kw_only=True):
    """One step of the search: its target and achieved rates and the signals it was judged on."""

    rate: float  # the aggregate rate asked for, packets/s
    achieved: float  # what went on the wire, packets/s
    per_identity: dict[str, float]
    rtt_p50_ms: float | None
    rtt_p99_ms: float | None
    rtt_excess_p99_ms: float | None
    loss: float | None
    scheduler_p99_ms: float | None
    node_lateness_p99_ms: float | None
    node_drops: int
    cpu_busiest: float | None  # cores, mean over the step, of the run's busiest process
    cpu_busiest_process: str | None
    verdict: str
    passed: bool
    failed: list[str]  # the thresholds and verdict reasons that failed, first the thresholds


class CapacityResult(msgspec.Struct, kw_only=True):
    capacity: float | None  # packets/s; None when even the lowest step failed
    identities: int
    per_identity_at_capacity: dict[str, float] | None
    first_failure: StepResult | None  # the lowest failing step: which signal failed first above it
    steps: list[StepResult]
    settings: CapacitySettings
    elapsed_s: float
    interrupted: bool = False


def step_result(rate: float, per_identity: dict[str, float], summary: Summary, accept: str) -> StepResult:
    """Judge one step from its summary (thresholds already checked)."""
    failed = [t.message for t in summary.thresholds if not t.passed]
    verdict = summary.verdict.status if summary.verdict else "ok"
    if _RANK[verdict] > _RANK[accept]:
        failed += [f"verdict {r.level}: {r.message}" for r in summary.verdict.reasons
                   if _RANK[r.level] > _RANK[accept]]
    busiest = max(summary.resources, key=lambda u: u.cpu_mean_cores, default=None)
    return StepResult(
        rate=rate,
        achieved=sum(summary.rates.get(s, 0.0) for s in ("payload", "loop", "drop")),
        per_identity=per_identity,
        rtt_p50_ms=summary.rtt.p50_ms,
        rtt_p99_ms=summary.rtt.p99_ms,
        rtt_excess_p99_ms=summary.rtt_excess_ms.get("p99"),
        loss=summary.loss.loss,
        scheduler_p99_ms=summary.lateness.p99_ms,
        node_lateness_p99_ms=summary.node_forward_lateness.p99_ms,
        node_drops=sum(summary.nodes_dropped_by_reason.values()),
        cpu_busiest=busiest.cpu_mean_cores if busiest else None,
        cpu_busiest_process=busiest.process if busiest else None,
        verdict=verdict,
        passed=not failed,
        failed=failed,
    )


class CapacitySearch:
    """Which rate to try next, given the steps so far: multiply by `factor` while steps pass, then
    bisect between the highest pass and the lowest failure. With `confirm`, a failing rate is run
    again and fails only if that run fails too (one noisy second on a shared machine must not set
    the answer); both runs stay in the curve. Pure: no I/O, no clock."""

    def __init__(self, settings: CapacitySettings) -> None:
        self.settings = settings
        self.steps: list[StepResult] = []

    def status(self, rate: float) -> str:
        """"pass", "fail" or "retry" (a first failure waiting for its confirmation)."""
        runs = [s for s in self.steps if s.rate == rate]
        if any(s.passed for s in runs):
            return "pass"
        return "fail" if len(runs) >= (2 if self.settings.confirm else 1) else "retry"

    def _last(self, rate: float) -> StepResult:
        return [s for s in self.steps if s.rate == rate][-1]

    @property
    def highest_pass(self) -> StepResult | None:
        rates = [s.rate for s in self.steps if self.status(s.rate) == "pass"]
        return self._last(max(rates)) if rates else None

    @property
    def lowest_failure(self) -> StepResult | None:
        rates = [s.rate for s in self.steps if self.status(s.rate) == "fail"]
        return self._last(min(rates)) if rates else None

    def record(self, step: StepResult) -> None:
        self.steps.append(step)

    def next_rate(self) -> float | None:
        """The next step's rate, or None when the search is done."""
        st = self.settings
        if len(self.steps) >= st.max_steps:
            return None
        if not self.steps:
            return st.start_rate
        last = self.steps[-1].rate
        if self.status(last) == "retry":
            return last
        lo, hi = self.highest_pass, self.lowest_failure
        if hi is None:  # every step passed so far: keep climbing
            rate = lo.rate * st.factor  # type: ignore[union-attr]
            return rate if rate <= st.max_rate else None
        if lo is None:  # even the first failed: come down
            rate = hi.rate / st.factor
            return rate if rate >= st.start_rate / st.factor**3 else None
        if lo.rate >= hi.rate:  # noise: a pass above a failure; trust the failure
            return None
        if (hi.rate - lo.rate) / lo.rate <= st.precision:
            return None
        return (lo.rate + hi.rate) / 2

    def capacity(self) -> float | None:
        lo, hi = self.highest_pass, self.lowest_failure
        if lo is None:
            return None
        if hi is not None and hi.rate < lo.rate:  # a pass above a failure: the failure bounds it
            passes = [s.rate for s in self.steps if self.status(s.rate) == "pass" and s.rate < hi.rate]
            return max(passes, default=None)
        return lo.rate


def scaled_rates(opts, rate: float) -> dict[str, float]:
    """Per-identity rates giving `rate` packets/s in aggregate, in the options' proportions."""
    base = {"payload": opts.payload_rate, "loop": opts.loop_rate, "drop": opts.drop_rate}
    total = sum(base.values()) * opts.identities
    return {k: v * rate / total for k, v in base.items()}


async def find_capacity(opts, settings: CapacitySettings, *, on_step: Callable[[StepResult], None] | None = None,
                        stop: asyncio.Event | None = None) -> CapacityResult:
    """Run the search: one embedded testnet (unless opts.directory_url) for every step."""
    from .run import Interrupted, run_loadtest

    started = time.monotonic()
    stop = stop or asyncio.Event()
    search = CapacitySearch(settings)
    testnet = None
    url = opts.directory_url
    if url is None:
        from loopix.testnet.launcher import Testnet

        testnet = Testnet(layers=opts.layers, mixnodes_per_layer=opts.mixnodes_per_layer, providers=opts.providers,
                          mean_hop_delay_ms=opts.mean_hop_delay_ms, presence_interval=1.0)
        await asyncio.to_thread(testnet.start)
        url = testnet.topology_url
    model = RttModel(loop_hop_means(opts.mean_hop_delay_ms, opts.layers))
    grace = opts.grace_s or max(2.0, 4 * model.quantile(0.9999) / 1000)
    interrupted = False
    try:
        while (rate := search.next_rate()) is not None:
            per_identity = scaled_rates(opts, rate)
            step_opts = msgspec.structs.replace(
                opts, payload_rate=per_identity["payload"], loop_rate=per_identity["loop"],
                drop_rate=per_identity["drop"], duration_s=settings.step_s, warmup_s=settings.warmup_s,
                grace_s=grace, out_dir=None, live=False, metrics_port=None)
            print(f"capacity: step {len(search.steps) + 1}: {rate:,.0f} packets/s "
                  f"({opts.identities} identities x {sum(per_identity.values()):.3g}/s)", flush=True)
            try:
                result = await run_loadtest(step_opts, directory_url=url, stop=stop, testnet=testnet)
            except Interrupted:
                interrupted = True
                break
            if result.summary.interrupted:
                interrupted = True
                break
            step = step_result(rate, per_identity, result.summary, settings.accept)
            search.record(step)
            if on_step is not None:
                on_step(step)
    finally:
        if testnet is not None:
            await asyncio.to_thread(testnet.stop)
    capacity = search.capacity()
    failures = sorted((s for s in search.steps if search.status(s.rate) == "fail"
                       and (capacity is None or s.rate > capacity)), key=lambda s: s.rate)
    return CapacityResult(
        capacity=capacity,
        identities=opts.identities,
        per_identity_at_capacity=scaled_rates(opts, capacity) if capacity else None,
        first_failure=failures[0] if failures else None,
        steps=sorted(search.steps, key=lambda s: s.rate),
        settings=settings,
        elapsed_s=time.monotonic() - started,
        interrupted=interrupted,
    )


# --- output ---------------------------------------------------------------------------------------

CURVE_FIELDS = ("rate", "achieved", "rtt_p50_ms", "rtt_p99_ms", "rtt_excess_p99_ms", "loss", "scheduler_p99_ms",
                "node_lateness_p99_ms", "node_drops", "cpu_busiest", "cpu_busiest_process", "verdict", "passed")


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "pass" if v else "FAIL"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def curve_table(result: CapacityResult) -> str:
    head = " | ".join(CURVE_FIELDS)
    rows = [" | ".join(_cell(getattr(s, f)) for f in CURVE_FIELDS) for s in result.steps]
    return "\n".join([head, *rows])


def describe(result: CapacityResult) -> list[str]:
    lines = []
    if result.capacity is None:
        lines.append("capacity: no step passed (every threshold and the verdict must hold)")
    else:
        per = result.per_identity_at_capacity or {}
        lines.append(f"capacity: {result.capacity:,.0f} packets/s = {result.identities} identities x "
                     f"{sum(per.values()):.3g}/s (" + ", ".join(f"{k} {v:.3g}/s" for k, v in per.items()) + ")")
    if result.first_failure is not None:
        f = result.first_failure
        lines.append(f"failed first above it, at {f.rate:,.0f} packets/s: " + "; ".join(f.failed))
    lines.append(f"search: {len(result.steps)} steps in {result.elapsed_s:.0f} s"
                 + (" (INTERRUPTED)" if result.interrupted else ""))
    return lines


def fig_curve(result: CapacityResult):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = result.steps
    fig = Figure(figsize=(11, 7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, squeeze=False)
    xs = [s.rate for s in steps]
    colors = ["#2ca02c" if s.passed else "#d62728" for s in steps]

    def panel(ax, series, label, ylabel):
        for ys, name in series:
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.scatter(xs, [0] * len(xs), c=colors, marker="|", s=200)
        ax.set_title(label)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("aggregate rate asked (packets/s)")
        if result.capacity:
            ax.axvline(result.capacity, color="#2ca02c", linestyle="--", linewidth=1)
        ax.legend(loc="upper left", fontsize=8)

    panel(axes[0][0], [([s.rtt_p50_ms for s in steps], "p50"), ([s.rtt_p99_ms for s in steps], "p99")],
          "loop RTT", "ms")
    panel(axes[0][1], [([None if s.loss is None else s.loss * 100 for s in steps], "loss")], "loss", "%")
    panel(axes[1][0], [([s.scheduler_p99_ms for s in steps], "scheduler p99"),
                       ([s.node_lateness_p99_ms for s in steps], "node forwarding p99")], "lateness", "ms")
    panel(axes[1][1], [([s.cpu_busiest for s in steps], "busiest process")], "CPU", "cores")
    return fig


def write_capacity(out_dir: str | Path, result: CapacityResult) -> Path:
    """capacity.json, capacity.csv and capacity.html (the curve table and plot) in `out_dir`."""
    import base64
    import io

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "capacity.json").write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2))
    with (out / "capacity.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CURVE_FIELDS)
        for s in result.steps:
            w.writerow(["" if getattr(s, k) is None else getattr(s, k) for k in CURVE_FIELDS])
    buf = io.BytesIO()
    fig_curve(result).savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    png = base64.b64encode(buf.getvalue()).decode("ascii")
    head = "".join(f"<th>{html.escape(f)}</th>" for f in CURVE_FIELDS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(getattr(s, f)))}</td>" for f in CURVE_FIELDS)
                   + "</tr>" for s in result.steps)
    text = "".join(f"<p>{html.escape(line)}</p>" for line in describe(result))
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>loopix capacity</title>'
            "<style>body{font-family:sans-serif;max-width:1160px;margin:24px auto}td,th{padding:2px 8px;"
            "border-bottom:1px solid #ddd;text-align:right}</style></head><body><h1>loopix capacity search</h1>"
            f"{text}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f'<img alt="curve" src="data:image/png;base64,{png}"></body></html>\n')
    path = out / "capacity.html"
    path.write_text(page, encoding="utf-8")
    return path


# --- command line ---------------------------------------------------------------------------------


def add_capacity_arguments(p: argparse.ArgumentParser) -> None:
    from loopix.argtypes import argtype as typed
    from loopix.argtypes import duration
    from loopix.argtypes import positive_number as positive

    g = p.add_argument_group("capacity search (--find-capacity)")
    g.add_argument("--find-capacity", action="store_true",
                   help="step the aggregate rate up, then bisect to the highest rate at which every "
                   "--threshold and the verdict hold")
    g.add_argument("--capacity-start", type=typed(positive), default=200.0, metavar="RATE",
                   help="aggregate packets/s of the first step (default 200)")
    g.add_argument("--capacity-max", type=typed(positive), default=100_000.0, metavar="RATE")
    g.add_argument("--capacity-step", type=typed(duration), default=10.0, metavar="DURATION",
                   help="measured time per step (default 10s)")
    g.add_argument("--capacity-warmup", type=typed(duration), default=5.0, metavar="DURATION",
                   help="unmeasured load before each step (default 5s)")
    g.add_argument("--capacity-precision", type=typed(positive), default=10.0, metavar="PERCENT",
                   help="stop bisecting when the interval is within this %% of the answer (default 10)")
    g.add_argument("--capacity-accept", choices=("ok", "degraded", "saturated"), default="degraded",
                   help="the worst verdict a passing step may have (default degraded: fail on saturated; "
                   "saturated: judge by the thresholds alone)")


def run_capacity_command(args: argparse.Namespace, opts) -> int:
    import uvloop

    settings = CapacitySettings(start_rate=args.capacity_start, max_rate=args.capacity_max,
                                step_s=args.capacity_step, warmup_s=args.capacity_warmup,
                                precision=args.capacity_precision / 100, accept=args.capacity_accept)

    def show(step: StepResult) -> None:
        status = "pass" if step.passed else "FAIL: " + "; ".join(step.failed)
        print(f"capacity: {step.rate:,.0f}/s -> achieved {step.achieved:,.0f}/s, rtt p50/p99 "
              f"{_cell(step.rtt_p50_ms)}/{_cell(step.rtt_p99_ms)} ms, loss {_cell(step.loss)}, "
              f"verdict {step.verdict}: {status}", flush=True)

    result = uvloop.run(_with_signals(opts, settings, show))
    print(curve_table(result))
    for line in describe(result):
        print(line)
    if opts.out_dir:
        try:
            print(f"capacity: written to {write_capacity(opts.out_dir, result)}")
        except Exception as exc:  # the figures are printed above: never a traceback
            print(f"loopix-client loadtest: error: could not write {opts.out_dir}: {exc}", file=sys.stderr)
            return 1
    if result.interrupted:
        return 130
    return 0 if result.capacity is not None else 1


async def _with_signals(opts, settings: CapacitySettings, show) -> CapacityResult:
    from .run import _signals_set

    stop = asyncio.Event()
    with _signals_set(stop):
        return await find_capacity(opts, settings, on_step=show, stop=stop)
