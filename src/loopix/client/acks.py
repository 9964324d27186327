"""SURB-acks and retransmission timers (pure: no I/O, time comes in as `now_ns`).

Every real fragment travels with an ack packet the worker builds on a fresh route back to the
sender's own provider (layout in wire/ack.py). The ack's 21-byte payload says which fragment it
acknowledges, encrypted so that only this client reads it:

    AES-256(ack key, ref u64 || random 4 || zero 4) (one block, 16 bytes) || random 5

A fresh random part per build makes a fragment's retransmissions carry unlinkable acks; the four
zero bytes let the sender reject junk (2^-32 per forged ack). Ref 0 is cover: loops carry an ack too
(a provider must not tell them from real fragments), and the sender ignores it.

`Retransmissions` keeps one timer per unacknowledged fragment. Like Nym's client, a timer starts when
the sender reports that the packet actually left, and lasts

    (sampled forward delays + sampled ack delays) x wait_multiplier + wait_addition

(defaults 1.5 and 1.5 s). When it fires, the fragment goes back to its worker, which builds it again on
a new route with a new ack, in a payload slot of its Poisson stream like any real packet.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

import msgspec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from loopix.wire.ack import ACK_PAYLOAD_SIZE

__all__ = ["COVER_REF", "AckCodec", "AckConfig", "Retransmissions"]

COVER_REF = 0
_BLOCK = struct.Struct(">Q4s4x")
_ZERO4 = bytes(4)


class AckConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Retransmission timer parameters (Nym's defaults; `max_retransmissions` 0 = no limit)."""

    wait_multiplier: float = 1.5
    wait_addition_s: float = 1.5
    max_retransmissions: int = 0


class AckCodec:
    """Encrypts and reads ack payloads with a key only this client (its workers, coordinator) holds."""

    __slots__ = ("_dec", "_enc", "key")

    def __init__(self, key: bytes | None = None):
        self.key = os.urandom(32) if key is None else bytes(key)
        if len(self.key) != 32:
            raise ValueError("ack key must be 32 bytes")
        cipher = Cipher(algorithms.AES(self.key), modes.ECB())  # one block, random inside: no pattern
        self._enc = cipher.encryptor()
        self._dec = cipher.decryptor()

    def encode(self, ref: int) -> bytes:
        rnd = os.urandom(9)
        return self._enc.update(_BLOCK.pack(ref, rnd[:4])) + rnd[4:]

    def decode(self, payload) -> int | None:
        """The fragment ref an ack payload names (COVER_REF for a loop's), or None for anything else."""
        if len(payload) != ACK_PAYLOAD_SIZE:
            return None
        plain = self._dec.update(bytes(payload[:16]))
        if plain[12:] != _ZERO4:
            return None
        return _BLOCK.unpack(plain)[0]


class _Flight:
    __slots__ = ("acked", "deadline_ns", "delay_ns", "sends", "sent_ns")

    def __init__(self) -> None:
        self.delay_ns = 0
        self.sent_ns = 0  # of the latest transmission; 0 while queued or in a ring
        self.deadline_ns = 0
        self.sends = 0
        self.acked = False


class Retransmissions:
    """Which fragments await an ack, and which are due again. Counters: `sent` (first transmissions),
    `retransmitted`, `acked`, `duplicate_acks`, `unknown_acks`, `gave_up`; `rtt_ns` collects the ack
    round trips measured since the caller last drained it."""

    def __init__(self, config: AckConfig | None = None):
        self.config = config or AckConfig()
        self._flights: dict[int, _Flight] = {}
        self.sent = 0
        self.retransmitted = 0
        self.acked = 0
        self.duplicate_acks = 0
        self.unknown_acks = 0
        self.gave_up = 0
        self.rtt_ns: list[int] = []
        self._early: dict[int, int] = {}  # ref -> ack time, acked before its send was reported
        self.abandoned: list[int] = []  # refs given up on (max_retransmissions), for the caller to drain

    def __len__(self) -> int:
        """Fragments not yet acknowledged."""
        return len(self._flights)

    def track(self, refs: Iterable[int]) -> None:
        for ref in refs:
            self._flights[ref] = _Flight()

    def built(self, ref: int, route_delay_ns: int) -> None:
        """The worker built it: the sampled delays of its route and its ack's route."""
        f = self._flights.get(ref)
        if f is not None:
            f.delay_ns = route_delay_ns

    def timeout_ns(self, route_delay_ns: int) -> int:
        c = self.config
        return int(route_delay_ns * c.wait_multiplier + c.wait_addition_s * 1e9)

    def sent_at(self, ref: int, sent_ns: int) -> None:
        """The sender wrote it to the wire at `sent_ns`: the timer starts."""
        f = self._flights.get(ref)
        if f is None:
            early = self._early.pop(ref, None)  # its ack beat the sender's report
            if early is not None:
                self.sent += 1
                self.rtt_ns.append(early - sent_ns)
            return
        if f.sends == 0:
            self.sent += 1
        else:
            self.retransmitted += 1
        f.sends += 1
        f.sent_ns = sent_ns
        f.deadline_ns = sent_ns + self.timeout_ns(f.delay_ns)

    def acked_at(self, ref: int, now_ns: int) -> bool:
        """An ack came back; True if it was the first for a fragment we track.

        Round trips are sampled only for fragments sent once (Karn's rule: the ack of a
        retransmitted fragment may answer any of its transmissions). An ack that arrives before the
        sender reported the first transmission (reports come every 50 ms) is timed when it does."""
        f = self._flights.pop(ref, None)
        if f is None:
            if ref != COVER_REF:
                self.duplicate_acks += 1
            return False
        self.acked += 1
        if f.sends == 1:
            self.rtt_ns.append(now_ns - f.sent_ns)
        elif f.sends == 0 and len(self._early) < 65536:
            self._early[ref] = now_ns
        return True

    def unsent(self, ref: int) -> None:
        """The sender could not send it: due again at once."""
        f = self._flights.get(ref)
        if f is not None:
            f.deadline_ns = 1

    def retry_later(self, ref: int, now_ns: int) -> None:
        """It could not be built (no route now): due again after `wait_addition_s`."""
        f = self._flights.get(ref)
        if f is not None:
            f.deadline_ns = now_ns + self.timeout_ns(0)

    def due(self, now_ns: int) -> list[int]:
        """Fragments whose timer ran out; their timers stop until they are sent again."""
        out = []
        limit = self.config.max_retransmissions
        for ref, f in self._flights.items():
            if f.deadline_ns and f.deadline_ns <= now_ns:
                out.append(ref)
        for ref in out:
            f = self._flights[ref]
            f.deadline_ns = 0
            if limit and f.sends > limit:
                del self._flights[ref]
                self.gave_up += 1
                self.abandoned.append(ref)
        return [r for r in out if r in self._flights]
