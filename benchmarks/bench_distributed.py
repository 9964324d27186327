"""Distributed load tests on Locust: what the Locust layer costs, and what two workers achieve.

    .venv/bin/python benchmarks/bench_distributed.py [--loops 5000] [--seconds 20]
        [--identities 300] [--agg-seconds 20] [--capacity-identities 1000 --capacity-rate 12]
        [--dist-first] [--skip-locust-layer] [--skip-aggregate] [--skip-capacity] [--keep DIR]

1. Locust layer: a real master and one real Locust worker on 127.0.0.1; the worker's child is
   benchmarks/_replay_child.py, which writes the frames of a run at `--loops` loops/s (merged
   histograms, rows, sampled RTTs) without building packets, so the figure is the worker's own
   process (gevent, Locust events, shipping to the master) and not the network's. CPU from /proc
   over the steady part of the run. Target: worker <= 5 % of one core at 5,000 loops/s.
2. Aggregate: one plain `loopix-client loadtest` and a master with two workers (each its own
   child runtime, one packet worker each; the plain run gets two) with the same total identities
   against a fresh embedded testnet each; rates, RTT and lateness from each run's summary.json.
3. Client capacity: the same pair against a sink that discards every packet (SinkNet), at a rate
   meant to saturate the clients rather than the network.

The machine is shared: the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def spawn(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with log.open("w") as f:
        return subprocess.Popen([sys.executable, *args], stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})


def wait_for(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {text!r} in {path}:\n{path.read_text()[-2000:]}")
        time.sleep(0.1)


def locust_layer(tmp: Path, loops: int, seconds: int, event_budget: float) -> dict:
    port = free_port()
    identities = loops // 10
    out = tmp / "replay"
    master = spawn(["-m", "loopix.loadtest.distributed", "master", "--port", str(port), "--bind-host",
                    "127.0.0.1", "--expect-workers", "1", "--directory", "http://127.0.0.1:9/api/presence/topology",
                    "--identities", str(identities), "--loop-rate", "10", "--payload-rate", "2", "--drop-rate", "1",
                    "--duration", f"{seconds}s", "--grace", "2s", "--out", str(out),
                    "--event-budget", str(event_budget)], tmp / "replay-master.log")
    worker = spawn(["-m", "loopix.loadtest.distributed", "worker", "--master-host", "127.0.0.1", "--port", str(port)],
                   tmp / "replay-worker.log", env={"LOOPIX_DISTRIBUTED_CHILD": str(HERE / "_replay_child.py")})
    try:
        wait_for(tmp / "replay-worker.log", "share 1 of 1", 60)
        # idle floor: a connected worker before its child's first frames would be too short a
        # window; the steady part of the run starts a few seconds in and ends before the drain
        time.sleep(3)
        w0, m0, t0 = cpu_seconds(worker.pid), cpu_seconds(master.pid), time.monotonic()
        time.sleep(max(1, seconds - 4))
        w1, m1, t1 = cpu_seconds(worker.pid), cpu_seconds(master.pid), time.monotonic()
        load = loadavg()
        master.wait(seconds + 120)
        worker.wait(60)
    finally:
        for p in (master, worker):
            if p.poll() is None:
                p.kill()
                p.wait()
    summary = json.loads((out / "summary.json").read_text())
    return {"worker_cpu": (w1 - w0) / (t1 - t0), "master_cpu": (m1 - m0) / (t1 - t0),
            "window_s": t1 - t0, "loop_rate": summary["rates"]["loop"],
            "loops_back": summary["loops"]["back"], "rtt_count": summary["rtt"]["count"], "load": load,
            "events": _locust_requests(tmp / "replay-master.log")}


def _locust_requests(log: Path) -> str:
    """The last 'loop RTT' row of Locust's own final table: requests as Locust counted them."""
    rows = [ln for ln in log.read_text().splitlines()
            if ln.startswith("loopix") and "loop RTT" in ln and ln.split("|")[0].rstrip().endswith("%)")]
    if not rows:
        return "none"
    left = rows[-1].split("|")[0].split()
    return f"{' '.join(left[1:-2])}: {left[-2]} requests, {left[-1]} failed"


