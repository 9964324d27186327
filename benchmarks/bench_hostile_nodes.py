"""A mixnode process under floods, serving valid traffic throughout: idle connections and
padding-variant next hops. Prints what was refused, how fast idle links were closed, how much
valid traffic got through, and the node's RSS before and after (target: growth <= 50 MB).

    .venv/bin/python benchmarks/bench_hostile_nodes.py [--idle 10000] [--cap 4096] [--timeout 60]
        [--variants 20000]

Everything on 127.0.0.1; the node is `python -m loopix.testnet.mixnode`, the next hop a sink in
this process. Phase 1 opens `--idle` connections that never send (and a few that send the lone
version byte 0x07); phase 2 sends packets whose next-hop addresses differ only in the padding the
address decoder ignores (each took a peer-table slot before). A valid packet is sent every 20 ms
on its own connection during both phases, and the share that reached the sink is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _local import free_port, rss_mb, wait_listening
from loopix.keys import public_from_secret
from loopix.sphinx import Hop, build_packet, keypair
from loopix.testnet.node import load_or_create_secret
from loopix.wire.address import encode_node_address, encode_node_address_unpadded
from loopix.wire.framing import FrameDecoder, frame_header


class Sink(asyncio.Protocol):
    received = 0

    def __init__(self) -> None:
        self.decoder = FrameDecoder()

    def data_received(self, data: bytes) -> None:
        Sink.received += sum(1 for f in self.decoder.feed(data) if not hasattr(f, "reason"))


async def valid_traffic(port: int, packet_for, stop: asyncio.Event, sent: list[int]) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    while not stop.is_set():
        pkt = packet_for(sent[0])
        writer.write(frame_header(len(pkt)) + pkt)
        sent[0] += 1
        await asyncio.sleep(0.02)
    await writer.drain()
    writer.close()


async def run(args: argparse.Namespace) -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.idle + 2048)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < args.idle + 256:
        print(f"note: fd limit {want} < {args.idle} idle connections + margin; fewer will be opened")
        args.idle = max(0, want - 256)
    loop = asyncio.get_running_loop()
    sink = await loop.create_server(Sink, "127.0.0.1", 0)
    sink_port = sink.sockets[0].getsockname()[1]
    _, sink_pub = keypair()
    tmp = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    secret = load_or_create_secret(tmp / "mix.pem")
    public = public_from_secret(secret)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopix.testnet.mixnode", "--port", str(port), "--key-file",
         str(tmp / "mix.pem"), "--layer", "1", "--max-connections", str(args.cap),
         "--idle-timeout", str(args.timeout), "--log-level", "ERROR"],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    status = 0
    try:
        await wait_listening(port, time.monotonic() + 20)
        route_valid = [Hop(public, encode_node_address("127.0.0.1", 1)),
                       Hop(sink_pub, encode_node_address("127.0.0.1", sink_port))]  # fmt: skip

        def valid_packet(i: int) -> bytes:
            return build_packet(route_valid, bytes(32), i.to_bytes(8, "big"), [0, 0])

        rss0 = rss_mb(proc.pid)
        # --- phase 1: idle connections ---
        stop = asyncio.Event()
        sent = [0]
        traffic = asyncio.create_task(valid_traffic(port, valid_packet, stop, sent))
        writers = []

        async def one(i: int) -> float | None:
            """Open, stay idle; seconds from the connect call to the node closing it (None: never
            did). Measured from the call, the figure is an upper bound of the node's timing."""
            opened = time.monotonic()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return None
            writers.append(writer)
            if i % 1000 == 0:
                writer.write(b"\x07")  # a partial frame: the lone version byte
            try:
                data = await asyncio.wait_for(reader.read(1), args.timeout * 3 + 10)
            except ConnectionError:
                return time.monotonic() - opened
            except TimeoutError:
                return None
            return time.monotonic() - opened if data == b"" else None

        t_open = time.monotonic()
        tasks = []
        for start in range(0, args.idle, 256):  # open in waves, each watched from its own open
            wave = [asyncio.create_task(one(i)) for i in range(start, min(start + 256, args.idle))]
            tasks += wave
            await asyncio.sleep(0)
        opened_at = time.monotonic()
        times = await asyncio.gather(*tasks)
        conns = writers
        closed = [t for t in times if t is not None]
        refused = sum(1 for t in closed if t < 0.5 * args.timeout)
        timed_out = [t for t in closed if t >= 0.5 * args.timeout]
        for w in conns:
            w.close()
        rss1 = rss_mb(proc.pid)
        stop.set()
        await traffic
        await asyncio.sleep(0.5)
        got1 = Sink.received
        print(f"idle flood: {len(conns)} connections opened (in waves of 256) in {opened_at - t_open:.1f}s to a node capped at {args.cap}")
        print(f"  refused at once (beyond the cap): {refused}; closed by the idle timeout ({args.timeout:g}s): "
              f"{len(timed_out)}, within {min(timed_out, default=0):.1f}-{max(timed_out, default=0):.1f}s of the connect call; never closed: {len(times) - len(closed)}")
        print(f"  valid packets forwarded during the flood: {got1}/{sent[0]}")
        print(f"  node RSS {rss0:.0f} -> {rss1:.0f} MB (growth {rss1 - rss0:+.0f} MB)")
        if len(times) != len(closed) or got1 < sent[0] * 0.95 or rss1 - rss0 > 50:
            status = 1
        # --- phase 2: padding-variant next hops ---
        base = encode_node_address_unpadded("127.0.0.1", sink_port)
        rss2 = rss_mb(proc.pid)
        stop2 = asyncio.Event()
        sent2 = [0]
        Sink.received = 0
        traffic = asyncio.create_task(valid_traffic(port, lambda i: valid_packet(10**6 + i), stop2, sent2))
        variants = []
        for i in range(args.variants):  # built first: the sink shares this event loop
            pad = (i + 1).to_bytes(4, "big") * 8
            hop = Hop(sink_pub, base + pad[: 32 - len(base)])
            pkt = build_packet([route_valid[0], hop], bytes(32), b"v", [0, 0])
            variants.append(frame_header(len(pkt)) + pkt)
        _, w = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.monotonic()
        for i, framed in enumerate(variants):
            w.write(framed)
            if i % 64 == 0:
                await w.drain()
                await asyncio.sleep(0)
        await w.drain()
        took = time.monotonic() - t0
        deadline = time.monotonic() + 20
        while Sink.received < args.variants + sent2[0] * 0.95 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop2.set()
        await traffic
        await asyncio.sleep(0.5)
        rss3 = rss_mb(proc.pid)
        print(f"padding-variant flood: {args.variants} packets, every one a different 32-byte next-hop address for one hop, in {took:.1f}s")
        print(f"  delivered to that hop (one peer-table entry): {Sink.received - sent2[0]}/{args.variants};"
              f" valid packets alongside: {sent2[0]} sent")
        print(f"  node RSS {rss2:.0f} -> {rss3:.0f} MB (growth {rss3 - rss2:+.0f} MB)")
        if Sink.received < args.variants or rss3 - rss2 > 50:
            status = 1
        w.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sink.close()
        for f in tmp.iterdir():
            f.unlink()
        os.rmdir(tmp)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--cap", type=int, default=4096)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="the node's idle timeout: longer than opening --idle connections takes")
    parser.add_argument("--variants", type=int, default=20_000)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
