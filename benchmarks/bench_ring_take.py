"""The sender's per-packet read of its rings, side by side in one run: the Python scan it had (peek
each slot, check the identity, collect a view of its wire bytes per link, join them) against the
bulk C scan (`DueTaker`, csrc/ringscan.c), over the same full ring of due 2,048-byte-payload packets.

    .venv/bin/python benchmarks/bench_ring_take.py [--rounds 5] [--packets 1000]

This is the per-packet part of the sender's work only; at paced rates a wake-up per packet (sleep,
event loop turn, socket write) costs more (see bench_stages.py and docs/client-stages.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from loopix import sphinx
from loopix.client.ring import DueTaker, Ring, slot_size_for
from loopix.wire import provider as pp


def fill(ring: Ring, n: int, wire_len: int, identities: int) -> None:
    for i in range(n):
        ring.write_meta(i, i, i % identities, i % 3, wire_len, seq=i)
    ring.publish(n)


def python_scan(ring: Ring, ready: bytearray, link_of: list, now: int) -> int:
    """The scan of the sender's pump before the C one (as in main at d02c17f)."""
    r, w = ring.read_index, ring.write_index
    batch: dict = {}
    due = []
    while r < w and len(due) < 1024:
        t, identity, stream, flags, wire_len, _seq = ring.peek(r)
        if t > now:
            break
        if ready[identity]:
            batch.setdefault(link_of[identity], []).append(ring.wire_bytes(r, wire_len))
            due.append((t, identity, stream, flags))
        r += 1
    for views in batch.values():
        b"".join(views)
    return len(due)


def c_scan(taker: DueTaker, now: int) -> int:
    due: list = []
    taker.take(0, taker.rings[0].read_index, now, 1024, due)
    taker.gathered(0)
    return len(due)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--packets", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    wire_len = pp.SEND_OVERHEAD + sphinx.packet_size(2048)
    identities = 200
    ring = Ring.create(1024, slot_size_for(wire_len))
    ready = bytearray([1]) * identities
    links = [object()]
    link_of = [links[0]] * identities
    taker = DueTaker([ring], ready, [0] * identities, 1, max_due=1024, per_link=1024)
    try:
        fill(ring, args.packets, wire_len, identities)
        results: dict[str, list[float]] = {"python scan (ns/packet)": [], "C scan (ns/packet)": []}
        for _ in range(args.rounds):
            for name in results:
                t = time.perf_counter_ns()
                for _ in range(args.repeat):
                    n = (python_scan(ring, ready, link_of, 1 << 62) if name.startswith("python")
                         else c_scan(taker, 1 << 62))
                assert n == args.packets
                results[name].append((time.perf_counter_ns() - t) / (args.repeat * n))
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {args.packets} due packets of "
              f"{wire_len} bytes per scan, {args.rounds} rounds alternating")
        for name, v in results.items():
            print(f"{name:26} median {statistics.median(v):8.1f}   rounds {[round(x) for x in v]}")
    finally:
        taker.close()
        ring.close()


if __name__ == "__main__":
    main()
