"""Cost of the end-to-end layer (loopix.client.messages) on one core.

    .venv/bin/python benchmarks/bench_messages.py [--rounds 7] [--seconds 0.3] [--payload-size 2048]

Prints the median over `rounds` runs of:
- loop encode and decode, µs per payload (a worker encodes once per loop packet; the receiver decodes
  every payload that comes back, so "decode, not a loop" is the cost paid on each real fragment too);
- fragment_message on a 1 MiB message (seal to the recipient + split + pad), MB/s of message;
- Reassembler.add over its fragments in random order (store + join + open + unpad), MB/s of message.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from loopix import sphinx
from loopix.client.messages import LoopCodec, Reassembler, drop_payload, fragment_message

MIB = 2**20


def per_call_us(fn, seconds: float, inner: int = 100) -> float:
    """Microseconds per call of fn, timed over at least `seconds` in loops of `inner` calls."""
    fn()
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(inner):
            fn()
        n += inner
        now = time.perf_counter()
        if now >= deadline:
            return (now - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.3)
    ap.add_argument("--payload-size", type=int, default=2048)
    args = ap.parse_args()
    ps = args.payload_size
    sk, pk = sphinx.keypair()
    codec = LoopCodec()
    loop = codec.encode(42, 7, time.monotonic_ns(), ps)
    one_fragment = fragment_message(b"x" * 1000, pk, ps)[0]
    message = os.urandom(MIB)
    frags = fragment_message(message, pk, ps)
    order = list(frags)
    random.Random(0).shuffle(order)

    def enc():
        codec.encode(42, 7, 123456789, ps)

    def dec():
        codec.decode(loop)

    def dec_miss():
        codec.decode(one_fragment)

    def drop():
        drop_payload(ps)

    def reassemble() -> float:
        reasm = Reassembler(sk)
        t0 = time.perf_counter()
        for f in order:
            out = reasm.add(f, 0.0)
        dt = time.perf_counter() - t0
        assert out == message
        return dt

    def fragment() -> float:
        t0 = time.perf_counter()
        fragment_message(message, pk, ps)
        return time.perf_counter() - t0

    rows: dict[str, list[float]] = {k: [] for k in ("enc", "dec", "miss", "drop", "frag", "reasm")}
    for _ in range(args.rounds):
        rows["enc"].append(per_call_us(enc, args.seconds))
        rows["dec"].append(per_call_us(dec, args.seconds))
        rows["miss"].append(per_call_us(dec_miss, args.seconds))
        rows["drop"].append(per_call_us(drop, args.seconds))
        rows["frag"].append(MIB / 1e6 / min(fragment() for _ in range(5)))
        rows["reasm"].append(MIB / 1e6 / min(reassemble() for _ in range(5)))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"payload_size {ps}, {len(frags)} fragments per MiB, median of {args.rounds} rounds")
    print(f"  loop encode                 {med['enc']:8.2f} µs")
    print(f"  loop decode (ours)          {med['dec']:8.2f} µs")
    print(f"  loop decode (not a loop)    {med['miss']:8.2f} µs")
    print(f"  drop payload                {med['drop']:8.2f} µs")
    print(f"  fragment+encrypt 1 MiB      {med['frag']:8.1f} MB/s")
    print(f"  reassemble+decrypt 1 MiB    {med['reasm']:8.1f} MB/s")


if __name__ == "__main__":
    main()
