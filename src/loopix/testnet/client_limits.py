"""What a provider allows each client, apart from the I/O: registrations and inbox quotas.

Pure objects that take the time as `now` (wall-clock seconds: registrations and stored messages
outlive a restart, so their ages are kept in the inbox file) and return decisions; provider.py
carries them out. docs/hostile-input.md lists the limits and their defaults.

- `RegistrationTable`: at most `max_clients` registered keys per provider. A key held by a live
  connection is *live*; any other is *idle* since its last connection ended. An idle key expires
  after `registration_ttl_s`. When the table is full, a new key takes the place of the keys idle the
  longest (up to `EVICT_BATCH` at once; their stored mail goes with them, counted); only when every
  key is live is a new key refused.
- `InboxQuota`: at most `inbox_max_messages` messages and `inbox_max_bytes` bytes stored per
  client; a message beyond either is refused (and, having no SURB-ack sent, is retransmitted by
  its sender later).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec

__all__ = [
    "DEFAULT_CLIENT_LIMITS",
    "Admit",
    "ClientLimits",
    "InboxQuota",
    "Refuse",
    "RegistrationTable",
]


class ClientLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A provider's per-client limits (the provider's command-line options of the same names)."""

    max_clients: int = 150_000
    """Registered keys per provider (live and idle). ~300 bytes of memory each while live."""
    registration_ttl_s: float = 86_400.0
    """An idle registration (no connection holds the key) is forgotten after this, with its mail."""
    inbox_max_messages: int = 10_000
    """Stored messages per client."""
    inbox_max_bytes: int = 16 << 20
    """Stored bytes per client."""
    message_max_age_s: float = 86_400.0
    """A stored message not acknowledged within this is dropped (counted `message_expired`)."""

    def check(self) -> str | None:
        """What is wrong with these limits, or None."""
        if self.max_clients < 1:
            return "max_clients must be positive"
        if self.inbox_max_messages < 1 or self.inbox_max_bytes < 1:
            return "inbox quotas must be positive"
        if not self.registration_ttl_s > 0 or not self.message_max_age_s > 0:
            return "registration TTL and message age must be positive"
        return None

    @property
    def sweep_interval_s(self) -> float:
        """How often expired registrations and messages are looked for: a quarter of the shorter
        limit, between 50 ms and 60 s, so nothing outlives its limit by more than a quarter."""
        return min(60.0, max(0.05, min(self.registration_ttl_s, self.message_max_age_s) / 4))


DEFAULT_CLIENT_LIMITS: Final = ClientLimits()
EVICT_BATCH: Final = 64
"""Idle registrations given up at once when a new key finds the provider full."""


class Admit(msgspec.Struct, frozen=True, gc=False):
    """Register the key; first forget the registrations in `evict` (idle the longest)."""

    new: bool
    evict: tuple[bytes, ...] = ()


class Refuse(msgspec.Struct, frozen=True, gc=False):
    """Do not register the key: tell the client `reason` (a REFUSED_KEY, or an ERROR)."""

    reason: str


class RegistrationTable:
    """Which keys are registered, and since when those no connection holds are idle.

    The provider says when a key is held (a connection registered it) and when it is released
    (the last connection holding it let it go); `idle` is ordered by the time each key went idle
    (insertion order), so the longest idle and the expired ones are at its front. Memory: one set
    entry per key, one dict entry per idle key.
    """

    __slots__ = ("idle", "limits", "registered")

    def __init__(self, limits: ClientLimits, known: Iterable[tuple[bytes, float]] = ()) -> None:
        """`known`: the registrations kept from before (key, last seen), all idle now."""
        self.limits = limits
        self.registered: set[bytes] = set()
        self.idle: dict[bytes, float] = {}
        for key, last_seen in sorted(known, key=lambda kv: kv[1]):
            self.registered.add(key)
            self.idle[key] = last_seen

    def __len__(self) -> int:
        return len(self.registered)

    def __contains__(self, key: object) -> bool:
        return key in self.registered

    def admit(self, key: bytes) -> Admit | Refuse:
        """May `key` register now? Known keys always may; a new one if there is room, or an idle
        registration to give up for it."""
        if key in self.registered:
            return Admit(new=False)
        if len(self.registered) < self.limits.max_clients:
            return Admit(new=True)
        if self.idle:  # a batch, so a stream of new keys costs one SQLite commit per batch
            it = iter(self.idle)
            return Admit(
                new=True, evict=tuple(next(it) for _ in range(min(EVICT_BATCH, len(self.idle))))
            )
        return Refuse(f"provider full: {self.limits.max_clients} clients registered, all connected")

    def held(self, key: bytes) -> None:
        """A connection registered `key` (after `admit` said so and any eviction was done)."""
        self.registered.add(key)
        self.idle.pop(key, None)

    def released(self, key: bytes, now: float) -> None:
        """No connection holds `key` any more: idle from `now`."""
        if key in self.registered:
            self.idle.pop(key, None)  # to the back of the order
            self.idle[key] = now

    def forget(self, key: bytes) -> None:
        """The registration ends (expired, evicted, unregistered)."""
        self.registered.discard(key)
        self.idle.pop(key, None)

    def expired(self, now: float) -> list[bytes]:
        """Idle keys whose TTL ran out by `now`, longest idle first (the caller forgets them)."""
        cutoff = now - self.limits.registration_ttl_s
        out = []
        for key, since in self.idle.items():
            if since > cutoff:
                break
            out.append(key)
        return out


class InboxQuota:
    """Messages and bytes stored per client, against the limits."""

    __slots__ = ("limits", "usage")

    def __init__(self, limits: ClientLimits, usage: Iterable[tuple[bytes, int, int]] = ()) -> None:
        """`usage`: (key, messages, bytes) already stored (from the inbox file)."""
        self.limits = limits
        self.usage: dict[bytes, list[int]] = {k: [n, b] for k, n, b in usage if n}

    def refusal(self, key: bytes, size: int) -> str | None:
        """Why one more message of `size` bytes for `key` is refused, or None if it fits."""
        used = self.usage.get(key)
        if used is None:
            return None if size <= self.limits.inbox_max_bytes else "inbox_bytes"
        if used[0] >= self.limits.inbox_max_messages:
            return "inbox_full"
        if used[1] + size > self.limits.inbox_max_bytes:
            return "inbox_bytes"
        return None

    def added(self, key: bytes, size: int) -> None:
        used = self.usage.get(key)
        if used is None:
            self.usage[key] = [1, size]
        else:
            used[0] += 1
            used[1] += size

    def removed(self, key: bytes, size: int) -> None:
        used = self.usage.get(key)
        if used is None:
            return
        used[0] -= 1
        used[1] -= size
        if used[0] <= 0:
            del self.usage[key]

    def forget(self, key: bytes) -> None:
        self.usage.pop(key, None)

    def of(self, key: bytes) -> tuple[int, int]:
        used = self.usage.get(key)
        return (used[0], used[1]) if used else (0, 0)
