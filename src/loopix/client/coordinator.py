"""The coordinator: owns config, keys and topology, starts the sender and the workers, deals real
messages to the workers and reassembles what comes back.

    coordinator ──setup, topology, fragments──▶ workers ──packets (shared-memory rings)──▶ sender
         ▲                                                                                  │
         └─────────────── received fragments, stats (control socket) ◀──────────────────────┘

Children are plain subprocesses (`python -m loopix.client.worker|sender`) that get their control
socket and rings as inherited file descriptors and exit when the control socket closes: a
coordinator that dies takes its process tree with it. A worker that dies is restarted on the same
ring, and the real fragments it had not yet built are dealt again.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import aiohttp
import msgspec
from hdrh.histogram import HdrHistogram

from loopix import sphinx
from loopix.csprng import Csprng
from loopix.sphinx.surb import ReplyBlock, make_reply_block, use_reply_block
from loopix.topology import Topology
from loopix.wire import provider as pp
from loopix.wire.ack import ACK_PAYLOAD_SIZE, inner_size
from loopix.wire.b64 import b64url_encode

from . import control
from .acks import AckCodec, AckConfig, Retransmissions
from .completion import Completions
from .identities import Identity, IdentityTable
from .messages import LoopCodec, MessageError, Reassembler, fragment_message
from .replies import (
    MAX_REPLY_SURBS,
    Envelope,
    ReplyKeys,
    ReplyReassembler,
    Surb,
    SurbStore,
    decode_envelope,
    encode_envelope,
    reply_fragments,
    seal_reply_fragment,
)
from .ring import Ring, slot_size_for
from .topology_source import TopologyRefused, TopologySource
from .trace import MAGIC as TRACE_MAGIC
from .trace import RECORD as TRACE_RECORD

log = logging.getLogger("loopix.coordinator")

CHILD_STOP_TIMEOUT_S = 5.0


class ClientError(Exception):
    """A problem the user can act on (unreachable directory, unknown provider, bad recipient)."""


class RecipientError(ClientError, ValueError):
    """A message we cannot send as asked (unknown provider, too large): the caller's mistake."""


class RuntimeOptions(msgspec.Struct, kw_only=True):
    directory_url: str
    payload_size: int = 2048
    mean_hop_delay_ms: float = 50.0
    payload_cover: str = "drop"
    workers: int = 0
    senders: int = 0  # sender processes; 0: chosen from the workers (sender_count)
    sender_coalesce_us: int = 300  # packets due this close after the next go out with it (client/pacer.py)
    sender_min_gap_us: int = 0  # the older knob: wake-ups at least this far apart (client/pacer.py)
    push: bool = True
    fetch_rate: float = 1.0
    topology_refresh_s: float = 5.0
    lookahead_ms: float = 100.0
    batch_size: int = 32
    trace_path: str | None = None
    start_timeout_s: float = 20.0
    start_paused: bool = False  # no cover traffic until resume() (load tests start on a quiet net)
    directory_key: bytes | None = None  # pinned Ed25519 key of the directory; None: unauthenticated
    acks: AckConfig = msgspec.field(default_factory=AckConfig)


class Stats(msgspec.Struct):
    """Totals since start, as the sender and workers report them."""

    sent: list[int] = msgspec.field(default_factory=lambda: [0, 0, 0])
    real_sent: int = 0
    loops_back: int = 0
    received: int = 0
    connected: int = 0
    dropped_unconnected: int = 0
    built: list[int] = msgspec.field(default_factory=lambda: [0, 0, 0])
    build_errors: int = 0
    # packets the schedule asked for that never went out, per stream (payload, loop, drop)
    unsent_link_down: list[int] = msgspec.field(default_factory=lambda: [0, 0, 0])
    not_built_no_route: list[int] = msgspec.field(default_factory=lambda: [0, 0, 0])
    not_built_error: list[int] = msgspec.field(default_factory=lambda: [0, 0, 0])
    messages_received: int = 0
    messages_incomplete: int = 0
    worker_restarts: int = 0
    fragments_sent: int = 0  # real fragments on the wire, first transmissions
    fragments_acked: int = 0
    fragments_retransmitted: int = 0
    fragments_unacked: int = 0  # accepted and not yet acknowledged (queued, in flight or due again)
    ack_rtt_ms_p50: float = 0.0  # since start (HDR histogram in the coordinator)
    ack_rtt_ms_p99: float = 0.0
    replies_received: int = 0  # replies that came back through our reply blocks
    surbs_held: int = 0  # reply blocks others gave us, not yet used


class Delivery(msgspec.Struct, frozen=True):
    """A received message for the subscribers: its bytes and, when it came with reply blocks (or is
    a reply to us), the conversation's sender tag."""

    data: bytes
    sender_tag: bytes | None = None


def usable_topology(topo: Topology, refused: set[bytes]) -> Topology:
    """`topo` without the nodes whose keys are not X25519 public keys (low-order, twist or mixed
    points: the product-scalar build would not match what such a node computes). Each refused node
    is logged once, by name."""
    def ok(kind: str, host: str, key: bytes) -> bool:
        try:
            sphinx.validate_node_key(f"{kind} {host}", key)
            return True
        except sphinx.PublicKeyError as e:
            if key not in refused:
                refused.add(key)
                log.error("refusing %s", e)
            return False

    mixes = [m for m in topo.mix_nodes if ok("mixnode", m.host, m.pub_key)]
    providers = [p for p in topo.providers if ok("provider", p.host, p.pub_key)]
    if len(mixes) == len(topo.mix_nodes) and len(providers) == len(topo.providers):
        return topo
    return Topology(mix_nodes=mixes, providers=providers)


class DirectoryError(ClientError):
    """The directory could not give us a topology. `permanent`: retrying will not help (the URL
    answers, but not with a topology: a web page, a 404), so give up at once with a hint."""

    def __init__(self, url: str, reason: str, *, permanent: bool = False):
        super().__init__(f"directory {url} {reason}")
        self.reason, self.permanent = reason, permanent


_TOPOLOGY_HINT = "is this the directory's URL? (e.g. http://127.0.0.1:9000/api/presence/topology)"


def _connect_error(e: BaseException) -> str:
    """aiohttp's connection errors in a few words ("connection refused", not "ssl:default")."""
    os_error = getattr(e, "os_error", None)
    if isinstance(os_error, OSError) and os_error.errno:
        return os.strerror(os_error.errno).lower()
    if isinstance(e, TimeoutError):
        return "no answer (timed out)"
    return str(e) or type(e).__name__


