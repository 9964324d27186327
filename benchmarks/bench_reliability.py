"""Reliable delivery under injected loss: message latency and retransmission overhead.

    .venv/bin/python benchmarks/bench_reliability.py [--losses 0,0.01,0.05] [--messages 300]

For each loss level, a fresh local testnet (3 layers of one mixnode, 2 providers, 5 ms mean hop
delay) whose layer-2 mixnode drops that share of what it forwards (`--drop-rate`; every fragment and
every ack crosses it once). One coordinator runs alice (provider 1) and bob (provider 2); alice sends
single-fragment messages at a steady 40/s (below her 100 payload slots/s, so latency is the network
and the retransmissions, not a queue). Per level it prints: message latency p50/p99 (send_message to
bob's reassembled message, HDR histogram), retransmission overhead (retransmitted packets per
delivered fragment), ack RTT p50/p99, the mixnode's own count of injected drops, messages lost
(never arrived within the deadline) and delivered twice. Nothing is fitted; every figure is counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import time

import uvloop
from hdrh.histogram import HdrHistogram

from loopix.client.coordinator import Coordinator, Identity, RuntimeOptions
from loopix.keys import generate_keypair
from loopix.testnet.launcher import Testnet

SEND_INTERVAL_S = 0.025


async def one_level(loss: float, n: int) -> dict:
    extra = {"mix-2-1": ["--drop-rate", str(loss)]} if loss else {}
    with Testnet(layers=3, mixnodes_per_layer=1, providers=2, mean_hop_delay_ms=5.0,
                 presence_interval=1.0, extra_node_args=extra) as net:
        keys = sorted(net.nodes[p].public_key for p in ("provider-1", "provider-2"))
        alice = Identity(generate_keypair(), keys[0], payload_rate=100.0, loop_rate=5.0, drop_rate=5.0)
        bob = Identity(generate_keypair(), keys[1], payload_rate=20.0, loop_rate=5.0, drop_rate=5.0)
        coord = Coordinator([alice, bob], RuntimeOptions(directory_url=net.topology_url,
                                                         mean_hop_delay_ms=5.0, workers=1))
        await coord.start()
        try:
            inbox = coord.subscribe(1)
            sent_at: dict[int, float] = {}
            latency = HdrHistogram(1, 600_000_000, 3)  # µs
            seen: dict[int, int] = {}

            async def receive() -> None:
                while True:
                    item = await inbox.get()
                    if item is None:
                        return
                    i = struct.unpack_from(">I", item.data)[0]
                    seen[i] = seen.get(i, 0) + 1
                    if seen[i] == 1:
                        latency.record_value(max(1, int((time.monotonic() - sent_at[i]) * 1e6)))

            reader = asyncio.create_task(receive())
            for i in range(n):
                sent_at[i] = time.monotonic()
                coord.send_message(0, struct.pack(">I", i) + os.urandom(200), bob.keys.public, keys[1])
                await asyncio.sleep(SEND_INTERVAL_S)
            deadline = time.monotonic() + 60
            while (len(seen) < n or coord.retransmissions) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # a late duplicate would show up here
            reader.cancel()
            await asyncio.sleep(1.1)  # one more stats report
            retx = coord.retransmissions
            rtt = coord.ack_rtt_us
            mix = net.latest_metrics("mix-2-1") or {}
            return {
                "loss": loss, "messages": n, "delivered": len(seen), "lost": n - len(seen),
                "twice": sum(1 for c in seen.values() if c > 1),
                "p50_ms": latency.get_value_at_percentile(50) / 1000,
                "p99_ms": latency.get_value_at_percentile(99) / 1000,
                "sent": retx.sent, "retransmitted": retx.retransmitted, "acked": retx.acked,
                "overhead": retx.retransmitted / max(1, len(seen)),
                "ack_p50_ms": rtt.get_value_at_percentile(50) / 1000,
                "ack_p99_ms": rtt.get_value_at_percentile(99) / 1000,
                "injected": mix.get("dropped", {}).get("injected", 0),
            }
        finally:
            await coord.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--losses", default="0,0.01,0.05")
    ap.add_argument("--messages", type=int, default=300)
    args = ap.parse_args()
    rows = [uvloop.run(one_level(float(x), args.messages)) for x in args.losses.split(",")]
    print(f"{'loss':>5} {'msgs':>5} {'lost':>4} {'twice':>5} {'p50 ms':>7} {'p99 ms':>8} "
          f"{'retx':>5} {'retx/frag':>9} {'ack p50':>8} {'ack p99':>8} {'injected':>8}")
    for r in rows:
        print(f"{r['loss']:>5.2f} {r['messages']:>5} {r['lost']:>4} {r['twice']:>5} {r['p50_ms']:>7.1f} "
              f"{r['p99_ms']:>8.1f} {r['retransmitted']:>5} {r['overhead']:>9.3f} {r['ack_p50_ms']:>8.1f} "
              f"{r['ack_p99_ms']:>8.1f} {r['injected']:>8}")


if __name__ == "__main__":
    main()
