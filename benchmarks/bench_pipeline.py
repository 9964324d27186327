"""Pipeline throughput: every worker and the sender, writing to a discarding provider on loopback,
against the bare all-core C build rate measured in the same run (target ratio >= 0.8).

    .venv/bin/python benchmarks/bench_pipeline.py [--seconds 8] [--rounds 3] [--identities 8]

Each round: the bare builders alone for a few seconds, then the whole client (coordinator, workers,
sender) with rates far above what the workers can build, so the workers are the bottleneck and the
figure is the pipeline's capacity. Packets counted at the sink (bytes / frame size).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import uvloop

from _pipeline import SinkNet, bare_all_core_rate
from loopix import sphinx
from loopix.client.coordinator import Coordinator, Identity, RuntimeOptions
from loopix.keys import generate_keypair
from loopix.wire import provider as pp


async def pipeline_rate(seconds: float, identities: int, workers: int) -> tuple[float, dict]:
    frame = pp.SEND_OVERHEAD + sphinx.packet_size(2048)
    async with SinkNet() as net:
        ids = [Identity(generate_keypair(), None, 1e6 / identities, 0.0, 0.0) for _ in range(identities)]
        coord = Coordinator(ids, RuntimeOptions(directory_url=net.topology_url, workers=workers,
                                                mean_hop_delay_ms=1.0, lookahead_ms=50))
        await coord.start()
        try:
            await asyncio.sleep(2.0)  # warm up: rings fill, connections settle
            b0, t0 = net.sink_bytes(), time.monotonic()
            await asyncio.sleep(seconds)
            b1, t1 = net.sink_bytes(), time.monotonic()
            stats = coord.stats
        finally:
            await coord.stop()
    return (b1 - b0) / frame / (t1 - t0), {"sent": list(stats.sent), "built": list(stats.built)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--identities", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    import os

    workers = args.workers or os.cpu_count()
    bare, pipe = [], []
    for r in range(args.rounds):
        b = bare_all_core_rate(min(args.seconds, 4.0), 4, workers)
        p, info = uvloop.run(pipeline_rate(args.seconds, args.identities, workers))
        bare.append(b)
        pipe.append(p)
        print(f"round {r + 1}: bare C build {b:.0f} pkt/s, pipeline {p:.0f} pkt/s, ratio {p / b:.3f}  {info}")
    mb, mp = statistics.median(bare), statistics.median(pipe)
    print(f"median: bare {mb:.0f} pkt/s ({workers} processes), pipeline {mp:.0f} pkt/s "
          f"({workers} workers + sender), ratio {mp / mb:.3f} (target >= 0.8)")


if __name__ == "__main__":
    main()
