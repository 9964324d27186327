"""The Python API, shaped like the original Go client's `client.Start()` / `client.SendMessage()`:

    async with loopix.Client.load("alice") as client:
        print(client.address)
        await client.send_message(b"hello", recipient)      # returns once queued
        async for message in client.messages():
            ...
    loopix.Client.load("alice").start()                     # blocking, like `loopix-client run`
"""

from __future__ import annotations

import asyncio
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

from .coordinator import ClientError, Coordinator, Identity, RuntimeOptions, Stats


class ReceivedMessage(msgspec.Struct, frozen=True):
    """A whole message, decrypted and reassembled."""

    data: bytes


class Subscription:
    """An async iterator over received messages; one per consumer, closed with aclose()."""

    def __init__(self, coordinator: Coordinator, identity: int):
        self._coord, self._identity = coordinator, identity
        self._queue = coordinator.subscribe(identity)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ReceivedMessage:
        data = await self._queue.get()
        if data is None:
            raise StopAsyncIteration
        return ReceivedMessage(data)

    async def aclose(self) -> None:
        self._coord.unsubscribe(self._identity, self._queue)


def runtime_options(config: ClientConfig, **overrides) -> RuntimeOptions:
    t, r = config.traffic, config.runtime
    opts = RuntimeOptions(
        directory_url=config.client.directory_server_topology, payload_size=t.packet_size,
        mean_hop_delay_ms=t.mean_hop_delay_ms, payload_cover=t.payload_stream_cover,
        workers=r.workers, topology_refresh_s=r.topology_refresh_s, fetch_rate=t.fetch_rate,
        push=t.delivery == "push",
    )
    for k, v in overrides.items():
        if v is not None:
            setattr(opts, k, v)
    return opts


class Client:
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

    @classmethod
    def load(cls, client_id: str, home: str | Path | None = None, **kwargs) -> Client:
        """The client initialised by `loopix-client init --id client_id`."""
        path = config_mod.config_path(client_id, home)
        if not path.exists():
            raise ClientError(f"no client {client_id!r} under {path.parent.parent}: run `loopix-client init --id {client_id}`")
        cfg = config_mod.load(path)
        keys = load_keypair(path.parent, private_name=cfg.client.priv_key_file, public_name=cfg.client.pub_key_file)
        return cls(cfg, keys, **kwargs)

    # -- lifecycle --
    async def __aenter__(self) -> Client:
        self._coord = Coordinator([self._identity], self._options)
        await self._coord.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._coord is not None:
            await self._coord.stop()

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
    async def send_message(self, message: bytes, recipient: str | ClientAddress) -> None:
        """Encrypt, fragment and queue `message` for `recipient`; returns once queued."""
        if self._coord is None or not self._coord.running:
            raise ClientError("the client is not running")
        if isinstance(recipient, str):
            try:
                recipient = ClientAddress.parse(recipient)
            except ValueError as e:
                raise ValueError(f"bad recipient address: {e}") from None
        self._coord.send_message(0, bytes(message), recipient.client_key, recipient.provider_key)

    def subscribe(self) -> Subscription:
        if self._coord is None:
            raise ClientError("the client is not running")
        return Subscription(self._coord, 0)

    async def messages(self) -> AsyncIterator[bytes]:
        """Every message received from now on, as bytes."""
        sub = self.subscribe()
        try:
            async for m in sub:
                yield m.data
        finally:
            await sub.aclose()

    # -- blocking use --
    def start(self, *, status_interval_s: float = 5.0, on_ready: Callable[[Client], None] | None = None,
              serve: Callable | None = None) -> int:
        """Run until Ctrl-C or SIGTERM, printing a status line every few seconds."""
        return uvloop.run(self._run_forever(status_interval_s, on_ready, serve))

    async def _run_forever(self, status_interval_s: float, on_ready, serve) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with self:
            if on_ready is not None:
                on_ready(self)
            server = await serve(self) if serve is not None else None
            reporter = StatusReporter()
            self._coord.stats_listeners.append(reporter.on_stats)
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), status_interval_s)
                except TimeoutError:
                    print(reporter.line(self.stats), flush=True)
                if self._coord.fatal:
                    print(f"error: {self._coord.fatal}", file=sys.stderr)
                    break
            if server is not None:
                server.close()
                await server.wait_closed()
        return 1 if self._coord.fatal else 0


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
        late = f"late p99 {quantile(self.late, 0.99) / 1000:.2f} ms" if self.late else "late -"
        self.rtt, self.late = [], []
        return (f"sent payload {s.sent[0]} (real {s.real_sent}) loop {s.sent[1]} drop {s.sent[2]} | "
                f"loops back {s.loops_back} {rtt} | {late} | messages in {s.messages_received} | "
                f"fragments acked {s.fragments_acked}/{s.fragments_sent} retransmitted "
                f"{s.fragments_retransmitted} unacked {s.fragments_unacked} ack rtt p50 {s.ack_rtt_ms_p50:.0f} ms")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
