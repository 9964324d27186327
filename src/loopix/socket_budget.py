"""How much a socket API application may have in the client's send queue, apart from the I/O.

A message counts from the moment the socket API accepts it until the client reports it has left
the queue (every packet acknowledged or given up on). While a connection is at its bound, or the
server at its total, the server stops reading that connection (TCP: no more reads; websocket: no
more frames taken, so the library stops reading too) until messages leave: no accepted message
is ever dropped, and what an application can make the client hold is bounded. docs/socket-api.md
states the limits.
"""

from __future__ import annotations

import msgspec

__all__ = ["ConnectionUse", "QueueLimits", "SendBudget"]


class QueueLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Messages and bytes queued by the socket API, per connection and over all connections."""

    connection_messages: int = 1024
    connection_bytes: int = 16 << 20
    total_messages: int = 4096
    total_bytes: int = 64 << 20


class ConnectionUse:
    """What one connection has in the queue now."""

    __slots__ = ("bytes", "messages")

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0


class SendBudget:
    """The queue bound, shared by the connections of one server.

    A message fits if it stays within both bounds, or if its connection (or the server) has
    nothing queued: a single message larger than a byte bound still goes, alone."""

    __slots__ = ("bytes", "limits", "messages", "peak_bytes", "peak_messages")

    def __init__(self, limits: QueueLimits | None = None) -> None:
        self.limits = limits or QueueLimits()
        self.messages = 0
        self.bytes = 0
        self.peak_messages = 0
        self.peak_bytes = 0

    def fits(self, use: ConnectionUse, size: int) -> bool:
        lim = self.limits
        mine = use.messages == 0 or (
            use.messages < lim.connection_messages and use.bytes + size <= lim.connection_bytes
        )
        everyone = self.messages == 0 or (
            self.messages < lim.total_messages and self.bytes + size <= lim.total_bytes
        )
        return mine and everyone

    def take(self, use: ConnectionUse, size: int) -> None:
        use.messages += 1
        use.bytes += size
        self.messages += 1
        self.bytes += size
        self.peak_messages = max(self.peak_messages, self.messages)
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def give_back(self, use: ConnectionUse, size: int) -> None:
        use.messages -= 1
        use.bytes -= size
        self.messages -= 1
        self.bytes -= size
