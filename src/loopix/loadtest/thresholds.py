"""k6-style pass/fail criteria: `--threshold "rtt_p99<2s" --threshold "loss<0.1%"`.

An expression is `METRIC OP VALUE[UNIT]`: OP one of < <= > >= == !=; durations must name their
unit (us, ms, s, m, h: loopix.units, the same parser as --duration; a bare number is an error, not
silently ms as in k6), ratios take % or a fraction in [0, 1], rates are packets per
second (an optional "/s"), counts are bare. A threshold whose metric has no data (no loop came back,
no message was sent) fails: a criterion that cannot be checked must not pass silently. The CLI exits
with EXIT_THRESHOLD_VIOLATED when any fails.
"""

from __future__ import annotations

import argparse
import math
import operator
import re
from collections.abc import Callable, Iterable
from typing import Literal

import msgspec

from loopix.loadtest.metrics import LOSS_REASONS, UNSENT_REASONS, Summary, ThresholdResult
from loopix.units import DURATION_UNITS, UnitError, split_duration

__all__ = [
    "EXIT_THRESHOLD_VIOLATED",
    "METRICS",
    "Threshold",
    "ThresholdError",
    "ThresholdResult",
    "ThresholdSet",
    "Violation",
    "argparse_threshold",
    "metric_value",
    "parse_threshold",
]

EXIT_THRESHOLD_VIOLATED = 99

Kind = Literal["duration", "ratio", "rate", "count"]
Violation = ThresholdResult  # a ThresholdResult with passed=False


class ThresholdError(ValueError):
    """An expression we cannot parse; the message says why and lists the valid metrics."""


class Metric(msgspec.Struct, frozen=True):
    kind: Kind
    get: Callable[[Summary], float | int | None]
    help: str


def _pct(field: str, what: str) -> Callable[[Summary], float | None]:
    return lambda s: getattr(getattr(s, what), field)


def _loss_ratio(reason: str) -> Callable[[Summary], float | None]:
    return lambda s: s.loss.ratio_by_reason.get(reason)


def _unsent(reason: str) -> Callable[[Summary], int]:
    return lambda s: sum(s.loss.unsent.get(reason, {}).values())


def _durations(prefix: str, what: str, noun: str) -> dict[str, Metric]:
    fields = {
        "p50": "p50_ms",
        "p90": "p90_ms",
        "p99": "p99_ms",
        "p999": "p999_ms",
        "max": "max_ms",
        "mean": "mean_ms",
        "min": "min_ms",
    }
    return {
        f"{prefix}_{name}": Metric("duration", _pct(field, what), f"{noun} {name}")
        for name, field in fields.items()
    }


METRICS: dict[str, Metric] = {
    **_durations("rtt", "rtt", "loop round-trip time"),
    **_durations("latency", "message_latency", "real-message delivery latency"),
    **_durations("lateness", "lateness", "scheduler lateness"),
    "loss": Metric("ratio", lambda s: s.loss.loss,
                   "fraction of the loops scheduled in judged seconds that did not come back, every reason"),
    "loss_count": Metric("count", lambda s: s.loss.lost, "loops lost, every reason"),
    **{
        f"loss_{reason}": Metric("ratio", _loss_ratio(reason), f"loss: {reason.replace('_', ' ')}")
        for reason in LOSS_REASONS
    },
    "unsent": Metric("count", lambda s: s.loss.unsent_total, "packets never sent, every stream"),
    **{
        f"unsent_{reason}": Metric("count", _unsent(reason), f"packets never sent: {reason.replace('_', ' ')}")
        for reason in UNSENT_REASONS
    },
    "delivery": Metric("ratio", lambda s: s.messages.delivery, "fraction of messages delivered"),
    "messages_lost": Metric("count", lambda s: s.messages.lost, "messages not delivered"),
    "rate_payload": Metric("rate", lambda s: s.rates.get("payload"), "payload packets/s"),
    "rate_real": Metric("rate", lambda s: s.rates.get("real"), "real payload packets/s"),
    "rate_loop": Metric("rate", lambda s: s.rates.get("loop"), "loop packets/s"),
    "rate_drop": Metric("rate", lambda s: s.rates.get("drop"), "drop packets/s"),
    "rate_loop_back": Metric("rate", lambda s: s.rates.get("loop_back"), "loops back/s"),
    "node_dropped": Metric(
        "count", lambda s: sum(n.dropped for n in s.nodes if n.in_topology), "node drops, the topology's nodes"
    ),
    **_durations("node_lateness", "node_forward_lateness", "nodes' forwarding lateness"),
}
_ALIASES = {f"{p}_p99.9": f"{p}_p999" for p in ("rtt", "latency", "lateness")}

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_EXPR = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_.]*)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<unit>s|ms|us|µs|m|h|%|/s)?\s*$"
)
_DURATION_MS = {unit: seconds * 1000.0 for unit, seconds in DURATION_UNITS.items()}


