"""Mixed hostile inputs through every network-side decoder: crashes, hangs, tracebacks and RSS.

    .venv/bin/python benchmarks/bench_hostile_inputs.py [--inputs 1000000] [--seed N]

The targets are tests/fuzz/fuzz.py's network-side ones (provider protocol in every state, mixnode
framing, directory bodies, socket API), plus topology parsing. Inputs are the kept corpus mutated
(byte flips, truncations, splices, repeats) and random bytes, drawn round-robin across targets.
A target may only return or raise nothing: any exception is a finding (printed with its input, hex).
The slowest single input is reported as the "hang" figure, in CPU time (a loaded machine's
preemption is not a hang) and in wall time; RSS is read from /proc before and after.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

import fuzz  # noqa: E402

TARGETS = ["provider", "framing", "directory", "socketapi", "topology"]
HANG_S = 1.0


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    """Fuzzing inputs only (not anything an adversary sees): a seeded PRNG keeps runs reproducible."""
    base = bytearray(rng.choice(seeds)) if seeds and rng.random() < 0.9 else bytearray(os.urandom(rng.randint(0, 64)))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and base:
            base[rng.randrange(len(base))] ^= 1 << rng.randrange(8)
        elif op == 1 and base:
            del base[rng.randrange(len(base)) :]
        elif op == 2:
            base[rng.randint(0, len(base)) : rng.randint(0, len(base))] = os.urandom(rng.randint(1, 16))
        elif op == 3 and base:
            i = rng.randrange(len(base))
            base[i:i] = base[i : i + rng.randint(1, 8)] * rng.randint(1, 64)
        elif op == 4 and base:
            base[rng.randrange(len(base))] = rng.choice((0, 0xFF, 0x7F, 0x80, ord("["), ord("{")))
    return bytes(base)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    targets = [t for t in args.targets.split(",") if t]
    seeds = {t: [f.read_bytes() for f in sorted((fuzz.CORPUS / t).glob("*"))] for t in targets}
    counts = dict.fromkeys(targets, 0)
    findings: list[tuple[str, bytes, str]] = []
    slowest = (0.0, "", b"")
    slowest_wall = 0.0
    rss0 = rss_mb()
    t0 = time.monotonic()
    for i in range(args.inputs):
        name = targets[i % len(targets)]
        data = mutate(rng, seeds[name])
        start = time.perf_counter()
        cpu = time.thread_time()
        try:
            fuzz.TARGETS[name](data)
        except Exception as exc:  # a finding: the target must never raise
            findings.append((name, data, f"{type(exc).__name__}: {exc}"))
        slowest_wall = max(slowest_wall, time.perf_counter() - start)
        took = time.thread_time() - cpu
        if took > slowest[0]:
            slowest = (took, name, data)
        counts[name] += 1
    elapsed = time.monotonic() - t0
    rss1 = rss_mb()
    print(f"hostile inputs: {args.inputs} in {elapsed:.1f}s ({args.inputs / elapsed:,.0f}/s), seed {args.seed}")
    for name in targets:
        print(f"  {name:10s} {counts[name]:>9,} inputs")
    print(f"  crashes/tracebacks: {len(findings)}")
    print(f"  hangs (> {HANG_S:.0f}s CPU per input): {int(slowest[0] > HANG_S)}; slowest input {slowest[0] * 1e3:.1f} ms CPU"
          f" ({slowest[1]}, {len(slowest[2])} bytes, starts {slowest[2][:24]!r}); slowest wall time {slowest_wall * 1e3:.1f} ms")
    print(f"  RSS before {rss0:.0f} MB, after {rss1:.0f} MB (growth {rss1 - rss0:+.0f} MB)")
    for name, data, what in findings[:5]:
        print(f"  FINDING {name}: {what}: {data[:200].hex()}")
    return 1 if findings or slowest[0] > HANG_S else 0


if __name__ == "__main__":
    sys.exit(main())
