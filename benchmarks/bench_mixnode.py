"""Unwrap+forward throughput of ONE mixnode process, fed over loopback, against the X25519 floor.

    .venv/bin/python benchmarks/bench_mixnode.py [--packets 15000] [--runs 5]

Three processes per run: a feeder writes pre-built, pre-framed packets (zero delays) as fast as
the socket takes them; the mixnode (`python -m loopix.testnet.mixnode`, fresh per run so its replay
filter is empty) unwraps and forwards them to its next hop; a sink counts what arrives and times
first to last packet; the mixnode's CPU time (from /proc) gives a second rate, per CPU-second,
which stays meaningful when other work shares the machine. The floor is 1 / (2 x one X25519 variable-base multiplication), the two an
unwrap cannot avoid (shared secret, blinded alpha), timed through libsodium in this same run. The
C core's batch unwrap alone (no sockets, no Python per packet) is printed too, which splits the
gap to the floor between the C core and the node around it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FRAME_HEADER = 3


def x25519_seconds(iterations: int = 2000, clock=time.perf_counter) -> float:
    """Time of one `crypto_scalarmult` (variable base) through libsodium: the best of 7 rounds,
    so that a neighbour stealing CPU (this runs in VMs) lowers the floor, not raises it."""
    from loopix.sphinx import _sphinx_c

    ffi, lib = _sphinx_c.ffi, _sphinx_c.lib
    q = ffi.new("unsigned char[32]")
    n = ffi.new("unsigned char[32]", os.urandom(32))
    p = ffi.new("unsigned char[32]")
    lib.crypto_scalarmult_base(p, n)
    samples = []
    for _ in range(7):
        t = clock()
        for _ in range(iterations):
            lib.crypto_scalarmult(q, n, p)
        samples.append((clock() - t) / iterations)
    return min(samples)


def build_packets(count: int, mix_public: bytes, mix_port: int, sink_port: int) -> list[bytes]:
    from loopix.sphinx import Hop, PacketBuilder, keypair
    from loopix.wire.address import encode_node_address

    _, sink_public = keypair()
    route = [
        Hop(mix_public, encode_node_address("127.0.0.1", mix_port)),
        Hop(sink_public, encode_node_address("127.0.0.1", sink_port)),
    ]
    builder = PacketBuilder(256)
    size = builder.packet_size
    out = []
    buf = bytearray(256 * size)
    for start in range(0, count, 256):
        n = min(256, count - start)
        for i in range(n):
            builder.set_packet(i, route, bytes(32), b"benchmark", [0, 0])
        assert builder.build(n, buf) == n
        out += [bytes(buf[i * size : (i + 1) * size]) for i in range(n)]
    return out


def c_unwrap_seconds(secret: bytes, packets: list[bytes], clock=time.perf_counter, batch_size: int = 128,
                     passes: int = 3, best: bool = True) -> float:
    """Per-packet time of the C batch unwrap alone, in batches of `batch_size` (the node's default
    batch) over 2,048 packets: the best of `passes` passes, or (best=False) their mean, which is
    what a node's CPU over a whole run is comparable with."""
    from loopix.sphinx import PacketProcessor

    size = len(packets[0])
    some = packets[:2048]
    proc = PacketProcessor(secret, batch_size)
    data, out = b"".join(some), bytearray(batch_size * size)
    view = memoryview(data)
    samples = []
    for _ in range(passes):
        t = clock()
        for start in range(0, len(some), batch_size):
            n = min(batch_size, len(some) - start)
            proc.process(view[start * size : (start + n) * size], n, size, out)
        samples.append((clock() - t) / len(some))
    return min(samples) if best else statistics.fmean(samples)


# --- roles run as their own processes ------------------------------------------------------------


def role_sink(port: int, expect: int, packet_size: int, idle: float) -> None:
    """Count frames; print {"count", "seconds"} (first to last packet) and exit."""
    frame = FRAME_HEADER + packet_size
    srv = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(idle)
    total, first, last = 0, None, None
    try:
        while total < expect * frame:
            data = conn.recv(1 << 20)
            if not data:
                break
            now = time.perf_counter()
            if first is None:
                first = now
            total += len(data)
            last = now
    except TimeoutError:
        pass
    count = total // frame
    seconds = (last - first) if first is not None and last is not None else 0.0
    print(json.dumps({"count": count, "seconds": seconds}), flush=True)


def role_feed(port: int, path: str) -> None:
    data = Path(path).read_bytes()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(60)
        s.recv(1)  # the mixnode never answers; wait until the benchmark kills us or it closes


