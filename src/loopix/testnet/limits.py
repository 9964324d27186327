"""What every listener shares: a connection cap below the fd limit, an idle/partial timeout, and
one rate-limited log line per kind of remote mistake.

`ConnectionGate` wraps any asyncio protocol factory (a node's links, a provider's port, the
directory's aiohttp server, the socket API): a connection beyond the cap is closed at accept, and a
connection that makes no progress for `idle_timeout` seconds is aborted. "Progress" is a received
byte unless the protocol reports complete units itself (`GatedConnection.progress`), so a peer
trickling one byte at a time into a frame it never finishes is closed as well.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "ConnectionGate",
    "GatedConnection",
    "RateLimitedLog",
    "bounded_listener_kwargs",
    "default_max_connections",
]

FD_RESERVE = 64
"""File descriptors a process keeps for its own files, outbound links and the directory."""


def default_max_connections(share: float = 0.75) -> int:
    """Inbound connections a listener accepts: `share` of the fd limit left after FD_RESERVE, so
    accepting never runs the process out of descriptors for its own outbound links."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 16
    return max(8, int((soft - FD_RESERVE) * share))


class RateLimitedLog:
    """At most `per_s` lines a second (burst `burst`) for remote mistakes; the count of lines
    suppressed is added to the next one that gets through. Remote input cannot flood the log."""

    def __init__(
        self,
        logger: logging.Logger,
        per_s: float = 1.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.per_s = per_s
        self.burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_s)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.suppressed += 1
        return False

    def log(self, level: int, msg: str, *args: Any) -> None:
        if not self.logger.isEnabledFor(level) or not self.allow(self._clock()):
            return
        if self.suppressed:
            msg += f" ({self.suppressed} similar lines suppressed)"
            self.suppressed = 0
        self.logger.log(level, msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        self.log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, msg, *args)


class GatedConnection(asyncio.Protocol):
    """Delegates to the wrapped protocol and enforces the gate's idle timeout."""

    def __init__(self, gate: ConnectionGate, inner: asyncio.BaseProtocol) -> None:
        self.gate = gate
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self._last_progress = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._counts_bytes = not getattr(inner, "reports_progress", False)
        if not self._counts_bytes:
            inner.gate_connection = self  # type: ignore[attr-defined]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        gate = self.gate
        if len(gate.live) >= gate.max_connections:
            gate.refused += 1
            transport.abort()  # type: ignore[attr-defined]
            self.transport = None
            return
        gate.live.add(self)
        gate.accepted += 1
        loop = asyncio.get_running_loop()
        self._last_progress = loop.time()
        if gate.idle_timeout is not None:
            self._timer = loop.call_at(self._last_progress + gate.idle_timeout, self._check_idle)
        self.inner.connection_made(transport)

    def progress(self) -> None:
        """A complete unit arrived (for protocols that report progress themselves)."""
        self._last_progress = asyncio.get_running_loop().time()

    def exempt(self) -> None:
        """No idle timeout for this connection from now on (e.g. an authenticated client)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_idle(self) -> None:
        self._timer = None
        if self.transport is None or self.gate.idle_timeout is None:
            return
        loop = asyncio.get_running_loop()
        due = self._last_progress + self.gate.idle_timeout
        if loop.time() >= due:
            self.gate.timed_out += 1
            self.transport.abort()
            return
        self._timer = loop.call_at(due, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        if self._counts_bytes:
            self._last_progress = asyncio.get_running_loop().time()
        self.inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        if self.transport is None:
            return None
        return self.inner.eof_received()  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self in self.gate.live:
            self.gate.live.discard(self)
            self.transport = None
            self.inner.connection_lost(exc)


class ConnectionGate:
    """A listener's connection cap and idle timeout (None: no timeout), with counters."""

    def __init__(self, max_connections: int | None = None, idle_timeout: float | None = 60.0) -> None:
        self.max_connections = max_connections or default_max_connections()
        self.idle_timeout = idle_timeout
        self.live: set[GatedConnection] = set()
        self.accepted = 0
        self.refused = 0
        self.timed_out = 0

    def wrap(self, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: GatedConnection(self, factory())

    def close_all(self) -> None:
        for conn in list(self.live):
            if conn.transport is not None:
                conn.transport.abort()


def bounded_listener_kwargs() -> dict[str, Any]:
    """TCPSite arguments every aiohttp listener uses (the accept backlog)."""
    return {"backlog": 128}
