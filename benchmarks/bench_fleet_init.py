"""Fleets as operators make and grow them: keystore creation, memory per identity of a running fleet
with real-message capability, and identities joining a running fleet.

    .venv/bin/python benchmarks/bench_fleet_init.py [--count 100000] [--running 10000] [--add 10000]

1. `init --fleet DIR --count N` (create_fleet, what the command runs): wall time (median of --repeat)
   and bytes on disk, beside two floors measured in the same run: N key pairs alone (os.urandom +
   X25519, what any layout must pay) and the per-identity-directory layout (init_client, in process,
   for --dirs identities: time and disk per identity). Targets: 100,000 in <= 10 s and <= 100 MB.
2. A running `loopix.Fleet` of --running identities (keystore, real-message capable: the API's
   listeners and counters on) against a discarding provider (SinkNet): private RSS of coordinator,
   sender and workers above a fleet of 1 measured the same way, per identity. Target <= 1 KiB.
3. `Fleet.add(--add)` on that running fleet: time until every new identity is registered at its
   provider (keys made, written to the keystore, streams scheduled). Target <= 5 s for 10,000.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import uvloop
from nacl.bindings import crypto_scalarmult_base

from loopix import config as cfg
from loopix.cli import init_client
from loopix.fleet.store import _pairs, create_fleet, new_keys
from loopix.testnet.sink import SinkNet


def disk_bytes(path: Path) -> int:
    """Allocated bytes (st_blocks), as `du` counts them."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def rss_kib(pid: int) -> int:
    """Private resident memory (RssAnon): shared libraries and the memfd rings left out."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def config(directory: str = cfg.DEFAULT_DIRECTORY, rate: float = 0.2) -> cfg.ClientConfig:
    return cfg.ClientConfig(client=cfg.ClientSection(id="fleet", directory_server_topology=directory),
                            traffic=cfg.TrafficSection(payload_rate=rate, loop_rate=rate, drop_rate=rate),
                            runtime=cfg.RuntimeSection(workers=2))


def bench_init(count: int, repeat: int, dirs: int, work: Path) -> None:
    times, cpus, sizes = [], [], []
    for r in range(repeat):
        root = work / f"keystore-{r}"
        t0, c0 = time.perf_counter(), time.process_time()
        create_fleet(root, count, config())
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)  # every thread's: less at the mercy of other jobs than wall time
        sizes.append(disk_bytes(root))
        shutil.rmtree(root)
    t0 = time.perf_counter()
    new_keys(count)
    keys_only = time.perf_counter() - t0
    # key generation, one thread of C fixed-base X25519 against libsodium's crypto_scalarmult_base
    # (what `init --fleet` used before), interleaved in chunks so both see the same load
    ours, sodium = [], []
    chunk = min(count, 5000)
    for _ in range(6):
        t0 = time.process_time()
        new_keys(chunk, threads=1)
        ours.append(time.process_time() - t0)
        t0 = time.process_time()
        for secret in _pairs(os.urandom(32 * chunk), bytes(32 * chunk)):
            crypto_scalarmult_base(secret[0])
        sodium.append(time.process_time() - t0)
    home = work / "dirs"
    t0 = time.perf_counter()
    for i in range(dirs):
        init_client(f"id{i}", home=home)
    per_dir_s = (time.perf_counter() - t0) / dirs
    per_dir_bytes = disk_bytes(home) / dirs
    med = statistics.median(times)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min)")
    print(f"init --fleet --count {count}: median {med:.2f} s of {repeat} ({', '.join(f'{t:.2f}' for t in times)}), "
          f"{statistics.median(sizes) / 1e6:.1f} MB on disk ({statistics.median(sizes) / count:.0f} B/identity); "
          f"targets <= 10 s, <= 100 MB")
    print(f"  CPU seconds (all threads): median {statistics.median(cpus):.2f} ({', '.join(f'{c:.2f}' for c in cpus)})")
    print(f"  floor, {count} key pairs alone: {keys_only:.2f} s (keystore / floor = {med / keys_only:.2f})")
    print(f"  key pair CPU cost, interleaved chunks of {chunk}: C fixed-base {statistics.median(ours) / chunk * 1e6:.1f} us, "
          f"libsodium crypto_scalarmult_base {statistics.median(sodium) / chunk * 1e6:.1f} us "
          f"(ratio {statistics.median(s / o for s, o in zip(sodium, ours, strict=True)):.2f})")
    print(f"  per-identity directories (init_client, {dirs} measured): {per_dir_s * 1e3:.1f} ms and "
          f"{per_dir_bytes / 1e3:.1f} kB per identity; keystore is {per_dir_s * count / med:.0f}x faster "
          f"and {per_dir_bytes * count / statistics.median(sizes):.0f}x smaller per identity")


async def running_fleet(root: Path, add: int, sink_pid: int) -> dict:
    import loopix

    gc.collect()
    before = rss_kib(os.getpid())
    async with loopix.Fleet.load(root, lock=False) as fleet:
        inbox = fleet.messages()  # real-message capable: a listener subscribed, as an application has
        def measure() -> dict[str, int]:
            gc.collect()
            parts = {"coordinator": rss_kib(os.getpid()) - before, "sender": rss_kib(fleet._coord.sender.proc.pid)}
            for i, w in enumerate(fleet._coord.workers):
                parts[f"worker{i}"] = rss_kib(w.proc.pid)
            return parts

        await asyncio.sleep(3.0)  # steady state: stats rounds, rings in use
        parts = measure()
        added_s = after = add_cpu = None
        if add:
            target = len(fleet) + add
            pids = {"coordinator": os.getpid(), "sender": fleet._coord.sender.proc.pid, "sink": sink_pid,
                    **{f"worker{i}": w.proc.pid for i, w in enumerate(fleet._coord.workers)}}
            cpu0 = {k: cpu_s(p) for k, p in pids.items()}
            t0 = time.monotonic()
            await fleet.add(add)
            while fleet.stats.connected < target:
                if time.monotonic() - t0 > 120:
                    raise RuntimeError(f"only {fleet.stats.connected}/{target} connected after 120 s")
                await asyncio.sleep(0.02)
            added_s = time.monotonic() - t0
            add_cpu = {k: cpu_s(p) - cpu0[k] for k, p in pids.items()}
            await asyncio.sleep(3.0)
            after = measure()
        inbox.close()
    return {"n": len(fleet), "rss_kib": parts, "total_kib": sum(parts.values()), "add_s": added_s,
            "after_kib": after, "add_cpu_s": add_cpu}


def bench_running(n: int, add: int, work: Path) -> None:
    async def both() -> tuple[dict, dict]:
        async with SinkNet() as net:
            one, many = work / "one", work / "many"
            create_fleet(one, 1, config(net.topology_url))
            create_fleet(many, n, config(net.topology_url))
            base = await running_fleet(one, 0, net.sink.pid)
            r = await running_fleet(many, add, net.sink.pid)
            return base, r

    base, r = uvloop.run(both())
    per = (r["total_kib"] - base["total_kib"]) * 1024 / (n - 1)
    print(f"running fleet of {n}: private RSS {r['total_kib']} KiB {r['rss_kib']}; of 1: {base['total_kib']} KiB; "
          f"{per:.0f} bytes/identity above the fleet of 1 {base['rss_kib']} (target <= 1024)")
    if add:
        print(f"  Fleet.add({add}) to the running {n}: all {add} registered in {r['add_s']:.2f} s (target <= 5 s); "
              f"load average {os.getloadavg()[0]:.1f}")
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["add_cpu_s"].items())
        print(f"    CPU seconds in those {r['add_s']:.2f} s: {cpu} (the sink stands in for the provider: "
              "its share is the provider's checking of every registration)")
        total = sum(r["after_kib"].values())
        per = (total - base["total_kib"]) * 1024 / (n + add - 1)
        print(f"  the fleet of {n + add} after it: private RSS {total} KiB {r['after_kib']}; {per:.0f} bytes/identity "
              f"above the fleet of 1 (target <= 1024)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dirs", type=int, default=200, help="per-identity directories measured for the floor")
    ap.add_argument("--running", type=int, default=90_000, help="identities of the running fleet (0: skip; "
                    "with --add at most 100,000 in all: the sink provider's limit per connection)")
    ap.add_argument("--add", type=int, default=10_000, help="identities added to it while running")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        bench_init(args.count, args.repeat, args.dirs, work)
        if args.running:
            bench_running(args.running, args.add, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
