"""The mixnet's capacity on this machine, three times: `loadtest --find-capacity` against the embedded
testnet, with the spread between the runs and the time each search took.

    .venv/bin/python benchmarks/bench_find_capacity.py [--runs 3] [--identities 100]
        [--threshold "loss<0.1%" --threshold "rtt_p99<1s"]

Prints, per run, the capacity (packets/s), the signal that failed first above it and the search
time, then the median capacity and each run's ratio to it, and the machine's load average before
and after (the figures are only comparable on a machine with nothing else running: say so).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import uvloop

from loopix.loadtest.capacity import CapacitySettings, find_capacity
from loopix.loadtest.run import LoadTestOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--identities", type=int, default=100)
    ap.add_argument("--threshold", action="append", default=None)
    ap.add_argument("--start", type=float, default=200.0)
    args = ap.parse_args()
    thresholds = args.threshold or ["loss<0.1%", "rtt_p99<1s"]
    opts = LoadTestOptions(identities=args.identities, live=False, thresholds=thresholds)
    settings = CapacitySettings(start_rate=args.start)
    print(f"cores {os.cpu_count()}, load average before {os.getloadavg()}, thresholds {thresholds}")
    results = []
    for i in range(args.runs):
        t0 = time.monotonic()
        result = uvloop.run(find_capacity(opts, settings))
        took = time.monotonic() - t0
        first = result.first_failure
        results.append((result.capacity, took))
        print(f"RUN {i + 1}: capacity {result.capacity} packets/s in {took:.0f} s, {len(result.steps)} steps; "
              f"failed first at {first.rate if first else None}: {first.failed[:2] if first else None}",
              flush=True)
    caps = [c for c, _ in results if c]
    if caps:
        mid = statistics.median(caps)
        print(f"median capacity {mid:,.0f} packets/s; ratios to it "
              + ", ".join(f"{c / mid:.2f}" for c in caps)
              + f"; spread ±{(max(caps) - min(caps)) / 2 / mid:.1%}; search time median "
              f"{statistics.median(t for _, t in results):.0f} s")
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
