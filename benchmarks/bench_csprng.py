"""The cost of drawing every observable value from the CSPRNG (docs/randomness.md), side by side with
the Mersenne Twister it replaced and with the C build of one packet, in one run.

    .venv/bin/python benchmarks/bench_csprng.py [--rounds 5] [--n 200000]

Per round, alternating: single draws (uniform, exponential) from `random.Random` and from `Csprng`;
the draws of one packet as the worker makes them (schedule gap + identity + stream, 3 mixnodes,
2 delays, drop-cover provider) plus its drop payload (2,048 bytes: a copy of one fixed payload, as
before, against fresh CSPRNG bytes); the same draws as the worker now makes them (the Poisson clock
drawing 256 events per C call, routes and delays of 32 packets per `lx_draw_routes` call); and the
bare C build of a 4-hop packet. Medians over rounds.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from loopix.sphinx._sphinx_c import ffi

from _pipeline import c_build_us
from loopix import sphinx
from loopix.client import control
from loopix.client.plan import ANY_PROVIDER
from loopix.client.plan import RouteTable as Routes
from loopix.client.schedule import PoissonClock, StreamRates
from loopix.csprng import Csprng

PAYLOAD = 2048


def per_call_ns(fn, n: int) -> float:
    t = time.perf_counter_ns()
    fn(n)
    return (time.perf_counter_ns() - t) / n


def packet_draws(rng, arena: bytearray, fill, n: int) -> None:
    """What the worker draws for n packets: 3 schedule draws, 3 mixnodes, 2 delays, 1 provider,
    and a drop payload into the arena."""
    layers = [list(range(4))] * 3
    providers = list(range(2))
    expo, rnd, choice = rng.expovariate, rng.random, rng.choice
    for _ in range(n):
        expo(5000.0)
        rnd()
        rnd()
        for layer in layers:
            choice(layer)
        expo(20.0)
        expo(20.0)
        choice(providers)
        fill(arena)


def bulk_draws(rng: Csprng, n: int) -> None:
    """The worker's draws for n packets: clock events from the C clock, routes and delays 32 at a
    time in C (3 layers of 4 mixnodes, 2 providers, drop cover: any provider)."""
    mixes = [control.MixNodeInfo(layer, sphinx.keypair()[1], bytes([layer, k]) + bytes(30))
             for layer in (1, 2, 3) for k in range(4)]
    provs = [control.ProviderInfo(sphinx.keypair()[1], bytes([9, k]) + bytes(30), "127.0.0.1", 1) for k in range(2)]
    routes = Routes(control.TopologyUpdate(mixes, provs), rng)
    clock = PoissonClock([StreamRates(15.0, 5.0, 5.0)] * 200, 0, rng=rng)
    builder = sphinx.PacketBuilder(32)
    last = ffi.new("uint32_t[]", [ANY_PROVIDER] * 32)
    nxt = clock.next
    for _ in range(n // 32):
        for _ in range(32):
            nxt()
        routes.draw(builder, 32, last, 50e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    mt, cs = random.Random(), Csprng()
    fixed = os.urandom(PAYLOAD)
    arena = bytearray(PAYLOAD)

    def copy_fixed(a):
        a[:PAYLOAD] = fixed

    def fresh(a):
        cs.fill(a, 0, PAYLOAD)

    rows: dict[str, list[float]] = {}
    tests = {
        "uniform, random.Random (ns)": lambda n: [mt.random() for _ in range(n)],
        "uniform, Csprng (ns)": lambda n: [cs.random() for _ in range(n)],
        "exponential, random.Random (ns)": lambda n: [mt.expovariate(3.0) for _ in range(n)],
        "exponential, Csprng (ns)": lambda n: [cs.expovariate(3.0) for _ in range(n)],
        "packet draws + fixed drop payload, random.Random (ns)": lambda n: packet_draws(mt, arena, copy_fixed, n),
        "packet draws + fresh drop payload, Csprng (ns)": lambda n: packet_draws(cs, arena, fresh, n),
        "fresh 2,048-byte drop payload alone, Csprng (ns)": lambda n: [fresh(arena) for _ in range(n)],
        "packet draws as the worker makes them, bulk in C (ns)": lambda n: bulk_draws(cs, n),
    }
    for r in range(args.rounds):
        for name, fn in tests.items():
            n = args.n if "packet" not in name and "payload" not in name else args.n // 10
            rows.setdefault(name, []).append(per_call_ns(fn, n))
        rows.setdefault("C build of one 4-hop packet (us)", []).append(c_build_us(2000))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    load = os.getloadavg()[0]
    print(f"load average (1 min) at the end: {load:.2f} on {os.cpu_count()} cores")
    for k, v in med.items():
        print(f"{k:58} median {v:10.1f}   rounds {[round(x, 1) for x in rows[k]]}")
    build_ns = med["C build of one 4-hop packet (us)"] * 1e3
    old = med["packet draws + fixed drop payload, random.Random (ns)"]
    new = med["packet draws + fresh drop payload, Csprng (ns)"]
    bulk = med["packet draws as the worker makes them, bulk in C (ns)"]
    payload = med["fresh 2,048-byte drop payload alone, Csprng (ns)"]
    print(f"per packet, one draw at a time in Python: {new / 1e3:.2f} us with the CSPRNG (fresh drop payload) vs "
          f"{old / 1e3:.2f} us with random.Random (one fixed payload); the difference is "
          f"{(new - old) / build_ns:.2%} of the C build ({build_ns / 1e3:.1f} us)")
    print(f"per packet as the worker draws now: {bulk / 1e3:.2f} us in bulk in C + {payload / 1e3:.2f} us for a "
          f"fresh drop payload = {(bulk + payload) / build_ns:.2%} of the C build, against "
          f"{old / build_ns:.2%} for the Mersenne Twister draws before")


if __name__ == "__main__":
    main()
