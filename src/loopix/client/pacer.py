"""The sender's timing loop in C (csrc/pacer.c), run in a thread of the sender with the GIL released.

Why: in Python each packet cost a wake-up, an event-loop turn, a socket write and its accounting
(~85 µs at 2,000 packets/s). The C loop sleeps on the kernel's absolute timer until the next due
packet, writes every packet due together with one sendmsg per provider link straight from the ring
slots, and counts into flat arrays; Python reads those once per interval. Python keeps the protocol
(its frames go through `send`, in order with the loop's writes) and real packets due while their link
is down (`take_held`).
"""

from __future__ import annotations

import array
import contextlib
import os
import threading
from collections.abc import Iterator

from loopix.sphinx._sphinx_c import ffi, lib

from .ring import _META, SLOT_META_SIZE, Ring

SEND_FULL = lib.LX_PACE_SEND_FULL
NO_LINK = lib.LX_PACE_NO_LINK
_TOTALS = ("sent", "real_sent", "unconnected", "held", "wakeups", "writes", "stalls", "write_errors",
           "dropped_bytes", "error")


class Pacer:
    """One C pacing loop over the sender's rings. `bind` tells it the identities (ready flags, link
    of each, per-identity counters); `set_link` the connection of each provider link."""

    def __init__(self, rings: list[Ring], *, samples: int, refs_cap: int, trace_cap: int, held_cap: int,
                 link_buffer: int, seed: bytes | None = None):
        self.held_slot = max([r.slot_size for r in rings], default=SLOT_META_SIZE)
        p = lib.lx_pacer_new(samples, refs_cap, trace_cap, held_cap, self.held_slot, link_buffer,
                             seed if seed is not None else ffi.NULL)
        if p == ffi.NULL:
            raise MemoryError("cannot allocate the sender's pacer")
        self._p = p
        self.samples, self.refs_cap, self.trace_cap, self.held_cap = samples, refs_cap, trace_cap, held_cap
        self._rings = [ffi.from_buffer("uint8_t[]", r.buf) for r in rings]
        for ring, c in zip(rings, self._rings, strict=True):
            if lib.lx_pacer_add_ring(p, c, ring.slots, ring.slot_size) != 0:
                raise ValueError("ring does not fit the pacer")
        self._bound: list = []
        self._thread: threading.Thread | None = None
        self._seconds = ffi.new("lx_pace_second[]", lib.LX_PACE_SECONDS)
        self._late = ffi.new("int64_t[]", max(1, samples))
        self._seen = ffi.new("uint64_t *")
        self._ref_seq = array.array("Q", bytes(8 * max(1, refs_cap)))
        self._ref_ns = array.array("Q", bytes(8 * max(1, refs_cap)))
        self._trace = bytearray(max(1, trace_cap) * lib.LX_PACE_TRACE_RECORD)
        self._held = bytearray(max(1, held_cap) * self.held_slot)
        self._totals = ffi.new("lx_pace_totals *")

    # -- identities and links --
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The loop waits meanwhile (for resizing what `bind` gave it)."""
        lib.lx_pacer_lock(self._p)
        try:
            yield
        finally:
            lib.lx_pacer_unlock(self._p)

    def unbind(self) -> None:
        """Forget the bound arrays (with the lock held), so they can be resized; `bind` again after."""
        lib.lx_pacer_set_identities(self._p, 0, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL)
        for c in self._bound:
            ffi.release(c)
        self._bound = []

    def bind(self, ready: bytearray, link_of: array.array, sent: list[array.array], real_sent: array.array) -> None:
        """With the lock held. The loop reads ready/link_of live and adds to sent/real_sent."""
        n = len(ready)
        assert len(link_of) >= n and all(len(a) >= n for a in (*sent, real_sent))
        c = [ffi.from_buffer("uint8_t[]", ready), ffi.from_buffer("uint32_t[]", link_of),
             *(ffi.from_buffer("uint64_t[]", a) for a in sent), ffi.from_buffer("uint64_t[]", real_sent)]
        self._bound = c
        lib.lx_pacer_set_identities(self._p, n, *c)

    def set_id_map(self, first: int, step: int) -> None:
        """The rings' identity first + i * step is our identity i (a sender owning every step-th one)."""
        lib.lx_pacer_set_id_map(self._p, first, step)

    def set_link(self, link: int, fd: int) -> None:
        """fd is the pacer's from now on (a dup of the transport's socket: it stays valid however the
        transport closes its own); -1 when the link is down. After close: nothing to do."""
        if self._p is None:
            if fd >= 0:
                os.close(fd)
            return
        if lib.lx_pacer_set_link(self._p, link, fd) != 0:
            raise ValueError(f"bad link {link}")

    def send(self, link: int, data: bytes) -> int:
        """0, or SEND_FULL (the peer does not read: drop the connection) or NO_LINK."""
        if self._p is None:
            return NO_LINK
        return lib.lx_pacer_send(self._p, link, data, len(data))

    def account(self, scheduled_ns: int, actual_ns: int, identity: int, stream: int, flags: int, seq: int) -> bool:
        return lib.lx_pacer_account(self._p, scheduled_ns, actual_ns, identity, stream, flags, seq) == 0

    def set_min_gap(self, ns: int) -> None:
        lib.lx_pacer_set_min_gap(self._p, ns)

    def set_coalesce(self, ns: int) -> None:
        """Packets due within ns after the next one go out with the last of them (csrc/pacer.h)."""
        lib.lx_pacer_set_coalesce(self._p, ns)

    # -- the thread --
    def start(self) -> None:
        self._thread = threading.Thread(target=lib.lx_pacer_run, args=(self._p,), name="pacer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        lib.lx_pacer_stop(self._p)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Stops the loop, closes the link fds it owns and lets go of the rings' memory."""
        if self._p is None:
            return
        self.stop()
        with self.locked():
            self.unbind()
        for c in self._rings:
            ffi.release(c)
        self._rings = []
        lib.lx_pacer_free(self._p)
        self._p = None

    # -- what it counted --
    def totals(self) -> dict:
        """Counts since start: the C struct's fields (lists for the per-stream ones)."""
        lib.lx_pacer_totals(self._p, self._totals)
        t = self._totals
        out = {}
        for name in _TOTALS:
            v = getattr(t, name)
            out[name] = list(v) if name in ("sent", "unconnected") else int(v)
        return out

    def take_seconds(self) -> list[tuple[int, list[int]]]:
        """(scheduled second, [payload, loop, drop, of which real]) sent since the last take."""
        n = lib.lx_pacer_take_seconds(self._p, self._seconds, lib.LX_PACE_SECONDS)
        return [(int(self._seconds[i].sec), list(self._seconds[i].n)) for i in range(n)]

    def take_lateness(self) -> tuple[list[int], int]:
        """A uniform sample (ns) of the lateness of the packets sent since the last take, and how many."""
        n = lib.lx_pacer_take_lateness(self._p, self._late, self.samples, self._seen)
        return ffi.unpack(self._late, n) if n > 0 else [], int(self._seen[0])

    def take_refs(self) -> tuple[list[int], list[int]]:
        """Real fragments sent since the last take: their refs and send times."""
        n = lib.lx_pacer_take_refs(self._p, ffi.from_buffer("uint64_t[]", self._ref_seq),
                                   ffi.from_buffer("uint64_t[]", self._ref_ns), self.refs_cap)
        return self._ref_seq[:n].tolist(), self._ref_ns[:n].tolist()

    def take_trace(self) -> bytes:
        n = lib.lx_pacer_take_trace(self._p, ffi.from_buffer(self._trace), len(self._trace))
        return bytes(self._trace[:n])

    def take_held(self) -> list[tuple[int, int, int, int, int, bytes]]:
        """Real packets due while their link was down: (scheduled_ns, identity, stream, flags, seq, wire)."""
        n = lib.lx_pacer_take_held(self._p, ffi.from_buffer(self._held), len(self._held))
        out = []
        view = memoryview(self._held)
        for i in range(n):
            off = i * self.held_slot
            t, identity, stream, flags, wire_len, seq = _META.unpack_from(view, off)
            out.append((t, identity, stream, flags, seq, bytes(view[off + SLOT_META_SIZE : off + SLOT_META_SIZE + wire_len])))
        return out