async def fetch_topology(
    url: str, timeout_s: float = 5.0, source: TopologySource | None = None
) -> Topology:
    """GET the directory's topology, authenticated (when `source` pins the directory's key) and
    validated; DirectoryError with a clear message on any failure."""
    source = source or TopologySource(url)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http, \
                http.get(url) as resp:
            if resp.status in (404, 405, 410):
                raise DirectoryError(url, f"answered HTTP {resp.status}: {_TOPOLOGY_HINT}", permanent=True)
            if resp.status != 200:
                raise DirectoryError(url, f"answered HTTP {resp.status}")
            kind = resp.content_type
            body = await resp.read()
            headers = dict(resp.headers)
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        raise DirectoryError(url, f"unreachable: {_connect_error(e)}") from None
    if "html" in kind or body.lstrip()[:1] == b"<":
        raise DirectoryError(url, f"answered with a web page, not a topology: {_TOPOLOGY_HINT}", permanent=True)
    try:
        return source.accept(body, headers, time.time_ns())
    except TopologyRefused as e:
        if e.permanent:
            raise DirectoryError(url, f"sent something that is not a usable topology ({e}): {_TOPOLOGY_HINT}",
                                 permanent=True) from None
        raise DirectoryError(url, f"refused: {e}") from None


def topology_update(topo: Topology) -> control.TopologyUpdate:
    mixnodes = [control.MixNodeInfo(m.layer, m.pub_key, m.sphinx_address) for m in topo.mix_nodes]
    providers = [control.ProviderInfo(p.pub_key, p.sphinx_address, *p.address) for p in topo.providers]
    return control.TopologyUpdate(mixnodes, providers)


WORKERS_PER_SENDER = 8  # measured (docs/client-stages.md): a worker ~200 µs a packet, a sender ~15-25


def _slots(keys: bytes | bytearray, indexes: Sequence[int]) -> bytes:
    """The 32-byte key slots of these identities, concatenated (all of them: one copy)."""
    if isinstance(indexes, range) and indexes.step == 1 and indexes.start == 0 and indexes.stop == len(keys) // 32:
        return bytes(keys)
    return b"".join(keys[i * 32:(i + 1) * 32] for i in indexes)


