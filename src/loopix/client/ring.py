"""Single-producer single-consumer rings of fixed-size slots in shared memory.

A worker builds packets straight into the slots of its own ring and the sender reads them from
there: no pickling, no pipe, no copy on the way. The memory is a memfd (anonymous shared memory
passed to the child processes as a file descriptor), so no /dev/shm name exists that a killed
process could leak.

Layout: a 192-byte header, then `slots` slots of `slot_size` bytes.
    header  [0, 8)     write index (u64, only the producer stores it)
            [64, 72)   read index (u64, only the consumer stores it)
            [128, 136) horizon_ns: the producer has built every event scheduled before this time
            [136, 140) slots, [140, 144) slot_size (u32, for attaching with a check)
    slot    [0, 8)     scheduled_ns (u64)     [8, 12) identity (u32)    [12] stream (u8)
            [13] flags (u8)                   [16, 20) wire_len (u32)   [24, 32) seq (u64)
            [32, 32 + wire_len)   the bytes to put on the wire as they are
Indexes only grow; slot i lives at i % slots. On x86-64 stores are not reordered with other stores
nor loads with loads, so writing a slot before publishing the write index is enough. The indexes and
the horizon are read and written as whole aligned 8-byte words (a memoryview cast to "Q", one load or
store each): struct's "<Q" goes byte by byte, and the other side could see a torn value (a read index
half updated lets the producer overwrite slots not yet sent).
"""

from __future__ import annotations

import mmap
import os
import struct

from loopix.sphinx._sphinx_c import ffi, lib

HEADER_SIZE = 192
SLOT_META_SIZE = 32
_META = struct.Struct("<QIBBxxIxxxxQ")
assert _META.size == SLOT_META_SIZE == lib.LX_SLOT_META and HEADER_SIZE == lib.LX_RING_HEADER
_WRITE, _READ, _HORIZON, _SHAPE = 0, 64, 128, 136
_SHAPE_FMT = struct.Struct("<II")


def slot_size_for(wire_size: int) -> int:
    """Slot size holding wire_size bytes after the slot metadata, rounded up to a cache line."""
    return (SLOT_META_SIZE + wire_size + 63) // 64 * 64


