"""The child process a Locust worker starts: the ordinary loopix load-test runtime (uvloop, the C
core, its own packet workers), far from gevent. It reads its `Share` as JSON on stdin, runs
`run_loadtest` against the share's directory and writes length-prefixed frames on stdout (its
human-readable lines go to stderr): `Started`, one `Tick` per second, then `Done` or `Failed`.

SIGTERM (the worker stopping the test, or the worker dying: PR_SET_PDEATHSIG) cancels the run, so
the runtime's own processes and shared memory are cleaned up as after a normal run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import os
import random
import signal
import sys
from typing import BinaryIO

import msgspec

from loopix.loadtest.metrics import IntervalPart, LoadMetrics, decode_histogram
from loopix.loadtest.run import LoadTestOptions, run_loadtest

from .protocol import Done, Failed, Frame, Share, Started, Tick, pack, sample_every


def _die_with_parent() -> None:
    """SIGTERM when the worker dies. (Had it died before this, the share on stdin is missing and
    the frames hit a closed pipe: the child ends either way.)"""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stochastic_round(x: float, rng: random.Random) -> int:
    whole = math.floor(x)
    return whole + (1 if rng.random() < x - whole else 0)


def sample_values_ms(encoded: str, k: int, rng: random.Random) -> list[float]:
    """k values drawn uniformly (with replacement) from the samples an interval histogram holds,
    at its precision: what a 1-in-N sample of the loops themselves would show."""
    if not encoded or k <= 0:
        return []
    hist = decode_histogram(encoded)
    total = hist.get_total_count()
    ranks = sorted(rng.randrange(total) for _ in range(k))
    out: list[float] = []
    i = 0
    for item in hist.get_recorded_iterator():
        value_ms = hist.get_highest_equivalent_value(item.value_iterated_to) / 1000
        while i < len(ranks) and ranks[i] < item.total_count_to_this_value:
            out.append(value_ms)
            i += 1
    return out


class TickWriter:
    """Turns the runtime's LoadMetrics intervals into frames on `out`."""

    def __init__(self, share: Share, out: BinaryIO) -> None:
        self.share = share
        self.out = out
        self.rng = random.Random()
        self.every = sample_every(share.identities * share.loop_rate, share.event_budget)
        self.metrics: LoadMetrics | None = None
        self.pending: IntervalPart | None = None
        self.last_lost = 0

    def write(self, frame: Frame) -> None:
        self.out.write(pack(frame))
        self.out.flush()

    def on_metrics(self, metrics: LoadMetrics) -> None:
        self.metrics = metrics
        metrics.interval_listeners.append(self.on_part)
        self.write(Started(metrics.start_wall_ns, metrics.mean_hop_delay_ms, metrics.mix_layers,
                           metrics.grace_s, self.share.identities))

    def on_part(self, part: IntervalPart) -> None:
        # the listener runs inside tick(), before its row exists: ship the part with the row on
        # the next tick, or at the end
        self.flush()
        self.pending = part

    def flush(self) -> None:
        if self.pending is None or self.metrics is None or self.metrics.last_row is None:
            return
        part, row = self.pending, self.metrics.last_row
        self.pending = None
        k = _stochastic_round(part.back / self.every, self.rng)
        lost = row.loops_lost - self.last_lost
        self.last_lost = row.loops_lost
        self.write(Tick(part, row, self.every, sample_values_ms(part.rtt, k, self.rng),
                        _stochastic_round(max(0, lost) / self.every, self.rng)))


async def run_share(share: Share, out: BinaryIO) -> int:
    writer = TickWriter(share, out)
    opts = LoadTestOptions(
        identities=share.identities, duration_s=share.duration_s, directory_url=share.directory_url,
        payload_rate=share.payload_rate, loop_rate=share.loop_rate, drop_rate=share.drop_rate,
        mean_hop_delay_ms=share.mean_hop_delay_ms, packet_payload_size=share.packet_payload_size,
        workers=share.packet_workers, grace_s=share.grace_s, live=False)
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    result = await run_loadtest(opts, on_metrics=writer.on_metrics)
    writer.flush()
    writer.write(Done(result.summary, result.exit_code))
    return 0


def main() -> int:
    _die_with_parent()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints of the runtime go to stderr; stdout carries frames only
    try:
        share = msgspec.json.decode(sys.stdin.buffer.readline(), type=Share)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        out.write(pack(Failed(f"bad share: {exc}")))
        return 2
    import uvloop

    try:
        return uvloop.run(run_share(share, out))
    except asyncio.CancelledError:
        out.write(pack(Failed("stopped before the end of the run")))
        return 1
    except Exception as exc:  # one line to the worker; the traceback stays in our stderr
        import traceback

        traceback.print_exc()
        with contextlib.suppress(OSError):
            out.write(pack(Failed(f"{type(exc).__name__}: {exc}")))
        return 1
    finally:
        with contextlib.suppress(OSError):
            out.flush()


if __name__ == "__main__":
    sys.exit(main())
