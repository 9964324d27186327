"""Per-packet cost of the testnet nodes' forwarding paths around the C batch unwrap.

    .venv/bin/python benchmarks/bench_node_python.py [--rounds 5]
        [--baseline-python PYTHON --baseline-script OTHER/benchmarks/bench_node_python.py]

In one process, a mixnode and a provider (with a real SQLite inbox in a temporary directory) take
packets the way a socket read hands them over: framed, in reads of 64 KiB, into the node's link
framing (`LinkFrames`), then a batch of 128 at a time through the node's step (`Node._step`: the
C engine's unwrap, replay set, decisions and output framing, then the Python that carries out what
it returns: counters, the lateness histogram, the forwarder's queues and one flush to next hops
connected through a transport that discards what it is given; for the provider the inbox
transaction and the SURB-ack forwarding). Each round starts with a fresh engine, so every packet
is new to the replay set. The C batch unwrap of the same packets alone is timed in the same process
and round. CPU time; medians over rounds.

Printed per packet: `ingest` (the reads' framing into the backlog), `rest` (everything else the
node does beyond the unwrap: the node's total minus ingest minus the unwrap's CPU by the engine's
own count, timed around each C call, so the machine's drifting speed does not land in it) and the C
unwrap alone; `node/C` is C ÷ the node's total: its unwrap-and-forward rate as a fraction of the C batch
unwrap rate, leaving out the kernel's socket work (bench_mixnode.py measures the whole process,
kernel included).

Kinds: `mix forward` (a mixnode forwarding zero-delay packets), `provider drop` (drop cover,
counted and discarded), `provider message` (a message with a SURB-ack prefix for a registered
client: stored, its ack forwarded) and `provider ack` (an ack packet for a client: stored).
With --baseline-python the measurement runs under another build too, alternating, in a child
process; --baseline-script names that build's copy of this benchmark (its own way of timing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 128
PACKETS = 2048


def _packets(route, destination: bytes, messages: list[bytes], payload_size: int) -> list[bytes]:
    from loopix.sphinx import PacketBuilder

    builder = PacketBuilder(BATCH, payload_size)
    out = bytearray(BATCH * builder.packet_size)
    size = builder.packet_size
    packets = []
    for start in range(0, len(messages), BATCH):
        n = min(BATCH, len(messages) - start)
        for i in range(n):
            builder.set_packet(i, route, destination, messages[start + i], [0] * len(route))
        assert builder.build(n, out) == n
        packets += [bytes(out[i * size : (i + 1) * size]) for i in range(n)]
    return packets


class _Discard:
    """A next hop's transport: takes writes, keeps nothing."""

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data) -> None:
        pass

    def close(self) -> None:
        pass


def _connect(node, address: bytes) -> None:
    peer = node.forwarder._peer(address, 0.0)
    peer.transport, peer.connecting = _Discard(), False


def _time_node(node, secret: bytes, packets: list[bytes]) -> tuple[float, float, float]:
    """(CPU seconds per packet of the whole node path, of which the reads' framing, of which the
    unwrap by the engine's own count) over `packets`, framed and fed in reads of 64 KiB, each read's
    full batches stepped at once (as the loop does)."""
    from loopix.testnet.engine import ForwardEngine, LinkFrames
    from loopix.wire.framing import encode_frame

    c = node.config
    node.engine = ForwardEngine(secret, batch=c.batch, replay_capacity=c.replay_capacity,
                                max_queue=c.max_queue, max_delay=c.max_delay)  # fmt: skip
    stream = b"".join(encode_frame(p) for p in packets)
    link = LinkFrames(node.engine)
    engine, step, clock = node.engine, node._step, time.process_time
    feed = 0.0
    t = clock()
    for start in range(0, len(stream), 65536):
        t0 = clock()
        link.feed(stream[start : start + 65536], 0.0)
        feed += clock() - t0
        while engine.backlog >= BATCH:
            step()
    while engine.backlog:
        step()
    n = len(packets)
    return (clock() - t) / n, feed / n, engine.unwrap_seconds / n


