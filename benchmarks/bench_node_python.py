"""Per-packet Python cost of the testnet nodes' forwarding paths, beside the C batch unwrap.

    .venv/bin/python benchmarks/bench_node_python.py [--rounds 5] [--baseline-python PYTHON]

In one process, a mixnode and a provider (with a real SQLite inbox in a temporary directory) take
batches of 128 packets through `Node._process`, as after a read: typed results, the hop policy and
replay filter, the lateness histogram, the forwarder's queues and one flush (next hops connected
through a transport that discards what it is given), and for the provider the inbox transaction
and the SURB-ack forwarding. The C unwrap of each batch is done once beforehand and its results
are copied back in place of the C call, so what is timed is the node's Python (plus that copy:
the figure errs high). The C batch unwrap of the same packets, and the frame decoder, are timed in
the same process and round. CPU time; medians over rounds.

Kinds: `mix forward` (a mixnode forwarding zero-delay packets), `provider drop` (drop cover,
counted and discarded), `provider message` (a message with a SURB-ack prefix for a registered
client: stored, its ack forwarded) and `provider ack` (an ack packet for a client: stored).
`node/C` is C ÷ (C + Python + frame decode) per packet: the node's unwrap-and-forward rate as a
fraction of the C batch unwrap rate, leaving out the kernel's socket work (bench_mixnode.py
measures the whole process, kernel included). With --baseline-python the same measurement runs
under another build (e.g. main's), alternating, in a child process.
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


def _replaying(node, packets: list[bytes]):
    """Unwrap every batch once in C; return a `process` that copies a batch's saved results back,
    keyed by the batch's first packet."""
    from loopix.sphinx import ffi

    proc = node._processor
    size = len(packets[0])
    saved = {}
    out = bytearray(BATCH * size)
    for start in range(0, len(packets), BATCH):
        n = min(BATCH, len(packets) - start)
        proc.process(b"".join(packets[start : start + n]), n, size, out)
        saved[packets[start][:64]] = (bytes(ffi.buffer(proc.results, n * ffi.sizeof("lx_processed"))), bytes(out))

    def process(data, count, packet_len, dst):
        results, body = saved[bytes(data[:64])]
        ffi.memmove(proc.results, results, len(results))
        dst[: len(body)] = body
        return count

    return process


def _time_node(node, packets: list[bytes]) -> float:
    """CPU seconds per packet of node._process over `packets` in batches (the replay filter
    emptied first: every packet is new to it)."""
    node.replay._current.clear()
    node.replay._previous.clear()
    t = time.process_time()
    for start in range(0, len(packets), BATCH):
        node._process(packets[start : start + BATCH])
    return (time.process_time() - t) / len(packets)


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


def _time_decode(packets: list[bytes]) -> float:
    from loopix.wire.framing import FrameDecoder, encode_frame

    stream = b"".join(encode_frame(p) for p in packets)
    decoder = FrameDecoder()
    t = time.process_time()
    for start in range(0, len(stream), 65536):  # reads of 64 KiB
        decoder.feed(stream[start : start + 65536])
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
        replays = {}
        for name, (node, _secret, packets) in cases.items():
            replays[name] = _replaying(node, packets)
        for _ in range(rounds):
            for name, (node, secret, packets) in cases.items():
                real = node._processor.process
                node._processor.process = replays[name]
                try:
                    py = _time_node(node, packets)
                finally:
                    node._processor.process = real
                results[name]["python"].append(py)
                results[name]["c"].append(_time_c(secret, packets))
                results[name]["decode"].append(_time_decode(packets))
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
        print(f"{label:9} {name:17}: Python {py:6.2f} us/packet, frame decode {dec:5.2f}, C unwrap {c:6.1f}; "
              f"node/C {c / (c + py + dec):.3f} (without the kernel's socket work)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline-python", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(args.rounds))))
        return
    builds = {"this": sys.executable}
    if args.baseline_python:
        builds["baseline"] = args.baseline_python
    merged: dict[str, dict] = {}
    for rnd in range(args.rounds):
        order = list(builds.items()) if rnd % 2 == 0 else list(reversed(builds.items()))
        for name, python in order:
            out = subprocess.run([python, os.path.abspath(__file__), "--child", "--rounds", "1"],
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