def sender_count(asked: int, workers: int, partitioned: bool) -> int:
    """How many sender processes: one unless the identities are partitioned over the workers; else as
    asked (0: one per WORKERS_PER_SENDER workers), at most one per worker, and a divisor of the
    workers, so that sender s owns workers s, s + n, ... and exactly the identities i with i % n == s."""
    if not partitioned:
        return 1
    want = asked or -(-workers // WORKERS_PER_SENDER)
    want = max(1, min(want, workers))
    while workers % want:
        want -= 1
    return want


class _Joining(msgspec.Struct):
    """Identities that joined together, waiting until `connected_at_least` are connected (or the
    deadline, a monotonic time) for their streams."""

    indexes: range
    connected_at_least: int
    deadline: float


class Child:
    """A worker or sender process with its control channel."""

    def __init__(self, name: str, proc: subprocess.Popen, chan: control.ControlChannel):
        self.name, self.proc, self.chan = name, proc, chan
        self.stopping = False


def spawn(module: str, fds: list[int], args: list[str]) -> subprocess.Popen:
    # its own session: Ctrl-C reaches the coordinator only, which then stops the children in order
    return subprocess.Popen([sys.executable, "-m", module, *args], pass_fds=fds,
                            start_new_session=True, stdin=subprocess.DEVNULL)


class Coordinator:
    def __init__(self, identities: list[Identity] | IdentityTable, options: RuntimeOptions):
        self.identities = IdentityTable.of(identities)  # flat: a fleet has 100,000
        if not len(self.identities):
            raise ClientError("no identity to run")
        self.opts = options
        self.n_workers = options.workers or os.cpu_count() or 1
        self.loop_key = os.urandom(32)
        self.topology: Topology | None = None
        self.topology_source = TopologySource(options.directory_url, options.directory_key)
        self.refused_keys: set[bytes] = set()  # node keys refused (and logged) so far
        self.provider_of: list[bytes] = []
        self.standby_of: dict[int, bytes] = {}  # identity -> standby provider, after a failover
        self.stats = Stats()
        self.rings: list[Ring] = []
        self.workers: list[Child | None] = []
        self.senders: list[Child] = []
        self.tasks: list[asyncio.Task] = []
        self.refs = itertools.count(1)
        self.outstanding: list[dict[int, control.Fragment]] = []
        self.ack_codec = AckCodec()
        self.retransmissions = Retransmissions(options.acks)
        self.unacked: dict[int, control.Fragment] = {}  # ref -> fragment, until its ack comes back
        self.completions = Completions()  # messages whose sender waits for them to leave the queue
        self.ack_rtt_us = HdrHistogram(1, 3_600_000_000, 3)
        self.acks_invalid = 0
        # anonymous replies (client/replies.py)
        self.rng = Csprng()  # routes and delays of SURBs and reply acks: docs/randomness.md
        self.reply_keys = ReplyKeys()  # as the original sender
        self.surbs = SurbStore()  # as the replier
        self.reply_frags: dict[int, tuple[int, bytes, bytes]] = {}  # ref -> (identity, tag, fragment)
        self.reply_waiting: dict[tuple[int, bytes], list[int]] = {}  # refs waiting for blocks
        self.reply_requested: dict[tuple[int, bytes], float] = {}  # when we last asked for blocks
        self.reply_reassemblers: dict[int, ReplyReassembler] = {}
        self.messages_malformed = 0
        self._failed_log_after = 0.0
        self.deal_next = 0
        self.reassemblers: dict[int, Reassembler] = {}  # made on an identity's first fragment
        self.subscribers: dict[int, set[asyncio.Queue]] = {}
        self.stats_listeners: list = []  # called with (Stats, SenderStats) once a second
        self.message_listeners: list = []  # called with (identity, message bytes)
        self.fatal: str | None = None
        self.topology_version = 0
        """How many new topologies the refresh has handed to the workers."""
        self.topology_refresh_failures = 0
        """How many refreshes kept the last good topology (directory unreachable or empty)."""
        self.running = False
        self.on_waiting = None  # called once with a line for the user while the directory is not there
        self._worker_stats: dict[int, control.WorkerStats] = {}
        self._sender_connected = asyncio.Event()
        self._sender_stats: list[list[control.SenderStats]] = []  # per sender, not yet merged
        self._sender_totals: list[control.SenderStats | None] = []  # per sender, the last report
        self.packet_size = sphinx.packet_size(options.payload_size)
        # decided once: identities that join later keep the split (see add_identities)
        self.partitioned = len(self.identities) >= self.n_workers
        self.n_senders = sender_count(options.senders, self.n_workers, self.partitioned)
        self.removed: set[int] = set()
        self._stats_waiters: dict[int, asyncio.Future] = {}
        # what a (re)started worker starts with (see control.Pause): none until every identity is
        # registered (start resumes then, unless start_paused), so no cover is built only to be dropped
        # as "unconnected" while the sender registers
        self._cover_until_ns = 0
        # identities that joined while running wait for their registration before the workers give
        # them streams (cover due before could only be dropped as "unconnected"): oldest join first
        self._joining: collections.deque[_Joining] = collections.deque()
        self._streams_until = control.EVERY_IDENTITY

    # -- start/stop --
    async def start(self) -> None:
        deadline = time.monotonic() + self.opts.start_timeout_s
        self.topology = await self._first_topology(deadline)
        self._assign_providers()
        try:
            self._start_children()
            self.running = True
            for k in range(self.n_senders):
                self.tasks.append(asyncio.create_task(self._read_sender(k)))
            for i in range(self.n_workers):
                self.tasks.append(asyncio.create_task(self._read_worker(i)))
            self.tasks.append(asyncio.create_task(self._refresh_topology()))
            self.tasks.append(asyncio.create_task(self._watch_children()))
            self.tasks.append(asyncio.create_task(self._retransmit()))
            left = max(0.1, deadline - time.monotonic())
            try:
                await asyncio.wait_for(self._sender_connected.wait(), left)
            except TimeoutError:
                raise ClientError(
                    f"could not register with the provider within {self.opts.start_timeout_s:.0f}s"
                    f" ({self.stats.connected}/{len(self.identities)} identities connected)"
                ) from None
            if self.fatal:
                raise ClientError(self.fatal)
            if not self.opts.start_paused:
                self.resume()
        except BaseException:
            await self.stop()
            raise

    async def _first_topology(self, deadline: float) -> Topology:
        announced = False
        while True:
            try:
                topo = usable_topology(
                    await fetch_topology(self.opts.directory_url, source=self.topology_source),
                    self.refused_keys,
                )
                if not topo.providers or not topo.mix_nodes:
                    raise ClientError(f"directory {self.opts.directory_url} lists no "
                                      f"{'providers' if not topo.providers else 'mixnodes'} yet")
                return topo
            except ClientError as e:
                if isinstance(e, DirectoryError) and e.permanent:
                    raise
                if time.monotonic() + 0.5 > deadline:
                    raise
                if not announced and self.on_waiting is not None:
                    announced = True
                    why = e.reason if isinstance(e, DirectoryError) else str(e)
                    self.on_waiting(f"waiting for directory {self.opts.directory_url} "
                                    f"(up to {self.opts.start_timeout_s:g}s; Ctrl-C to stop): {why}")
                await asyncio.sleep(0.5)

    def _assign_providers(self) -> None:
        providers = sorted(self.topology.providers, key=lambda p: p.pub_key)
        self.provider_of = []
        for i in range(len(self.identities)):
            pinned = self.identities.pinned(i)
            if pinned is not None:
                if self.topology.provider_by_key(pinned) is None:
                    raise ClientError(f"provider {sphinx_key(pinned)} is not in the topology")
                self.provider_of.append(pinned)
            else:  # round robin over the providers, stable for a given key set
                self.provider_of.append(providers[i % len(providers)].pub_key)
        self.provider_keys = sorted(set(self.provider_of))

    def _start_children(self) -> None:
        wire_len = pp.SEND_OVERHEAD + self.packet_size
        total_rate = self.identities.total_rate()
        per_worker = total_rate / self.n_workers
        slots = max(256, int(per_worker * self.opts.lookahead_ms / 1000 * 3) + 4 * self.opts.batch_size)
        self.rings = [Ring.create(slots, slot_size_for(wire_len), f"loopix-ring-{w}") for w in range(self.n_workers)]
        self.workers = [None] * self.n_workers
        self.outstanding = [{} for _ in range(self.n_workers)]
        endpoints = []
        for key in self.provider_keys:
            host, port = self.topology.provider_by_key(key).address
            endpoints.append(control.ProviderEndpoint(key, host, port))
        n = self.n_senders
        self.senders, self._pending_senders = [], []
        self._sender_stats, self._sender_totals = [[] for _ in range(n)], [None] * n
        self._connected_of = [0] * n  # identities connected, per sender (SenderConnected)
        ids = self.identities
        for k in range(n):  # sender k: the rings of workers k, k + n, ... and identities k, k + n, ...
            mine = range(k, len(ids), n)
            rings = [r.fd for w, r in enumerate(self.rings) if w % n == k]
            ours, theirs = socket.socketpair()
            proc = spawn("loopix.client.sender", [theirs.fileno(), *rings], [str(theirs.fileno())])
            theirs.close()
            self.senders.append(Child(f"sender {k}" if n > 1 else "sender", proc, None))
            self._pending_senders.append((ours, control.SenderSetup(
                secrets=_slots(ids.secrets, mine), publics=_slots(ids.publics, mine),
                provider_of=self._provider_indexes(mine), providers=endpoints, loop_key=self.loop_key,
                ring_fds=rings, trace_path=self.trace_part(k), push=self.opts.push,
                fetch_rate=self.opts.fetch_rate, first=k, step=n, coalesce_us=self.opts.sender_coalesce_us,
                min_gap_us=self.opts.sender_min_gap_us)))
        self._pending_workers = {w: self._spawn_worker(w) for w in range(self.n_workers)}

    @property
    def sender(self) -> Child | None:
        """The first sender (the only one unless identities are partitioned over several)."""
        return self.senders[0] if self.senders else None

    def sender_of(self, identity: int) -> int:
        return identity % self.n_senders

    def trace_part(self, k: int) -> str | None:
        """Sender k's trace file: the trace itself for the first, PATH.k for the others (appended to
        PATH at stop)."""
        path = self.opts.trace_path
        return path if path is None or k == 0 else f"{path}.{k}"

    def _merge_traces(self) -> None:
        """One trace file, whatever the number of senders: the others' records appended to the first's."""
        if self.opts.trace_path is None or self.n_senders == 1:
            return
        with open(self.opts.trace_path, "ab") as out:
            for k in range(1, self.n_senders):
                part = self.trace_part(k)
                try:
                    with open(part, "rb") as f:
                        if f.read(len(TRACE_MAGIC)) == TRACE_MAGIC:
                            left = os.fstat(f.fileno()).st_size - len(TRACE_MAGIC)
                            left -= left % TRACE_RECORD.size  # whole records only (a killed sender's tail)
                            while left > 0 and (chunk := f.read(min(left, 1 << 20))):
                                out.write(chunk)
                                left -= len(chunk)
                except FileNotFoundError:
                    continue
                os.unlink(part)

    def _provider_indexes(self, identities: Sequence[int]) -> bytes:
        """Each identity's provider as an index into provider_keys: array("H") bytes, as the
        sender takes them."""
        index = {key: i for i, key in enumerate(self.provider_keys)}
        provider_of = self.provider_of
        return array.array("H", [index[provider_of[i]] for i in identities]).tobytes()

    def _worker_share(self, indexes: range) -> tuple[bytes, bytes, bytes]:
        """Identities for a worker, flat (control.WorkerSetup): public keys, the provider their loops
        and acks end at (the standby after a failover) and their rate class."""
        ids = self.identities
        provider_index = {key: i for i, key in enumerate(self.provider_keys)}
        publics = ids.publics
        keys = b"".join(publics[k * 32:(k + 1) * 32] for k in indexes)
        provider_of = array.array("H", [provider_index[self.standby_of.get(k, self.provider_of[k])] for k in indexes])
        rate_of = array.array("H", [ids.rate_class(k) for k in indexes])
        return keys, provider_of.tobytes(), rate_of.tobytes()

    def _spawn_worker(self, w: int):
        ours, theirs = socket.socketpair()
        proc = spawn("loopix.client.worker", [theirs.fileno(), self.rings[w].fd],
                     [str(theirs.fileno()), str(self.rings[w].fd)])
        theirs.close()
        partitioned = self.partitioned
        first, step = (w, self.n_workers) if partitioned else (0, 1)
        public_keys, provider_of, rate_of = self._worker_share(range(first, len(self.identities), step))
        setup = control.WorkerSetup(
            worker_index=w, workers=self.n_workers, payload_size=self.opts.payload_size,
            mean_hop_delay_ms=self.opts.mean_hop_delay_ms, payload_cover=self.opts.payload_cover,
            lookahead_ms=self.opts.lookahead_ms, batch_size=self.opts.batch_size,
            start_ns=time.monotonic_ns(), loop_key=self.loop_key, public_keys=public_keys,
            provider_of=provider_of, rate_of=rate_of, provider_keys=self.provider_keys,
            rate_classes=[control.RateClass(*r) for r in self.identities.rate_classes],
            topology=topology_update(self.topology),
            wire_header=pp.send_header(self.packet_size),
            ack_key=self.ack_codec.key,
            cover_until_ns=self._cover_until_ns,
            first=first, step=step, share=1.0 if partitioned else 1.0 / self.n_workers,
        )
        return ours, proc, setup

    async def stop(self) -> None:
        self.running = False
        self.completions.end_all()
        children = [c for c in [*self.senders, *self.workers] if c is not None]
        for child in children:
            child.stopping = True
            if child.chan is not None:
                with contextlib.suppress(Exception):
                    child.chan.send(control.Stop())
        deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
        for child in children:
            while child.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
            if child.chan is not None:
                child.chan.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        for ring in self.rings:
            ring.close()
        self.rings = []
        if children:
            self._merge_traces()
        for queues in self.subscribers.values():
            for q in queues:
                q.put_nowait(None)

    def pause(self, from_ns: int = 0) -> None:
        """Stop cover traffic for events due from `from_ns` on (0: now); queued real messages still
        go out on their payload slots (a load test's end: the rings drain, the receive path stays)."""
        self._cover_until_ns = min(self._cover_until_ns, from_ns)
        self._tell_workers(control.Pause(from_ns))

    def resume(self) -> None:
        self._cover_until_ns = control.COVER_FOREVER
        self._tell_workers(control.Resume())

    def _tell_workers(self, msg) -> None:
        for child in self.workers:
            if child is not None and child.chan is not None:
                child.chan.send(msg)

    # -- children --
    async def _read_sender(self, k: int) -> None:
        ours, setup = self._pending_senders[k]
        self._pending_senders[k] = None  # a fleet's setup holds every key once more: not kept once sent
        chan = await control.ControlChannel.open(ours)
        child = self.senders[k]
        child.chan = chan
        chan.send(setup)
        del setup
        while True:
            msg = await chan.recv()
            if msg is None:
                if self.running and not child.stopping:
                    self.fatal = f"the {child.name} process exited"
                    log.error(self.fatal)
                    self._sender_connected.set()
                return
            if isinstance(msg, control.Received):
                self._on_received(msg)
            elif isinstance(msg, control.FragmentsSent):
                retx = self.retransmissions
                for ref, sent_ns in zip(msg.refs, msg.sent_ns, strict=True):
                    retx.sent_at(ref, sent_ns)
                for ref in msg.unsent:
                    retx.unsent(ref)
            elif isinstance(msg, control.SenderStats):
                self._on_sender_stats(k, msg)
            elif isinstance(msg, control.SenderConnected):
                self._connected_of[k] = msg.connected
                self.stats.connected = sum(self._connected_of)
                self._give_streams(time.monotonic())
                if self.stats.connected >= len(self.identities):
                    self._sender_connected.set()
            elif isinstance(msg, control.IdentityStatsReply):
                waiter = self._stats_waiters.pop(msg.ref, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(msg)
            elif isinstance(msg, control.Fatal):
                self.fatal = msg.message

    async def identity_stats(self, indexes: list[int], top: int = 0,
                             timeout_s: float = 5.0) -> control.IdentityStatsReply:
        """Per-identity counters from the senders (they live there: no copy per identity here); with
        several, each answers for its own and the top ones are the top of theirs."""
        if not self.running or not self.senders or any(c.chan is None for c in self.senders):
            raise ClientError("the client is not running")
        refs = [next(self.refs) for _ in self.senders]
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in refs]
        for ref, waiter, child in zip(refs, waiters, self.senders, strict=True):
            self._stats_waiters[ref] = waiter
            child.chan.send(control.IdentityStatsRequest(ref, list(indexes), top))
        try:
            replies = await asyncio.wait_for(asyncio.gather(*waiters), timeout_s)
        except TimeoutError:
            raise ClientError(f"the sender did not answer within {timeout_s:g}s") from None
        finally:
            for ref in refs:
                self._stats_waiters.pop(ref, None)
        if len(replies) == 1:
            return replies[0]
        rows = {r.identity: r for reply in replies for r in reply.identities}
        tops = [r for reply in replies for r in reply.top]
        tops.sort(key=lambda r: sum(r.sent) + r.received, reverse=True)
        return control.IdentityStatsReply(refs[0], [rows[i] for i in indexes if i in rows], tops[:top])

    async def _read_worker(self, w: int) -> None:
        while True:
            ours, proc, setup = self._pending_workers.pop(w)
            chan = await control.ControlChannel.open(ours)
            child = Child(f"worker {w}", proc, chan)
            self.workers[w] = child
            # a Pause, Resume or join may have come since the spawn
            setup.cover_until_ns, setup.streams_until = self._cover_until_ns, self._streams_until
            chan.send(setup)
            del setup  # a fleet's setup holds every key of the worker's share: not kept once sent
            if self.removed:
                chan.send(control.RemoveIdentities(sorted(self.removed)))
            redeal = list(self.outstanding[w].values())
            self.outstanding[w].clear()
            if redeal:
                self._deal(redeal)
            while True:
                msg = await chan.recv()
                if msg is None:
                    break
                if isinstance(msg, control.FragmentsBuilt):
                    out = self.outstanding[w]
                    retx = self.retransmissions
                    for ref, delay in itertools.zip_longest(msg.refs, msg.route_delay_ns, fillvalue=0):
                        out.pop(ref, None)
                        retx.built(ref, delay)
                elif isinstance(msg, control.FragmentsFailed):
                    now_ns = time.monotonic_ns()
                    for ref in msg.refs:
                        self.outstanding[w].pop(ref, None)
                        self.retransmissions.retry_later(ref, now_ns)  # the topology may change
                    if time.monotonic() >= self._failed_log_after:  # at most one line per 5 s
                        self._failed_log_after = time.monotonic() + 5.0
                        log.warning("%d fragments could not be built (%s); retrying in %.1f s",
                                    len(msg.refs), msg.reason, self.opts.acks.wait_addition_s)
                elif isinstance(msg, control.WorkerStats):
                    self._add_worker_losses(self._worker_stats.get(w), msg)
                    self._worker_stats[w] = msg
                elif isinstance(msg, control.Fatal):
                    log.error("%s", msg.message)
            chan.close()
            if not self.running or child.stopping:
                return
            with contextlib.suppress(subprocess.TimeoutExpired):  # it closed its socket: it is exiting
                await asyncio.to_thread(proc.wait, 1)
            log.warning("worker %d exited (code %s); restarting it", w, proc.returncode)
            self.stats.worker_restarts += 1
            self._pending_workers[w] = self._spawn_worker(w)
            # fragments it had not built go to the new worker (dealt again above)

    async def _watch_children(self) -> None:
        """A killed child closes its control socket; this only catches the rare hang at exit."""
        while self.running:
            await asyncio.sleep(0.5)
            for child in self.senders:
                if child.proc.poll() is not None and not child.stopping:
                    self.fatal = f"the {child.name} process exited with code {child.proc.returncode}"

    async def _refresh_topology(self) -> None:
        while self.running:
            await asyncio.sleep(self.opts.topology_refresh_s)
            try:
                topo = usable_topology(
                    await fetch_topology(self.opts.directory_url, source=self.topology_source),
                    self.refused_keys,
                )
            except ClientError as e:
                log.warning("topology refresh failed, keeping the last good one: %s", e)
                self.topology_refresh_failures += 1
                continue
            if not topo.mix_nodes or not topo.providers:
                log.warning("the directory lists no %s; keeping the last good topology",
                            "mixnodes" if not topo.mix_nodes else "providers")
                self.topology_refresh_failures += 1
                continue
            if topo != self.topology:
                self.topology = topo
                update = topology_update(topo)
                for child in self.workers:
                    if child is not None and child.chan is not None:
                        child.chan.send(update)
                self.topology_version += 1
                self._fail_over(topo)

    def _fail_over(self, topo: Topology) -> None:
        """Identities whose home provider left the topology register at a standby provider too
        (docs/reliability.md). Their address still names the home: senders find the standby in
        the topology's registeredClients, and the home link keeps reconnecting to fetch what was
        stored there."""
        moves: dict[bytes, list[int]] = {}
        for i, home in enumerate(self.provider_of):
            if i in self.standby_of or topo.provider_by_key(home) is not None:
                continue
            standby = choose_standby(i, home, [p.pub_key for p in topo.providers])
            if standby is None:
                continue
            self.standby_of[i] = standby
            moves.setdefault(standby, []).append(i)
        for key, ids in moves.items():
            if key not in self.provider_keys:
                self.provider_keys.append(key)
            host, port = topo.provider_by_key(key).address
            msg = control.Failover(ids, control.ProviderEndpoint(key, host, port))
            log.warning("%d identities' provider left the topology; registering them at %s:%d too",
                        len(ids), host, port)
            for k, child in enumerate(self.senders):
                ours = [i for i in ids if self.sender_of(i) == k]
                if ours and child.chan is not None:
                    child.chan.send(control.Failover(ours, msg.provider))
            self._tell_workers(msg)

    def _resolve(self, frag: control.Fragment) -> control.Fragment:
        """A fragment whose named provider left the topology goes to the provider that now lists
        its recipient among its registered clients (a recipient that failed over), if any."""
        if self.topology.provider_by_key(frag.recipient_provider_key) is not None:
            return frag
        now = self.topology.provider_of_client(frag.recipient_key)
        if now is None:
            return frag
        return msgspec.structs.replace(frag, recipient_provider_key=now.pub_key)

    async def _retransmit(self) -> None:
        """Fragments whose ack timer ran out go back to their worker (new route, new ack)."""
        while self.running:
            await asyncio.sleep(0.1)
            due = self.retransmissions.due(time.monotonic_ns())
            frags = [self._resolve(self.unacked[ref]) for ref in due if ref in self.unacked]
            replies: dict[tuple[int, bytes], list[int]] = {}
            for ref in due:
                if ref in self.reply_frags:  # again through a fresh block
                    identity, tag, _ = self.reply_frags[ref]
                    replies.setdefault((identity, tag), []).append(ref)
            for (identity, tag), refs in replies.items():
                self._send_replies(identity, tag, refs)
            now = time.monotonic()
            for identity, tag in list(self.reply_waiting):
                self._request_surbs(identity, tag, now)
            self.reply_keys.expire(now)
            for ref in self.retransmissions.abandoned:  # max_retransmissions reached
                self.unacked.pop(ref, None)
                self.reply_frags.pop(ref, None)
                self.completions.ended(ref)
            self.retransmissions.abandoned.clear()
            if frags:
                self._deal(frags)

    # -- messages --
    def send_message(self, identity: int, message: bytes, recipient_key: bytes, recipient_provider: bytes,
                     reply_surbs: int = 0, on_done: Callable[[], None] | None = None) -> int:
        """Encrypt, fragment and queue a message, with `reply_surbs` reply blocks and our sender tag
        for this recipient; returns how many packets it takes. `on_done` runs once every packet of
        it is acknowledged or given up on (the socket API's queue bound)."""
        if not self.running:
            raise ClientError("the client is not running")
        if self.topology.provider_by_key(recipient_provider) is None:
            moved = self.topology.provider_of_client(recipient_key)
            if moved is None:
                raise RecipientError(f"recipient's provider {sphinx_key(recipient_provider)} is not in the topology")
            recipient_provider = moved.pub_key  # the recipient failed over (docs/reliability.md)
        if not 0 <= reply_surbs <= MAX_REPLY_SURBS:
            raise ClientError(f"reply_surbs must be 0..{MAX_REPLY_SURBS}, got {reply_surbs}")
        envelope = Envelope(data=message)
        if reply_surbs:
            tag = self.reply_keys.tag_for(identity, recipient_key, recipient_provider)
            envelope = Envelope(data=message, sender_tag=tag,
                                surbs=[self._make_surb(identity, tag) for _ in range(reply_surbs)])
        try:
            payloads = fragment_message(encode_envelope(envelope), recipient_key,
                                        inner_size(self.opts.payload_size))
        except MessageError as e:
            raise RecipientError(str(e)) from None
        frags = [control.Fragment(next(self.refs), identity, recipient_key, recipient_provider, p)
                 for p in payloads]
        for frag in frags:
            self.unacked[frag.ref] = frag
        self.retransmissions.track(f.ref for f in frags)
        if on_done is not None:
            self.completions.watch((f.ref for f in frags), on_done)
        self._deal(frags)
        return len(frags)

    def _deal(self, frags: list[control.Fragment]) -> None:
        """To the worker that owns the sender identity; when workers share every identity, round
        robin, so a long message uses every worker's payload slots."""
        partitioned = self.partitioned
        batches: dict[int, list[control.Fragment]] = {}
        for frag in frags:
            if partitioned:
                w = frag.identity % self.n_workers
            else:
                for _ in range(self.n_workers):
                    w = self.deal_next % self.n_workers
                    self.deal_next += 1
                    if self.workers[w] is not None:
                        break
            batches.setdefault(w, []).append(frag)
            self.outstanding[w][frag.ref] = frag
        for w, batch in batches.items():
            child = self.workers[w]
            if child is not None and child.chan is not None:
                child.chan.send(control.SendFragments(batch))

    def _on_received(self, msg: control.Received) -> None:
        reasm = self.reassemblers.get(msg.identity)
        if reasm is None:
            reasm = self.reassemblers[msg.identity] = Reassembler(self.identities.secret(msg.identity))
        now = time.monotonic()
        now_ns = time.monotonic_ns()
        for payload in msg.payloads:
            if len(payload) == ACK_PAYLOAD_SIZE:  # a SURB-ack for one of our fragments
                ref = self.ack_codec.decode(payload)
                if ref is None:
                    self.acks_invalid += 1
                elif self.retransmissions.acked_at(ref, now_ns):
                    self.unacked.pop(ref, None)
                    self.reply_frags.pop(ref, None)
                    self.completions.ended(ref)
                continue
            reply = self.reply_keys.take(payload, now)
            if reply is not None:  # a reply through one of our blocks
                fragment, identity, tag = reply
                rr = self.reply_reassemblers.get(identity)
                if rr is None:
                    rr = self.reply_reassemblers[identity] = ReplyReassembler()
                data = rr.add(fragment, now)
                if data is not None:
                    self._on_reply(identity, tag, data)
                continue
            data = reasm.add(payload, now)
            if data is not None:
                self._on_message(msg.identity, data, now)

    def _deliver(self, identity: int, data: bytes, tag: bytes | None) -> None:
        self.stats.messages_received += 1
        for q in self.subscribers.get(identity, ()):
            q.put_nowait(Delivery(data, tag))
        for listener in self.message_listeners:
            listener(identity, data)

    def _on_message(self, identity: int, data: bytes, now: float) -> None:
        env = decode_envelope(data)
        if env is None or env.kind == "request":
            self.messages_malformed += 1
            return
        if env.surbs and env.sender_tag:
            self.surbs.add(identity, env.sender_tag, list(env.surbs), now)
        if env.kind == "surbs":
            waiting = self.reply_waiting.pop((identity, env.sender_tag), [])
            if waiting:
                self._send_replies(identity, env.sender_tag, waiting)
            return
        self._deliver(identity, env.data, env.sender_tag or None)

    def _on_reply(self, identity: int, tag: bytes, data: bytes) -> None:
        env = decode_envelope(data)
        if env is None:
            self.messages_malformed += 1
            return
        if env.kind == "request":  # the replier ran out: more blocks, to the address we wrote to
            peer = self.reply_keys.peers.get(tag)
            if peer is not None and env.want:
                _, key, provider = peer
                surbs = [self._make_surb(identity, tag) for _ in range(min(env.want, MAX_REPLY_SURBS))]
                with contextlib.suppress(ClientError):
                    self._queue_envelope(identity, Envelope(kind="surbs", sender_tag=tag, surbs=surbs),
                                         key, provider)
            return
        self.stats.replies_received += 1
        self._deliver(identity, env.data, tag)

    def _queue_envelope(self, identity: int, env: Envelope, key: bytes, provider: bytes) -> None:
        frag_provider = provider
        if self.topology.provider_by_key(provider) is None:
            moved = self.topology.provider_of_client(key)
            if moved is None:
                raise ClientError("the recipient's provider is not in the topology")
            frag_provider = moved.pub_key
        payloads = fragment_message(encode_envelope(env), key, inner_size(self.opts.payload_size))
        frags = [control.Fragment(next(self.refs), identity, key, frag_provider, p) for p in payloads]
        for frag in frags:
            self.unacked[frag.ref] = frag
        self.retransmissions.track(f.ref for f in frags)
        self._deal(frags)

    # -- anonymous replies --
    def _own_provider(self, identity: int) -> bytes:
        return self.standby_of.get(identity, self.provider_of[identity])

    def _route(self, identity: int) -> tuple[list[sphinx.Hop], list[int]]:
        nodes = self.topology.choose_route(self.rng, self._own_provider(identity))
        mean = self.opts.mean_hop_delay_ms / 1000
        delays = [int(self.rng.expovariate(1 / mean) * 1e9) if mean > 0 else 0 for _ in nodes[:-1]] + [0]
        return [sphinx.Hop(public_key=n.pub_key, address=n.sphinx_address) for n in nodes], delays

    def _make_surb(self, identity: int, tag: bytes) -> Surb:
        route, delays = self._route(identity)
        block = make_reply_block(route, self.identities.public(identity), delays)
        surb = Surb(block.to_bytes(), os.urandom(16), os.urandom(32))
        self.reply_keys.add(surb.surb_id, surb.key, tag, identity, time.monotonic())
        return surb

    def reply(self, identity: int, tag: bytes, message: bytes,
              on_done: Callable[[], None] | None = None) -> int:
        """Answer the sender behind `tag` through the blocks it gave us; returns the fragments. The
        last block is kept in reserve: when the others are used up, it carries a request for more
        and the fragments wait (at most 10 s between requests, Nym's default)."""
        if not self.running:
            raise ClientError("the client is not running")
        if not self.surbs.known(identity, tag):
            raise ClientError("unknown sender tag (no reply blocks from it)")
        frags = reply_fragments(encode_envelope(Envelope(data=bytes(message))), inner_size(self.opts.payload_size))
        refs = []
        for fragment in frags:
            ref = next(self.refs)
            self.reply_frags[ref] = (identity, tag, fragment)
            refs.append(ref)
        self.retransmissions.track(refs)
        if on_done is not None:
            self.completions.watch(refs, on_done)
        self._send_replies(identity, tag, refs)
        return len(refs)

    def _send_replies(self, identity: int, tag: bytes, refs: list[int]) -> None:
        now = time.monotonic()
        have = self.surbs.count(identity, tag, now)
        send = refs[: max(0, have - 1)]  # the last block stays in reserve to ask for more
        for ref in send:
            surb = self.surbs.take(identity, tag, now)
            self._deal([self._reply_packet(identity, ref, surb, self.reply_frags[ref][2])])
        rest = refs[len(send):]
        if rest:
            key = (identity, tag)
            self.reply_waiting.setdefault(key, []).extend(rest)
            self._request_surbs(identity, tag, now)

    def _request_surbs(self, identity: int, tag: bytes, now: float) -> None:
        key = (identity, tag)
        if now - self.reply_requested.get(key, -1e9) < 10.0:  # Nym: re-request after 10 s
            return
        surb = self.surbs.take(identity, tag, now)
        if surb is None:
            return
        self.reply_requested[key] = now
        want = min(MAX_REPLY_SURBS, max(10, len(self.reply_waiting.get(key, ())) + 10))
        fragment = reply_fragments(encode_envelope(Envelope(kind="request", want=want)),
                                   inner_size(self.opts.payload_size))[0]
        self._deal([self._reply_packet(identity, 0, surb, fragment)])

    def _reply_packet(self, identity: int, ref: int, surb: Surb, fragment: bytes) -> control.Fragment:
        """A whole packet through `surb` carrying `fragment`, with a SURB-ack back to us."""
        route, delays = self._route(identity)
        me = self.identities.public(identity)
        ack = sphinx.build_packet(route, me, self.ack_codec.encode(ref), delays, payload_size=ACK_PAYLOAD_SIZE)
        message = route[0].address + ack + seal_reply_fragment(surb, fragment)
        block = ReplyBlock.from_bytes(surb.block)
        packet = use_reply_block(block, message, self.opts.payload_size)
        # the block's delays are the original sender's secret: assume the mean on its hops
        delay = sum(delays) + int(len(block.seeds) * self.opts.mean_hop_delay_ms * 1e6)
        return control.Fragment(ref, identity, b"", b"", b"", packet, block.first_hop, delay)

    def _add_worker_losses(self, before: control.WorkerStats | None, now: control.WorkerStats) -> None:
        """Fold a worker's per-stream build failures into the totals (a restarted worker counts
        from zero again, so a decrease starts a new series)."""
        s = self.stats
        for total, old, new in ((s.not_built_no_route, before and before.no_route_by_stream, now.no_route_by_stream),
                                (s.not_built_error, before and before.build_errors_by_stream,
                                 now.build_errors_by_stream)):
            for i, n in enumerate(new[:3]):
                prev = old[i] if old and len(old) > i else 0
                total[i] += n - prev if n >= prev else n

    def _on_sender_stats(self, k: int, msg: control.SenderStats) -> None:
        """Each sender reports once a second; with several, their reports are merged (counts summed,
        lateness samples combined in proportion to the packets each stands for) once all have come."""
        if self.n_senders > 1:
            self._sender_stats[k].append(msg)
            self._sender_totals[k] = msg
            if not all(self._sender_stats):
                return
            msg = merge_sender_stats(self._sender_stats, self._sender_totals, self.rng)
            self._sender_stats = [[] for _ in range(self.n_senders)]
        s = self.stats
        if msg.unsent_by_stream:
            s.unsent_link_down = list(msg.unsent_by_stream)
        s.sent, s.real_sent, s.loops_back = msg.sent, msg.real_sent, msg.loops_back
        s.received, s.connected, s.dropped_unconnected = msg.received, msg.connected, msg.dropped_unconnected
        built = [0, 0, 0]
        errors = 0
        for ws in self._worker_stats.values():
            built = [a + b for a, b in zip(built, ws.built, strict=True)]
            errors += ws.build_errors
        s.built, s.build_errors = built, errors
        retx = self.retransmissions
        for rtt in retx.rtt_ns:
            self.ack_rtt_us.record_value(max(1, min(rtt // 1000, 3_600_000_000)))
        retx.rtt_ns.clear()
        s.fragments_sent, s.fragments_acked = retx.sent, retx.acked
        s.fragments_retransmitted, s.fragments_unacked = retx.retransmitted, len(retx)
        s.surbs_held = sum(len(b) for _, _, b in self.surbs.contents())
        if self.ack_rtt_us.get_total_count():
            s.ack_rtt_ms_p50 = self.ack_rtt_us.get_value_at_percentile(50) / 1000
            s.ack_rtt_ms_p99 = self.ack_rtt_us.get_value_at_percentile(99) / 1000
        now = time.monotonic()
        s.messages_incomplete += sum(len(r.expire(now)) for r in self.reassemblers.values())
        if s.connected >= len(self.identities):
            self._sender_connected.set()
        self._give_streams(now)
        for listener in self.stats_listeners:
            listener(s, msg)

    # -- identities joining and leaving a running client --
    def add_identities(self, identities: list[Identity] | IdentityTable) -> range:
        """Join identities while running: registered at their providers (the topology's, round
        robin as at start, unless pinned) and given streams on the schedule. Returns their indexes."""
        if not self.running:
            raise ClientError("the client is not running")
        joining = IdentityTable.of(identities)
        first = len(self.identities)
        providers = sorted(self.topology.providers, key=lambda p: p.pub_key)
        chosen = []
        for k in range(len(joining)):
            key = joining.pinned(k)
            if key is None:
                key = providers[(first + k) % len(providers)].pub_key
            elif self.topology.provider_by_key(key) is None:
                raise ClientError(f"provider {sphinx_key(key)} is not in the topology")
            chosen.append(key)
        new = self.identities.extend_table(joining)
        self.provider_of.extend(chosen)
        for key in dict.fromkeys(chosen):
            if key not in self.provider_keys:
                self.provider_keys.append(key)  # appended: the indexes children hold stay valid
        endpoints = [control.ProviderEndpoint(key, *self.topology.provider_by_key(key).address)
                     for key in self.provider_keys]
        for k, child in enumerate(self.senders):  # each its own, in order: their indexes go on from its last
            mine = [i for i in new if self.sender_of(i) == k]
            child.chan.send(control.AddSenderIdentities(
                _slots(self.identities.secrets, mine), _slots(self.identities.publics, mine),
                self._provider_indexes(mine), endpoints))
        if not self._joining:  # the joining identities get streams once registered (_give_streams)
            self._streams_until = new.start
            self._tell_workers(control.StartStreams(new.start))
        self._joining.append(_Joining(new, self.stats.connected + len(new),
                                      time.monotonic() + self.opts.start_timeout_s))
        rate_classes = [control.RateClass(*r) for r in self.identities.rate_classes]
        for w, child in enumerate(self.workers):
            share = range(new.start + (w - new.start) % self.n_workers, new.stop, self.n_workers) \
                if self.partitioned else new
            if share and child is not None and child.chan is not None:
                child.chan.send(control.AddWorkerIdentities(*self._worker_share(share), list(self.provider_keys),
                                                            rate_classes))
        return new

    def _give_streams(self, now: float) -> None:
        """Joined identities get streams once the sender has registered as many as joined (or after
        start_timeout_s, registered or not), in the order they joined."""
        while self._joining:
            head = self._joining[0]
            if self.stats.connected < head.connected_at_least and now < head.deadline:
                return
            self._joining.popleft()
            self._streams_until = self._joining[0].indexes.start if self._joining else control.EVERY_IDENTITY
            self._tell_workers(control.StartStreams(self._streams_until))

    def remove_identities(self, indexes: list[int]) -> None:
        """Identities leave: no more streams or messages for them (indexes are never reused)."""
        gone = sorted(set(indexes) - self.removed)
        if not gone:
            return
        self.removed.update(gone)
        msg = control.RemoveIdentities(gone)
        for child in self.senders:
            child.chan.send(msg)
        self._tell_workers(msg)
        for i in gone:
            self.reassemblers.pop(i, None)

    def subscribe(self, identity: int = 0) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.subscribers.setdefault(identity, set()).add(q)
        return q

    def unsubscribe(self, identity: int, q: asyncio.Queue) -> None:
        self.subscribers.get(identity, set()).discard(q)

    def address_of(self, identity: int) -> tuple[bytes, bytes]:
        """(client key, provider key) of one of ours."""
        return self.identities.public(identity), self.provider_of[identity]


def merge_sender_stats(pending: list[list[control.SenderStats]], last: list[control.SenderStats],
                       rng: Csprng) -> control.SenderStats:
    """Several senders' reports as one: totals summed over each one's last report; the intervals'
    per-second counts summed; loops back concatenated; lateness as one uniform sample of every packet
    the reports stand for (each report's sample thinned to its share of lateness_seen), never an
    average of percentiles."""
    reports = [m for ms in pending for m in ms]
    by_second: dict[int, list[int]] = {}
    loops_by_second: dict[int, int] = {}
    for m in reports:
        for sec, n in m.sent_by_second.items():
            acc = by_second.setdefault(sec, [0, 0, 0, 0])
            for i, x in enumerate(n):
                acc[i] += x
        for sec, n in m.loops_sent_by_second.items():
            loops_by_second[sec] = loops_by_second.get(sec, 0) + n
    seen = sum(m.lateness_seen for m in reports)
    # a report whose sample is short of its packets had a full reservoir: that size is the budget
    budget = max((len(m.lateness_us) for m in reports if len(m.lateness_us) < m.lateness_seen), default=0)
    lateness: list[float] = []
    for m in reports:
        sample = list(m.lateness_us)
        if budget and m.lateness_seen:
            keep = min(len(sample), round(budget * m.lateness_seen / seen))
            for j in range(keep):  # a uniform subsample: partial Fisher-Yates from the CSPRNG
                x = j + rng.randrange(len(sample) - j)
                sample[j], sample[x] = sample[x], sample[j]
            sample = sample[:keep]
        lateness.extend(sample)

    def total(name: str) -> int:
        return sum(getattr(m, name) for m in last)

    return control.SenderStats(
        sent=[sum(m.sent[i] for m in last) for i in range(3)], real_sent=total("real_sent"),
        loops_back=total("loops_back"), loops_sent_by_second=loops_by_second,
        loop_back_sent_ns=[x for m in reports for x in m.loop_back_sent_ns],
        loop_back_rtt_ns=[x for m in reports for x in m.loop_back_rtt_ns],
        lateness_us=lateness, connected=total("connected"), dropped_unconnected=total("dropped_unconnected"),
        received=total("received"),
        unsent_by_stream=[sum(m.unsent_by_stream[i] for m in last if m.unsent_by_stream) for i in range(3)],
        sent_by_second=by_second, lateness_seen=seen,
    )


def choose_standby(identity: int, home: bytes, providers: list[bytes]) -> bytes | None:
    """The standby provider of an identity whose home left: round robin over the other providers
    in key order (stable for a given set), so a fleet spreads over them."""
    others = sorted(p for p in providers if p != home)
    return others[identity % len(others)] if others else None


def sphinx_key(key: bytes) -> str:
    return b64url_encode(key)


__all__ = ["ClientError", "Coordinator", "DirectoryError", "Identity", "LoopCodec", "RecipientError", "RuntimeOptions", "Stats"]
