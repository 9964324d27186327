"""The largest load (identities x rate) this machine sustains with scheduler lateness p99 <= 1 ms,
against the bare all-core C build rate measured in the same run.

    .venv/bin/python benchmarks/bench_capacity.py [--identities 1000] [--seconds 10]
        [--rates 250,500,1000,2000,3000,4000] [--bare-seconds 4]

For each aggregate rate (packets/s over all identities; each identity runs payload:loop:drop at
60:20:20), the whole client sends to a discarding provider on loopback with a trace; lateness
percentiles come from the trace after a warm-up. The answer is the largest rate whose p99 <= 1 ms,
and the packets/s actually sent, with where the CPU went (workers, senders, the coordinator, and the
discarding provider, which shares the machine with the client).

The bare all-core rate (`_pipeline.bare_all_core_rate`: one process per core doing nothing but
batch builds of 4-hop packets) is measured before the first and after the last step; the ratio is
to their median (target 0.85). The client's work per packet is more than the bare build's: each loop
carries a SURB-ack, a second 4-hop packet (0.2 per packet in this mix), so the bare rate of the same
work (packets and their acks, the ack build timed here too) is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import uvloop

from _pipeline import bare_all_core_rate, c_build_us
from bench_schedule import SPLIT, quantile, run
from loopix.client.trace import read_trace
from loopix.wire.ack import ACK_PAYLOAD_SIZE


def bare_rates(seconds: float) -> tuple[float, float]:
    """(bare all-core packets/s, the same for packets with SPLIT[1] SURB-acks each)."""
    bare = bare_all_core_rate(seconds)
    ack_share = c_build_us(640, ACK_PAYLOAD_SIZE) / c_build_us(640)  # an ack's build against a packet's
    return bare, bare / (1 + SPLIT[1] * ack_share)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identities", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", default="250,500,1000,2000,3000,4000")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--bare-seconds", type=float, default=4.0)
    args = ap.parse_args()
    bares = [bare_rates(args.bare_seconds)]
    print(f"bare all-core C build before: {bares[0][0]:.0f} packets/s ({bares[0][1]:.0f}/s of the same work "
          f"with acks), {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
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
              f"CPU cores: workers {info['workers_cpu']:.2f}, senders {info['senders_cpu']:.2f}, "
              f"coordinator {info['this_cpu']:.2f}, discarding provider {info['sink_cpu']:.2f}  {'ok' if ok else 'over'}", flush=True)
        if ok:
            best = (rate, len(records) / span)
    bares.append(bare_rates(args.bare_seconds))
    bare = statistics.median(b[0] for b in bares)
    same = statistics.median(b[1] for b in bares)
    print(f"bare all-core C build after: {bares[1][0]:.0f} packets/s ({bares[1][1]:.0f}/s of the same work), "
          f"load {os.getloadavg()[0]:.2f}")
    if best is None:
        print(f"largest sustained with p99 <= 1 ms: none ({args.identities} identities)")
        return
    print(f"largest sustained with p99 <= 1 ms: {best[0]:.0f} packets/s asked, {best[1]:.0f}/s sent "
          f"({args.identities} identities) = {best[1] / bare:.2f} x the bare all-core C build rate "
          f"{bare:.0f}/s (target 0.85), {best[1] / same:.2f} x the bare rate of the same work {same:.0f}/s")


if __name__ == "__main__":
    main()
