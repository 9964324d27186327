"""`DIR/fleet.sock`: a running fleet answers `loopix-client fleet stats DIR` on a Unix socket.

Per-identity counters are read on request (never a metric label per identity): one JSON line in
(`StatsQuery`), one JSON line out (`StatsAnswer`). The socket lives in the fleet's 0700 directory
and is 0600, so only its owner can ask. Bounded like every listener: a few connections at once,
one request line of at most 64 KiB each, and a connection that says nothing for 5 s is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

import msgspec

from .api import Fleet, IdentityStats

__all__ = ["SOCKET_FILE", "QueryServer", "StatsAnswer", "StatsQuery", "ask"]

log = logging.getLogger("loopix.fleet")

SOCKET_FILE = "fleet.sock"
MAX_CONNECTIONS = 8
MAX_REQUEST = 64 * 1024
IDLE_TIMEOUT_S = 5.0
MAX_TOP = 1000


class StatsQuery(msgspec.Struct, forbid_unknown_fields=True):
    identities: list[str] = msgspec.field(default_factory=list)
    top: int = 0


class StatsAnswer(msgspec.Struct, omit_defaults=True):
    identities: list[IdentityStats] = msgspec.field(default_factory=list)
    top: list[IdentityStats] = msgspec.field(default_factory=list)
    running: int = 0  # identities in the running fleet
    connected: int = 0
    error: str | None = None


class QueryServer:
    """The listener; `start()` binds `root/fleet.sock` (a stale one, from a fleet that died, is
    replaced: the fleet's lock says nobody else runs it)."""

    def __init__(self, fleet: Fleet, root: Path):
        self.fleet = fleet
        self.path = root / SOCKET_FILE
        self._server: asyncio.Server | None = None
        self._active = 0

    async def start(self) -> QueryServer:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        os.chmod(self.path, 0o600)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._active += 1
        try:
            if self._active > MAX_CONNECTIONS:
                answer = StatsAnswer(error="too many stats connections at once; try again")
            else:
                answer = await self._answer(reader)
            writer.write(msgspec.json.encode(answer) + b"\n")
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT_S)
        finally:
            self._active -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> StatsAnswer:
        try:
            line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT_S)
        except TimeoutError:
            return StatsAnswer(error=f"no request within {IDLE_TIMEOUT_S:g}s")
        except (ValueError, asyncio.LimitOverrunError):
            return StatsAnswer(error=f"request longer than {MAX_REQUEST} bytes")
        try:
            query = msgspec.json.decode(line, type=StatsQuery)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return StatsAnswer(error=f"bad request: {exc}")
        fleet = self.fleet
        try:
            rows = await fleet.identity_stats(*query.identities) if query.identities else []
            top = await fleet.top_identities(min(max(query.top, 0), MAX_TOP)) if query.top > 0 else []
        except ValueError as exc:  # an unknown identity
            return StatsAnswer(error=str(exc))
        except Exception as exc:
            return StatsAnswer(error=f"could not read the counters: {exc}")
        return StatsAnswer(rows, top, len(fleet), fleet.stats.connected)


def ask(root: str | Path, query: StatsQuery, timeout_s: float = 10.0) -> StatsAnswer:
    """The blocking side, for the CLI; OSError if no fleet listens."""
    path = Path(root) / SOCKET_FILE
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(path))
        s.sendall(msgspec.json.encode(query) + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    return msgspec.json.decode(data, type=StatsAnswer)
