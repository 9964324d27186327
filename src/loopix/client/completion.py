"""Which accepted messages are still in the client's send queue: a callback per message, run once
every fragment of it is acknowledged or given up on.

The socket API bounds what an application may have queued (docs/socket-api.md); it learns here
when a message stops counting. Pure bookkeeping: the coordinator reports each fragment's end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["Completions"]


class _Message:
    __slots__ = ("left", "on_done")

    def __init__(self, left: int, on_done: Callable[[], None]) -> None:
        self.left = left
        self.on_done = on_done


class Completions:
    """Fragment ref → the message it belongs to, for messages whose sender wants to know."""

    __slots__ = ("_of",)

    def __init__(self) -> None:
        self._of: dict[int, _Message] = {}

    def watch(self, refs: Iterable[int], on_done: Callable[[], None]) -> None:
        refs = list(refs)
        if not refs:
            on_done()
            return
        message = _Message(len(refs), on_done)
        for ref in refs:
            self._of[ref] = message

    def ended(self, ref: int) -> None:
        """Fragment `ref` was acknowledged or given up on."""
        message = self._of.pop(ref, None)
        if message is None:
            return
        message.left -= 1
        if message.left == 0:
            message.on_done()

    def end_all(self) -> None:
        """The client stops: every message stops counting (what was not sent is lost with it)."""
        messages = {id(m): m for m in self._of.values()}
        self._of.clear()
        for message in messages.values():
            message.on_done()

    def __len__(self) -> int:
        return len(self._of)