# --- driver --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def _child_pid(pid: int, timeout: float = 10.0) -> int:
    """The one child of `pid` (the mixnode under py-spy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.02)
    raise RuntimeError("py-spy started no mixnode")


def _schedstat_seconds(pid: int) -> float:
    """Time the process's main thread ran on a CPU, from /proc schedstat (ns resolution, where /proc
    stat counts 10 ms ticks; the mixnode does its work on its main thread)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) * 1e-9


def _unwrap_seconds(port: int) -> float | None:
    """The node's own count of CPU spent in the batch unwrap (its Prometheus metric), or None for a
    build that does not report it."""
    import re
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    m = re.search(r"^loopix_node_unwrap_cpu_s(?:_total)?\{[^}]*\} ([0-9.e+-]+)$", text, re.M)
    return float(m[1]) if m else None


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    user, system = _cpu_split(pid)
    return user + system


def _cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, from /proc (Linux): the kernel's share is the socket work."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def one_run(key_file: Path, mix_port: int, sink_port: int, frames: Path, count: int, size: int,
            profile: str | None = None, python: str = sys.executable, metrics_port: int | None = None):
    me = [sys.executable, __file__]
    spy = [str(Path(sys.executable).with_name("py-spy")), "record", "--native", "-r", "250", "-f", "raw",
           "-o", profile, "--"] if profile else []
    sink = subprocess.Popen(
        [*me, "--role", "sink", "--port", str(sink_port), "--expect", str(count),
         "--packet-size", str(size)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    mix = subprocess.Popen(
        [*spy, python, "-m", "loopix.testnet.mixnode", "--port", str(mix_port), "--layer", "1",
         "--key-file", str(key_file),
         *(["--prometheus-port", str(metrics_port)] if metrics_port else [])],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    feed = None
    try:
        assert sink.stdout is not None
        assert sink.stdout.readline().strip() == "ready"
        _wait_port(mix_port)
        mix_pid = _child_pid(mix.pid) if spy else mix.pid
        _, sys0 = _cpu_split(mix_pid)
        cpu0 = _schedstat_seconds(mix_pid)
        feed = subprocess.Popen(
            [*me, "--role", "feed", "--port", str(mix_port), "--file", str(frames)]
        )
        result = json.loads(sink.stdout.readline())
        _, sys1 = _cpu_split(mix_pid)
        result["cpu"] = _schedstat_seconds(mix_pid) - cpu0
        result["system"] = sys1 - sys0
        result["unwrap"] = _unwrap_seconds(metrics_port) if metrics_port else None
    finally:
        for p in (feed, mix, sink):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT) if p is mix and spy else p.terminate()
        for p in (feed, mix, sink):
            if p is not None:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=15000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.7)
    parser.add_argument("--baseline-python", metavar="PYTHON",
                        help="also run the mixnode under this interpreter (another checkout's build), alternating")
    parser.add_argument("--py-spy", metavar="FILE", help="record the mixnode of the last run with py-spy "
                        "(collapsed stacks to FILE; its CPU figures then include py-spy's sampling)")
    parser.add_argument("--role", choices=["sink", "feed"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--packet-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "sink":
        role_sink(args.port, args.expect, args.packet_size, idle=3.0)
        return 0
    if args.role == "feed":
        role_feed(args.port, args.file)
        return 0

    from loopix import keys
    from loopix.wire.framing import encode_frame

    with tempfile.TemporaryDirectory(prefix="bench-mixnode-") as tmp:
        pair = keys.generate_keypair()
        keys.save_keypair(pair, tmp)
        key_file = Path(tmp) / keys.PRIVATE_KEY_FILE
        mix_port, sink_port = _free_port(), _free_port()
        t = time.perf_counter()
        packets = build_packets(args.packets, pair.public, mix_port, sink_port)
        size = len(packets[0])
        frames = Path(tmp) / "frames.bin"
        frames.write_bytes(b"".join(encode_frame(p) for p in packets))
        print(f"built {len(packets)} packets of {size} bytes in {time.perf_counter() - t:.1f}s")
        rates, floors, c_rates, cpu_rates, cpu_floors, c_cpu_rates = [], [], [], [], [], []
        base_cpu_rates: list[float] = []
        system_us: list[float] = []
        shares: list[float] = []  # the unwrap's share of the node's CPU, by the node's own count
        versus: list[float] = []  # this build's CPU per packet over the baseline's, adjacent runs
        for run in range(args.runs):
            floors.append(1 / (2 * x25519_seconds()))
            cpu_floors.append(1 / (2 * x25519_seconds(clock=time.process_time)))
            c_rates.append(1 / c_unwrap_seconds(pair.secret, packets))
            c_before = c_unwrap_seconds(pair.secret, packets, clock=time.process_time, passes=2, best=False)
            profile = args.py_spy if args.py_spy and run == args.runs - 1 else None
            # this build's mixnode and (with --baseline-python) the baseline's, order alternating
            b = None
            if args.baseline_python and run % 2 == 1:
                b = one_run(key_file, mix_port, sink_port, frames, len(packets), size, None, args.baseline_python)
            r = one_run(key_file, mix_port, sink_port, frames, len(packets), size, profile,
                        metrics_port=_free_port())
            if args.baseline_python and run % 2 == 0:
                b = one_run(key_file, mix_port, sink_port, frames, len(packets), size, None, args.baseline_python)
            # the C alone around the nodes' runs, averaged like a node's CPU over its run
            c_after = c_unwrap_seconds(pair.secret, packets, clock=time.process_time, passes=2, best=False)
            c_cpu_rates.append(2 / (c_before + c_after))
            if r["unwrap"] is not None and r["cpu"] > 0:
                shares.append(r["unwrap"] / r["cpu"])
            if b is not None:
                base_cpu_rates.append(b["count"] / b["cpu"] if b["cpu"] > 0 else 0.0)
                if b["cpu"] > 0 and b["count"] and r["count"]:
                    versus.append((r["cpu"] / r["count"]) / (b["cpu"] / b["count"]))
                print(f"  baseline mixnode: {base_cpu_rates[-1]:,.0f} per CPU-second, "
                      f"node/C {base_cpu_rates[-1] / c_cpu_rates[-1]:.2f}")
            rate = (r["count"] - 1) / r["seconds"] if r["seconds"] > 0 else 0.0
            rates.append(rate)
            cpu_rates.append(r["count"] / r["cpu"] if r["cpu"] > 0 else 0.0)
            system_us.append(r["system"] / max(r["count"], 1) * 1e6)
            print(f"run {run + 1}: {r['count']} forwarded in {r['seconds']:.2f}s = {rate:,.0f} pkt/s"
                  f" wall, {cpu_rates[-1]:,.0f} per mixnode CPU-second (of which kernel {system_us[-1]:.1f} us/packet)"
                  f" (floor {floors[-1]:,.0f}; C batch unwrap {c_cpu_rates[-1]:,.0f} per CPU-second,"
                  f" node/C {cpu_rates[-1] / c_cpu_rates[-1]:.2f}; load {os.getloadavg()[0]:.2f})")  # fmt: skip
    pps, floor = statistics.median(rates), statistics.median(floors)
    c_alone = statistics.median(c_rates)
    ratio = pps / floor
    print(f"mixnode: {pps:,.0f} packets/s (median of {args.runs})")
    print(f"floor 1/(2*X25519): {floor:,.0f} packets/s")
    print(f"C batch unwrap alone: {c_alone:,.0f} packets/s ({c_alone / floor:.2f} of the floor)")
    print(
        f"ratio: {ratio:.2f} of the floor (target {args.target}); node/C-alone {pps / c_alone:.2f}"
    )
    cpu_pps, cpu_floor = statistics.median(cpu_rates), statistics.median(cpu_floors)
    cpu_ratio = cpu_pps / cpu_floor
    print(
        f"per CPU-second (robust to other load on the machine): mixnode {cpu_pps:,.0f}, "
        f"floor {cpu_floor:,.0f}, ratio {cpu_ratio:.2f}"
    )
    per_run = [n / c for n, c in zip(cpu_rates, c_cpu_rates, strict=True)]
    print(
        f"per CPU-second, node vs the C batch unwrap alone (batches of 128, as the node, same run): mixnode {cpu_pps:,.0f}, "
        f"C {statistics.median(c_cpu_rates):,.0f}; per run {[round(x, 3) for x in per_run]}, "
        f"median {statistics.median(per_run):.3f} (target >= 0.95); load {os.getloadavg()[0]:.2f}"
    )
    print(f"the mixnode's kernel time (socket reads and writes): {statistics.median(system_us):.1f} us/packet "
          f"(median), against {1e6 / statistics.median(c_cpu_rates):.1f} us for the C unwrap")
    if base_cpu_rates:
        base = [n / c for n, c in zip(base_cpu_rates, c_cpu_rates, strict=True)]
        print(f"baseline mixnode ({args.baseline_python}) vs the same C runs: per run "
              f"{[round(x, 3) for x in base]}, median {statistics.median(base):.3f}")
    if versus:
        print(f"side by side, this mixnode's CPU per packet / the baseline's (adjacent runs): per run "
              f"{[round(x, 3) for x in versus]}, median {statistics.median(versus):.3f}")
    if shares:
        print(f"the node's own count (the same CPU at the same moment, immune to the machine's drift): the "
              f"batch unwrap took {[round(x, 3) for x in shares]} of its CPU, median {statistics.median(shares):.3f}; "
              f"that is node/C if the unwrap costs in the node what it costs alone")
    return 0 if max(ratio, cpu_ratio) >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