def _testnet():
    from loopix.testnet.launcher import Testnet

    return Testnet(layers=3, mixnodes_per_layer=2, providers=2, mean_hop_delay_ms=10.0, presence_interval=1.0)


def run_plain(tmp: Path, url: str, name: str, identities: int, seconds: int, rates: list[str]) -> str:
    before = loadavg()
    plain = spawn(["-m", "loopix", "loadtest", "--directory", url, "--identities", str(identities),
                   "--duration", f"{seconds}s", "--workers", "2", "--out", str(tmp / name), "--grace", "2",
                   *rates], tmp / f"{name}.log")
    try:
        plain.wait(seconds + 300)
    finally:
        if plain.poll() is None:
            plain.kill()
            plain.wait()
    return f"{before} -> {loadavg()}"


def run_distributed(tmp: Path, url: str, name: str, identities: int, seconds: int, rates: list[str]) -> str:
    port = free_port()
    before = loadavg()
    master = spawn(["-m", "loopix.loadtest.distributed", "master", "--port", str(port), "--bind-host",
                    "127.0.0.1", "--expect-workers", "2", "--directory", url, "--identities",
                    str(identities), "--duration", f"{seconds}s", "--workers", "1", "--out", str(tmp / name),
                    "--grace", "2s", *rates], tmp / f"{name}-master.log")
    workers = [spawn(["-m", "loopix.loadtest.distributed", "worker", "--master-host", "127.0.0.1",
                      "--port", str(port)], tmp / f"{name}-w{i}.log") for i in (1, 2)]
    try:
        master.wait(seconds + 300)
        for w in workers:
            w.wait(60)
    finally:
        for p in (master, *workers):
            if p.poll() is None:
                p.kill()
                p.wait()
    return f"{before} -> {loadavg()}"


def _on_testnet(run, *args) -> str:
    with _testnet() as net:
        return run(args[0], net.topology_url, *args[1:])


def _on_sink(run, *args) -> str:
    import asyncio

    from loopix.testnet.sink import SinkNet

    async def go() -> str:
        async with SinkNet() as net:  # its directory is served by this loop: run in a thread
            return await asyncio.to_thread(run, args[0], net.topology_url, *args[1:])

    return asyncio.run(go())


def compare(tmp: Path, where: str, identities: int, seconds: int, rates: list[str], dist_first: bool) -> dict:
    """A plain run and a two-worker run, each on a fresh network (`where`: testnet or sink)."""
    on = _on_testnet if where == "testnet" else _on_sink
    out: dict = {}
    order = ("dist", "plain") if dist_first else ("plain", "dist")
    for kind in order:
        name = f"{where}-{kind}"
        run = run_distributed if kind == "dist" else run_plain
        out[f"{kind}_load"] = on(run, tmp, name, identities, seconds, rates)
        path = tmp / name / "summary.json"
        if not path.exists():
            logs = "".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp.glob(f"{name}*.log")))
            raise SystemExit(f"{name} run wrote no summary:\n{logs}")
        out[kind] = json.loads(path.read_text())
    return out


