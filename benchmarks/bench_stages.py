"""CPU per packet of each stage of the client (workers, sender, coordinator) at paced rates, against
the bare C build cost measured in the same run, and what those costs project for more cores.

    .venv/bin/python benchmarks/bench_stages.py [--rates 2000,5000] [--seconds 8] [--rounds 3]
        [--identities 200] [--baseline-python /work/main/.venv/bin/python] [--variants 0:1,300:1]

Each round, alternating: the bare C build (one process building 4-hop packets in batches of 32, CPU
time per packet; and of the same work, which adds the SURB-ack packet each loop carries: 0.2 acks
per packet in this mix, each a 4-hop packet with a 21-byte payload), measured again by each child
just before its paced run with its own build's C core (the workers' ratios are to that), then the whole client at each rate writing to a discarding provider on loopback
(SinkNet: 3×2 mixnodes, 4-hop routes, payload:loop:drop 60:20:20, drop cover). Over a window after
a warm-up: CPU seconds of each process from /proc (the coordinator is this process, with the
in-process directory of SinkNet, which is idle between topology fetches), packets counted at the
sink, and the sender's lateness samples (a reservoir of <= 2,000 per second, pooled over seconds of
equal rate). Medians over rounds (lateness percentiles: of the rounds' samples pooled). Each client run is a child process; with --baseline-python the
same measurement runs, alternating, under another interpreter (another checkout's build, e.g.
main's), so before and after are side by side in one run. --variants adds runs of this build with
other sender settings (COALESCE_US:SENDERS each: the pacer's coalescing window, runtime.sender_coalesce_us,
and the number of sender processes), alternating with the rest. "this" runs the defaults.

The projection for N cores is arithmetic on the medians, not a measurement: the rate is bounded by
N cores / (worker + sender + coordinator µs) and by each single process's own 1 s / µs per packet:
the coordinator's always, the sender's when there is one (with senders scaled, --senders, each owns
a share of the packets); the bare all-core C build is N / bare µs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

import uvloop

from _pipeline import SinkNet, c_build_us
from bench_schedule import cpu_seconds
from loopix import sphinx
from loopix.client.coordinator import Coordinator, Identity, RuntimeOptions
from loopix.keys import generate_keypair
from loopix.wire import provider as pp
from loopix.wire.ack import ACK_PAYLOAD_SIZE

SPLIT = (0.6, 0.2, 0.2)
ACKS_PER_PACKET = SPLIT[1]  # loops carry a SURB-ack; payload events are drop cover here (no messages)


def bare_cpu_us(seconds: float = 2.0, payload_size: int = 2048) -> float:
    """CPU µs per packet of the bare batch build (4 hops, batches of 32) in this process."""
    t0, c0 = time.monotonic(), time.process_time()
    n = 0
    while time.monotonic() - t0 < seconds:
        c_build_us(320, payload_size)
        n += 320
    return (time.process_time() - c0) / n * 1e6


async def paced(rate: float, seconds: float, identities: int, warmup: float,
                variant: tuple[int, int] | None = None) -> dict:
    frame = pp.SEND_OVERHEAD + sphinx.packet_size(2048)
    per = rate / identities
    lateness: list[float] = []
    async with SinkNet() as net:
        ids = [Identity(generate_keypair(), None, per * SPLIT[0], per * SPLIT[1], per * SPLIT[2])
               for _ in range(identities)]
        opts = RuntimeOptions(directory_url=net.topology_url, mean_hop_delay_ms=50.0)
        if variant is not None:  # this build only (the baseline runs its defaults)
            opts.sender_coalesce_us, opts.senders = variant
        coord = Coordinator(ids, opts)
        await coord.start()
        try:
            await asyncio.sleep(warmup)
            recording = [True]
            coord.stats_listeners.append(lambda _s, msg: recording[0] and lateness.extend(msg.lateness_us))
            workers = [c.proc.pid for c in coord.workers if c is not None]
            senders = [c.proc.pid for c in (getattr(coord, "senders", None) or [coord.sender])]  # baseline: one
            w0, s0 = sum(map(cpu_seconds, workers)), sum(map(cpu_seconds, senders))
            c0, b0, t0 = time.process_time(), net.sink_bytes(), time.monotonic()
            await asyncio.sleep(seconds)
            w1, s1 = sum(map(cpu_seconds, workers)), sum(map(cpu_seconds, senders))
            c1, b1, t1 = time.process_time(), net.sink_bytes(), time.monotonic()
            recording[0] = False
            stats = coord.stats
        finally:
            await coord.stop()
    packets = (b1 - b0) / frame
    late = sorted(lateness)
    return {
        "pps": packets / (t1 - t0),
        "worker_us": (w1 - w0) / packets * 1e6,
        "sender_us": (s1 - s0) / packets * 1e6,
        "coord_us": (c1 - c0) / packets * 1e6,
        "p99_ms": late[min(len(late) - 1, int(0.99 * len(late)))] / 1e3 if late else float("nan"),
        "late_us": late,  # the summary pools these over rounds (percentiles are never averaged)
        "errors": stats.build_errors,
        "unconnected": stats.dropped_unconnected,
    }


def child(python: str, rate: float, args, variant: tuple[int, int] | None = None) -> dict:
    """One paced run in a child process of `python` (this file, --child)."""
    out = subprocess.run([python, os.path.abspath(__file__), "--child", str(rate), "--seconds", str(args.seconds),
                          "--warmup", str(args.warmup), "--identities", str(args.identities),
                          "--variant", f"{variant[0]}:{variant[1]}" if variant else ""],
                         capture_output=True, text=True, timeout=args.seconds + args.warmup + 120,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    if out.returncode != 0:
        raise SystemExit(f"child run under {python} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(name: str, rate: float, runs: list[dict], bare: list[float], same: list[float]) -> None:
    m = {k: statistics.median(x[k] for x in runs) for k in ("pps", "worker_us", "sender_us", "coord_us")}
    pooled = sorted(v for x in runs for v in x["late_us"])  # equal windows at equal rates: equal weights
    m["p99_ms"] = pooled[min(len(pooled) - 1, int(0.99 * len(pooled)))] / 1e3 if pooled else float("nan")
    total = m["worker_us"] + m["sender_us"] + m["coord_us"]
    # each against the bare build its own child process measured just before (its own C core)
    ratios = [x["worker_us"] / x["bare_us"] for x in runs]
    same_ratios = [x["worker_us"] / x["same_us"] for x in runs]
    print(f"{name:9} {rate:6.0f}/s: {m['pps']:6.0f}/s sent; workers {m['worker_us']:.1f} us, per round "
          f"{[round(x, 2) for x in ratios]} x bare, median {statistics.median(ratios):.2f} (target <= 1.1); "
          f"per round {[round(x, 2) for x in same_ratios]} x the bare build of the same work (packets "
          f"and their SURB-acks), median {statistics.median(same_ratios):.2f}; "
          f"sender {m['sender_us']:.1f} us (target <= 5); coordinator {m['coord_us']:.1f} us; "
          f"lateness p99 {m['p99_ms']:.3f} ms of the rounds' samples pooled (target <= 1)")
    b = statistics.median(bare)
    for cores in (2, 16, 64):
        bare_all = cores * 1e6 / b
        scaled = min(cores * 1e6 / total, 1e6 / max(m["coord_us"], 1e-9))
        one = min(scaled, 1e6 / m["sender_us"])
        print(f"    projection, {cores:2} cores: client {one:8.0f}/s with one sender, {scaled:8.0f}/s with senders "
              f"scaled (one coordinator) vs bare all-core C {bare_all:8.0f}/s = {one / bare_all:.2f} / "
              f"{scaled / bare_all:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="2000,5000")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--identities", type=int, default=200)
    ap.add_argument("--baseline-python", default=None, help="also run under this interpreter, alternating")
    ap.add_argument("--variants", default="", help="COALESCE_US:SENDERS,... more runs of this build")
    ap.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        variant = tuple(int(x) for x in args.variant.split(":")) if args.variant else None
        # this build's own bare C build first (its C core may differ from the parent's)
        bare, ack = bare_cpu_us(1.5), bare_cpu_us(0.75, ACK_PAYLOAD_SIZE)
        result = uvloop.run(paced(args.child, args.seconds, args.identities, args.warmup, variant))
        print(json.dumps({**result, "bare_us": bare, "same_us": bare + ACKS_PER_PACKET * ack}))
        return
    rates = [float(r) for r in args.rates.split(",")]
    builds: dict[str, tuple[str, tuple[int, int] | None]] = {"this": (sys.executable, None)}
    for v in filter(None, args.variants.split(",")):
        window, senders = (int(x) for x in v.split(":"))
        builds[f"co{window}/s{senders}"] = (sys.executable, (window, senders))
    if args.baseline_python:
        builds["baseline"] = (args.baseline_python, None)
    bare: list[float] = []
    same: list[float] = []  # bare C build of the packets and of the acks they carry
    runs: dict[tuple[str, float], list[dict]] = {(b, r): [] for b in builds for r in rates}
    for rnd in range(args.rounds):
        bare.append(bare_cpu_us())
        ack = bare_cpu_us(1.0, ACK_PAYLOAD_SIZE)
        same.append(bare[-1] + ACKS_PER_PACKET * ack)
        print(f"round {rnd + 1}: bare C build {bare[-1]:.1f} CPU us/packet, of an ack packet {ack:.1f}, "
              f"of the same work ({ACKS_PER_PACKET} acks per packet) {same[-1]:.1f} "
              f"(load {os.getloadavg()[0]:.2f})", flush=True)
        for rate in rates:
            order = list(builds.items()) if rnd % 2 == 0 else list(reversed(builds.items()))
            for name, (python, variant) in order:
                r = child(python, rate, args, variant)
                runs[(name, rate)].append(r)
                print(f"  {name:8} {rate:6.0f}/s asked, {r['pps']:6.0f}/s at the sink: workers {r['worker_us']:6.1f} "
                      f"(own bare C {r['bare_us']:.1f}, same work {r['same_us']:.1f}: "
                      f"{r['worker_us'] / r['bare_us']:.2f} x, {r['worker_us'] / r['same_us']:.2f} x)  "
                      f"sender {r['sender_us']:5.1f}  coordinator {r['coord_us']:5.1f} CPU us/packet  "
                      f"lateness p99 {r['p99_ms']:.3f} ms  build errors {r['errors']}  "
                      f"unconnected {r['unconnected']}  (load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"\nmedians over {args.rounds} rounds; bare C build {statistics.median(bare):.1f} CPU us/packet "
          f"(this build's C core); {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end")
    for rate in rates:
        for name in builds:
            summary(name, rate, runs[(name, rate)], bare, same)


if __name__ == "__main__":
    main()
