"""`loopix.Fleet`: many identities in one client, each able to send and receive real messages.

    async with loopix.Fleet.load("fleet/") as fleet:        # `loopix-client init --fleet fleet/`
        print(fleet.address("0"))
        inbox = fleet.messages()                             # (identity, message), from now on
        await fleet.send_message("0", b"hello", fleet.address("7"))
        async for identity, message in inbox:
            ...
    loopix.Fleet.load("fleet/").start()                      # blocking, like `run --fleet`

The machinery is `loopix.Client`'s: one coordinator, its workers and sender, where a client is the
fleet of one identity. Identities are named by the fleet (`"0"`, `"1"`, ... for a keystore; the
directory names for the per-identity layout); an int is taken as its decimal name.
"""

from __future__ import annotations

import array
import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec

from loopix.client import control
from loopix.client.api import IdentityLock, MessageStream, Runner, Subscription, runtime_options
from loopix.client.coordinator import ClientError, Coordinator, Stats
from loopix.client.identities import IdentityTable
from loopix.wire.socket_api import ClientAddress

from .names import NameIndex
from .store import FleetContents, FleetRows, FleetStore, check_count, load_identities, new_keys

__all__ = ["DEFAULT_QUEUE_BYTES", "DEFAULT_QUEUE_MESSAGES", "Fleet", "FleetMessages", "IdentityStats", "UnknownIdentityError"]

log = logging.getLogger("loopix.fleet")

LOCK_FILE = "fleet.lock"
WATCH_INTERVAL_S = 0.5  # how often a running fleet looks for identities added or removed by `fleet add|remove`
DEFAULT_QUEUE_MESSAGES = 100_000
DEFAULT_QUEUE_BYTES = 256 * 2**20


class UnknownIdentityError(ClientError, ValueError):
    """An identity the fleet does not have: the caller's mistake."""


IdentityName = str | int


class IdentityStats(msgspec.Struct, frozen=True):
    """One identity's traffic since the fleet started: packets sent per stream (payload includes
    the real ones), packets received from its provider, loops back and their mean round trip,
    and whole messages sent and received."""

    identity: str
    sent_payload: int
    sent_loop: int
    sent_drop: int
    real_sent: int
    packets_received: int
    loops_back: int
    rtt_mean_ms: float | None
    messages_sent: int
    messages_received: int


class FleetMessages:
    """`(identity, message)` for every message any identity receives, from its making on.

    Bounded (count and bytes): an application that stops reading loses the oldest, counted in
    `dropped`, instead of growing memory without limit.
    """

    def __init__(self, fleet: Fleet, max_messages: int, max_bytes: int):
        self._fleet = fleet
        self._items: deque[tuple[str, bytes]] = deque()
        self._bytes = 0
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.dropped = 0
        self._ready = asyncio.Event()
        self._ended = False
        fleet._coord.message_listeners.append(self._on_message)
        fleet._streams.append(self)

    def _on_message(self, index: int, data: bytes) -> None:
        self._items.append((self._fleet._names.name(index), data))
        self._bytes += len(data)
        while len(self._items) > 1 and (len(self._items) > self.max_messages or self._bytes > self.max_bytes):
            self._bytes -= len(self._items.popleft()[1])
            self.dropped += 1
        self._ready.set()

    def end(self) -> None:
        self._ended = True
        self._ready.set()

    def __aiter__(self) -> FleetMessages:
        return self

    async def __anext__(self) -> tuple[str, bytes]:
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        name, data = self._items.popleft()
        self._bytes -= len(data)
        return name, data

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        coord = self._fleet._coord
        if coord is not None and self._on_message in coord.message_listeners:
            coord.message_listeners.remove(self._on_message)
        if self in self._fleet._streams:
            self._fleet._streams.remove(self)
        self.end()


