"""Schedule fidelity: lateness (actual - scheduled send time) and the shape of the inter-departure
times, for the whole client writing to a discarding provider on loopback.

    .venv/bin/python benchmarks/bench_schedule.py [--rate 5000] [--seconds 20] [--identities 50]

Targets at 5,000 packets/s aggregate: lateness p99 <= 1 ms, p99.9 <= 5 ms; per-stream inter-departure
times consistent with the configured exponential (Kolmogorov–Smirnov on the gaps of each identity's
stream, scaled by its rate and pooled, against Exp(1); p > 0.01 passes).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time

import uvloop

from loopix.client.coordinator import Coordinator, Identity, RuntimeOptions
from loopix.client.schedule import STREAM_NAMES
from loopix.client.trace import read_trace
from loopix.keys import generate_keypair
from loopix.testnet.sink import SinkNet

SPLIT = (0.6, 0.2, 0.2)  # payload, loop, drop share of each identity's rate


def ks_exp1(samples: list[float]) -> tuple[float, float]:
    """KS statistic against Exp(1) and its asymptotic p-value (Kolmogorov distribution)."""
    xs = sorted(samples)
    n = len(xs)
    d = 0.0
    for i, x in enumerate(xs):
        cdf = 1.0 - math.exp(-x)
        d = max(d, cdf - i / n, (i + 1) / n - cdf)
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(1.0, max(0.0, p))


def quantile(sorted_values: list[int], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run(rate: float, seconds: float, identities: int, trace: str) -> dict:
    per = rate / identities
    async with SinkNet() as net:
        ids = [Identity(generate_keypair(), None, per * SPLIT[0], per * SPLIT[1], per * SPLIT[2])
               for _ in range(identities)]
        coord = Coordinator(ids, RuntimeOptions(directory_url=net.topology_url, mean_hop_delay_ms=50.0,
                                                trace_path=trace))
        await coord.start()
        workers = [c.proc.pid for c in coord.workers]
        senders = [c.proc.pid for c in coord.senders]
        sink = net.sink.pid

        def sample() -> tuple[float, ...]:
            return (sum(map(cpu_seconds, workers)), sum(map(cpu_seconds, senders)), time.process_time(),
                    cpu_seconds(sink), time.monotonic())

        before = sample()
        await asyncio.sleep(seconds)
        after = sample()
        await coord.stop()
    # CPU in cores: workers, senders, this process (the coordinator) and the sink process
    w, s, c, k, span = (b - a for a, b in zip(before, after, strict=True))
    return {"children_cpu": (w + s) / span, "workers_cpu": w / span, "senders_cpu": s / span,
            "this_cpu": c / span, "sink_cpu": k / span}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=5000.0, help="aggregate packets/s")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--identities", type=int, default=50)
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of trace ignored at the start")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.bin")
        uvloop.run(run(args.rate, args.seconds + args.warmup, args.identities, path))
        records = read_trace(path)
    start = min(r.scheduled_ns for r in records) + int(args.warmup * 1e9)
    records = [r for r in records if r.scheduled_ns >= start]
    span = (max(r.scheduled_ns for r in records) - start) / 1e9
    late = sorted(r.actual_ns - r.scheduled_ns for r in records)
    print(f"{len(records)} packets in {span:.1f}s = {len(records) / span:.0f} pkt/s "
          f"(asked {args.rate:.0f}/s over {args.identities} identities)")
    print("lateness ms: p50 {:.3f}  p99 {:.3f}  p99.9 {:.3f}  max {:.3f}   (targets p99 <= 1, p99.9 <= 5)".format(
        *(quantile(late, q) / 1e6 for q in (0.5, 0.99, 0.999)), late[-1] / 1e6))
    per = args.rate / args.identities
    for stream, name in STREAM_NAMES.items():
        rate = per * SPLIT[stream]
        last: dict[int, int] = {}
        gaps = []
        for r in records:
            if r.stream == stream:
                if r.identity in last:
                    gaps.append((r.actual_ns - last[r.identity]) / 1e9 * rate)
                last[r.identity] = r.actual_ns
        d, p = ks_exp1(gaps)
        print(f"{name:8} {len(gaps):7} gaps  mean {sum(gaps) / len(gaps):.3f} (expect 1)  KS D={d:.4f} "
              f"p={p:.3f} {'pass' if p > 0.01 else 'FAIL'}")


if __name__ == "__main__":
    main()
