"""What mixnodes and providers share: framed links in, batched unwrap, replay filter, delay queue,
forwarding over reused connections, counters, and presence/metrics reports to the directory.

The hot path is in C (`ForwardEngine`, csrc/node.c): one call per socket read parses its frames into
the backlog; one call per batch unwraps, refuses replays, holds delayed packets and returns ready
frames grouped by next hop, which go out in one write per hop. Python touches no packet on the way,
only the few groups, drops and lateness runs of each batch. Everything that waits (the backlog,
delayed packets, packets for a peer that is still connecting) sits in bounded structures, and a dead
next hop costs dropped packets, never a stalled node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from loopix import directory_auth, keys
from loopix.argtypes import argtype, fraction
from loopix.fileio import write_private_file
from loopix.sphinx import PACKET_SIZES
from loopix.testnet.decisions import ForwardNow
from loopix.testnet.engine import ForwardEngine, LinkFrames, StepOutput
from loopix.testnet.limits import ConnectionGate, RateLimitedLog
from loopix.wire.address import AddressError, decode_node_address, encode_node_address, format_host
from loopix.wire.b64 import b64url_encode
from loopix.wire.framing import frame_header

from .node_metrics import ForwardingMetrics

__all__ = [
    "Counters",
    "Forwarder",
    "Node",
    "NodeConfig",
    "NodeLink",
    "add_node_arguments",
    "load_or_create_secret",
    "node_config_from_args",
    "run_node",
]

log = logging.getLogger(__name__)
_remote_log = RateLimitedLog(log)
_VALID_SIZES = frozenset(PACKET_SIZES.values())


class NodeConfig(msgspec.Struct, kw_only=True):
    """Tunables of one node. The defaults suit a laptop testnet."""

    host: str = "127.0.0.1"
    port: int
    directory: str | None = None
    presence_interval: float = 2.0
    metrics_interval: float = 1.0
    batch: int = 128
    """Packets unwrapped by one C call, and per event-loop iteration (~10 ms of work)."""
    replay_capacity: int = 100_000
    """The replay filter remembers the last `replay_capacity`..2x that many packets."""
    max_delay: float = 10.0
    """Header delays above this are capped (Nym's maximum_forward_packet_delay)."""
    max_queue: int = 200_000
    """Packets held for their delay at most; beyond, new ones are dropped."""
    peer_queue: int = 4096
    """Packets waiting for a next hop that is still connecting."""
    peer_write_buffer: int = 8 << 20
    """Bytes the kernel may not yet have taken for one next hop before we drop."""
    max_peers: int = 4096
    drop_rate: float = 0.0
    """Fault injection: drop this fraction of the packets to forward, counted as "injected"."""
    prometheus_port: int | None = None
    """Serve the counters for Prometheus on 127.0.0.1:PORT (see testnet/prometheus.py)."""
    identity_file: str | None = None
    """Ed25519 identity key file (created 0600 if missing): presence and metrics are signed."""
    directory_key: str | None = None
    """The directory's Ed25519 key (base64url): the Sphinx key proof is made for it."""
    max_connections: int | None = None
    """Inbound connections at most (default: 3/4 of the fd limit left after a reserve)."""
    idle_timeout: float = 60.0
    """An inbound link that completes no frame for this long is closed."""
    peer_idle: float = 120.0
    """A next hop we have sent nothing to for this long loses its connection and table slot."""
    replay_file: str | None = None
    """Where the replay filter is kept across restarts (saved every `replay_save_interval` s and
    at shutdown, 0600, bound to the node's key)."""
    replay_save_interval: float = 10.0


# --- small parts (tested alone) ------------------------------------------------------------------


class Counters:
    """Cumulative since start: what the directory's dashboard turns into rates."""

    def __init__(self) -> None:
        self.received = 0
        self.forwarded = 0
        self.sent: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.extra: dict[str, int] = {}

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def bump(self, name: str, n: int = 1) -> None:
        self.extra[name] = self.extra.get(name, 0) + n

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


# --- forwarding ----------------------------------------------------------------------------------


class _OutboundProtocol(asyncio.Protocol):
    """An outbound link: we only write; whatever the peer sends is ignored."""

    def __init__(self, peer: _Peer) -> None:
        self.peer = peer

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.lost(self)


class _Peer:
    """One next hop: a reused connection, a bounded wait queue, and reconnect backoff."""

    __slots__ = (
        "backoff",
        "connecting",
        "forwarder",
        "host",
        "label",
        "last_used",
        "out",
        "out_count",
        "port",
        "protocol",
        "retry_at",
        "transport",
        "waiting",
    )

    def __init__(self, forwarder: Forwarder, host: str, port: int) -> None:
        self.forwarder = forwarder
        self.host, self.port = host, port
        self.label = format_host(host, port)
        self.transport: asyncio.Transport | None = None
        self.protocol: _OutboundProtocol | None = None
        self.connecting = False
        self.waiting: deque[bytes] = deque()
        self.out: list[bytes] = []
        """Frame bytes queued since the last flush (headers, packets or whole runs of frames)."""
        self.out_count = 0
        self.retry_at = 0.0
        self.backoff = 0.0
        self.last_used = 0.0

    @property
    def host_port(self) -> tuple[str, int]:
        return (self.host, self.port)

    def lost(self, protocol: _OutboundProtocol) -> None:
        if protocol is self.protocol:
            self.transport = self.protocol = None

    async def connect(self) -> None:
        fw = self.forwarder
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _OutboundProtocol(self), self.host, self.port),
                fw.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            self.connecting = False
            self.backoff = min(max(self.backoff * 2, fw.min_backoff), fw.max_backoff)
            self.retry_at = loop.time() + self.backoff
            fw.counters.drop("connect_failed", len(self.waiting))
            self.waiting.clear()
            log.debug("next hop %s unreachable (%s); retry in %.1fs", self.label, exc, self.backoff)
            return
        self.connecting = False
        self.backoff = 0.0
        self.transport, self.protocol = transport, protocol  # type: ignore[assignment]
        while self.waiting:
            fw.write(self, self.waiting.popleft())
        fw.flush()


