"""A pause announced ahead of time: the worker, which builds up to a lookahead in advance, builds no
cover due at or after the pause (a load test's rates are then exactly the packets due in its window)."""

from __future__ import annotations

import socket
import time

from conftest import wait_until
from loopix import sphinx
from loopix.client import control
from loopix.client.coordinator import spawn
from loopix.client.ring import Ring, slot_size_for
from loopix.client.worker import Worker
from test_csprng import _worker_setup


def _scheduled(ring: Ring) -> list[int]:
    return [ring.peek(i)[0] for i in range(ring.read_index, ring.write_index)]


def _build_until(worker: Worker, horizon_ns: int) -> None:
    """Build batches (one batch per call) until every event up to the horizon is built or skipped."""
    for _ in range(1000):
        if worker.build_batch(horizon_ns) == 0:
            return
    raise AssertionError("the worker kept building")


def test_cover_due_after_a_scheduled_pause_is_never_built():
    setup = _worker_setup(n_identities=4, rate=2000.0)
    ring = Ring.create(4096, slot_size_for(len(setup.wire_header) + 32 + sphinx.packet_size(2048)))
    ours, theirs = socket.socketpair()
    try:
        worker = Worker(setup, ring, control.BlockingControl(theirs))
        now = time.monotonic_ns()
        cut = now + 200_000_000
        worker.handle(control.Pause(from_ns=cut))
        worker.handle(control.Pause(from_ns=cut + 10**9))  # a later pause does not undo an earlier one
        _build_until(worker, now + 500_000_000)  # well past the cut
        times = _scheduled(ring)
        assert len(times) > 100, "cover before the cut is built"
        assert max(times) < cut, "nothing due at or after the cut"
        assert worker.last_event_ns >= cut, "the clock ran past the cut (events were skipped, not delayed)"

        ring.release(ring.write_index)
        worker.handle(control.Resume())
        _build_until(worker, now + 700_000_000)
        assert min(_scheduled(ring)) >= cut and len(_scheduled(ring)) > 0, "cover again after Resume"

        ring.release(ring.write_index)
        worker.handle(control.Pause())  # from now on
        assert worker.build_batch(now + 900_000_000) == 0
    finally:
        ours.close()
        theirs.close()
        ring.close()


def test_identities_waiting_for_registration_get_no_streams_until_started():
    """Identities from `streams_until` on (joined, not yet registered) are skipped like removed
    ones; StartStreams gives them their streams from then on."""
    setup = _worker_setup(n_identities=4, rate=2000.0)
    setup.streams_until = 2
    ring = Ring.create(4096, slot_size_for(len(setup.wire_header) + 32 + sphinx.packet_size(2048)))
    ours, theirs = socket.socketpair()
    try:
        worker = Worker(setup, ring, control.BlockingControl(theirs))
        now = time.monotonic_ns()
        _build_until(worker, now + 200_000_000)
        before = {ring.peek(i)[1] for i in range(ring.read_index, ring.write_index)}
        assert before == {0, 1}, "only the registered identities send"
        ring.release(ring.write_index)
        worker.handle(control.StartStreams(control.EVERY_IDENTITY))
        _build_until(worker, now + 400_000_000)
        after = {ring.peek(i)[1] for i in range(ring.read_index, ring.write_index)}
        assert after == {0, 1, 2, 3}, "every identity sends once started"
    finally:
        ours.close()
        theirs.close()
        ring.close()


def test_a_resume_read_together_with_the_setup_is_not_lost():
    """The coordinator starts workers paused and resumes them once everyone is registered; the two
    messages can reach the worker process in one read. Before, it kept only the setup and stayed
    paused for good."""
    setup = _worker_setup(n_identities=4, rate=2000.0)
    setup.cover_until_ns = 0
    ring = Ring.create(4096, slot_size_for(len(setup.wire_header) + 32 + sphinx.packet_size(2048)))
    ours, theirs = socket.socketpair()
    proc = spawn("loopix.client.worker", [theirs.fileno(), ring.fd], [str(theirs.fileno()), str(ring.fd)])
    theirs.close()
    try:
        ours.sendall(control.encode(setup) + control.encode(control.Resume()))
        wait_until(lambda: ring.write_index > 50, "the worker to build cover", 20.0)
        ours.sendall(control.encode(control.Stop()))
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ours.close()
        ring.close()
