"""The sender's C pacing loop alone (client/pacer.py, csrc/pacer.c): CPU per packet of its thread, and
wake-ups and writes per packet, with and without a socket, at a Poisson rate, side by side in one run,
against the floor of a bare wake-up (a thread that only sleeps until each due time) in the same run.

    .venv/bin/python benchmarks/bench_pacer.py [--rates 2000,5000] [--seconds 5] [--gaps 0,300] [--rounds 2]

One ring of 2,450-byte packets filled ahead by a producer thread (Poisson send times from the CSPRNG),
one identity. "no socket": the identity's link has no connection, so each due packet costs the pacer a
wake-up and its accounting only (cover is counted and dropped); "TCP": the link is a TCP connection on
127.0.0.1 to a reader process, so each wake-up also writes. CPU time of the pacer's thread from
/proc/self/task/TID/schedstat (the scheduler's nanoseconds). Medians over rounds, configurations
alternating.

--processes 1,2,4 adds the scaling run: that many pacers at once, each in its own process with its
own ring, producer and TCP reader, every one at each rate of --rates with the first gap of --gaps that
is not 0 (else 0). It prints the packets/s they sent together, CPU per packet of the pacer threads and
the lateness percentiles of every packet they sent (pooled, not averaged). It shows the sending
stage alone (packets pre-made, no crypto), which is what several senders add up.
"""

from __future__ import annotations

import argparse
import array
import ctypes
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

from loopix.client.pacer import Pacer
from loopix.client.ring import Ring, slot_size_for
from loopix.csprng import Csprng

WIRE = 2450


def thread_ns() -> dict[str, int]:
    """Nanoseconds on a CPU of each thread of this process (the scheduler's own count, schedstat)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            out[tid] = int(f.read().split()[0])
    return out


def run(rate: float, seconds: float, connect: bool, gap_us: int, lateness: list[int] | None = None,
        coalesce_us: int = 0) -> dict:
    """One pacer at `rate`; with `lateness`, every packet's lateness (ns) in the window goes into it."""
    ring = Ring.create(16384, slot_size_for(WIRE))
    pacer = Pacer([ring], samples=8192, refs_cap=1 << 16, trace_cap=0, held_cap=16, link_buffer=4 << 20)
    pacer.set_min_gap(gap_us * 1000)
    pacer.set_coalesce(coalesce_us * 1000)
    ready, link_of = bytearray(b"\x01"), array.array("I", [0])
    sent, real = [array.array("Q", [0]) for _ in range(3)], array.array("Q", [0])
    with pacer.locked():
        pacer.bind(ready, link_of, sent, real)
    reader = None
    if connect:
        lst = socket.create_server(("127.0.0.1", 0))
        reader = subprocess.Popen([sys.executable, "-c", "import socket,sys\n"
                                   "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
                                   "while s.recv(1 << 20): pass", str(lst.getsockname()[1])])
        conn, _ = lst.accept()
        lst.close()
        conn.setblocking(False)
        pacer.set_link(0, os.dup(conn.fileno()))
        conn.close()
    rng = Csprng()
    stop = threading.Event()

    def produce() -> None:  # keeps the ring ~half a second ahead
        t, w = time.monotonic_ns() + 50_000_000, 0
        while not stop.is_set():
            while t < time.monotonic_ns() + 500_000_000 and w - ring.read_index < ring.slots - 1:
                t += int(rng.expovariate(rate) * 1e9)
                ring.write_meta(w, t, 0, 1, WIRE)
                w += 1
                ring.publish(w, t)
            time.sleep(0.01)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    pacer.start()
    tid = str(pacer._thread.native_id)  # the pacer's own thread, not the producer's
    time.sleep(0.5)
    pacer.take_lateness()
    before, c0 = pacer.totals(), thread_ns()
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # 50 ms of packets fit the sample: every packet's lateness is kept
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        if lateness is not None:
            late, seen = pacer.take_lateness()
            assert seen == len(late), "more packets than samples: take more often"
            lateness.extend(late)
    after, c1 = pacer.totals(), thread_ns()
    stop.set()
    producer.join()
    pacer.close()
    ring.close()
    if reader is not None:
        reader.kill()
        reader.wait()
    packets = sum(after["sent"]) + sum(after["unconnected"]) - sum(before["sent"]) - sum(before["unconnected"])
    return {"pps": packets / seconds, "cpu_us": (c1[tid] - c0[tid]) / packets / 1e3,
            "wakeups": (after["wakeups"] - before["wakeups"]) / packets,
            "writes": (after["writes"] - before["writes"]) / packets}


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def bare_wake_us(rate: float, seconds: float) -> float:
    """The floor under every wake-up: CPU µs per wake of a thread that does nothing but sleep until
    Poisson due times at `rate` (libc clock_nanosleep, absolute, as the pacer; ~1 µs of it is this
    loop's Python)."""
    libc = ctypes.CDLL(None, use_errno=True)
    out: list[float] = []

    def sleeper() -> None:
        rng, ts = Csprng(), _Timespec()
        t = time.monotonic_ns()
        end, n = t + int(seconds * 1e9), 0
        c0 = time.thread_time_ns()
        while t < end:
            t += int(rng.expovariate(rate) * 1e9)
            ts.tv_sec, ts.tv_nsec = divmod(t, 1_000_000_000)
            libc.clock_nanosleep(time.CLOCK_MONOTONIC, 1, ctypes.byref(ts), None)  # 1: TIMER_ABSTIME
            n += 1
        out.append((time.thread_time_ns() - c0) / n / 1e3)

    th = threading.Thread(target=sleeper)
    th.start()
    th.join()
    return out[0]


