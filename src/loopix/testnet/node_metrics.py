"""What a node measures about its own forwarding, for load tests to tell network from machine.

Per packet: how late the node forwarded it relative to when it should have, i.e. its arrival plus
the delay in its Sphinx header. Zero on an idle node; time spent waiting in the read backlog, for
the delay timer or behind other work shows up here. Kept as a cumulative HdrHistogram (µs, the
load test's range and precision) and posted, encoded, with the node's other counters; the load
test subtracts its baseline. Also the largest queue seen since the last report.
"""

from __future__ import annotations

from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = ["LATENESS_HIGHEST_US", "ForwardingMetrics"]

LATENESS_HIGHEST_US = 60_000_000


class ForwardingMetrics:
    """Counters a node feeds from its hot path; `report()` is merged into its metrics report."""

    __slots__ = ("_hist", "_queue_peak")

    def __init__(self) -> None:
        self._hist = HdrHistogram(1, LATENESS_HIGHEST_US, 3)
        self._queue_peak = 0

    def forwarded_late(self, lateness_s: float) -> None:
        """One packet left `lateness_s` after its arrival + header delay (early counts as 0)."""
        us = int(lateness_s * 1e6)
        self._hist.record_value(min(max(us, 0), LATENESS_HIGHEST_US))

    def forwarded_late_runs(self, runs: list[tuple[int, int]]) -> None:
        """(lateness in µs, packets) runs, as the forward engine reports them: one record per run
        (the histogram's record is Python, ~2 µs a call; packets of one read share their lateness)."""
        record = self._hist.record_value
        for us, count in runs:
            record(min(max(us, 0), LATENESS_HIGHEST_US), count)

    def queue_seen(self, length: int) -> None:
        if length > self._queue_peak:
            self._queue_peak = length

    @property
    def count(self) -> int:
        return self._hist.get_total_count()

    def report(self) -> dict[str, Any]:
        """Fields for the node's metrics report: the cumulative histogram and the queue peak since
        the previous report (which this resets)."""
        peak, self._queue_peak = self._queue_peak, 0
        return {
            "forward_lateness_hdrh": self._hist.encode().decode("ascii"),
            "forward_lateness_count": self._hist.get_total_count(),
            "queue_peak": peak,
        }
