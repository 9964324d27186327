"""The aggregated Poisson clock: one event stream for every identity and every traffic stream.

Instead of a timer per (identity, stream), one clock draws the next event of the superposition
(rate Λ = the sum of all rates) and then which identity and stream it belongs to, by weight. By the
superposition and thinning properties of Poisson processes each (identity, stream) still sees an
independent Poisson process at its own rate, and the cost per event is O(log n) whatever n is.
Split across W workers, each runs its own clock at Λ/W: the union is again the same process.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math

import msgspec

from loopix.csprng import Csprng, require_csprng


class Stream(enum.IntEnum):
    PAYLOAD = 0  # a real message when one is queued, otherwise cover
    LOOP = 1
    DROP = 2


STREAM_NAMES = {s.value: s.name.lower() for s in Stream}


class StreamRates(msgspec.Struct, frozen=True):
    """Packets per second of one identity's three streams."""

    payload: float
    loop: float
    drop: float

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.payload, self.loop, self.drop)


class PoissonClock:
    """Events (time_ns, identity, stream) of the superposition of every identity's streams.

    `rates[i]` are identity i's stream rates; `share` scales them all (1/W for one of W workers).
    Times are CLOCK_MONOTONIC nanoseconds, shared by every process on the machine. Anyone watching
    the client's link sees these times, so they come from a `Csprng` (a fresh OS-keyed one unless
    given; a `random.Random` is refused).
    """

    def __init__(self, rates: list[StreamRates], start_ns: int, *, share: float = 1.0,
                 rng: Csprng | None = None):
        self.rng = Csprng() if rng is None else require_csprng(rng, "the send schedule")
        self.now_ns = start_ns
        self.set_rates(rates, share)

    def set_rates(self, rates: list[StreamRates], share: float = 1.0) -> None:
        if any(r < 0 or math.isnan(r) for rate in set(rates) for r in rate.as_tuple()):
            raise ValueError("rates must be >= 0")
        first = rates[0] if rates else None
        if first is not None and all(r == first for r in rates):
            # the common case (a fleet with one config): draw the identity uniformly, then the
            # stream; no table, so a fleet of 100k identities costs nothing here
            per = [r * share for r in first.as_tuple()]
            self._uniform = (len(rates), list(itertools.accumulate(per)))
            self.cumulative = []
            self.total_rate = sum(per) * len(rates)
            return
        self._uniform = None
        self.cumulative = list(itertools.accumulate(r * share for rate in rates for r in rate.as_tuple()))
        self.total_rate = self.cumulative[-1] if self.cumulative else 0.0

    def next(self) -> tuple[int, int, int]:
        """The next event: (time_ns, identity, stream). Call only when total_rate > 0."""
        rng = self.rng
        self.now_ns += int(rng.expovariate(self.total_rate) * 1e9)
        if self._uniform is not None:
            n, cum = self._uniform
            identity = int(rng.random() * n)
            stream = bisect.bisect_right(cum, rng.random() * cum[-1])
            return self.now_ns, min(identity, n - 1), min(stream, 2)
        k = bisect.bisect_right(self.cumulative, rng.random() * self.total_rate)
        k = min(k, len(self.cumulative) - 1)
        return self.now_ns, k // 3, k % 3