def pct(values: list[int], q: float) -> float:
    """The q-quantile of nanosecond values, in ms (nan when empty)."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] / 1e6


def child_run(spec: str) -> None:
    """--child RATE:GAP:COALESCE:SECONDS: one pacer with a TCP reader; prints its result and every
    lateness (JSON)."""
    rate, gap, coalesce, seconds = spec.split(":")
    late: list[int] = []
    r = run(float(rate), float(seconds), True, int(gap), late, int(coalesce))
    print(json.dumps({**r, "late": late}))


def scaling(processes: int, rate: float, gap: int, coalesce: int, seconds: float) -> dict:
    """`processes` pacers at once, each at `rate`, in children started together."""
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child",
                               f"{rate}:{gap}:{coalesce}:{seconds}"],
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        if p.returncode != 0:
            raise SystemExit(f"a pacer child failed ({p.returncode})")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    late = [x for o in outs for x in o["late"]]
    pps = sum(o["pps"] for o in outs)
    return {"pps": pps, "cpu_us": sum(o["cpu_us"] * o["pps"] for o in outs) / pps,
            "p50": pct(late, 0.5), "p99": pct(late, 0.99), "p999": pct(late, 0.999)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="2000,5000")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--gaps", default="0,300", help="minimum gaps between wake-ups, µs")
    ap.add_argument("--coalesce", default="", help="coalescing windows, µs (each a configuration, gap 0)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--processes", default="", help="scaling run: numbers of pacers at once, e.g. 1,2,4")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_run(args.child)
        return
    rates = [float(r) for r in args.rates.split(",")]
    gaps = [int(g) for g in args.gaps.split(",")]
    windows = [int(c) for c in args.coalesce.split(",") if c]
    if args.processes:
        gap = next((g for g in gaps if g), 0)
        window = next((c for c in windows if c), 0)
        counts = [int(n) for n in args.processes.split(",")]
        runs: dict = {(n, r): [] for n in counts for r in rates}
        for rnd in range(args.rounds):
            for key in runs if rnd % 2 == 0 else reversed(list(runs)):
                x = scaling(key[0], key[1], gap, window, args.seconds)
                runs[key].append(x)
                print(f"round {rnd + 1}: {key[0]} pacer(s) x {key[1]:.0f}/s, gap {gap} us, coalesce {window} us: "
                      f"{x['pps']:8.0f}/s sent, "
                      f"{x['cpu_us']:5.1f} CPU us/packet, lateness ms p50 {x['p50']:.3f} p99 {x['p99']:.3f} "
                      f"p99.9 {x['p999']:.3f}  (load {os.getloadavg()[0]:.2f})", flush=True)
        print(f"\nmedians over {args.rounds} rounds, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the end")
        for (n, r), xs in runs.items():
            m = {k: statistics.median(x[k] for x in xs) for k in xs[0]}
            print(f"{n} pacer(s) x {r:.0f}/s: {m['pps']:8.0f}/s sent together ({m['pps'] / (n * r):.3f} of asked), "
                  f"{m['cpu_us']:5.1f} CPU us/packet (target <= 5), lateness p99 {m['p99']:.3f} ms (target <= 1)")
        return
    configs = [(r, c, g, 0) for r in rates for g in gaps for c in (False, True)]
    configs += [(r, c, 0, w) for r in rates for w in windows for c in (False, True)]
    results: dict = {c: [] for c in configs}

    def name(c) -> str:
        return f"{c[0]:6.0f}/s {'TCP      ' if c[1] else 'no socket'} " + (f"coalesce {c[3]:4d} us" if c[3] else
                                                                           f"gap {c[2]:4d} us     ")

    floor: dict[float, list[float]] = {r: [] for r in rates}
    for rnd in range(args.rounds):
        for r in rates:
            floor[r].append(bare_wake_us(r, min(args.seconds, 2.0)))
            print(f"round {rnd + 1}: {r:6.0f}/s bare wake-up (a thread that only sleeps until each due time): "
                  f"{floor[r][-1]:5.1f} CPU us per wake-up", flush=True)
        for c in configs if rnd % 2 == 0 else reversed(configs):
            late: list[int] = []
            r = run(c[0], args.seconds, c[1], c[2], late, c[3])
            r["p99"] = pct(late, 0.99)
            results[c].append(r)
            print(f"round {rnd + 1}: {name(c)}: "
                  f"{r['cpu_us']:5.1f} CPU us/packet, {r['wakeups']:.2f} wake-ups and {r['writes']:.2f} writes "
                  f"per packet, lateness p99 {r['p99']:.3f} ms  (load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"\nmedians over {args.rounds} rounds, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the end")
    for r in rates:
        print(f"{r:6.0f}/s bare wake-up: {statistics.median(floor[r]):5.1f} CPU us per wake-up (the floor: "
              f"a configuration's wake-ups per packet times this)")
    for c, rs in results.items():
        wake = statistics.median(r['wakeups'] for r in rs) * statistics.median(floor[c[0]])
        print(f"{name(c)}: {statistics.median(r['cpu_us'] for r in rs):5.1f} CPU us/packet "
              f"(wake-up floor {wake:4.1f}) "
              f"(target <= 5), {statistics.median(r['wakeups'] for r in rs):.2f} wake-ups and "
              f"{statistics.median(r['writes'] for r in rs):.2f} writes per packet, "
              f"lateness p99 {statistics.median(r['p99'] for r in rs):.3f} ms")


if __name__ == "__main__":
    main()
