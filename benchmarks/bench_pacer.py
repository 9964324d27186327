"""The sender's C pacing loop alone (client/pacer.py, csrc/pacer.c): CPU per packet of its thread, and
wake-ups and writes per packet, with and without a socket, at a Poisson rate, side by side in one run.

    .venv/bin/python benchmarks/bench_pacer.py [--rates 2000,5000] [--seconds 5] [--gaps 0,300] [--rounds 2]

One ring of 2,450-byte packets filled ahead by a producer thread (Poisson send times from the CSPRNG),
one identity. "no socket": the identity's link has no connection, so each due packet costs the pacer a
wake-up and its accounting only (cover is counted and dropped); "TCP": the link is a TCP connection on
127.0.0.1 to a reader process, so each wake-up also writes. CPU time of the pacer's thread from
/proc/self/task (user + system, clock ticks: at 2,000/s over 5 s one tick is 1 µs a packet). Medians
over rounds, configurations alternating.
"""

from __future__ import annotations

import argparse
import array
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


def thread_ticks() -> dict[str, int]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[tid] = int(fields[11]) + int(fields[12])
    return out


def run(rate: float, seconds: float, connect: bool, gap_us: int) -> dict:
    ring = Ring.create(8192, slot_size_for(WIRE))
    pacer = Pacer([ring], samples=2000, refs_cap=1 << 16, trace_cap=0, held_cap=16, link_buffer=4 << 20)
    pacer.set_min_gap(gap_us * 1000)
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
    time.sleep(0.5)
    before, c0 = pacer.totals(), thread_ticks()
    time.sleep(seconds)
    after, c1 = pacer.totals(), thread_ticks()
    stop.set()
    producer.join()
    pacer.close()
    ring.close()
    if reader is not None:
        reader.kill()
        reader.wait()
    packets = sum(after["sent"]) + sum(after["unconnected"]) - sum(before["sent"]) - sum(before["unconnected"])
    busiest = max(c1, key=lambda k: c1[k] - c0.get(k, 0))  # the pacer's thread: it does the work
    tick = os.sysconf("SC_CLK_TCK")
    return {"pps": packets / seconds, "cpu_us": (c1[busiest] - c0.get(busiest, 0)) / tick / packets * 1e6,
            "wakeups": (after["wakeups"] - before["wakeups"]) / packets,
            "writes": (after["writes"] - before["writes"]) / packets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="2000,5000")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--gaps", default="0,300", help="minimum gaps between wake-ups, µs")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    configs = [(float(r), c, int(g)) for r in args.rates.split(",") for g in args.gaps.split(",")
               for c in (False, True)]
    results: dict = {c: [] for c in configs}
    for rnd in range(args.rounds):
        for c in configs if rnd % 2 == 0 else reversed(configs):
            r = run(c[0], args.seconds, c[1], c[2])
            results[c].append(r)
            print(f"round {rnd + 1}: {c[0]:6.0f}/s {'TCP      ' if c[1] else 'no socket'} gap {c[2]:4d} us: "
                  f"{r['cpu_us']:5.1f} CPU us/packet, {r['wakeups']:.2f} wake-ups and {r['writes']:.2f} writes "
                  f"per packet  (load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"\nmedians over {args.rounds} rounds, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the end")
    for c, rs in results.items():
        print(f"{c[0]:6.0f}/s {'TCP      ' if c[1] else 'no socket'} gap {c[2]:4d} us: "
              f"{statistics.median(r['cpu_us'] for r in rs):5.1f} CPU us/packet "
              f"(target <= 5), {statistics.median(r['wakeups'] for r in rs):.2f} wake-ups and "
              f"{statistics.median(r['writes'] for r in rs):.2f} writes per packet")


if __name__ == "__main__":
    main()