class Forwarder:
    """Sends packets to next hops by their 32-byte Sphinx address, one connection per hop.

    `send` only queues (connecting lazily on first use); `flush` writes each touched peer's frames
    in one call. A hop that refuses connections is not retried before its backoff ends, and its
    packets are dropped meanwhile, so it costs nothing but counters.
    """

    def __init__(self, config: NodeConfig, counters: Counters) -> None:
        self.config = config
        self.counters = counters
        self.peers: dict[tuple[str, int], _Peer] = {}
        """Keyed by the decoded (ip, port): addresses that differ only in ignored padding share one."""
        self._by_address: dict[bytes, _Peer] = {}
        """Raw 32-byte addresses seen recently → peer (a cache, cleared with the peer)."""
        self._dirty: list[_Peer] = []
        self.connect_timeout = 2.0
        self.min_backoff = 0.1
        self.max_backoff = 5.0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return sum(len(p.waiting) for p in self.peers.values())

    def _peer(self, address: bytes, now: float) -> _Peer | None:
        peer = self._by_address.get(address)
        if peer is not None:
            return peer
        try:
            host, port = decode_node_address(address)
        except (AddressError, ValueError):
            self.counters.drop("bad_address")
            return None
        if port == 0:
            self.counters.drop("bad_address")
            return None
        peer = self.peers.get((host, port))
        if peer is None:
            if len(self.peers) >= self.config.max_peers:
                self.evict_idle(now)
            if len(self.peers) >= self.config.max_peers:
                self.counters.drop("too_many_peers")
                return None
            peer = self.peers[(host, port)] = _Peer(self, host, port)
        if len(self._by_address) >= 4 * self.config.max_peers:
            self._by_address.clear()  # only a cache: padding variants cannot grow it
        self._by_address[address] = peer
        return peer

    def evict_idle(self, now: float) -> int:
        """Close and forget peers nothing was sent to for `peer_idle` seconds; how many went."""
        cutoff = now - self.config.peer_idle
        idle = [
            key
            for key, p in self.peers.items()
            if p.last_used < cutoff and not p.connecting and not p.out and not p.waiting
        ]
        for key in idle:
            peer = self.peers.pop(key)
            if peer.transport is not None:
                peer.transport.close()
        if idle:
            self._by_address = {a: p for a, p in self._by_address.items() if p.host_port in self.peers}
            self.counters.bump("peers_evicted", len(idle))
        return len(idle)

    def send_many(self, items: list[ForwardNow], now: float) -> None:
        """`send` for packets going out at one time: a connected peer's frames are queued here
        directly (looked up once per run of one address); anything else goes through `send`."""
        address = peer = out = None
        dirty = self._dirty
        header = b""
        length = -1
        for item in items:
            packet = item.packet
            if item.address != address:
                address = item.address
                peer = self._by_address.get(address)
                if peer is not None and (peer.transport is None or peer.transport.is_closing()):
                    peer = None
                if peer is not None:
                    peer.last_used = now
                    out = peer.out
            if peer is None:
                self.send(address, packet, now)
                continue
            if len(packet) != length:
                length = len(packet)
                header = frame_header(length)
            if not out:
                dirty.append(peer)
            out.append(header)
            out.append(packet)
            peer.out_count += 1  # type: ignore[union-attr]

    def send(self, address: bytes, packet: bytes, now: float | None = None) -> None:
        if now is None:
            now = asyncio.get_running_loop().time()
        peer = self._peer(address, now)
        if peer is None:
            return
        peer.last_used = now
        transport = peer.transport
        if transport is not None:
            if not transport.is_closing():
                self.write(peer, packet)
                return
            peer.transport = peer.protocol = None
        loop = asyncio.get_running_loop()
        if peer.connecting:
            if len(peer.waiting) >= self.config.peer_queue:
                self.counters.drop("peer_queue_full")
            else:
                peer.waiting.append(packet)
            return
        if loop.time() < peer.retry_at:
            self.counters.drop("peer_down")
            return
        peer.connecting = True
        peer.waiting.append(packet)
        task = loop.create_task(peer.connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def write(self, peer: _Peer, packet: bytes) -> None:
        if not peer.out:
            self._dirty.append(peer)
        peer.out.append(frame_header(len(packet)))
        peer.out.append(packet)
        peer.out_count += 1

    def send_frames(self, groups: list[tuple[bytes, int, int, memoryview]], now: float) -> None:
        """Runs of ready frames (next hop, packet length, count, frames) from the engine: a connected
        hop takes each run whole; anything else goes packet by packet through `send`, copied out
        (a packet waiting for a connection must not pin the engine's whole buffer)."""
        by_address, dirty = self._by_address, self._dirty
        for address, length, count, frames in groups:
            peer = by_address.get(address)
            if peer is not None and peer.transport is not None and not peer.transport.is_closing():
                peer.last_used = now
                if not peer.out:
                    dirty.append(peer)
                peer.out.append(frames)
                peer.out_count += count
                continue
            step = length + 3
            for i in range(count):
                self.send(address, bytes(frames[i * step + 3 : (i + 1) * step]), now)

    def flush(self) -> None:
        """Write everything queued since the last flush, one write per peer."""
        dirty, self._dirty = self._dirty, []
        counters = self.counters
        for peer in dirty:
            out, peer.out = peer.out, []
            n, peer.out_count = peer.out_count, 0
            transport = peer.transport
            if transport is None or transport.is_closing():
                counters.drop("connection_lost", n)
                continue
            if transport.get_write_buffer_size() > self.config.peer_write_buffer:
                counters.drop("backpressure", n)  # the hop does not read: never stall for it
                continue
            # one run of the engine's frames goes as it is; several pieces, joined, in one write
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            counters.forwarded += n
            counters.sent[peer.label] = counters.sent.get(peer.label, 0) + n

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for peer in self.peers.values():
            if peer.transport is not None:
                peer.transport.close()


# --- inbound links -------------------------------------------------------------------------------


class NodeLink(asyncio.Protocol):
    """One inbound Nym-framed link. A corrupt frame closes this connection and nothing else.

    Decoded packets go to the node's backlog; the node pauses reading on its links while the
    backlog is full, so TCP pushes back on senders instead of memory growing.
    """

    reports_progress = True
    """For the listener's gate: a complete frame is progress, bytes of a partial one are not."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.frames = LinkFrames(node.engine)
        self.transport: asyncio.Transport | None = None
        self.gate_connection: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        node = self.node
        frames, full, error = self.frames.feed(data, asyncio.get_running_loop().time())
        if full:
            node.counters.drop("backlog_full", full)
        if frames:
            node.counters.received += frames
            if self.gate_connection is not None:
                self.gate_connection.progress()
            node.frames_arrived(self)
        if error is not None:
            node.counters.drop("corrupt_frame")
            _remote_log.info("closing link: %s", error.reason)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.node.link_closed(self)


# --- the node ------------------------------------------------------------------------------------


class Node:
    """A node's packet machinery; `MixNode` and `Provider` add what happens to a `Final`."""

    kind = "node"

    def __init__(self, config: NodeConfig, secret: bytes) -> None:
        self.config = config
        self.public_key = keys.public_from_secret(secret)
        self.public_b64 = b64url_encode(self.public_key)
        self.host = format_host(config.host, config.port)
        self.address = encode_node_address(config.host, config.port)
        self.counters = Counters()
        self.forwarding = ForwardingMetrics()
        self.engine = ForwardEngine(
            secret, batch=config.batch, replay_capacity=config.replay_capacity, max_queue=config.max_queue,
            max_delay=config.max_delay, drop_rate=config.drop_rate,
        )  # fmt: skip
        if config.replay_file and os.path.exists(config.replay_file):
            with open(config.replay_file, "rb") as f:
                self.counters.bump("replay_tags_loaded", self.engine.replay_load(f.read(), self.public_key))
        self.forwarder = Forwarder(config, self.counters)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._announce_now = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: asyncio.Server | None = None
        self._drain_scheduled = False
        self._paused: set[NodeLink] = set()
        self._high_water = 4 * config.batch
        self.gate = ConnectionGate(config.max_connections, config.idle_timeout)
        self.identity = (
            directory_auth.load_or_create_identity(config.identity_file)
            if config.identity_file
            else None
        )
        self._proof_key = (
            directory_auth.proof_key(secret, directory_auth.decode_public(config.directory_key, "directory key"))
            if config.directory_key
            else None
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.host}, {self.public_b64})"

    # --- packets ---

    def frames_arrived(self, link: NodeLink) -> None:
        """A read put packets in the engine's backlog; they are unwrapped a batch per loop iteration.

        Unwrapping in `data_received` itself would let a busy link starve everything else the
        loop does (timers, connects, presence): libuv reads a ready socket many times per
        iteration. A batch per iteration keeps the delay timer and the forwarder responsive.
        """
        if not self._drain_scheduled:
            self._drain_scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)
        if self.engine.backlog >= self._high_water and link.transport is not None:
            link.transport.pause_reading()
            self._paused.add(link)

    def link_closed(self, link: NodeLink) -> None:
        self._paused.discard(link)

    def _drain(self) -> None:
        self._step()
        backlog = self.engine.backlog
        if backlog:
            asyncio.get_running_loop().call_soon(self._drain)
        else:
            self._drain_scheduled = False
        if self._paused and backlog < self._high_water // 2:
            paused, self._paused = self._paused, set()
            for link in paused:
                if link.transport is not None:
                    link.transport.resume_reading()

    def handle_packets(self, packets: list[bytes]) -> None:
        """Unwrap, filter and queue packets now (tests and in-process callers)."""
        self.counters.received += len(packets)
        valid = [p for p in packets if len(p) in _VALID_SIZES]
        if len(valid) < len(packets):
            self.counters.drop("bad_size", len(packets) - len(valid))
        taken = self.engine.push(valid, asyncio.get_running_loop().time())
        if taken < len(valid):
            self.counters.drop("backlog_full", len(valid) - taken)
        while self.engine.backlog:
            self._step()

    def _step(self) -> None:
        """One batch of the backlog through the engine, and what it decided carried out."""
        now = asyncio.get_running_loop().time()
        self._carry_out(self.engine.step(now), now)

    def _carry_out(self, out: StepOutput, now: float) -> None:
        counters = self.counters
        try:
            if out.failed:
                counters.drop("internal_error", out.failed)
            for reason, n in out.drops:
                counters.drop(reason, n)
            if out.capped:
                counters.bump("delay_capped", out.capped)
            if out.groups:
                self.forwarder.send_frames(out.groups, now)
            if out.late:
                self.forwarding.forwarded_late_runs(out.late)
            if out.finals:
                self.on_finals(out.finals)
        except Exception:  # a bug must not take the node down with it
            log.exception("%s: error while forwarding packets", self.kind)
            counters.drop("internal_error", out.processed)
        self.forwarding.queue_seen(self.engine.held + self.engine.backlog)
        self.forwarder.flush()
        self._arm_timer()

    def on_finals(self, finals: list[tuple[bytes, bytes]]) -> None:
        """(destination, message) of packets that ended here. A mixnode is never a last hop."""
        self.counters.drop("final_at_mixnode", len(finals))

    def _arm_timer(self) -> None:
        due = self.engine.next_due()
        if due is None:
            return
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = asyncio.get_running_loop().call_at(due, self._release)

    def _release(self) -> None:
        """The one timer: forward everything that is due, then re-arm for the next."""
        self._timer = None
        now = asyncio.get_running_loop().time()
        self._carry_out(self.engine.release(now, 0.0005), now)

    # --- directory ---

    def presence(self) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of this node's presence announcement."""
        raise NotImplementedError

    def metrics(self) -> dict[str, Any]:
        c = self.counters
        return {
            "pubKey": self.public_b64,
            "host": self.host,
            "kind": self.kind,
            "sent": dict(c.sent),
            "received": c.received,
            "forwarded": c.forwarded,
            "dropped": dict(c.dropped),
            "queue": self.engine.held + self.forwarder.waiting + self.engine.backlog,
            "unwrap_cpu_s": round(self.engine.unwrap_seconds, 6),
            **c.extra,
            **self.forwarding.report(),
        }

    def announce_soon(self) -> None:
        """Announce presence now rather than at the next interval (e.g. a new client)."""
        self._announce_now.set()

    def signed_body(self, path: str, body: dict[str, Any], now_ns: int) -> tuple[bytes, dict[str, str]]:
        """The body to POST and its headers: signed by the identity key when the node has one,
        with the Sphinx key proof in presence posts when it knows the directory's key."""
        if self.identity is None:
            return msgspec.json.encode(body), {"Content-Type": "application/json"}
        identity = bytes(self.identity.verify_key)
        body = {**body, "identityKey": b64url_encode(identity), "timestamp": now_ns}
        if self._proof_key is not None and path.startswith("/api/presence/"):
            body["keyProof"] = directory_auth.key_proof(self._proof_key, identity, self.public_key, now_ns)
        raw = msgspec.json.encode(body)
        headers = {
            "Content-Type": "application/json",
            directory_auth.SIGNATURE_HEADER: directory_auth.sign_request(self.identity, path, raw),
        }
        return raw, headers

    async def _post(self, session: aiohttp.ClientSession, path: str, body: Any) -> None:
        url = self.config.directory.rstrip("/") + path  # type: ignore[union-attr]
        raw, headers = self.signed_body(path, body, time.time_ns())
        try:
            async with session.post(url, data=raw, headers=headers) as resp:
                if resp.status >= 400:
                    log.warning("directory refused %s: %s %s", path, resp.status, await resp.text())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("directory unreachable for %s: %s", path, exc)

    async def _presence_loop(self, session: aiohttp.ClientSession) -> None:
        while True:
            self._announce_now.clear()
            path, body = self.presence()
            await self._post(session, path, body)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._announce_now.wait(), self.config.presence_interval)

    async def _metrics_loop(self, session: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(self.config.metrics_interval)
            await self._post(session, "/api/metrics/mixes", self.metrics())

    async def _directory(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(1.0, self.config.presence_interval))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(self._presence_loop(session), self._metrics_loop(session))

    # --- lifecycle ---

    def protocol_factory(self) -> asyncio.Protocol:
        return NodeLink(self)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.gate.wrap(self.protocol_factory),
            self.config.host,
            self.config.port,
            reuse_address=True,
            backlog=1024,
        )
        if self.config.directory:
            self._tasks.append(loop.create_task(self._directory()))
        self._tasks.append(loop.create_task(self._evict_peers()))
        if self.config.replay_file:
            self._tasks.append(loop.create_task(self._save_replay_loop()))

    def save_replay(self) -> None:
        if self.config.replay_file:
            write_private_file(self.config.replay_file, self.engine.replay_dump(self.public_key))

    async def _save_replay_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.replay_save_interval)
            # the snapshot on the loop's thread (the filter changes under it), the write in another
            data = self.engine.replay_dump(self.public_key)
            assert self.config.replay_file is not None
            await asyncio.to_thread(write_private_file, self.config.replay_file, data)

    async def _evict_peers(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.config.peer_idle / 4))
            self.forwarder.evict_idle(asyncio.get_running_loop().time())

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
        self.gate.close_all()
        try:
            self.save_replay()
        except OSError as exc:
            log.warning("could not save the replay filter: %s", exc)
        if self._timer is not None:
            self._timer.cancel()
        self.forwarder.close()

    async def serve(self, stop: asyncio.Event) -> None:
        """Listen, announce, and run until `stop` is set."""
        await self.start()
        print(f"{self.kind} listening on {self.host} key {self.public_b64}", flush=True)
        exporter = None
        if self.config.prometheus_port is not None:
            from .prometheus import serve_node_metrics

            exporter = serve_node_metrics(self.metrics, self.config.prometheus_port)
        try:
            await stop.wait()
        finally:
            if exporter is not None:
                exporter[0].shutdown()
            await self.close()


