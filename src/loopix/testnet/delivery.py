"""Which stored messages a provider hands one client connection next, apart from the socket and
the inbox: a pure object the session asks for requests and tells what it found.

One identity is a fleet of one: a single-identity connection is this policy with one key and
`connection_window == key_window`, so both kinds of connection share one delivery rule.
"""

from __future__ import annotations

import msgspec

__all__ = ["DeliveryPolicy", "PushRequest"]


class PushRequest(msgspec.Struct, frozen=True, gc=False):
    """Push up to `limit` of `key`'s stored messages with ids above `after`."""

    key: bytes
    after: int
    limit: int


class DeliveryPolicy:
    """Push windows, cursors and a fair turn for every key of one connection.

    `cursors[key]` is the highest id handed to this connection for `key`; unacknowledged messages
    below it are not handed out again here (a new connection starts from zero, so they are
    redelivered after a reconnect). At most `connection_window` pushed messages are unacknowledged
    (`in_flight`, id → key), and one push round gives a key at most `key_window` of them. A key
    whose round was full, or that got new mail, waits in `waiting` (first come, first served)
    until the keys before it had their turn or acknowledgements make room.
    """

    __slots__ = ("connection_window", "cursors", "in_flight", "key_window", "waiting")

    def __init__(self, key_window: int, connection_window: int) -> None:
        if key_window < 1 or connection_window < 1:
            raise ValueError("push windows must be positive")
        self.key_window = key_window
        self.connection_window = connection_window
        self.cursors: dict[bytes, int] = {}
        self.in_flight: dict[int, bytes] = {}
        self.waiting: dict[bytes, None] = {}  # an ordered set

    def has_mail(self, key: bytes) -> None:
        """`key` may have messages to push (new mail, or registered with mail stored)."""
        self.waiting[key] = None

    def next_push(self) -> PushRequest | None:
        """The next key's turn, or None while no key waits or the connection window is full."""
        if not self.waiting:
            return None
        room = min(self.key_window, self.connection_window - len(self.in_flight))
        if room <= 0:
            return None
        key = next(iter(self.waiting))
        del self.waiting[key]
        return PushRequest(key, self.cursors.get(key, 0), room)

    def pushed(self, request: PushRequest, ids: list[int]) -> None:
        """What the inbox had for `request` (ids ascending) is on its way."""
        if not ids:
            return
        key = request.key
        self.cursors[key] = ids[-1]
        in_flight = self.in_flight
        for message_id in ids:
            in_flight[message_id] = key
        if len(ids) == request.limit:  # there may be more: back of the queue
            self.waiting[key] = None

    def pull_after(self, key: bytes) -> int:
        """The cursor a pull for `key` starts after."""
        return self.cursors.get(key, 0)

    def pulled(self, key: bytes, ids: list[int]) -> None:
        """A pull handed out these ids (ascending); pulls are not in flight (the client asked)."""
        if ids:
            self.cursors[key] = ids[-1]

    def acked(self, ids: tuple[int, ...] | list[int]) -> None:
        in_flight = self.in_flight
        for message_id in ids:
            in_flight.pop(message_id, None)

    def forget(self, keys: set[bytes]) -> bool:
        """`keys` left this connection: drop their cursors, turns and in-flight ids. True if that
        freed room in the window (worth another push round)."""
        for key in keys:
            self.cursors.pop(key, None)
            self.waiting.pop(key, None)
        in_flight = self.in_flight
        stale = [i for i, k in in_flight.items() if k in keys]
        for message_id in stale:
            del in_flight[message_id]
        return bool(stale)
