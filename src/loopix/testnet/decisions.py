"""What the testnet nodes decide, apart from the I/O that carries it out.

Each decision is a pure object: it takes the time as `now` (the event loop's clock, in seconds)
and returns an action; node.py and provider.py only perform the actions. Tests drive these
objects with a fake clock, without sockets or sleeps.

What a node does with each packet it unwraps (`HopPolicy`, with its `ReplayFilter` and
`DelayQueue`) runs in C on the hot path (csrc/node.c through testnet/engine.py); these are the
readable statement of those rules, and tests/test_forward_engine.py holds the C engine to them.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

from loopix.csprng import Csprng
from loopix.sphinx import Final, Forward, Rejected

__all__ = [
    "DelayQueue",
    "Deliver",
    "Drop",
    "ForwardNow",
    "Hold",
    "HopPolicy",
    "PresenceDebounce",
    "ReplayFilter",
]

T = TypeVar("T")


class ForwardNow(msgspec.Struct, frozen=True, gc=False):
    """Send `packet` to the next hop at `address` at once (its header asks for no delay)."""

    address: bytes
    packet: bytes


class Hold(msgspec.Struct, frozen=True, gc=False):
    """Keep `packet` until `due`, then send it to `address`; `capped` if its delay was cut to the
    node's maximum."""

    due: float
    address: bytes
    packet: bytes
    capped: bool = False


class Drop(msgspec.Struct, frozen=True, gc=False):
    """Count the packet as dropped under `reason` and forget it."""

    reason: str


class Deliver(msgspec.Struct, frozen=True, gc=False):
    """The packet ended here: `message` for `destination` (a provider stores it)."""

    destination: bytes
    message: bytes


HopAction = ForwardNow | Hold | Drop | Deliver


class HopPolicy:
    """What a node does with one unwrapped packet.

    A packet the C core refused is dropped under its reason, a replay as "replay"; a packet asking
    for no delay goes on at once; any other is held until `now + delay` (the delay capped at
    `max_delay`), unless `max_queue` packets are held already ("queue_full"). A final packet is
    delivered. `seen` is the replay filter's check-and-remember.

    Fault injection (a testnet option, off by default): a packet to forward is dropped as
    "injected" when `draw()` (uniform in [0, 1)) falls below `drop_rate`.
    """

    __slots__ = ("_max_delay_ns", "draw", "drop_rate", "max_queue", "seen")

    def __init__(
        self,
        seen: Callable[[bytes], bool],
        max_delay: float,
        max_queue: int,
        drop_rate: float = 0.0,
        draw: Callable[[], float] | None = None,
    ) -> None:
        self.seen = seen
        self._max_delay_ns = int(max_delay * 1e9)
        self.max_queue = max_queue
        self.drop_rate = drop_rate
        self.draw = draw or Csprng().random  # which packets a fault drops: docs/randomness.md

    def decide(self, result: Forward | Final | Rejected, now: float, held: int) -> HopAction:
        """The action for `result` at time `now`, with `held` packets already waiting."""
        if type(result) is Rejected:
            return Drop(result.reason)
        if self.seen(result.replay_tag):
            return Drop("replay")
        if type(result) is Final:
            return Deliver(result.destination, result.message)
        if self.drop_rate and self.draw() < self.drop_rate:
            return Drop("injected")
        delay = result.delay_ns
        if delay == 0:
            return ForwardNow(result.next_address, result.packet)
        if held >= self.max_queue:
            return Drop("queue_full")
        capped = delay > self._max_delay_ns
        if capped:
            delay = self._max_delay_ns
        return Hold(now + delay * 1e-9, result.next_address, result.packet, capped)


class ReplayFilter:
    """Replay tags seen recently, in two rotating sets of at most `capacity` tags each.

    A replay is caught if its original was among the last `capacity` (at least) to `2*capacity`
    (at most) distinct packets this node accepted; memory stays under 2*capacity tags. Beyond that
    window a replay gets through, as it does in Nym between key rotations without a Bloom filter.
    """

    __slots__ = ("_current", "_previous", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("replay filter capacity must be positive")
        self.capacity = capacity
        self._current: set[bytes] = set()
        self._previous: set[bytes] = set()

    def seen(self, tag: bytes) -> bool:
        """True if `tag` was seen within the window; otherwise remember it and return False."""
        if tag in self._current or tag in self._previous:
            return True
        self._current.add(tag)
        if len(self._current) >= self.capacity:
            self._previous, self._current = self._current, set()
        return False

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)


class DelayQueue(Generic[T]):
    """Items released at a due time, in due order, ties in the order they were pushed."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()

    def push(self, due: float, item: T) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), item))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[T]:
        """Every item due at or before `now`, in due order."""
        heap, out = self._heap, []
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[2])
        return out

    def __len__(self) -> int:
        return len(self._heap)


class PresenceDebounce:
    """When a provider announces that its clients changed.

    A lone change is announced at once; changes that follow within `settle` seconds of the last
    announcement are gathered and announced once, `settle` after the last of them. So a burst of
    10,000 registrations posts the client list twice, not 10,000 times (O(n²) bytes).

    `changed(now)` returns True to announce now; otherwise `due` is when to call `fire(now)`
    (re-arm the one timer for it). `fire` returns True when the gathered change is to be announced.
    """

    __slots__ = ("_last", "due", "settle")

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self._last = float("-inf")
        self.due: float | None = None

    def changed(self, now: float) -> bool:
        if self.due is None and now - self._last >= self.settle:
            self._last = now
            return True
        self.due = now + self.settle
        return False

    def fire(self, now: float) -> bool:
        if self.due is None or now < self.due:
            return False
        self.due = None
        self._last = now
        return True
