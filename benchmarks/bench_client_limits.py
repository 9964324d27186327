"""Per-client limits under floods: a provider process taking a registration flood and an inbox
stuffing while a valid client keeps being served, and the socket API taking a 100 MiB send flood.
Prints counts, the RSS before and after (target: growth <= 50 MB) and the load average.

    .venv/bin/python benchmarks/bench_client_limits.py [--clients 150000] [--max-clients 150000]
        [--stuff 20000] [--flood-mib 100] [--only registrations|socket]

Everything on 127.0.0.1. Registrations: fleet connections of 20,000 fresh identities each (live:
they stay connected) up to `--clients`, then one more connection of 10 % more (refused while all
are live); then the flood connections close and a new connection of 10 % registers (idle ones
give way). Inbox stuffing: `--stuff` Sphinx packets for one registered client, sent to the
provider as a node would (default quota 10,000). Meanwhile a valid client pulls every 20 ms.
Socket: an application writes `--flood-mib` MiB of sends over TCP to `serve_tcp` in this process,
in front of a client that lets a message leave its queue every 0.2 ms; we print the peak of the
queue bound and this process's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _local import free_port, rss_mb, wait_listening
from loopix.keys import public_from_secret
from loopix.sphinx import Hop, build_packet, keypair
from loopix.testnet.node import load_or_create_secret
from loopix.wire.address import encode_node_address
from loopix.wire.framing import encode_frame
from loopix.wire.provider import (
    ChallengeReceived,
    ClientSide,
    FleetClientSide,
    KeyRefused,
    KeyRegistered,
    PullResult,
    RegistrationAccepted,
)

CHUNK = 20_000


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


async def fleet_connection(port: int, provider_pk: bytes, pairs: list[tuple[bytes, bytes]]):
    """Register `pairs` on one fleet connection; returns (accepted, refused, writer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    side = FleetClientSide(provider_pk, push=False)
    writer.write(side.send_hello())
    events: list = []
    while not any(isinstance(e, ChallengeReceived) for e in events):
        events += side.receive_data(await reader.read(65536))
    for i in range(0, len(pairs), 2000):
        writer.write(side.send_register_many(pairs[i : i + 2000]))
        await writer.drain()
    accepted = refused = 0
    while accepted + refused < len(pairs):
        data = await asyncio.wait_for(reader.read(1 << 20), 120)
        if not data:
            break
        for e in side.receive_data(data):
            accepted += isinstance(e, KeyRegistered)
            refused += isinstance(e, KeyRefused)
    return accepted, refused, writer


async def quiet_client(port: int, provider_pk: bytes) -> tuple[bytes, asyncio.StreamWriter]:
    """A registered client that stays connected and never reads its inbox (the stuffing victim)."""
    sk, pk = keypair()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    side = ClientSide(sk, provider_pk, push=False)
    writer.write(side.send_hello())
    events: list = []
    while not any(isinstance(e, ChallengeReceived) for e in events):
        events += side.receive_data(await reader.read(65536))
    writer.write(side.send_register())
    while not any(isinstance(e, RegistrationAccepted) for e in events):
        events += side.receive_data(await asyncio.wait_for(reader.read(65536), 30))
    return pk, writer


def valid_client_thread(port: int, provider_pk: bytes, stop, stats: dict) -> None:
    """The valid client on its own thread and event loop, so that this process's own flood work
    (key generation, proofs) does not delay its pulls: what it times is the provider."""
    asyncio.run(valid_client(port, provider_pk, stop, stats))


async def valid_client(port: int, provider_pk: bytes, stop, stats: dict) -> None:
    sk, pk = keypair()
    stats["key"] = pk
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    side = ClientSide(sk, provider_pk, push=False)
    writer.write(side.send_hello())
    events: list = []

    async def until(kind):
        while True:
            for e in events:
                if isinstance(e, kind):
                    events.remove(e)
                    return e
            events.extend(side.receive_data(await asyncio.wait_for(reader.read(1 << 20), 30)))

    await until(ChallengeReceived)
    writer.write(side.send_register())
    await until(RegistrationAccepted)
    stats["registered"].set()
    stats["slowest"] = 0.0
    while not stop.is_set():
        t = time.monotonic()
        writer.write(side.send_pull())
        result = await until(PullResult)
        stats["pulls"] += 1
        stats["slowest"] = max(stats["slowest"], time.monotonic() - t)
        if result.messages:
            writer.write(side.send_ack([m.id for m in result.messages]))
        await asyncio.sleep(0.02)
    writer.close()


async def registrations(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-limits-"))
    key_file = tmp / "provider.pem"
    provider_pk = public_from_secret(load_or_create_secret(key_file))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopix.testnet.provider", "--port", str(port), "--key-file",
         str(key_file), "--directory", "", "--max-clients", str(args.max_clients),
         "--log-level", "ERROR"],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    status = 0
    stop = threading.Event()
    stats = {"pulls": 0, "slowest": 0.0, "registered": threading.Event()}
    writers = []
    try:
        await wait_listening(port, time.monotonic() + 20)
        pulling = threading.Thread(
            target=valid_client_thread, args=(port, provider_pk, stop, stats)
        )
        pulling.start()
        if not await asyncio.to_thread(stats["registered"].wait, 30):
            raise RuntimeError("the valid client could not register")
        rss0 = rss_mb(proc.pid)
        print(f"registration flood against a provider (--max-clients {args.max_clients}); {load()}")
        t0 = time.monotonic()
        accepted = refused = 0
        for start in range(0, args.clients, CHUNK):
            pairs = [keypair() for _ in range(min(CHUNK, args.clients - start))]
            a, r, w = await fleet_connection(port, provider_pk, pairs)
            accepted, refused = accepted + a, refused + r
            writers.append(w)
        extra = [keypair() for _ in range(max(1, args.clients // 10))]
        a, r, w = await fleet_connection(port, provider_pk, extra)
        writers.append(w)
        rss1 = rss_mb(proc.pid)
        print(
            f"  {accepted:,} identities registered live, {refused:,} refused; then {len(extra):,} "
            f"more while all are live: {a:,} accepted, {r:,} refused ({time.monotonic() - t0:.1f} s)"
        )
        print(f"  provider RSS {rss0:.0f} -> {rss1:.0f} MB (growth {rss1 - rss0:+.0f} MB)")
        for w in writers:
            w.close()
        writers = []
        more = [keypair() for _ in range(max(1, args.clients // 10))]
        a2, r2, w = await fleet_connection(port, provider_pk, more)
        writers.append(w)
        rss2 = rss_mb(proc.pid)
        print(
            f"  after the flood disconnected, {len(more):,} new identities: {a2:,} accepted "
            f"(idle registrations gave way), {r2:,} refused; provider RSS {rss2:.0f} MB"
        )
        # inbox stuffing: packets for a client that never reads, into the provider's node side
        victim, victim_writer = await quiet_client(port, provider_pk)
        writers.append(victim_writer)
        hop = [Hop(provider_pk, encode_node_address("127.0.0.1", port))]
        rss3 = rss_mb(proc.pid)
        t1 = time.monotonic()
        _, sw = await asyncio.open_connection("127.0.0.1", port)
        for i in range(args.stuff):
            sw.write(encode_frame(build_packet(hop, victim, os.urandom(1024), [0])))
            if i % 500 == 499:
                await sw.drain()
        await sw.drain()
        db = sqlite3.connect(tmp / "inbox.sqlite")
        deadline = time.monotonic() + 60
        stored = -1
        query = "SELECT COUNT(*) FROM messages WHERE recipient = ?"
        while time.monotonic() < deadline:  # until the provider has handled them all
            await asyncio.sleep(1.0)
            now = db.execute(query, (victim,)).fetchone()[0]
            if now == stored:
                break
            stored = now
        db.close()
        sw.close()
        rss4 = rss_mb(proc.pid)
        print(
            f"  inbox stuffing: {args.stuff:,} packets of 1 KiB for one client in "
            f"{time.monotonic() - t1:.1f} s; {stored:,} stored now (quota 10,000 messages, 16 MiB)"
        )
        print(f"  provider RSS {rss3:.0f} -> {rss4:.0f} MB (growth {rss4 - rss3:+.0f} MB)")
        stop.set()
        await asyncio.to_thread(pulling.join, 30)
        print(
            f"  valid client: {stats['pulls']:,} pulls answered during the floods, slowest "
            f"{stats['slowest'] * 1e3:.0f} ms; {load()}"
        )
        if (
            rss1 - rss0 > 50
            or rss4 - rss3 > 50
            or r == 0
            or a2 == 0
            or stored != min(args.stuff, 10_000)
        ):
            status = 1
    finally:
        stop.set()
        for w in writers:
            w.close()
        proc.terminate()
        proc.wait(10)
    return status


async def socket_flood(args: argparse.Namespace) -> int:
    from loopix.sockets import serve_tcp
    from loopix.wire.socket_api import ClientAddress, Send, encode_binary_request

    class Client:
        address = str(ClientAddress(bytes(32), bytes(32)))

        def __init__(self) -> None:
            self.queue: asyncio.Queue = asyncio.Queue()
            self.accepted = 0
            self.bytes = 0

        async def send_message(self, message: bytes, recipient: str, on_done=None) -> None:
            self.accepted += 1
            self.bytes += len(message)
            self.queue.put_nowait(on_done)

        def subscribe(self):
            async def nothing():
                await asyncio.Event().wait()
                yield b""

            return nothing()

    async def leave(client: Client) -> None:  # the client's payload rate: one message per 0.2 ms
        while True:
            done = await client.queue.get()
            await asyncio.sleep(0.0002)
            done()

    client = Client()
    server = await serve_tcp(client, "127.0.0.1", 0)
    drain = asyncio.create_task(leave(client))
    me = os.getpid()
    rss0 = rss_mb(me)
    size = 64 << 10
    n = args.flood_mib * (1 << 20) // size
    frame = encode_binary_request(Send(os.urandom(size), ClientAddress(bytes(32), bytes(32))))
    framed = len(frame).to_bytes(8, "big") + frame
    print(f"socket API flood: {args.flood_mib} MiB of {size >> 10} KiB sends over TCP; {load()}")
    t0 = time.monotonic()
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    peak_rss = rss0
    for i in range(n):
        writer.write(framed)
        await writer.drain()
        if i % 64 == 0:
            peak_rss = max(peak_rss, rss_mb(me))
    deadline = time.monotonic() + 300
    while client.accepted < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        peak_rss = max(peak_rss, rss_mb(me))
    took = time.monotonic() - t0
    writer.close()
    drain.cancel()
    server.close()
    await server.wait_closed()
    budget = server.budget
    print(
        f"  {client.accepted:,} of {n:,} messages accepted ({client.bytes / (1 << 20):.0f} MiB) in "
        f"{took:.1f} s; queue peak {budget.peak_messages} messages, {budget.peak_bytes / (1 << 20):.1f} MiB "
        f"(bound: 1,024 per connection, 16 MiB)"
    )
    print(
        f"  process RSS {rss0:.0f} -> peak {peak_rss:.0f} MB (growth {peak_rss - rss0:+.0f} MB); {load()}"
    )
    return 0 if client.accepted == n and budget.peak_bytes <= 16 << 20 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=150_000)
    parser.add_argument("--max-clients", type=int, default=150_000)
    parser.add_argument("--stuff", type=int, default=20_000)
    parser.add_argument("--flood-mib", type=int, default=100)
    parser.add_argument("--only", choices=["registrations", "socket"])
    args = parser.parse_args()
    status = 0
    if args.only in (None, "registrations"):
        status |= asyncio.run(registrations(args))
    if args.only in (None, "socket"):
        status |= asyncio.run(socket_flood(args))
    return status


if __name__ == "__main__":
    sys.exit(main())