class Fleet(Runner):
    """The identities of one fleet directory, run by one client process tree."""

    def __init__(self, contents: FleetContents, *, trace_path: str | None = None, workers: int | None = None,
                 directory_url: str | None = None, lock: bool = True, senders: int | None = None):
        self.root = Path(contents.root)
        self.layout = contents.layout
        self.config = contents.config
        self._names = NameIndex()  # name <-> coordinator index; a name that left keeps its index
        self._names.extend(contents.rows.names)  # unique in either layout (extend checks any out of order)
        self._identities = self._table(contents.rows)  # flat: no object per identity
        self._seen_seq, self._removals = contents.max_seq, contents.removals
        self._store: FleetStore | None = None
        self._watch: asyncio.Task | None = None
        self._queries = None
        n = len(self._names)
        self._messages_out = array.array("Q", bytes(8 * n))  # per coordinator index
        self._messages_in = array.array("Q", bytes(8 * n))
        self._options = runtime_options(contents.config, trace_path=trace_path, workers=workers,
                                         directory_url=directory_url, senders=senders)
        # registering costs X25519 on both ends: ~2-5k identities/s on a loaded 2-core box
        self._options.start_timeout_s = max(self._options.start_timeout_s, 20.0 + len(self._names) / 1000)
        self._coord: Coordinator | None = None
        self._streams: list[FleetMessages] = []
        self._lock = IdentityLock(self.root / LOCK_FILE, f"fleet {self.root}") if lock else None
        self.on_waiting: Callable[[str], None] | None = None

    @classmethod
    def load(cls, root: str | Path, **kwargs) -> Fleet:
        """The fleet under `root`: a keystore (`init --fleet`) or one directory per identity."""
        return cls(load_identities(root), **kwargs)

    # -- lifecycle (Runner's, as for a Client) --
    async def __aenter__(self) -> Fleet:
        await self._open(self._identities, self._options, self._started)
        return self

    async def _started(self) -> None:
        self._coord.message_listeners.append(self._count_message)
        if self.layout == "keystore":
            self._store = FleetStore(self.root)
            version = self._store.data_version()
            self._sync()  # what changed since the load
            self._watch = asyncio.create_task(self._watch_store(version))
        await self._serve_queries()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _serve_queries(self) -> None:
        """`loopix-client fleet stats DIR` asks through DIR/fleet.sock (see query.py)."""
        from .query import QueryServer

        try:
            self._queries = await QueryServer(self, self.root).start()
        except OSError as exc:  # e.g. a path too long for a Unix socket: stats from the API only
            log.warning("fleet %s: no stats socket (%s); `fleet stats` will not reach this fleet",
                        self.root, exc.strerror or exc)

    async def close(self) -> None:
        try:
            if self._queries is not None:
                await self._queries.close()
                self._queries = None
            if self._watch is not None:
                self._watch.cancel()
                await asyncio.gather(self._watch, return_exceptions=True)
            if self._store is not None:
                self._store.close()
            if self._coord is not None:
                await self._coord.stop()
        finally:
            for stream in list(self._streams):
                stream.end()
            if self._lock is not None:
                self._lock.release()

    # -- who --
    @property
    def names(self) -> list[str]:
        """Every identity's name, in the fleet's order."""
        return self._names.names()

    def __len__(self) -> int:
        return len(self._names)

    def _table(self, rows: FleetRows, only: list[int] | None = None) -> IdentityTable:
        """The rows (or those at positions `only`) as the coordinator keeps them, at the fleet's rates."""
        t = self.config.traffic
        rates = (t.payload_rate, t.loop_rate, t.drop_rate)
        table = IdentityTable()
        if only is None:
            table.extend(rows.secrets, rows.publics, rates, rows.pinned)
        else:
            k = 32
            table.extend(b"".join(rows.secrets[i * k:(i + 1) * k] for i in only),
                         b"".join(rows.publics[i * k:(i + 1) * k] for i in only), rates,
                         {j: rows.pinned[i] for j, i in enumerate(only) if i in rows.pinned})
        return table

    # -- joining and leaving while running --
    async def add(self, count: int) -> list[str]:
        """`count` new identities: written to the keystore, then running (no restart)."""
        if self._store is None:
            raise ClientError("identities join a running keystore fleet (init --fleet DIR --count N)")
        check_count(count)
        keys = await asyncio.to_thread(new_keys, count)  # the X25519s, off the event loop
        names = self._store.add(count, keys)
        self._sync()
        return names

    async def remove(self, names: list[IdentityName]) -> None:
        """Delete identities from the keystore and stop them (their keys are gone)."""
        if self._store is None:
            raise ClientError("identities leave a running keystore fleet (init --fleet DIR --count N)")
        names = [str(n) for n in names]
        for name in names:
            self._resolve(name)
        self._store.remove(names)
        self._sync()

    def _sync(self) -> None:
        """Bring the running identities in line with the keystore."""
        changes = self._store.changes_since(self._seen_seq, self._removals)
        added = changes.added
        joining = [k for k, name in enumerate(added.names) if name not in self._names]
        if joining:
            table = self._table(added, None if len(joining) == len(added) else joining)
            indexes = self._coord.add_identities(table)
            self._messages_out.frombytes(bytes(8 * len(joining)))
            self._messages_in.frombytes(bytes(8 * len(joining)))
            if self._names.extend([added.names[k] for k in joining]) != indexes:
                raise RuntimeError("fleet names and coordinator indexes went out of step")
        self._seen_seq, self._removals = changes.max_seq, changes.removals
        if changes.names is not None:  # some were removed since the last look: who?
            now = changes.names
            leaving = [i for i in self._names.indexes() if self._names.name(i) not in now]
            if leaving:
                self._coord.remove_identities(leaving)
                for i in leaving:
                    self._names.remove(i)

    async def _watch_store(self, version: int) -> None:
        """`loopix-client fleet add|remove DIR` from another process: seen here within a poll."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = self._store.data_version()
            if now != version:
                version = now
                try:
                    self._sync()
                except ClientError as exc:  # e.g. a pinned provider not in the topology: say, go on
                    log.error("fleet %s: could not apply the keystore's change: %s", self.root, exc)

    def _resolve(self, identity: IdentityName) -> int:
        name = str(identity)
        index = self._names.get(name)
        if index is None:
            shown = name if len(name) <= 40 else name[:37] + "..."
            raise UnknownIdentityError(f"no identity {shown!r} in the fleet {self.root}")
        return index

    def address(self, identity: IdentityName) -> str:
        """`<client key>@<provider key>` of one identity (known once the fleet has started)."""
        index = self._resolve(identity)
        if self._coord is None or not self._coord.provider_of:
            raise ClientError("addresses are known once the fleet has started")
        return str(ClientAddress(*self._coord.address_of(index)))

    @property
    def stats(self) -> Stats:
        return self._coord.stats if self._coord else Stats()

    # -- messages --
    async def send_message(self, identity: IdentityName, message: bytes, recipient: str | ClientAddress, *,
                           on_done: Callable[[], None] | None = None) -> None:
        """Encrypt, fragment and queue `message` from `identity` to `recipient`; returns once queued.
        `on_done` runs once it has left the send queue (the socket API's bound)."""
        index = self._resolve(identity)
        if self._coord is None or not self._coord.running:
            raise ClientError("the fleet is not running")
        if isinstance(recipient, str):
            try:
                recipient = ClientAddress.parse(recipient)
            except ValueError as e:
                raise ValueError(f"bad recipient address: {e}") from None
        self._coord.send_message(index, bytes(message), recipient.client_key, recipient.provider_key,
                                 on_done=on_done)
        self._messages_out[index] += 1

    @property
    def messages_sent_total(self) -> int:
        return sum(self._messages_out)

    def _count_message(self, index: int, data: bytes) -> None:
        self._messages_in[index] += 1

    # -- per-identity counters (on request: they live in flat arrays, mostly in the sender) --
    def _stats_of(self, row: control.IdentityCounters) -> IdentityStats:
        i = row.identity
        rtt = row.rtt_sum_ns / row.loops_back / 1e6 if row.loops_back else None
        return IdentityStats(self._names.name(i), *row.sent, row.real_sent, row.received, row.loops_back, rtt,
                             self._messages_out[i], self._messages_in[i])

    async def identity_stats(self, *identities: IdentityName) -> list[IdentityStats]:
        """Counters of the named identities (UnknownIdentityError for a name not in the fleet)."""
        indexes = [self._resolve(i) for i in identities]
        if self._coord is None:
            raise ClientError("the fleet is not running")
        reply = await self._coord.identity_stats(indexes)
        return [self._stats_of(row) for row in reply.identities]

    async def top_identities(self, k: int = 10) -> list[IdentityStats]:
        """The `k` identities with the most packets sent and received."""
        if self._coord is None:
            raise ClientError("the fleet is not running")
        reply = await self._coord.identity_stats([], top=k)
        return [self._stats_of(row) for row in reply.top]

    def messages(self, max_messages: int = DEFAULT_QUEUE_MESSAGES,
                 max_bytes: int = DEFAULT_QUEUE_BYTES) -> FleetMessages:
        """`async for identity, message in fleet.messages()`: every identity's, from this call on."""
        if self._coord is None:
            raise ClientError("the fleet is not running")
        return FleetMessages(self, max_messages, max_bytes)

    def subscribe(self, identity: IdentityName) -> Subscription:
        """One identity's messages (`ReceivedMessage` objects), from this call on."""
        index = self._resolve(identity)
        if self._coord is None:
            raise ClientError("the fleet is not running")
        return Subscription(self._coord, index)

    def messages_for(self, identity: IdentityName) -> AsyncIterator[bytes]:
        """One identity's messages as bytes, from this call on."""
        return MessageStream(self.subscribe(identity))
