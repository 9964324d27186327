"""Fleets: start time and memory per identity of one client process tree running N identities.

    .venv/bin/python benchmarks/bench_fleet.py [--sizes 1000,10000] [--rate 0.2]

For each N: start a coordinator with N fresh identities against a discarding provider on loopback
(keys made beforehand and not counted), time until every identity is registered, then read the
resident memory (VmRSS, minus the shared-memory rings, which count as packets in flight) of the
coordinator, the sender and the workers. Memory per identity is the slope against a 1-identity
run measured in the same invocation. Targets: <= 2 KiB per identity, 10,000 started in <= 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time

import uvloop

from loopix.client.coordinator import Coordinator, Identity, RuntimeOptions
from loopix.keys import generate_keypair
from loopix.testnet.sink import SinkNet


def rss_kib(pid: int) -> int:
    """Private resident memory: anonymous pages only (RssAnon), so shared libraries and the
    memfd rings (RssShmem) are left out."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


async def measure(n: int, rate: float, workers: int) -> dict:
    ids = [Identity(generate_keypair(), None, rate, rate, rate) for _ in range(n)]
    gc.collect()
    async with SinkNet() as net:
        before = rss_kib(os.getpid())
        coord = Coordinator(ids, RuntimeOptions(directory_url=net.topology_url, workers=workers,
                                                start_timeout_s=120.0, lookahead_ms=100))
        t0 = time.monotonic()
        await coord.start()
        started = time.monotonic() - t0
        await asyncio.sleep(3.0)  # steady state: a few stats rounds, rings in use
        gc.collect()
        parts = {"coordinator": rss_kib(os.getpid()) - before, "sender": rss_kib(coord.sender.proc.pid)}
        for i, w in enumerate(coord.workers):
            parts[f"worker{i}"] = rss_kib(w.proc.pid)
        await coord.stop()
    return {"n": n, "start_s": started, "rss_kib": parts, "total_kib": sum(parts.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--rate", type=float, default=0.2, help="packets/s per stream per identity")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    base = uvloop.run(measure(1, args.rate, args.workers))
    print(f"N=1: start {base['start_s']:.2f}s, private RSS {base['total_kib']} KiB {base['rss_kib']}")
    for n in (int(x) for x in args.sizes.split(",")):
        r = uvloop.run(measure(n, args.rate, args.workers))
        per = (r["total_kib"] - base["total_kib"]) * 1024 / (n - 1)
        print(f"N={n}: start {r['start_s']:.2f}s (target <= 10 s for 10,000), private RSS {r['total_kib']} KiB "
              f"{r['rss_kib']}, {per:.0f} bytes/identity above N=1 (target <= 2048)")


if __name__ == "__main__":
    main()