def _valid_names() -> str:
    return ", ".join(METRICS)


class Threshold(msgspec.Struct, frozen=True):
    """A parsed expression; `limit` is canonical: ms for durations, a fraction for ratios."""

    expression: str
    metric: str
    op: str
    limit: float
    unit: str | None

    def evaluate(self, summary: Summary) -> ThresholdResult:
        actual = metric_value(summary, self.metric)
        if actual is None:
            return ThresholdResult(
                self.expression,
                self.metric,
                False,
                None,
                f"{self.expression}: no data for {self.metric}",
            )
        passed = _OPS[self.op](actual, self.limit)
        shown = _show(actual, self.unit, METRICS[self.metric].kind)
        verdict = "ok" if passed else "VIOLATED"
        return ThresholdResult(
            self.expression,
            self.metric,
            passed,
            float(actual),
            f"{self.expression}: {verdict} ({self.metric} = {shown})",
        )


def _show(value: float, unit: str | None, kind: Kind) -> str:
    if kind == "duration":
        unit = unit if unit in _DURATION_MS else "ms"
        return f"{value / _DURATION_MS[unit]:.6g} {unit}"
    if kind == "ratio":
        return f"{value * 100:.4g}%"
    if kind == "rate":
        return f"{value:.6g}/s"
    return f"{value:g}"


def parse_threshold(expression: str) -> Threshold:
    """Parse one expression; ThresholdError names what is wrong and the valid metric names."""
    m = _EXPR.match(expression)
    if m is None:
        raise ThresholdError(
            f"bad threshold {expression!r}: expected METRIC OP VALUE[UNIT], e.g. 'rtt_p99<2s' or "
            f"'loss<0.1%' (OP: < <= > >= == !=; units: s ms us %); metrics: {_valid_names()}"
        )
    name = _ALIASES.get(m["metric"], m["metric"])
    metric = METRICS.get(name)
    if metric is None:
        raise ThresholdError(
            f"bad threshold {expression!r}: unknown metric {m['metric']!r}; valid metrics: "
            f"{_valid_names()}"
        )
    value = float(m["value"])
    unit = m["unit"]
    if not math.isfinite(value):
        raise ThresholdError(f"bad threshold {expression!r}: the value must be finite")
    if metric.kind == "duration":
        if unit in ("%", "/s"):
            raise ThresholdError(
                f"bad threshold {expression!r}: {name} is a duration; use us, ms, s, m or h"
            )
        try:
            number, unit = split_duration(m["value"] + (unit or ""))
        except UnitError as exc:
            raise ThresholdError(f"bad threshold {expression!r}: {name} is a duration: {exc}") from None
        value = number * _DURATION_MS[unit]
    elif metric.kind == "ratio":
        if unit == "%":
            value /= 100
        elif unit is not None:
            raise ThresholdError(
                f"bad threshold {expression!r}: {name} is a ratio; use % or a fraction"
            )
        elif not 0 <= value <= 1:
            raise ThresholdError(
                f"bad threshold {expression!r}: {name} is a fraction in [0, 1]; did you mean {value:g}%?"
            )
    elif metric.kind == "rate":
        if unit not in (None, "/s"):
            raise ThresholdError(
                f"bad threshold {expression!r}: {name} is packets per second, no unit"
            )
    elif unit is not None:
        raise ThresholdError(f"bad threshold {expression!r}: {name} is a count, no unit")
    return Threshold(expression.strip(), name, m["op"], value, unit)


def argparse_threshold(expression: str) -> Threshold:
    """`type=` for argparse: keeps our message (argparse hides a ValueError's)."""
    try:
        return parse_threshold(expression)
    except ThresholdError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def metric_value(summary: Summary, name: str) -> float | None:
    """A metric's value in canonical units (ms, fraction, per second, count); None if no data."""
    value = METRICS[_ALIASES.get(name, name)].get(summary)
    return None if value is None else float(value)


class ThresholdSet:
    """Every `--threshold` of a run. `evaluate` returns the violations; `check` all results
    (attach those to the summary so the report shows them)."""

    def __init__(self, thresholds: Iterable[str | Threshold] = ()) -> None:
        self.thresholds = [
            t if isinstance(t, Threshold) else parse_threshold(t) for t in thresholds
        ]

    def __bool__(self) -> bool:
        return bool(self.thresholds)

    def check(self, summary: Summary) -> list[ThresholdResult]:
        return [t.evaluate(summary) for t in self.thresholds]

    def evaluate(self, summary: Summary) -> list[ThresholdResult]:
        return [r for r in self.check(summary) if not r.passed]

    def exit_code(self, summary: Summary) -> int:
        """0, or EXIT_THRESHOLD_VIOLATED when any threshold fails."""
        return EXIT_THRESHOLD_VIOLATED if self.evaluate(summary) else 0