def _time_c(secret: bytes, packets: list[bytes]) -> float:
    from loopix.sphinx import PacketProcessor

    size = len(packets[0])
    proc = PacketProcessor(secret, BATCH)
    out = bytearray(BATCH * size)
    joined = [b"".join(packets[s : s + BATCH]) for s in range(0, len(packets), BATCH)]
    t = time.process_time()
    for data in joined:
        proc.process(data, len(data) // size, size, out)
    return (time.process_time() - t) / len(packets)


async def measure(rounds: int) -> dict[str, dict[str, list[float]]]:
    from loopix import sphinx
    from loopix.testnet.inbox import Inbox
    from loopix.testnet.mixnode import MixNode
    from loopix.testnet.node import NodeConfig
    from loopix.testnet.provider import Provider
    from loopix.wire.ack import ACK_PACKET_SIZE, ACK_PAYLOAD_SIZE, inner_size
    from loopix.wire.address import encode_node_address

    next_hop = encode_node_address("127.0.0.1", 9)
    mix_secret, mix_public = sphinx.keypair()
    _, sink_public = sphinx.keypair()
    mix = MixNode(NodeConfig(port=1), mix_secret, 1)
    _connect(mix, next_hop)
    mix_route = [sphinx.Hop(mix_public, encode_node_address("127.0.0.1", 1)), sphinx.Hop(sink_public, next_hop)]
    cases = {"mix forward": (mix, mix_secret, _packets(mix_route, bytes(32), [b"x" * 100] * PACKETS, 2048))}

    tmp = tempfile.TemporaryDirectory(prefix="bench-node-python-")
    prov_secret, prov_public = sphinx.keypair()
    client = os.urandom(32)
    inbox = Inbox(Path(tmp.name) / "inbox.sqlite")
    inbox.register_client(client)
    provider = Provider(NodeConfig(port=2), prov_secret, inbox)
    _connect(provider, next_hop)
    route = [sphinx.Hop(prov_public, encode_node_address("127.0.0.1", 2))]
    with_ack = next_hop + os.urandom(ACK_PACKET_SIZE) + os.urandom(inner_size(2048))
    cases["provider drop"] = (provider, prov_secret,
                              _packets(route, sphinx.DROP_COVER_DESTINATION, [os.urandom(2048)] * PACKETS, 2048))
    cases["provider message"] = (provider, prov_secret, _packets(route, client, [with_ack] * PACKETS, 2048))
    cases["provider ack"] = (provider, prov_secret,
                             _packets(route, client, [os.urandom(ACK_PAYLOAD_SIZE)] * PACKETS, ACK_PAYLOAD_SIZE))
    results: dict[str, dict[str, list[float]]] = {k: {"python": [], "c": [], "decode": []} for k in cases}
    try:
        for _ in range(rounds):
            for name, (node, secret, packets) in cases.items():
                total, ingest, unwrap = _time_node(node, secret, packets)
                c = _time_c(secret, packets)
                results[name]["python"].append(total - ingest - unwrap)
                results[name]["c"].append(c)
                results[name]["decode"].append(ingest)
        assert mix.counters.forwarded >= rounds * PACKETS, mix.counters.forwarded
        assert provider.counters.extra.get("acks_sent", 0) >= rounds * PACKETS
    finally:
        await provider.close()
        await mix.close()
        tmp.cleanup()
    return results


def report(label: str, results: dict[str, dict[str, list[float]]]) -> None:
    for name, r in results.items():
        py, c, dec = (statistics.median(r[k]) * 1e6 for k in ("python", "c", "decode"))
        print(f"{label:9} {name:17}: ingest {dec:5.2f} us/packet, rest {py:6.2f}, C unwrap {c:6.1f}; "
              f"node/C {c / (c + py + dec):.3f} (without the kernel's socket work)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline-python", default=None)
    ap.add_argument("--baseline-script", default=None,
                    help="the baseline build's copy of this benchmark (default: this file)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(args.rounds))))
        return
    builds = {"this": (sys.executable, os.path.abspath(__file__))}
    if args.baseline_python:
        builds["baseline"] = (args.baseline_python, args.baseline_script or os.path.abspath(__file__))
    merged: dict[str, dict] = {}
    for rnd in range(args.rounds):
        order = list(builds.items()) if rnd % 2 == 0 else list(reversed(builds.items()))
        for name, (python, script) in order:
            out = subprocess.run([python, script, "--child", "--rounds", "1"],
                                 capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                raise SystemExit(f"run under {python} failed:\n{out.stderr[-2000:]}")
            for kind, r in json.loads(out.stdout.strip().splitlines()[-1]).items():
                slot = merged.setdefault(name, {}).setdefault(kind, {"python": [], "c": [], "decode": []})
                for k in slot:
                    slot[k] += r[k]
        print(f"round {rnd + 1} done (load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"\nmedians over {args.rounds} rounds, batches of {BATCH}, CPU time; load {os.getloadavg()[0]:.2f}")
    for name in builds:
        report(name, merged[name])


if __name__ == "__main__":
    main()
