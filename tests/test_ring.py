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
