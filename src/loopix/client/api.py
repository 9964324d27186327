"""The Python API, shaped like the original Go client's `client.Start()` / `client.SendMessage()`:

    async with loopix.Client.load("alice") as client:
        print(client.address)
        inbox = client.messages()                           # receives from this call on
        await client.send_message(b"hello", recipient)      # returns once queued
        async for message in inbox:
            ...
    loopix.Client.load("alice").start()                     # blocking, like `loopix-client run`

A client loaded from its directory holds `clients/<id>/client.lock` while it runs, so the same
identity cannot run twice at once (two senders with one key would register against each other).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import statistics
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import uvloop

from loopix import config as config_mod
from loopix.config import ClientConfig
from loopix.keys import KeyPair, load_keypair
from loopix.wire.b64 import b64url_decode, b64url_encode
from loopix.wire.socket_api import ClientAddress

from .acks import AckConfig
from .coordinator import ClientError, Coordinator, Identity, RuntimeOptions, Stats

LOCK_FILE = "client.lock"
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C), as a shell reports it; SIGTERM is a normal stop (0)


class ReceivedMessage(msgspec.Struct, frozen=True):
    """A whole message, decrypted and reassembled. `sender_tag`: the conversation's tag when the
    sender attached reply blocks (answer with `Client.reply`), or when this is a reply to us."""

    data: bytes
    sender_tag: bytes | None = None


class Subscription:
    """An async iterator over received messages; one per consumer, closed with aclose()."""

    def __init__(self, coordinator: Coordinator, identity: int):
        self._coord, self._identity = coordinator, identity
        self._queue = coordinator.subscribe(identity)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ReceivedMessage:
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        return ReceivedMessage(item.data, item.sender_tag)

    async def aclose(self) -> None:
        self._coord.unsubscribe(self._identity, self._queue)


class MessageStream:
    """Received message bytes, subscribed when made (so nothing sent after it is missed)."""

    def __init__(self, sub: Subscription):
        self._sub = sub

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> bytes:
        return (await self._sub.__anext__()).data

    async def aclose(self) -> None:
        await self._sub.aclose()

    def __del__(self) -> None:  # a stream dropped without aclose() must not keep collecting
        self._sub._coord.unsubscribe(self._sub._identity, self._sub._queue)


class IdentityLock:
    """An exclusive flock on `clients/<id>/client.lock`, released by close() or by process exit."""

    def __init__(self, path: Path, client_id: str):
        self.path, self.client_id = path, client_id
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ClientError(f"cannot open the lock file {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ClientError(f"client {self.client_id!r} is already running (pid {holder}; "
                              f"lock {self.path})") from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def runtime_options(config: ClientConfig, **overrides) -> RuntimeOptions:
    t, r = config.traffic, config.runtime
    opts = RuntimeOptions(
        directory_url=config.client.directory_server_topology, payload_size=t.packet_size,
        mean_hop_delay_ms=t.mean_hop_delay_ms, payload_cover=t.payload_stream_cover,
        workers=r.workers, senders=r.senders, sender_coalesce_us=r.sender_coalesce_us,
        sender_min_gap_us=r.sender_min_gap_us,
        topology_refresh_s=r.topology_refresh_s, fetch_rate=t.fetch_rate,
        push=t.delivery == "push",
        directory_key=b64url_decode(config.client.directory_key) if config.client.directory_key else None,
        acks=AckConfig(wait_multiplier=config.acks.wait_multiplier,
                       wait_addition_s=config.acks.wait_addition_s,
                       max_retransmissions=config.acks.max_retransmissions),
    )
    for k, v in overrides.items():
        if v is not None:
            setattr(opts, k, v)
    return opts


class Runner:
    """What a Client and a Fleet share beyond the coordinator: the blocking run with its status
    line and signal handling. A subclass has `__aenter__`, `close`, `stats` and `_coord`."""

    _coord: Coordinator | None
    _lock: IdentityLock | None
    on_waiting: Callable[[str], None] | None

    async def _open(self, identities, options: RuntimeOptions, then: Callable | None = None) -> None:
        """Take the lock, start the coordinator, then `await then()`; on any failure undo all of it
        (`close`), so nothing is left running or locked."""
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._coord = Coordinator(identities, options)
            self._coord.on_waiting = self.on_waiting
            await self._coord.start()
            if then is not None:
                await then()
        except BaseException:
            await self.close()
            raise

    # -- blocking use --
    def start(self, *, status_interval_s: float = 5.0, on_ready: Callable | None = None,
              serve: Callable | None = None) -> int:
        """Run until Ctrl-C (exit status 130) or SIGTERM (0), printing a status line every few
        seconds; 1 if the client failed while running. Ctrl-C also stops a client still starting."""
        return uvloop.run(self._run_forever(status_interval_s, on_ready, serve))

    async def _run_forever(self, status_interval_s: float, on_ready, serve) -> int:
        stop = asyncio.Event()
        received: list[int] = []
        loop = asyncio.get_running_loop()

        def on_signal(sig: int) -> None:
            received.append(sig)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)

        def stopped_by_signal() -> int:
            return EXIT_INTERRUPTED if signal.SIGINT in received else 0

        starting = asyncio.create_task(self.__aenter__())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped while waiting for the directory or the provider
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return stopped_by_signal()
        stopping.cancel()
        starting.result()  # a start that failed raises here (the client is already stopped)
        server = None
        try:
            if on_ready is not None:
                on_ready(self)
            server = await serve(self) if serve is not None else None
            reporter = StatusReporter()
            self._coord.stats_listeners.append(reporter.on_stats)
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), status_interval_s)
                except TimeoutError:
                    extra = getattr(server, "status", None)  # e.g. the socket's held messages
                    line = reporter.line(self.stats)
                    print(f"{line} | {extra()}" if extra else line, flush=True)
                if self._coord.fatal:
                    print(f"error: {self._coord.fatal}", file=sys.stderr)
                    break
        finally:
            if server is not None:
                server.close()
                await server.wait_closed()
            await self.close()
        return 1 if self._coord.fatal else stopped_by_signal()


class Client(Runner):
    """One identity's Loopix client: its coordinator, workers and sender."""

    def __init__(self, config: ClientConfig, keys: KeyPair, *, trace_path: str | None = None,
                 workers: int | None = None, directory_url: str | None = None):
        self.config = config
        self.keys = keys
        t = config.traffic
        provider = b64url_decode(config.client.provider_id) if config.client.provider_id else None
        self._identity = Identity(keys, provider, t.payload_rate, t.loop_rate, t.drop_rate)
        self._options = runtime_options(config, trace_path=trace_path, workers=workers,
                                         directory_url=directory_url)
        self._coord: Coordinator | None = None
        self._lock: IdentityLock | None = None
        self.on_waiting: Callable[[str], None] | None = None  # told once while the directory is away

    @classmethod
    def load(cls, client_id: str, home: str | Path | None = None, **kwargs) -> Client:
        """The client initialised by `loopix-client init --id client_id`."""
        path = config_mod.config_path(client_id, home)
        if not path.exists():
            raise ClientError(f"no client {client_id!r} in {path.parent.parent.parent} (LOOPIX_HOME={path.parent.parent.parent.parent}): run `loopix-client init --id {client_id}` first")
        cfg = config_mod.load(path)
        keys = load_keypair(path.parent, private_name=cfg.client.priv_key_file, public_name=cfg.client.pub_key_file)
        client = cls(cfg, keys, **kwargs)
        client._lock = IdentityLock(path.parent.parent / LOCK_FILE, client_id)
        return client

    # -- lifecycle --
    async def __aenter__(self) -> Client:
        await self._open([self._identity], self._options)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            if self._coord is not None:
                await self._coord.stop()
        finally:
            if self._lock is not None:
                self._lock.release()

    @property
    def address(self) -> str:
        """`<client key>@<provider key>`, what a sender needs to reach this client."""
        if self._coord is None or not self._coord.provider_of:
            raise ClientError("the address is known once the client has started")
        return str(ClientAddress(self.keys.public, self._coord.provider_of[0]))

    @property
    def public_key_b64(self) -> str:
        return b64url_encode(self.keys.public)

    @property
    def stats(self) -> Stats:
        return self._coord.stats if self._coord else Stats()

    # -- messages --
    async def send_message(self, message: bytes, recipient: str | ClientAddress, *, reply_surbs: int = 0,
                           on_done: Callable[[], None] | None = None) -> None:
        """Encrypt, fragment and queue `message` for `recipient`; returns once queued. With
        `reply_surbs` N > 0 it carries N single-use reply blocks and our sender tag for this
        recipient, who can answer with `reply(tag, data)` without learning our address.
        `on_done` runs once the message has left the send queue (every packet acknowledged or
        given up on)."""
        if self._coord is None or not self._coord.running:
            raise ClientError("the client is not running")
        if isinstance(recipient, str):
            try:
                recipient = ClientAddress.parse(recipient)
            except ValueError as e:
                raise ValueError(f"bad recipient address: {e}") from None
        self._coord.send_message(0, bytes(message), recipient.client_key, recipient.provider_key,
                                 reply_surbs=reply_surbs, on_done=on_done)

    async def reply(self, sender_tag: bytes, message: bytes, *,
                    on_done: Callable[[], None] | None = None) -> None:
        """Answer the sender behind `sender_tag` (from a ReceivedMessage) through its reply blocks;
        returns once queued. ClientError for a tag that never brought blocks."""
        if self._coord is None or not self._coord.running:
            raise ClientError("the client is not running")
        self._coord.reply(0, bytes(sender_tag), bytes(message), on_done=on_done)

    def subscribe(self) -> Subscription:
        if self._coord is None:
            raise ClientError("the client is not running")
        return Subscription(self._coord, 0)

    def messages(self) -> AsyncIterator[bytes]:
        """Every message received from this call on, as bytes (`async for m in client.messages()`)."""
        return MessageStream(self.subscribe())


class StatusReporter:
    """Keeps the RTT and lateness samples between status lines."""

    def __init__(self) -> None:
        self.rtt: list[float] = []
        self.late: list[float] = []

    def on_stats(self, stats: Stats, msg) -> None:
        self.rtt.extend(r / 1e6 for r in msg.loop_back_rtt_ns)
        self.late.extend(msg.lateness_us)

    def line(self, s: Stats) -> str:
        rtt = f"rtt p50 {statistics.median(self.rtt):.0f} ms" if self.rtt else "rtt -"
        late = f"lateness p99 {quantile(self.late, 0.99) / 1000:.2f} ms" if self.late else "lateness -"
        self.rtt, self.late = [], []
        return (f"sent payload {s.sent[0]} (real {s.real_sent}) loop {s.sent[1]} drop {s.sent[2]} | "
                f"loops back {s.loops_back} {rtt} | {late} | messages in {s.messages_received} | "
                f"fragments acked {s.fragments_acked}/{s.fragments_sent} retransmitted "
                f"{s.fragments_retransmitted} unacked {s.fragments_unacked} ack rtt p50 {s.ack_rtt_ms_p50:.0f} ms")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
