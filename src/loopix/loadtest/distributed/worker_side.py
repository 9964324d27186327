"""The Locust worker's loopix side: announce our version, take the share the master hands out,
run it in the child runtime, fire sampled Locust events and queue the child's frames for the
master (in the worker's periodic reports; Started/Done/Failed at once). Runs under gevent."""

from __future__ import annotations

import logging
import sys

import gevent
import msgspec

from .bridge import ChildRun, EventFirer, FrameQueue
from .protocol import (
    MSG_FRAMES,
    MSG_HELLO,
    MSG_REFUSED,
    MSG_SHARE,
    REPORT_KEY,
    Done,
    Failed,
    Share,
    Started,
    Tick,
)
from .runtime import EXIT_NOT_STARTED, local_hello

log = logging.getLogger("loopix")


class WorkerSide:
    def __init__(self, env) -> None:
        self.env = env
        self.runner = env.runner
        self.child: ChildRun | None = None
        self.queue = FrameQueue()
        self.last_tick = 0
        self.firer = EventFirer(env.events.request.fire)
        self.runner.register_message(MSG_SHARE, self.on_share)
        self.runner.register_message(MSG_REFUSED, self.on_refused)
        env.events.report_to_master.add_listener(self.on_report)
        env.events.quitting.add_listener(lambda **_: self.stop())
        env.events.test_stop.add_listener(lambda **_: self.stop())
        self.runner.send_message(MSG_HELLO, msgspec.to_builtins(local_hello()))

    def on_refused(self, environment, msg, **_) -> None:
        print(f"loopix worker: refused by the master: {msg.data}", file=sys.stderr, flush=True)
        environment.process_exit_code = EXIT_NOT_STARTED
        gevent.spawn(self.runner.quit)

    def on_share(self, environment, msg, **_) -> None:
        try:
            share = msgspec.json.decode(msg.data, type=Share)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
            print(f"loopix worker: bad share from the master: {exc}", file=sys.stderr, flush=True)
            return
        if self.child is not None:
            return
        log.info("loopix: share %d of %d: %d identities for %gs", share.rank + 1, share.workers,
                 share.identities, share.duration_s)
        self.child = ChildRun(share, self.on_frame)

    def on_frame(self, frame) -> None:
        if isinstance(frame, Tick):
            self.firer.on_tick(frame)
            self.last_tick = frame.part.tick
        try:
            self.queue.put(frame)
        except OverflowError as exc:  # the master takes nothing: stop the load, say why
            print(f"loopix worker: {exc}; stopping the share", file=sys.stderr, flush=True)
            self.queue.take()
            if self.child is not None:
                gevent.spawn(self.child.stop)
            return
        if isinstance(frame, Started | Done | Failed):  # not worth waiting for the next report
            self.runner.send_message(MSG_FRAMES, self.queue.take())
        if isinstance(frame, Failed):
            print(f"loopix worker: {frame.reason}", file=sys.stderr, flush=True)

    def on_report(self, client_id, data, **_) -> None:
        frames = self.queue.take()
        if frames:
            data[REPORT_KEY] = frames
            if self.last_tick:
                log.info("loopix: shipped %d s of the share to the master", self.last_tick)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