def row(name: str, s: dict) -> str:
    sent = sum(s["rates"][k] for k in ("payload", "loop", "drop"))
    return (f"{name:<22} {sent:9.1f} {s['rates']['loop_back']:9.1f} {s['rtt']['p50_ms'] or 0:8.2f} "
            f"{s['rtt']['p99_ms'] or 0:8.2f} {s['lateness']['p99_ms'] or 0:9.3f} "
            f"{(s['loops']['loss'] or 0) * 100:7.3f}% {s['duration_s']:7.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loops", type=int, default=5000, help="loops/s for the Locust-layer run")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--identities", type=int, default=300, help="total identities, aggregate runs")
    ap.add_argument("--agg-seconds", type=int, default=20)
    ap.add_argument("--skip-aggregate", action="store_true")
    ap.add_argument("--skip-locust-layer", action="store_true")
    ap.add_argument("--keep", metavar="DIR", help="keep the runs' logs and reports in DIR")
    ap.add_argument("--dist-first", action="store_true", help="aggregate: the distributed run first")
    ap.add_argument("--capacity-identities", type=int, default=1000)
    ap.add_argument("--capacity-rate", type=float, default=12.0, help="packets/s per identity, sink runs")
    ap.add_argument("--skip-capacity", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as d:
        tmp = Path(args.keep or d)
        tmp.mkdir(parents=True, exist_ok=True)
        print(f"cores {os.cpu_count()}, load average at start {loadavg()}")
        if not args.skip_locust_layer:
            print_locust_layer(tmp, args.loops, args.seconds)
        if not args.skip_aggregate:
            print_aggregate(tmp, args.identities, args.agg_seconds, args.dist_first)
        if not args.skip_capacity:
            print_capacity(tmp, args.capacity_identities, args.capacity_rate, args.agg_seconds, args.dist_first)


def print_locust_layer(tmp: Path, loops: int, seconds: int) -> None:
    print(f"\n1. Locust layer at {loops} loops/s offered (replayed frames), CPU in % of one core:")
    for budget, what in ((100.0, "sampled, default budget 100 events/s"),
                         (float(loops), "every loop an event (budget = loop rate)")):
        r = locust_layer(tmp, loops, seconds, budget)
        print(f"   {what}: worker {r['worker_cpu'] * 100:.2f} %, master {r['master_cpu'] * 100:.2f} % "
              f"(window {r['window_s']:.1f} s, load {r['load']}; merged loop rate {r['loop_rate']:.0f}/s, "
              f"{r['rtt_count']} RTT samples merged; Locust's table: {r['events']})")
    print("   target: worker <= 5 % at 5,000 loops/s")


def print_comparison(title: str, a: dict) -> None:
    print(title)
    print(f"{'':<22} {'sent/s':>9} {'back/s':>9} {'rtt p50':>8} {'rtt p99':>8} {'late p99':>9} "
          f"{'loss':>8} {'load s':>7}")
    print(row("plain loadtest", a["plain"]) + f"   load {a['plain_load']}")
    print(row("2 Locust workers", a["dist"]) + f"   load {a['dist_load']}")
    ps = sum(a["plain"]["rates"][k] for k in ("payload", "loop", "drop"))
    ds = sum(a["dist"]["rates"][k] for k in ("payload", "loop", "drop"))
    print(f"   ratio 2 workers / plain, packets sent per second: {ds / ps:.3f}")


def print_aggregate(tmp: Path, identities: int, seconds: int, dist_first: bool) -> None:
    first = "distributed" if dist_first else "plain"
    rates = ["--payload-rate", "2", "--loop-rate", "1", "--drop-rate", "1", "--mean-hop-delay-ms", "10"]
    print_comparison(
        f"\n2. Aggregate, {identities} identities x (2 payload + 1 loop + 1 drop)/s = {identities * 4} "
        f"packets/s offered, {seconds} s, a fresh embedded testnet for each run ({first} first):",
        compare(tmp, "testnet", identities, seconds, rates, dist_first))


def print_capacity(tmp: Path, identities: int, rate: float, seconds: int, dist_first: bool) -> None:
    first = "distributed" if dist_first else "plain"
    per = rate / 4
    rates = ["--payload-rate", f"{2 * per:g}", "--loop-rate", f"{per:g}", "--drop-rate", f"{per:g}",
             "--mean-hop-delay-ms", "10"]
    print_comparison(
        f"\n3. Client capacity: {identities} identities x {rate:g} packets/s = {identities * rate:g} packets/s "
        f"offered, {seconds} s, against a sink that discards everything (no loop comes back: loss is "
        f"100 % by design), {first} first:",
        compare(tmp, "sink", identities, seconds, rates, dist_first))


if __name__ == "__main__":
    main()
