"""A stand-in for the loopix child runtime that writes the frames of a run at a given loop rate
without building or sending a packet: `bench_distributed.py` uses it to measure what the Locust
layer (worker and master) costs at 5,000 loops/s, independently of what the network sustains.

It reads the same Share on stdin and feeds a LoadMetrics with `identities × loop_rate` loops per
second (log-normal RTTs, 0.1 % lost), `payload_rate`/`drop_rate` likewise, ticks it once a second
and writes the same Started / Tick / Done frames as the real child.
"""

from __future__ import annotations

import os
import random
import sys
import time

import msgspec

from loopix.loadtest.distributed.child import TickWriter
from loopix.loadtest.distributed.protocol import Done, Share
from loopix.loadtest.metrics import LoadMetrics

NS = 1_000_000_000


def main() -> int:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    share = msgspec.json.decode(sys.stdin.buffer.readline(), type=Share)
    rng = random.Random()
    start = (time.monotonic_ns() // NS + 1) * NS
    m = LoadMetrics(start, share.mean_hop_delay_ms, 3, grace_s=share.grace_s or 2.0)
    writer = TickWriter(share, out)
    writer.on_metrics(m)
    loops = int(share.identities * share.loop_rate)
    payload = int(share.identities * share.payload_rate)
    drop = int(share.identities * share.drop_rate)
    seconds = int(share.duration_s)
    for t in range(1, seconds + 4):
        time.sleep(max(0.0, (start + t * NS - time.monotonic_ns()) / 1e9))
        sec0 = start + (t - 1) * NS
        if t <= seconds:
            m.record_sent("payload", payload, sec0)
            m.record_sent("drop", drop, sec0)
            for _ in range(loops):
                sent = sec0 + rng.randrange(NS)
                m.record_sent("loop", 1, sent)
                if rng.random() >= 0.001:
                    m.record_loop_back(sent, sent + int(rng.lognormvariate(17.5, 0.5)))
            for _ in range(loops // 16):
                m.record_lateness(int(rng.expovariate(1 / 100_000)))
        m.tick(start + t * NS)
    writer.flush()
    m.end_load(start + seconds * NS)
    writer.write(Done(m.summary(), 0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
