"""What keeping the replay filter in a file (`--replay-file`, on in the testnet) costs a node.

    .venv/bin/python benchmarks/bench_replay_file.py [--capacity 100000] [--rounds 5]

A save happens every 10 s and at shutdown: the snapshot (`ForwardEngine.replay_dump`, two copies
out of the C engine's tag logs) runs on the node's event loop, so it is the time the node stops
forwarding; the write and fsync run in a thread. Both are timed on a full filter (2 x capacity tags,
the most it holds), median of `--rounds`, beside a `seen` check measured in the same run, through
cffi one tag a call (the node's own check runs inside the C step) and, side by side, the Python
statement of the filter (`decisions.ReplayFilter`, two sets) with a snapshot walked out of its sets.
Wall time and this process's CPU time are both printed: on a loaded machine the wall time is the
CPU time stretched by the other work, which is what a node on that machine would see.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from loopix.fileio import write_private_file
from loopix.testnet.decisions import ReplayFilter
from loopix.testnet.engine import ForwardEngine


def _engine(capacity: int) -> ForwardEngine:
    return ForwardEngine(os.urandom(32), batch=1, replay_capacity=capacity, max_queue=0, max_delay=1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    key = os.urandom(32)
    replay = _engine(args.capacity)
    tags = [os.urandom(32) for _ in range(2 * args.capacity - 1)]
    t = time.process_time()
    for tag in tags:
        replay.replay_seen(tag)
    seen_us = (time.process_time() - t) / len(tags) * 1e6
    before = ReplayFilter(args.capacity)  # side by side: the filter as Python sets
    t = time.process_time()
    for tag in tags:
        before.seen(tag)
    sets_only_us = (time.process_time() - t) / len(tags) * 1e6
    dumps, dump_cpu, walks, writes, loads = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        path = Path(tmp) / "replay.bin"
        for _ in range(args.rounds):
            t, c = time.perf_counter(), time.process_time()
            data = replay.replay_dump(key)
            dumps.append(time.perf_counter() - t)
            dump_cpu.append(time.process_time() - c)
            c = time.process_time()  # side by side: the snapshot as a walk over the sets
            walked = key + b"".join(t for t in [*before._previous, *before._current] if len(t) == 32)
            walks.append(time.process_time() - c)
            assert len(walked) + 5 == len(data)
            t = time.perf_counter()
            write_private_file(path, data)
            writes.append(time.perf_counter() - t)
            t = time.perf_counter()
            _engine(args.capacity).replay_load(path.read_bytes(), key)
            loads.append(time.perf_counter() - t)
    load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    dump_ms = statistics.median(dump_cpu) * 1e3
    print(f"replay filter of {replay.replay_count:,} tags ({len(data) / 1e6:.1f} MB file); {load}")
    print(f"  snapshot on the event loop: {dump_ms:.1f} ms of CPU per save ({statistics.median(dumps) * 1e3:.0f} ms "
          f"wall; median of {args.rounds}), every 10 s = {dump_ms / 100:.2f} % of a CPU")
    print(f"  the same snapshot as a walk over Python sets: "
          f"{statistics.median(walks) * 1e3:.1f} ms of CPU")
    print(f"  write + fsync in a thread: {statistics.median(writes) * 1e3:.1f} ms; "
          f"load at start: {statistics.median(loads) * 1e3:.0f} ms")
    print(f"  per packet: `seen` {seen_us:.2f} us of CPU through cffi, one tag a call (Python sets: "
          f"{sets_only_us:.2f} us); one snapshot costs as much as {dump_ms * 1e3 / seen_us:,.0f} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
