"""What `loopix-client socket` does with received messages: hand each one to every connected
application, and keep them while none is connected, for the next connection.

The 2019 client kept messages until the application fetched them; a push-only socket would lose
every message that arrives between two connections. Both the held messages and each connection's
backlog are bounded by a count and a byte total; when full, the oldest message is dropped and
counted (a slow or absent application must not grow our memory without limit).

`Mailbox` has the shape of a socket client (`address`, `send_message`, `subscribe`), so the servers
in `loopix.sockets` use it in place of the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from typing import Any

__all__ = ["DEFAULT_HOLD_BYTES", "DEFAULT_HOLD_MESSAGES", "BoundedMessages", "Mailbox"]

DEFAULT_HOLD_MESSAGES = 1000
DEFAULT_HOLD_BYTES = 64 * 2**20

log = logging.getLogger("loopix.mailbox")


def _size(item: Any) -> int:
    """Bytes of a held message: plain bytes, or a received message (`.data`, `.sender_tag`)."""
    return len(item) if isinstance(item, bytes | bytearray | memoryview) else len(item.data)


class BoundedMessages:
    """A FIFO of messages capped at `max_messages` and `max_bytes`; full means the oldest goes.

    A single message larger than `max_bytes` is kept alone (dropping it would lose it for sure).
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("a mailbox holds at least one message and one byte")
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self._items: deque[bytes] = deque()
        self.bytes = 0
        self.dropped = 0  # messages dropped to make room, since creation
        self.dropped_bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, data: bytes) -> int:
        """Append `data`; returns how many old messages were dropped to make room."""
        self._items.append(data)
        self.bytes += _size(data)
        dropped = 0
        while len(self._items) > 1 and (len(self._items) > self.max_messages or self.bytes > self.max_bytes):
            old = self._items.popleft()
            self.bytes -= _size(old)
            dropped += 1
            self.dropped_bytes += _size(old)
        self.dropped += dropped
        return dropped

    def pop(self) -> bytes | None:
        if not self._items:
            return None
        data = self._items.popleft()
        self.bytes -= _size(data)
        return data

    def take_all(self) -> list[bytes]:
        items = list(self._items)
        self._items.clear()
        self.bytes = 0
        return items


class _Outlet:
    """One connection's messages: an async iterator over its bounded backlog."""

    def __init__(self, mailbox: Mailbox, backlog: BoundedMessages) -> None:
        self._mailbox = mailbox
        self.backlog = backlog
        self._ready = asyncio.Event()
        self.ended = False
        if len(backlog):
            self._ready.set()

    def push(self, data: bytes) -> int:
        dropped = self.backlog.put(data)
        self._ready.set()
        return dropped

    def end(self) -> None:
        self.ended = True
        self._ready.set()

    def __aiter__(self) -> _Outlet:
        return self

    async def __anext__(self) -> bytes:
        while True:
            data = self.backlog.pop()
            if data is not None:
                return data
            if self.ended:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()

    async def aclose(self) -> None:
        self._mailbox._detach(self)


class Mailbox:
    """Fans the client's received messages out to connected applications; holds them meanwhile."""

    def __init__(self, client: Any, max_messages: int = DEFAULT_HOLD_MESSAGES,
                 max_bytes: int = DEFAULT_HOLD_BYTES) -> None:
        self.client = client
        self.held = BoundedMessages(max_messages, max_bytes)
        self._outlets: list[_Outlet] = []
        self._pump: asyncio.Task | None = None
        self._ended = False
        self.dropped = 0  # messages dropped (held or in a connection's backlog), since start
        self._next_warning = 1  # drops are logged at 1, 2, 4, 8, ... so a flood stays a few lines

    # -- the socket-client shape --
    @property
    def address(self) -> str:
        return self.client.address

    async def send_message(self, message: bytes, recipient: str, **options: Any) -> None:
        await self.client.send_message(message, recipient, **options)

    async def reply(self, sender_tag: bytes, message: bytes, **options: Any) -> None:
        await self.client.reply(sender_tag, message, **options)

    def subscribe(self) -> _Outlet:
        """A new connection: it gets the held messages first, then everything that arrives."""
        backlog = BoundedMessages(self.held.max_messages, self.held.max_bytes)
        for data in self.held.take_all():
            backlog.put(data)
        outlet = _Outlet(self, backlog)
        if self._ended:
            outlet.end()
        self._outlets.append(outlet)
        return outlet

    def _detach(self, outlet: _Outlet) -> None:
        with contextlib.suppress(ValueError):
            self._outlets.remove(outlet)
        if not self._outlets:  # what it had not yet written waits for the next connection
            for data in outlet.backlog.take_all():
                self._hold(data)

    # -- lifecycle --
    async def start(self) -> Mailbox:
        """Subscribe to the client now, so nothing received from here on is missed."""
        sub = self.client.subscribe()
        if inspect.isawaitable(sub):
            sub = await sub
        self._pump = asyncio.create_task(self._run(sub))
        return self

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        self._end()

    async def _run(self, sub: Any) -> None:
        try:
            async for item in sub:
                self.deliver(item)  # bytes, or a message with its sender tag
        finally:
            self._end()
            close = getattr(sub, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    def _end(self) -> None:
        self._ended = True
        for outlet in self._outlets:
            outlet.end()

    def deliver(self, data: bytes) -> None:
        """One received message: to every connection, or held when there is none."""
        if not self._outlets:
            self._hold(data)
            return
        for outlet in self._outlets:
            if dropped := outlet.push(data):
                self._count_dropped(dropped, "an application is not reading fast enough", outlet.backlog)

    def _hold(self, data: bytes) -> None:
        if dropped := self.held.put(data):
            self._count_dropped(dropped, "no application is connected", self.held)

    def _count_dropped(self, n: int, why: str, queue: BoundedMessages) -> None:
        self.dropped += n
        if self.dropped >= self._next_warning:
            self._next_warning = self.dropped * 2
            log.warning("%s: kept the newest %d messages (%d bytes), dropped %d so far "
                        "(raise --hold-messages/--hold-bytes to keep more)",
                        why, len(queue), queue.bytes, self.dropped)
