"""Sphinx build/process rates on one core against the X25519 floor measured in the same run.

    .venv/bin/python benchmarks/bench_sphinx.py [--rounds 5] [--seconds 0.4]

For r hops the crate's clamped fold costs r(r+1)/2 variable-base multiplications plus one fixed-base
(alpha_0); a node's unwrap costs two variable-base ones (shared secret and blinding). Ratios > 1 against
the fold floor mean the C path spends less than those multiplications would alone (impossible today);
the target is >= 0.9 for the 4-hop build and the unwrap.
"""

from __future__ import annotations

import argparse
import statistics
import time

from loopix import sphinx
from loopix.sphinx import _sphinx_c, pure

ffi, lib = _sphinx_c.ffi, _sphinx_c.lib


def rate(fn, seconds: float, batch: int = 1) -> float:
    """Calls of fn per second (times batch), timed over at least `seconds`."""
    fn()
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n * batch / (now - start)


def x25519_costs(seconds: float) -> tuple[float, float]:
    """Seconds per libsodium variable-base and fixed-base X25519 multiplication (batched in C-level
    loops of 64 so the Python call overhead is amortised)."""
    q = ffi.new("unsigned char[32]")
    n = ffi.new("unsigned char[32]", bytes(range(1, 33)))
    _, pk = sphinx.keypair()
    p = ffi.new("unsigned char[32]", pk)

    def var():
        for _ in range(64):
            lib.crypto_scalarmult(q, n, p)

    def base():
        for _ in range(64):
            lib.crypto_scalarmult_base(q, n)

    return 1 / rate(var, seconds, 64), 1 / rate(base, seconds, 64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.4)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()

    keys = [sphinx.keypair() for _ in range(5)]
    route = [sphinx.Hop(public_key=pk, address=bytes([i]) * 32) for i, (_, pk) in enumerate(keys)]
    dest, msg = bytes(32), b"x" * 1024
    builder = sphinx.PacketBuilder(args.batch)
    out = bytearray(builder.packet_size * args.batch)

    rows: dict[int, dict[str, list[float]]] = {r: {} for r in range(1, 6)}
    floors: dict[str, list[float]] = {"var": [], "base": []}
    for _ in range(args.rounds):
        var, base = x25519_costs(args.seconds)
        floors["var"].append(var)
        floors["base"].append(base)
        for r in range(1, 6):
            for i in range(args.batch):
                builder.set_packet(i, route[:r], dest, msg, [0] * r)
            pkt = sphinx.build_packet(route[:r], dest, msg, [0] * r)
            proc_out = bytearray(len(pkt))
            res = ffi.new("lx_processed *")
            src = ffi.from_buffer(pkt)
            dst = ffi.from_buffer(proc_out)
            secret, n = keys[0][0], len(pkt)

            def process(src=src, dst=dst, res=res, n=n, secret=secret):
                lib.lx_process_packet(secret, src, n, dst, n, res)

            sample = {
                "c_batch": rate(lambda: builder.build(args.batch, out), args.seconds, args.batch),
                "c_single": rate(lambda r=r: sphinx.build_packet(route[:r], dest, msg, [0] * r), args.seconds),
                "pure": rate(lambda r=r: pure.build_packet(route[:r], dest, msg, [0] * r), args.seconds / 2),
                "c_process": rate(process, args.seconds),
                "fold_floor": 1 / (r * (r + 1) / 2 * var + base),
                "ladder_floor": 1 / (r * var + base),
                "process_floor": 1 / (2 * var),
            }
            for k, v in sample.items():
                rows[r].setdefault(k, []).append(v)

    med = statistics.median
    var, base = med(floors["var"]), med(floors["base"])
    print(f"X25519 (libsodium): var-base {var * 1e6:.1f} us, fixed-base {base * 1e6:.1f} us "
          f"(medians of {args.rounds} rounds)")
    print(f"{'hops':>4} {'C batch/s':>10} {'C single/s':>10} {'pure/s':>8} {'C proc/s':>9} "
          f"{'fold floor':>10} {'batch/fold':>10} {'r*var+base':>10} {'batch/that':>10} {'proc/floor':>10}")
    for r in range(1, 6):
        m = {k: med(v) for k, v in rows[r].items()}
        print(f"{r:>4} {m['c_batch']:>10.0f} {m['c_single']:>10.0f} {m['pure']:>8.0f} {m['c_process']:>9.0f} "
              f"{m['fold_floor']:>10.0f} {m['c_batch'] / m['fold_floor']:>10.3f} {m['ladder_floor']:>10.0f} "
              f"{m['c_batch'] / m['ladder_floor']:>10.3f} {m['c_process'] / m['process_floor']:>10.3f}")
    m4 = {k: med(v) for k, v in rows[4].items()}
    print(f"targets: 4-hop C build / fold floor = {m4['c_batch'] / m4['fold_floor']:.3f} (>= 0.9), "
          f"C process / (1/2var) = {m4['c_process'] / m4['process_floor']:.3f} (>= 0.9)")


if __name__ == "__main__":
    main()
