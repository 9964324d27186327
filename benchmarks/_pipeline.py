"""Shared pieces of the client benchmarks: the bare all-core C build rate to compare against (and
SinkNet, a made-up mixnet whose only provider discards)."""

from __future__ import annotations

import multiprocessing
import os
import time

from loopix import sphinx
from loopix.testnet.sink import SinkNet

__all__ = ["SinkNet", "bare_all_core_rate", "c_build_us"]


def c_build_us(n: int, payload_size: int = 2048) -> float:
    """Wall µs per packet of n 4-hop packets built in batches of 32 by the C core, in this process."""
    keys = [sphinx.keypair() for _ in range(4)]
    route = [sphinx.Hop(public_key=pk, address=bytes([i]) * 32) for i, (_, pk) in enumerate(keys)]
    builder = sphinx.PacketBuilder(32, payload_size)
    for i in range(32):
        builder.set_packet(i, route, bytes(32), os.urandom(min(2000, payload_size)), [1000] * 4)
    out = bytearray(builder.packet_size * 32)
    t = time.perf_counter_ns()
    built = 0
    while built < n:
        built += builder.build(32, out)
    return (time.perf_counter_ns() - t) / built / 1e3


def _bare_builder(seconds: float, hops: int, result) -> None:
    keys = [sphinx.keypair() for _ in range(hops)]
    route = [sphinx.Hop(public_key=pk, address=bytes([i]) * 32) for i, (_, pk) in enumerate(keys)]
    builder = sphinx.PacketBuilder(32)
    for i in range(32):
        builder.set_packet(i, route, bytes(32), os.urandom(2000), [1000] * hops)
    out = bytearray(builder.packet_size * 32)
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += builder.build(32, out)
    result.put(n / (time.perf_counter() - start))


def bare_all_core_rate(seconds: float = 3.0, hops: int = 4, procs: int | None = None) -> float:
    """Packets/s of `procs` processes doing nothing but batch builds, side by side."""
    procs = procs or os.cpu_count() or 1
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=_bare_builder, args=(seconds, hops, q)) for _ in range(procs)]
    for p in ps:
        p.start()
    rates = [q.get(timeout=seconds + 60) for _ in ps]
    for p in ps:
        p.join()
    return sum(rates)