class Ring:
    """One ring mapped in this process; `create` in the coordinator, `attach` in the children."""

    def __init__(self, fd: int, slots: int, slot_size: int, *, owner: bool):
        self.fd = fd
        self.slots = slots
        self.slot_size = slot_size
        self.size = HEADER_SIZE + slots * slot_size
        self._mm = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.buf = memoryview(self._mm)
        self._words = self.buf[:HEADER_SIZE].cast("Q")  # the header as aligned u64 words
        self.owner = owner

    @classmethod
    def create(cls, slots: int, slot_size: int, name: str = "loopix-ring") -> Ring:
        if slots < 2 or slot_size < SLOT_META_SIZE or slot_size % 8:
            raise ValueError(f"bad ring shape: {slots} slots of {slot_size} bytes")
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, HEADER_SIZE + slots * slot_size)
        ring = cls(fd, slots, slot_size, owner=True)
        _SHAPE_FMT.pack_into(ring.buf, _SHAPE, slots, slot_size)
        return ring

    @classmethod
    def attach(cls, fd: int) -> Ring:
        with mmap.mmap(fd, HEADER_SIZE, mmap.MAP_SHARED, mmap.PROT_READ) as head:
            slots, slot_size = _SHAPE_FMT.unpack_from(head, _SHAPE)
        if os.fstat(fd).st_size != HEADER_SIZE + slots * slot_size:
            raise ValueError("ring file size does not match its header")
        return cls(fd, slots, slot_size, owner=False)

    # -- indexes --
    @property
    def write_index(self) -> int:
        return self._words[_WRITE // 8]

    @property
    def read_index(self) -> int:
        return self._words[_READ // 8]

    @property
    def horizon_ns(self) -> int:
        return self._words[_HORIZON // 8]

    def pending(self) -> int:
        return self.write_index - self.read_index

    def free(self) -> int:
        return self.slots - self.pending()

    # -- producer side --
    def slot_offset(self, index: int) -> int:
        return HEADER_SIZE + (index % self.slots) * self.slot_size

    def contiguous_free(self) -> tuple[int, int]:
        """(first free index, how many free slots follow it without wrapping)."""
        w = self.write_index
        free = self.slots - (w - self.read_index)
        return w, min(free, self.slots - w % self.slots)

    def write_meta(self, index: int, scheduled_ns: int, identity: int, stream: int, wire_len: int,
                   seq: int = 0, flags: int = 0) -> None:
        _META.pack_into(self.buf, self.slot_offset(index), scheduled_ns, identity, stream, flags,
                        wire_len, seq)

    def wire_view(self, index: int, count: int = 1) -> memoryview:
        """Writable view from slot index's wire bytes over count slots (for batch builds; the
        caller keeps count within contiguous_free)."""
        start = self.slot_offset(index) + SLOT_META_SIZE
        return self.buf[start : start + (count - 1) * self.slot_size + self.slot_size - SLOT_META_SIZE]

    def publish(self, new_write_index: int, horizon_ns: int | None = None) -> None:
        if horizon_ns is not None:
            self._words[_HORIZON // 8] = horizon_ns
        self._words[_WRITE // 8] = new_write_index

    def set_horizon(self, horizon_ns: int) -> None:
        self._words[_HORIZON // 8] = horizon_ns

    # -- consumer side --
    def peek(self, index: int) -> tuple[int, int, int, int, int, int]:
        """(scheduled_ns, identity, stream, flags, wire_len, seq) of slot index."""
        return _META.unpack_from(self.buf, self.slot_offset(index))

    def wire_bytes(self, index: int, wire_len: int) -> memoryview:
        start = self.slot_offset(index) + SLOT_META_SIZE
        return self.buf[start : start + wire_len]

    def release(self, new_read_index: int) -> None:
        self._words[_READ // 8] = new_read_index

    def close(self) -> None:
        try:
            self._words.release()
            self.buf.release()
            self._mm.close()
        except BufferError:  # a view is still exported somewhere; the mapping goes with the process
            return
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_DUE = struct.Struct("=QIBBxx")  # lx_due: scheduled_ns, identity, stream, flags


class DueTaker:
    """The sender's side of its rings in bulk: one C call per ring and round (csrc/ringscan.c) takes
    every due slot, copies the wire bytes of ready identities into one run per provider link, and
    gives the due slots' metadata as (scheduled_ns, identity, stream, flags) tuples; no Python step
    per packet between the ring and the socket write.

    `ready` is the sender's per-identity flag bytearray (read live by C; never resized), `link_of`
    the link index of each identity."""

    def __init__(self, rings: list[Ring], ready: bytearray, link_of: list[int], n_links: int,
                 max_due: int, per_link: int = 256):
        assert _DUE.size == ffi.sizeof("lx_due")
        self.rings = rings
        self._closed = False
        self._rings_c = [ffi.from_buffer(r.buf) for r in rings]
        self._ready = ffi.from_buffer(ready)
        self._n_identities = len(ready)
        self._link_of = ffi.new("uint32_t[]", link_of or [0])
        self.n_links = n_links
        self.link_cap = per_link * max(((r.slot_size - SLOT_META_SIZE) for r in rings), default=0)
        self.out = bytearray(max(1, n_links * self.link_cap))
        self._out_c = ffi.from_buffer(self.out)
        self._out_view = memoryview(self.out)
        self.out_len = ffi.new("uint64_t[]", max(1, n_links))
        self.max_due = max_due
        self._due = ffi.new("lx_due[]", max_due)
        self._due_buf = ffi.buffer(self._due)
        self._ctx = []  # one lx_take_ctx per ring: the fixed arguments, set once
        for k, ring in enumerate(rings):
            c = ffi.new("lx_take_ctx *")
            c.ring, c.slots, c.slot_size = self._rings_c[k], ring.slots, ring.slot_size
            c.n_identities, c.ready, c.link_of = self._n_identities, self._ready, self._link_of
            c.n_links, c.out, c.link_cap, c.out_len = n_links, self._out_c, self.link_cap, self.out_len
            c.due, c.max_due = self._due, max_due
            self._ctx.append(c)

    def take(self, k: int, read: int, now_ns: int, room: int, due: list) -> tuple[int, int, list[int] | None]:
        """Due slots of ring k from `read` (at most `room`), their metadata appended to `due`.
        Returns (new read index, time of the first slot not yet due or 0, slots of unconnected
        identities consumed per stream, or None when there were none)."""
        c = self._ctx[k]
        n = lib.lx_take_due(c, read, self.rings[k].write_index, now_ns, room)
        if n < 0:
            raise RuntimeError(f"ring {k} holds a slot it cannot (corrupt metadata at index {read}+)")
        if n:
            due.extend(_DUE.iter_unpack(self._due_buf[: n * _DUE.size]))
        u = c.unconnected
        return c.new_read, c.next_ns, (list(u) if u[0] or u[1] or u[2] else None)

    def gathered(self, link: int) -> bytes:
        """The wire bytes gathered for `link` since the last call (and resets it)."""
        n = self.out_len[link]
        if not n:
            return b""
        self.out_len[link] = 0
        start = link * self.link_cap
        return bytes(self._out_view[start : start + n])

    def close(self) -> None:
        """Release the C views, so the rings' memory can be unmapped (and `ready` grown)."""
        if self._closed:
            return
        self._closed = True
        self._out_view.release()
        self._ctx = []
        for c in (*self._rings_c, self._ready, self._out_c):
            ffi.release(c)
        self._rings_c = []
