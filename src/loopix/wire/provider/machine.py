"""What the provider's and the clients' machines share: a transition table, the current state, and
the loop that turns the messages of one read into events."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from loopix.wire.errors import ProtocolError

from .codec import MsgType, message_reader
from .states import Trigger, transition


class Machine:
    """A state machine over one connection's messages. Subclasses give `_handle(kind, body)`,
    which returns the event for one message (or None) and moves `state` as the table allows."""

    def __init__(
        self,
        table: Mapping[Any, Mapping[MsgType | Trigger, Any]],
        start: Enum,
        closed: Enum,
        max_frame: int,
    ) -> None:
        self._table = table
        self._closed_state = closed
        self.state = start
        self._reader = message_reader(max_frame)

    @property
    def closed(self) -> bool:
        return self.state is self._closed_state

    def _move(self, trigger: MsgType | Trigger) -> None:
        """Apply a transition the local caller asked for (raises `TransitionError` if refused)."""
        self.state = transition(self._table, self.state, trigger)

    def _fail(self, reason: str) -> ProtocolError:
        self.state = self._closed_state
        return ProtocolError(reason)

    def _handle(self, kind: int, body: bytes) -> Any:
        raise NotImplementedError

    def _read(self, data: bytes | bytearray | memoryview, events: list[Any]) -> list[Any]:
        """Append the events of the messages in `data` to `events`; stop at the first that closes
        the machine, and end with a `ProtocolError` if the byte stream broke."""
        messages, error = self._reader.feed(data)
        for message in messages:
            event = self._handle(message[0], message[1:])
            if event is not None:
                events.append(event)
            if self.state is self._closed_state:
                return events
        if error is not None:
            events.append(self._fail(error))
        return events
