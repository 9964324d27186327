"""Two mixnode builds and the C batch unwrap alone, run at the same time on the same packets.

    .venv/bin/python benchmarks/bench_mixnode_side.py --baseline-python OTHER/.venv/bin/python
        [--packets 20000] [--runs 5]

bench_mixnode.py runs one mixnode at a time and the C unwrap before and after it; on a VM whose
speed moves by ±10 % within seconds that comparison moves as much from run to run as the effect it
looks for. Here everything that is compared runs in the same seconds: this build's mixnode and the
baseline's, each fed the same pre-built packets (zero delays) by its own feeder and forwarding to
one sink, and a third process that unwraps the same packets with the C batch call (batches of 128,
as the nodes) for as long as the nodes run. Each process's CPU time comes from /proc schedstat (ns);
per packet, for each: node/C = (the unwrap's CPU per packet alone) / (the node's CPU per packet),
the issue's "unwrap-and-forward rate as a fraction of the C batch unwrap rate", and the two builds'
ratio. The machine is shared three (and more) ways while they run, as it would be anyway; what one
process loses to the others' cache traffic the others lose too. Medians of the per-run ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mixnode import _free_port, _schedstat_seconds, _wait_port, build_packets, role_feed

FRAME_HEADER = 3


def role_sink(port: int, links: int, expect: int, packet_size: int, idle: float) -> None:
    """Count frames on `links` connections; print the count per connection and exit."""
    frame = FRAME_HEADER + packet_size
    srv = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    counts: dict[int, int] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events = sel.select(idle)
        if not events:
            break
        for key, _ in events:
            if key.fileobj is srv:
                conn, _ = srv.accept()
                sel.register(conn, selectors.EVENT_READ)
                counts[conn.fileno()] = 0
                continue
            data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
            if not data:
                sel.unregister(key.fileobj)
                continue
            counts[key.fileobj.fileno()] += len(data)  # type: ignore[union-attr]
        if len(counts) == links and all(n >= expect * frame for n in counts.values()):
            break
    print(json.dumps(sorted(n // frame for n in counts.values())), flush=True)


def role_unwrap(secret_hex: str, path: str, size: int) -> None:
    """Unwrap the packets in batches of 128, round and round, until SIGTERM; print count and CPU."""
    from loopix.sphinx import PacketProcessor

    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    data = Path(path).read_bytes()
    frame = FRAME_HEADER + size
    packets = b"".join(data[i + FRAME_HEADER : i + frame] for i in range(0, min(len(data), 2048 * frame), frame))
    n = len(packets) // size
    proc = PacketProcessor(bytes.fromhex(secret_hex), 128)
    out = bytearray(128 * size)
    view = memoryview(packets)
    print("ready", flush=True)
    count, cpu0 = 0, time.thread_time()
    while not stop:
        for start in range(0, n - 127, 128):
            proc.process(view[start * size : (start + 128) * size], 128, size, out)
            count += 128
            if stop:
                break
    print(json.dumps({"count": count, "cpu": time.thread_time() - cpu0}), flush=True)


def one_run(builds: dict[str, str], key_file: Path, secret: bytes, frames: Path, count: int, size: int) -> dict:
    me = [sys.executable, __file__]
    sink_port = int(frames.with_suffix(".sink").read_text())
    procs: list[subprocess.Popen] = []
    try:
        sink = subprocess.Popen([*me, "--role", "sink", "--port", str(sink_port), "--links", str(len(builds)),
                                 "--expect", str(count), "--packet-size", str(size)],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        procs.append(sink)
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        mixes = {}
        for name, python in builds.items():
            port = _free_port()
            mix = subprocess.Popen([python, "-m", "loopix.testnet.mixnode", "--port", str(port), "--layer", "1",
                                    "--key-file", str(key_file)], stdout=subprocess.DEVNULL)  # fmt: skip
            procs.append(mix)
            _wait_port(port)
            mixes[name] = (mix, port)
        unwrap = subprocess.Popen([*me, "--role", "unwrap", "--secret", secret.hex(), "--file", str(frames),
                                   "--packet-size", str(size)], stdout=subprocess.PIPE, text=True)  # fmt: skip
        procs.append(unwrap)
        assert unwrap.stdout is not None and unwrap.stdout.readline().strip() == "ready"
        cpu0 = {name: _schedstat_seconds(mix.pid) for name, (mix, _p) in mixes.items()}
        for _name, (_mix, port) in mixes.items():
            procs.append(subprocess.Popen([*me, "--role", "feed", "--port", str(port), "--file", str(frames)]))
        forwarded = json.loads(sink.stdout.readline())
        cpu = {name: _schedstat_seconds(mix.pid) - cpu0[name] for name, (mix, _p) in mixes.items()}
        unwrap.send_signal(signal.SIGTERM)
        alone = json.loads(unwrap.stdout.readline())
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return {"forwarded": forwarded, "cpu": cpu, "alone_us": alone["cpu"] / alone["count"] * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline-python", metavar="PYTHON", help="the other build's interpreter")
    parser.add_argument("--role", choices=["sink", "feed", "unwrap"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--links", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--packet-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "sink":
        role_sink(args.port, args.links, args.expect, args.packet_size, idle=5.0)
        return 0
    if args.role == "feed":
        role_feed(args.port, args.file)
        return 0
    if args.role == "unwrap":
        role_unwrap(args.secret, args.file, args.packet_size)
        return 0

    from loopix import keys
    from loopix.wire.framing import encode_frame

    builds = {"this": sys.executable}
    if args.baseline_python:
        builds["baseline"] = args.baseline_python
    with tempfile.TemporaryDirectory(prefix="bench-mixnode-side-") as tmp:
        pair = keys.generate_keypair()
        keys.save_keypair(pair, tmp)
        key_file = Path(tmp) / keys.PRIVATE_KEY_FILE
        sink_port = _free_port()
        packets = build_packets(args.packets, pair.public, _free_port(), sink_port)
        size = len(packets[0])
        frames = Path(tmp) / "frames.bin"
        frames.write_bytes(b"".join(encode_frame(p) for p in packets))
        frames.with_suffix(".sink").write_text(str(sink_port))
        ratios: dict[str, list[float]] = {name: [] for name in builds}
        versus: list[float] = []
        for run in range(args.runs):
            r = one_run(builds, key_file, pair.secret, frames, len(packets), size)
            per = {name: r["cpu"][name] / args.packets * 1e6 for name in builds}
            for name in builds:
                ratios[name].append(r["alone_us"] / per[name])
            if "baseline" in per:
                versus.append(per["this"] / per["baseline"])
            print(f"run {run + 1}: forwarded {r['forwarded']}; CPU per packet: "
                  + ", ".join(f"{name} {us:.1f} us" for name, us in per.items())
                  + f", C unwrap alone {r['alone_us']:.1f} us; node/C "
                  + ", ".join(f"{name} {ratios[name][-1]:.3f}" for name in builds)
                  + f"; load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    for name, values in ratios.items():
        print(f"node/C {name}: per run {[round(v, 3) for v in values]}, median {statistics.median(values):.3f}"
              " (target >= 0.95)")
    if versus:
        print(f"this build's CPU per packet / the baseline's: per run {[round(v, 3) for v in versus]}, "
              f"median {statistics.median(versus):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
