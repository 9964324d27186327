"""Registering a fleet on one connection against a real provider process: time and memory.

    .venv/bin/python benchmarks/bench_provider_fleet.py [--identities 10000] [--runs 1]

A testnet (directory, one mixnode, one provider, each a process) is started; then, per run, one
TCP connection registers N fresh identities (`FleetClientSide.send_register_many`, all REGISTERs in
one write) and waits until every `KeyRegistered` is back. Printed per run:

- client proofs: the client's time to compute N proofs before the write: from secrets alone
  (2 X25519 each) and from (secret, public) pairs (1 X25519 each; the run uses these);
- registration: from the write to the last `KeyRegistered` (the provider verifies N proofs, one
  X25519 each, and stores the new keys, one SQLite transaction per read batch);
- provider RSS growth (VmRSS from /proc) when all are registered, 1 s later (after the debounced
  presence post), and after the connection closed (the keys stay registered: SQLite and the
  provider's set of known clients); the provider's CPU time from connect to the last answer;
- the client's fleet state (`FleetClientSide`) per identity, by tracemalloc.

Each run is a new connection with new identities, so the provider's growth accumulates across
runs; the first run's figures are the ones of a provider that has just started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import time
import tracemalloc
from pathlib import Path

from loopix.sphinx import keypair
from loopix.testnet.launcher import Testnet
from loopix.wire.provider import (
    ChallengeReceived,
    FleetClientSide,
    KeyRefused,
    KeyRegistered,
    MsgType,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def proofs_from_secrets(provider_key: bytes, secrets: list[bytes]) -> float:
    """Seconds for `send_register_many(secrets)` when the public keys must be derived."""
    side = FleetClientSide(provider_key)
    side.send_hello()
    side.receive_data(struct.pack(">IB", 33, MsgType.CHALLENGE) + bytes(32))
    t0 = time.perf_counter()
    side.send_register_many(secrets)
    return time.perf_counter() - t0


async def register_fleet(
    address: tuple[str, int], provider_key: bytes, n: int, pid: int
) -> dict[str, float]:
    pairs = [keypair() for _ in range(n)]
    rss0, cpu0 = rss_kib(pid), cpu_seconds(pid)
    reader, writer = await asyncio.open_connection(*address)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    side = FleetClientSide(provider_key)
    writer.write(side.send_hello())
    events: list[object] = []
    while not events:
        events += side.receive_data(await reader.read(1 << 16))
    assert isinstance(events[0], ChallengeReceived), events
    t0 = time.perf_counter()
    data = side.send_register_many(pairs)
    t1 = time.perf_counter()
    writer.write(data)
    await writer.drain()
    registered = refused = 0
    while registered + refused < n:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 120)
        if not chunk:
            raise ConnectionError("provider closed the connection")
        for event in side.receive_data(chunk):
            if isinstance(event, KeyRegistered):
                registered += 1
            elif isinstance(event, KeyRefused):
                refused += 1
            else:
                raise RuntimeError(f"unexpected {event}")
    t2 = time.perf_counter()
    rss1, cpu1 = rss_kib(pid), cpu_seconds(pid)
    del data
    state = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    await asyncio.sleep(1.0)  # the debounced presence post after the burst
    rss2 = rss_kib(pid)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.5)
    rss3 = rss_kib(pid)
    return {
        "rss_registered_kib": rss1 - rss0,
        "rss_settled_kib": rss2 - rss0,
        "rss_closed_kib": rss3 - rss0,
        "provider_cpu_s": cpu1 - cpu0,
        "proofs_s": t1 - t0,
        "proofs_from_secrets_s": proofs_from_secrets(provider_key, [sk for sk, _ in pairs]),
        "registration_s": t2 - t1,
        "registered": registered,
        "refused": refused,
        "client_state_bytes": state,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    n = args.identities
    with Testnet(layers=1, mixnodes_per_layer=1, providers=1, presence_interval=2.0) as net:
        info = net.nodes["provider-1"]
        pid = net._procs["provider-1"].pid  # the provider's own process (a group leader)
        time.sleep(1.0)
        print(f"provider pid {pid}, RSS at start {rss_kib(pid) / 1024:.1f} MiB")
        for run in range(1, args.runs + 1):
            r = asyncio.run(register_fleet(info.address, info.public_key, n, pid))
            grown = r["rss_registered_kib"]
            print(
                f"run {run}: {n} identities on one connection\n"
                f"  client proofs      {r['proofs_s']:.2f} s from (secret, public) pairs "
                f"({r['proofs_s'] / n * 1e6:.0f} us each); "
                f"{r['proofs_from_secrets_s']:.2f} s from secrets alone\n"
                f"  registration       {r['registration_s']:.2f} s until all answered "
                f"({r['registered']} KeyRegistered, {r['refused']} KeyRefused; "
                f"{n / r['registration_s']:.0f} per s)\n"
                f"  total to ready     {r['proofs_s'] + r['registration_s']:.2f} s\n"
                f"  provider CPU       {r['provider_cpu_s']:.2f} s\n"
                f"  provider RSS       +{grown / 1024:.1f} MiB when all are registered "
                f"({grown * 1024 / n:.0f} B per identity); "
                f"+{r['rss_settled_kib'] / 1024:.1f} MiB 1 s later; "
                f"+{r['rss_closed_kib'] / 1024:.1f} MiB after the connection closed\n"
                f"  client fleet state {r['client_state_bytes'] / n:.0f} B per identity "
                "(FleetClientSide, tracemalloc)"
            )


if __name__ == "__main__":
    main()
