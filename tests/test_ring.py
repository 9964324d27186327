"""The shared-memory ring across real processes, and its bounds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from loopix.client.ring import SLOT_META_SIZE, Ring, slot_size_for


def test_write_then_read_in_order_and_wraps():
    ring = Ring.create(8, slot_size_for(40))
    try:
        for round_ in range(5):  # 40 items through 8 slots: wraps several times
            start, room = ring.contiguous_free()
            assert room >= 1
            n = min(room, 6)
            for i in range(n):
                ring.write_meta(start + i, 1000 * round_ + i, i, i % 3, 40, seq=start + i)
                ring.wire_view(start + i)[:40] = bytes([start + i]) * 40
            ring.publish(start + n)
            r = ring.read_index
            while r < ring.write_index:
                _t, identity, stream, _flags, wire_len, seq = ring.peek(r)
                assert seq == r and wire_len == 40 and stream == identity % 3
                assert bytes(ring.wire_bytes(r, wire_len)) == bytes([r]) * 40
                r += 1
            ring.release(r)
            assert ring.pending() == 0
    finally:
        ring.close()


def test_full_ring_reports_no_room():
    ring = Ring.create(4, slot_size_for(8))
    try:
        ring.publish(4)
        assert ring.free() == 0
        assert ring.contiguous_free()[1] == 0
        ring.release(1)
        start, room = ring.contiguous_free()
        assert (start, room) == (4, 1)
    finally:
        ring.close()


def test_contiguous_free_stops_at_the_wrap():
    ring = Ring.create(8, slot_size_for(8))
    try:
        ring.publish(6)
        ring.release(6)
        assert ring.contiguous_free() == (6, 2)
    finally:
        ring.close()


def test_wire_view_spans_whole_slots():
    ring = Ring.create(8, slot_size_for(100))
    try:
        view = ring.wire_view(2, 3)
        assert len(view) == 2 * ring.slot_size + ring.slot_size - SLOT_META_SIZE
    finally:
        ring.close()


@pytest.mark.parametrize("slots, size", [(1, 64), (8, 8), (8, 33)])
def test_bad_shapes_are_refused(slots, size):
    with pytest.raises(ValueError):
        Ring.create(slots, size)


def test_another_process_sees_the_same_memory():
    """A child attaches through the inherited descriptor, produces; the parent consumes."""
    ring = Ring.create(16, slot_size_for(64))
    child = textwrap.dedent(
        f"""
        from loopix.client.ring import Ring
        ring = Ring.attach({ring.fd})
        for i in range(10):
            ring.write_meta(i, 5000 + i, 7, 1, 64, seq=i)
            ring.wire_view(i)[:64] = bytes([i]) * 64
        ring.publish(10, horizon_ns=123)
        ring.close()
        """
    )
    try:
        subprocess.run([sys.executable, "-c", child], pass_fds=[ring.fd], check=True, timeout=60)
        assert ring.write_index == 10 and ring.horizon_ns == 123
        for i in range(10):
            assert ring.peek(i)[:2] == (5000 + i, 7)
            assert bytes(ring.wire_bytes(i, 64)) == bytes([i]) * 64
    finally:
        ring.close()


def test_no_dev_shm_entry_exists():
    before = set(os.listdir("/dev/shm"))
    ring = Ring.create(4, 64)
    try:
        assert set(os.listdir("/dev/shm")) == before  # memfd: nothing to leak by name
    finally:
        ring.close()


def test_attach_checks_the_size():
    ring = Ring.create(4, 64)
    try:
        os.ftruncate(ring.fd, 100)
        with pytest.raises(ValueError, match="size"):
            Ring.attach(ring.fd)
    finally:
        ring.close()


def test_due_taker_gathers_due_slots_per_link():
    """The sender's bulk read: due slots of ready identities, their bytes per link in ring order,
    unready ones consumed and counted, the first slot not yet due stops the scan."""
    from loopix.client.ring import DueTaker

    ring = Ring.create(8, slot_size_for(40))
    ready = bytearray([1, 1, 0, 1])  # identity 2 is not connected
    taker = DueTaker([ring], ready, [0, 1, 0, 1], 2, max_due=16, per_link=3)
    try:
        # slots: (time, identity, stream, flags); the last is not due at now = 100
        slots = [(10, 0, 0, 1), (20, 1, 1, 0), (30, 2, 2, 0), (40, 3, 0, 0), (50, 0, 2, 0), (500, 1, 0, 0)]
        for i, (t, ident, stream, flags) in enumerate(slots):
            ring.write_meta(i, t, ident, stream, 40, seq=i, flags=flags)
            ring.wire_view(i)[:40] = bytes([i]) * 40
        ring.publish(len(slots))
        due: list = []
        read, next_ns, unconnected = taker.take(0, 0, 100, 16, due)
        assert (read, next_ns, unconnected) == (5, 500, [0, 0, 1])  # identity 2's slot, stream 2
        assert due == [(10, 0, 0, 1), (20, 1, 1, 0), (40, 3, 0, 0), (50, 0, 2, 0)]
        assert taker.gathered(0) == bytes([0]) * 40 + bytes([4]) * 40
        assert taker.gathered(1) == bytes([1]) * 40 + bytes([3]) * 40
        assert taker.gathered(0) == b""  # reset after each call
        # room limits the slots taken; nothing due at an early now
        due = []
        assert taker.take(0, 0, 100, 2, due)[0] == 2 and len(due) == 2
        assert taker.take(0, 0, 5, 16, []) == (0, 10, None)
    finally:
        taker.close()
        ring.close()
    assert ring.fd == -1  # the C views were released, so the ring unmapped and closed


def test_due_taker_region_full_and_bad_slots():
    from loopix.client.ring import DueTaker

    ring = Ring.create(8, slot_size_for(40))
    taker = DueTaker([ring], bytearray([1]), [0], 1, max_due=16, per_link=2)
    try:
        full = ring.slot_size - SLOT_META_SIZE  # the region holds per_link packets of a full slot
        for i in range(4):
            ring.write_meta(i, 10, 0, 0, full, seq=i)
        ring.publish(4)
        due: list = []
        assert taker.take(0, 0, 100, 16, due)[0] == 2 and len(due) == 2  # two fit the region
        assert len(taker.gathered(0)) == 2 * full
        assert taker.take(0, 2, 100, 16, due)[0] == 4
        ring.write_meta(4, 10, 0, 0, full + 1, seq=4)  # longer than a slot can hold
        ring.publish(5)
        with pytest.raises(RuntimeError, match="corrupt"):
            taker.take(0, 4, 100, 16, [])
        ring.write_meta(4, 10, 0, 3, full, seq=4)  # no stream 3
        with pytest.raises(RuntimeError, match="corrupt"):
            taker.take(0, 4, 100, 16, [])
    finally:
        taker.close()
        ring.close()
