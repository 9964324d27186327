"""The largest load (identities x rate) this machine sustains with scheduler lateness p99 <= 1 ms.

    .venv/bin/python benchmarks/bench_capacity.py [--identities 1000] [--seconds 10]
        [--rates 250,500,1000,2000,3000,4000]

For each aggregate rate (packets/s over all identities; each identity runs payload:loop:drop at
60:20:20), the whole client sends to a discarding provider on loopback with a trace; lateness
percentiles come from the trace after a warm-up. The answer is the largest rate whose p99 <= 1 ms,
and the packets/s actually sent.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import uvloop

from bench_schedule import quantile, run
from loopix.client.trace import read_trace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identities", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", default="250,500,1000,2000,3000,4000")
    ap.add_argument("--warmup", type=float, default=2.0)
    args = ap.parse_args()
    best = None
    for rate in (float(r) for r in args.rates.split(",")):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "trace.bin")
            info = uvloop.run(run(rate, args.seconds + args.warmup, args.identities, path))
            records = read_trace(path)
        start = min(r.scheduled_ns for r in records) + int(args.warmup * 1e9)
        records = [r for r in records if r.scheduled_ns >= start]
        span = (max(r.scheduled_ns for r in records) - start) / 1e9
        late = sorted(r.actual_ns - r.scheduled_ns for r in records)
        p50, p99, p999 = (quantile(late, q) / 1e6 for q in (0.5, 0.99, 0.999))
        ok = p99 <= 1.0
        print(f"{args.identities} identities x {rate / args.identities:.3g}/s = {rate:.0f}/s asked, "
              f"{len(records) / span:.0f}/s sent: lateness ms p50 {p50:.3f} p99 {p99:.3f} p99.9 {p999:.3f}  "
              f"children CPU {info['children_cpu']:.2f} cores  {'ok' if ok else 'over'}", flush=True)
        if ok:
            best = rate
    print(f"largest sustained with p99 <= 1 ms: {best if best is not None else 'none'} packets/s "
          f"({args.identities} identities)")


if __name__ == "__main__":
    main()