# --- process plumbing ----------------------------------------------------------------------------


def load_or_create_secret(path: str | os.PathLike[str]) -> bytes:
    """The node's secret from its PEM file, creating the pair (0600) on first start."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pair = keys.generate_keypair()
        keys.write_private_key(path, pair.secret)
        keys.write_public_key(path.with_name(keys.PUBLIC_KEY_FILE), pair.public)
        return pair.secret
    return keys.read_private_key(path)


_CONFIG_DEFAULTS: dict[str, Any] = {f.name: f.default for f in msgspec.structs.fields(NodeConfig)}


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every node takes. Their defaults are NodeConfig's, read from it, not restated."""

    def default(name: str) -> Any:
        return _CONFIG_DEFAULTS[name]

    parser.add_argument("--host", default=default("host"), help="IP address to bind and announce")
    parser.add_argument("--port", type=int, required=True, help="TCP port")
    parser.add_argument("--key-file", required=True, help="PEM private key (created if missing)")
    parser.add_argument("--directory", default=default("directory"), help="directory URL for presence and metrics")
    parser.add_argument("--presence-interval", type=float, default=default("presence_interval"),
                        help="seconds (default %(default)s)")
    parser.add_argument("--metrics-interval", type=float, default=default("metrics_interval"),
                        help="seconds (default %(default)s)")
    parser.add_argument("--replay-capacity", type=int, default=default("replay_capacity"),
                        help="see ReplayFilter (default %(default)s)")
    parser.add_argument("--max-delay", type=float, default=default("max_delay"),
                        help="cap on a hop delay, s (default %(default)s)")
    parser.add_argument("--max-queue", type=int, default=default("max_queue"),
                        help="delayed packets at most (default %(default)s)")
    parser.add_argument("--drop-rate", type=argtype(fraction), default=default("drop_rate"),
                        help="fault injection: drop this fraction (0..1) of packets to forward")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--prometheus-port", type=int, default=default("prometheus_port"),
                        help="serve /metrics on 127.0.0.1:PORT")
    parser.add_argument("--identity-file", default=default("identity_file"),
                        help="Ed25519 identity key (created 0600 if missing); presence is signed with it")
    parser.add_argument("--directory-key", default=default("directory_key"),
                        help="the directory's Ed25519 key, base64url (for the Sphinx key proof)")
    parser.add_argument("--replay-file", default=default("replay_file"),
                        help="keep the replay filter in this file across restarts")
    parser.add_argument("--max-connections", type=int, default=default("max_connections"),
                        help="inbound connections at most (default: 3/4 of the fd limit)")
    parser.add_argument("--idle-timeout", type=float, default=default("idle_timeout"),
                        help="close an inbound link with no complete frame for this long, s (default %(default)s)")


_FLAGS_TO_CONFIG = ("host", "port", "directory", "presence_interval", "metrics_interval",
                    "replay_capacity", "max_delay", "max_queue", "prometheus_port", "identity_file",
                    "directory_key", "max_connections", "idle_timeout", "replay_file",
                    "drop_rate")


def node_config_from_args(args: argparse.Namespace) -> NodeConfig:
    return NodeConfig(**{name: getattr(args, name) for name in _FLAGS_TO_CONFIG})


def run_node(make: Callable[[], Node], log_level: str = "WARNING") -> int:
    """Build the node inside a uvloop loop and serve until SIGINT/SIGTERM."""
    import uvloop

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        node = make()
        await node.serve(stop)

    coro: Coroutine[Any, Any, None] = main()
    try:
        uvloop.run(coro)
    except OSError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    except (keys.KeyFileError, directory_auth.AuthError) as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
