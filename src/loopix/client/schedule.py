"""The aggregated Poisson clock: one event stream for every identity and every traffic stream.

Instead of a timer per (identity, stream), one clock draws the next event of the superposition
(rate Λ = the sum of all rates) and then which identity and stream it belongs to, by weight. By the
superposition and thinning properties of Poisson processes each (identity, stream) still sees an
independent Poisson process at its own rate, and the cost per event is O(log n) whatever n is.
Split across W workers, each runs its own clock at Λ/W: the union is again the same process.
"""

from __future__ import annotations

import enum
import itertools
import math

import msgspec

from loopix.csprng import Csprng, require_csprng
from loopix.sphinx._sphinx_c import ffi, lib


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

    BLOCK = 256  # events drawn per C call

    def __init__(self, rates: list[StreamRates], start_ns: int, *, share: float = 1.0,
                 rng: Csprng | None = None):
        self.rng = Csprng() if rng is None else require_csprng(rng, "the send schedule")
        self._c = ffi.new("lx_clock *")
        self.now_ns = start_ns  # the time of the last event handed out
        self._times = ffi.new("uint64_t[]", self.BLOCK)
        self._identities = ffi.new("uint32_t[]", self.BLOCK)
        self._streams = ffi.new("uint8_t[]", self.BLOCK)
        self.set_rates(rates, share)

    @property
    def now_ns(self) -> int:
        """The time of the last event handed out. Setting it starts the clock again from there
        (the events drawn ahead are dropped: the process is memoryless)."""
        return self._now_ns

    @now_ns.setter
    def now_ns(self, value: int) -> None:
        self._now_ns = value
        self._c.now_ns = value
        self._events = iter(())

    def set_rates(self, rates: list[StreamRates], share: float = 1.0) -> None:
        """New rates from the last event handed out on (the process is memoryless, so the events
        drawn ahead under the old rates are simply dropped)."""
        if any(r < 0 or math.isnan(r) for rate in set(rates) for r in rate.as_tuple()):
            raise ValueError("rates must be >= 0")
        c = self._c
        self.now_ns = self._now_ns  # drops the events drawn ahead under the old rates
        first = rates[0] if rates else None
        if first is not None and all(r == first for r in rates):
            # the common case (a fleet with one config): draw the identity uniformly, then the
            # stream; no table, so a fleet of 100k identities costs nothing here
            per = list(itertools.accumulate(r * share for r in first.as_tuple()))
            self.cumulative = []
            self.total_rate = per[-1] * len(rates)
            c.n_identities, c.stream_cum, c.cumulative = len(rates), per, ffi.NULL
            self._cumulative_c = None
        else:
            self.cumulative = list(itertools.accumulate(r * share for rate in rates for r in rate.as_tuple()))
            self.total_rate = self.cumulative[-1] if self.cumulative else 0.0
            self._cumulative_c = ffi.new("double[]", self.cumulative or [0.0])
            c.n_identities, c.n_entries, c.cumulative = len(rates), len(self.cumulative), self._cumulative_c
        c.total_rate = self.total_rate

    def next(self) -> tuple[int, int, int]:
        """The next event: (time_ns, identity, stream). Call only when total_rate > 0. Events are
        drawn BLOCK at a time in C (csrc/plan.c) and handed out one by one."""
        for event in self._events:
            self._now_ns = event[0]
            return event
        rc = lib.lx_clock_draw(self._c, self.rng.c_state(), self.BLOCK, self._times, self._identities,
                               self._streams)
        if rc != 0:
            raise ValueError("the clock has no rate")
        self._events = zip(ffi.unpack(self._times, self.BLOCK), ffi.unpack(self._identities, self.BLOCK),
                           ffi.unpack(self._streams, self.BLOCK), strict=True)
        event = next(self._events)
        self._now_ns = event[0]
        return event
