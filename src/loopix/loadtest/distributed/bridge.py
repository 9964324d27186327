"""The Locust worker's side: start the child runtime for a share, read its frames, turn a sample
of them into Locust request events and queue them all for the master.

Everything here runs under gevent: the child is an ordinary process (gevent's subprocess is
cooperative), and nothing of the loopix runtime is imported in the worker's own process.
"""

from __future__ import annotations

import collections
import os
import shlex
import subprocess
import sys
from collections.abc import Callable

import msgspec

from .protocol import Done, Failed, Frame, FrameReader, ProtocolError, Share, Tick, encode_frame

CHILD_MODULE = "loopix.loadtest.distributed.child"
CHILD_ENV = "LOOPIX_DISTRIBUTED_CHILD"  # benchmarks: python arguments of another frame source
MAX_QUEUED_FRAMES = 3600  # an hour of ticks that the master has not taken: something is wrong
STOP_TIMEOUT_S = 30.0


class LoopLost(Exception):
    """A loop that did not come back within the grace period (a Locust failure)."""


class EventFirer:
    """Locust request events for a share's ticks: one success per sampled loop back (its RTT from
    the intended send time), one failure per sampled lost loop. `fire` is Locust's
    `events.request.fire`; the sample is one loop in `every`, named in the request's name so that
    Locust's counts times `every` are the real counts."""

    def __init__(self, fire: Callable[..., None]) -> None:
        self.fire = fire

    def on_tick(self, tick: Tick) -> int:
        name = f"loop RTT (1 in {tick.every})" if tick.every > 1 else "loop RTT"
        for rtt in tick.rtt_sample_ms:
            self.fire(request_type="loopix", name=name, response_time=rtt, response_length=0,
                      exception=None, context={})
        for _ in range(tick.lost_sampled):
            self.fire(request_type="loopix", name=name, response_time=0, response_length=0,
                      exception=LoopLost("loop not back within the grace period"), context={})
        return len(tick.rtt_sample_ms) + tick.lost_sampled


def child_command() -> list[str]:
    """The child's command line: the loopix runtime, or (benchmarks) $LOOPIX_DISTRIBUTED_CHILD."""
    override = os.environ.get(CHILD_ENV)
    return [sys.executable, *(shlex.split(override) if override else ["-m", CHILD_MODULE])]


class ChildRun:
    """One share's child process. `on_frame` sees every frame in order (from a reader greenlet);
    after the last one (Done/Failed, or the pipe closing without them) `finished` is set."""

    def __init__(self, share: Share, on_frame: Callable[[Frame], None]) -> None:
        import gevent
        from gevent.event import Event

        self.share = share
        self.on_frame = on_frame
        self.finished = Event()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.proc = subprocess.Popen(
            child_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        assert self.proc.stdin is not None
        self.proc.stdin.write(msgspec.json.encode(share) + b"\n")
        self.proc.stdin.close()
        self._readers = [gevent.spawn(self._read_frames), gevent.spawn(self._read_stderr)]

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())

    def _read_frames(self) -> None:
        assert self.proc.stdout is not None
        reader = FrameReader()
        last: Frame | None = None
        try:
            while True:
                data = self.proc.stdout.read1(65536)
                if not data:
                    break
                for frame in reader.feed(data):
                    last = frame
                    self.on_frame(frame)
        except ProtocolError as exc:
            last = Failed(f"child wrote a bad frame: {exc}")
            self.on_frame(last)
        finally:
            if not isinstance(last, Done | Failed):
                self.proc.wait()
                tail = next((ln for ln in reversed(self.stderr_tail) if ln.strip()), "")
                self.on_frame(Failed(f"child exited with code {self.proc.returncode}"
                                     + (f": {tail}" if tail else "")))
            self.finished.set()

    def stop(self) -> None:
        """Stop the child (SIGTERM: it cancels its run and cleans up), then wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.finished.wait(STOP_TIMEOUT_S)


class FrameQueue:
    """Encoded frames waiting for the worker's next report to the master (bounded)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def put(self, frame: Frame) -> None:
        if len(self.frames) >= MAX_QUEUED_FRAMES:
            raise OverflowError(f"{len(self.frames)} frames queued for the master: it is not taking them")
        self.frames.append(encode_frame(frame))

    def take(self) -> list[bytes]:
        out, self.frames = self.frames, []
        return out
