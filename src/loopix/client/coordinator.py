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

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import time

import aiohttp
import msgspec

from loopix import sphinx
from loopix.keys import KeyPair
from loopix.topology import Topology, TopologyError, parse_topology
from loopix.wire import provider as pp
from loopix.wire.b64 import b64url_encode

from . import control
from .messages import LoopCodec, MessageError, Reassembler, fragment_message
from .ring import Ring, slot_size_for

log = logging.getLogger("loopix.coordinator")

CHILD_STOP_TIMEOUT_S = 5.0


class ClientError(Exception):
    """A problem the user can act on (unreachable directory, unknown provider, bad recipient)."""


class RecipientError(ClientError, ValueError):
    """A message we cannot send as asked (unknown provider, too large): the caller's mistake."""


class Identity(msgspec.Struct):
    """One client identity run by this coordinator."""

    keys: KeyPair
    provider_key: bytes | None = None  # None: chosen from the topology
    payload_rate: float = 50.0
    loop_rate: float = 5.0
    drop_rate: float = 5.0


class RuntimeOptions(msgspec.Struct, kw_only=True):
    directory_url: str
    payload_size: int = 2048
    mean_hop_delay_ms: float = 50.0
    payload_cover: str = "drop"
    workers: int = 0
    push: bool = True
    fetch_rate: float = 1.0
    topology_refresh_s: float = 5.0
    lookahead_ms: float = 100.0
    batch_size: int = 32
    trace_path: str | None = None
    start_timeout_s: float = 20.0
    start_paused: bool = False  # no cover traffic until resume() (load tests start on a quiet net)


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


async def fetch_topology(url: str, timeout_s: float = 5.0) -> Topology:
    """GET the directory's topology; DirectoryError with a clear message on any failure."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http, \
                http.get(url) as resp:
            if resp.status in (404, 405, 410):
                raise DirectoryError(url, f"answered HTTP {resp.status}: {_TOPOLOGY_HINT}", permanent=True)
            if resp.status != 200:
                raise DirectoryError(url, f"answered HTTP {resp.status}")
            kind = resp.content_type
            body = await resp.read()
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        raise DirectoryError(url, f"unreachable: {_connect_error(e)}") from None
    if "html" in kind or body.lstrip()[:1] == b"<":
        raise DirectoryError(url, f"answered with a web page, not a topology: {_TOPOLOGY_HINT}", permanent=True)
    try:
        return parse_topology(body)
    except TopologyError as e:
        raise DirectoryError(url, f"sent something that is not a usable topology ({e}): {_TOPOLOGY_HINT}",
                             permanent=True) from None


def topology_update(topo: Topology) -> control.TopologyUpdate:
    mixnodes = [control.MixNodeInfo(m.layer, m.pub_key, m.sphinx_address) for m in topo.mix_nodes]
    providers = [control.ProviderInfo(p.pub_key, p.sphinx_address, *p.address) for p in topo.providers]
    return control.TopologyUpdate(mixnodes, providers)


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
    def __init__(self, identities: list[Identity], options: RuntimeOptions):
        if not identities:
            raise ClientError("no identity to run")
        self.identities = identities
        self.opts = options
        self.n_workers = options.workers or os.cpu_count() or 1
        self.loop_key = os.urandom(32)
        self.topology: Topology | None = None
        self.refused_keys: set[bytes] = set()  # node keys refused (and logged) so far
        self.provider_of: list[bytes] = []
        self.stats = Stats()
        self.rings: list[Ring] = []
        self.workers: list[Child | None] = []
        self.sender: Child | None = None
        self.tasks: list[asyncio.Task] = []
        self.refs = itertools.count(1)
        self.outstanding: list[dict[int, control.Fragment]] = []
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
        self.packet_size = sphinx.packet_size(options.payload_size)
        # decided once: identities that join later keep the split (see add_identities)
        self.partitioned = len(identities) >= self.n_workers
        self.removed: set[int] = set()
        self._stats_waiters: dict[int, asyncio.Future] = {}
        self._paused = options.start_paused  # what a restarted worker starts as

    # -- start/stop --
    async def start(self) -> None:
        deadline = time.monotonic() + self.opts.start_timeout_s
        self.topology = await self._first_topology(deadline)
        self._assign_providers()
        try:
            self._start_children()
            self.running = True
            self.tasks.append(asyncio.create_task(self._read_sender()))
            for i in range(self.n_workers):
                self.tasks.append(asyncio.create_task(self._read_worker(i)))
            self.tasks.append(asyncio.create_task(self._refresh_topology()))
            self.tasks.append(asyncio.create_task(self._watch_children()))
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
        except BaseException:
            await self.stop()
            raise

    async def _first_topology(self, deadline: float) -> Topology:
        announced = False
        while True:
            try:
                topo = usable_topology(await fetch_topology(self.opts.directory_url), self.refused_keys)
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
        for i, ident in enumerate(self.identities):
            if ident.provider_key is not None:
                if self.topology.provider_by_key(ident.provider_key) is None:
                    raise ClientError(f"provider {sphinx_key(ident.provider_key)} is not in the topology")
                self.provider_of.append(ident.provider_key)
            else:  # round robin over the providers, stable for a given key set
                self.provider_of.append(providers[i % len(providers)].pub_key)
        self.provider_keys = sorted(set(self.provider_of))

    def _start_children(self) -> None:
        wire_len = pp.SEND_OVERHEAD + self.packet_size
        total_rate = sum(i.payload_rate + i.loop_rate + i.drop_rate for i in self.identities)
        per_worker = total_rate / self.n_workers
        slots = max(256, int(per_worker * self.opts.lookahead_ms / 1000 * 3) + 4 * self.opts.batch_size)
        self.rings = [Ring.create(slots, slot_size_for(wire_len), f"loopix-ring-{w}") for w in range(self.n_workers)]
        self.workers = [None] * self.n_workers
        self.outstanding = [{} for _ in range(self.n_workers)]
        endpoints = []
        for key in self.provider_keys:
            host, port = self.topology.provider_by_key(key).address
            endpoints.append(control.ProviderEndpoint(key, host, port))
        index = {key: i for i, key in enumerate(self.provider_keys)}
        sender_ids = [control.SenderIdentity(ident.keys.secret, ident.keys.public, index[self.provider_of[i]])
                      for i, ident in enumerate(self.identities)]
        ours, theirs = socket.socketpair()
        fds = [theirs.fileno()] + [r.fd for r in self.rings]
        proc = spawn("loopix.client.sender", fds, [str(theirs.fileno())])
        theirs.close()
        self.sender = Child("sender", proc, None)
        self._pending_sender = (ours, control.SenderSetup(
            identities=sender_ids, providers=endpoints, loop_key=self.loop_key, ring_fds=[r.fd for r in self.rings],
            trace_path=self.opts.trace_path, push=self.opts.push, fetch_rate=self.opts.fetch_rate))
        self._pending_workers = {w: self._spawn_worker(w) for w in range(self.n_workers)}

    def _spawn_worker(self, w: int):
        ours, theirs = socket.socketpair()
        proc = spawn("loopix.client.worker", [theirs.fileno(), self.rings[w].fd],
                     [str(theirs.fileno()), str(self.rings[w].fd)])
        theirs.close()
        partitioned = self.partitioned
        first, step = (w, self.n_workers) if partitioned else (0, 1)
        provider_index = {key: i for i, key in enumerate(self.provider_keys)}
        classes: dict[tuple[float, float, float], int] = {}
        infos = []
        for k in range(first, len(self.identities), step):
            ident = self.identities[k]
            rates = (ident.payload_rate, ident.loop_rate, ident.drop_rate)
            infos.append(control.IdentityInfo(ident.keys.public, provider_index[self.provider_of[k]],
                                              classes.setdefault(rates, len(classes))))
        setup = control.WorkerSetup(
            worker_index=w, workers=self.n_workers, payload_size=self.opts.payload_size,
            mean_hop_delay_ms=self.opts.mean_hop_delay_ms, payload_cover=self.opts.payload_cover,
            lookahead_ms=self.opts.lookahead_ms, batch_size=self.opts.batch_size,
            start_ns=time.monotonic_ns(), loop_key=self.loop_key, identities=infos,
            provider_keys=self.provider_keys, rate_classes=[control.RateClass(*r) for r in classes],
            topology=topology_update(self.topology),
            wire_header=pp.send_header(self.packet_size),
            paused=self._paused,
            first=first, step=step, share=1.0 if partitioned else 1.0 / self.n_workers,
        )
        return ours, proc, setup

    async def stop(self) -> None:
        self.running = False
        children = [c for c in [self.sender, *self.workers] if c is not None]
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
        for queues in self.subscribers.values():
            for q in queues:
                q.put_nowait(None)

    def pause(self) -> None:
        """Stop cover traffic; queued real messages still go out on their payload slots (a load
        test's end: the rings drain, the receive path stays)."""
        self._paused = True
        self._tell_workers(control.Pause())

    def resume(self) -> None:
        self._paused = False
        self._tell_workers(control.Resume())

    def _tell_workers(self, msg) -> None:
        for child in self.workers:
            if child is not None and child.chan is not None:
                child.chan.send(msg)

    # -- children --
    async def _read_sender(self) -> None:
        ours, setup = self._pending_sender
        self._pending_sender = None  # a fleet's setup holds every key once more: not kept once sent
        chan = await control.ControlChannel.open(ours)
        self.sender.chan = chan
        chan.send(setup)
        del setup
        while True:
            msg = await chan.recv()
            if msg is None:
                if self.running and not self.sender.stopping:
                    self.fatal = "the sender process exited"
                    log.error(self.fatal)
                    self._sender_connected.set()
                return
            if isinstance(msg, control.Received):
                self._on_received(msg)
            elif isinstance(msg, control.SenderStats):
                self._on_sender_stats(msg)
            elif isinstance(msg, control.IdentityStatsReply):
                waiter = self._stats_waiters.pop(msg.ref, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(msg)
            elif isinstance(msg, control.Fatal):
                self.fatal = msg.message

    async def identity_stats(self, indexes: list[int], top: int = 0,
                             timeout_s: float = 5.0) -> control.IdentityStatsReply:
        """Per-identity counters from the sender (they live there: no copy per identity here)."""
        if not self.running or self.sender is None or self.sender.chan is None:
            raise ClientError("the client is not running")
        ref = next(self.refs)
        waiter = self._stats_waiters[ref] = asyncio.get_running_loop().create_future()
        self.sender.chan.send(control.IdentityStatsRequest(ref, list(indexes), top))
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            raise ClientError(f"the sender did not answer within {timeout_s:g}s") from None
        finally:
            self._stats_waiters.pop(ref, None)

    async def _read_worker(self, w: int) -> None:
        while True:
            ours, proc, setup = self._pending_workers.pop(w)
            chan = await control.ControlChannel.open(ours)
            child = Child(f"worker {w}", proc, chan)
            self.workers[w] = child
            chan.send(setup)
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
                    for ref in msg.refs:
                        out.pop(ref, None)
                elif isinstance(msg, control.FragmentsFailed):
                    for ref in msg.refs:
                        self.outstanding[w].pop(ref, None)
                    log.warning("%d fragments could not be sent: %s", len(msg.refs), msg.reason)
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
            if self.sender and self.sender.proc.poll() is not None and not self.sender.stopping:
                self.fatal = f"the sender process exited with code {self.sender.proc.returncode}"

    async def _refresh_topology(self) -> None:
        while self.running:
            await asyncio.sleep(self.opts.topology_refresh_s)
            try:
                topo = usable_topology(await fetch_topology(self.opts.directory_url), self.refused_keys)
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

    # -- messages --
    def send_message(self, identity: int, message: bytes, recipient_key: bytes, recipient_provider: bytes) -> int:
        """Encrypt, fragment and queue a message; returns how many packets it takes."""
        if not self.running:
            raise ClientError("the client is not running")
        if self.topology.provider_by_key(recipient_provider) is None:
            raise RecipientError(f"recipient's provider {sphinx_key(recipient_provider)} is not in the topology")
        try:
            payloads = fragment_message(message, recipient_key, self.opts.payload_size)
        except MessageError as e:
            raise RecipientError(str(e)) from None
        frags = [control.Fragment(next(self.refs), identity, recipient_key, recipient_provider, p)
                 for p in payloads]
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
            reasm = self.reassemblers[msg.identity] = Reassembler(self.identities[msg.identity].keys.secret)
        now = time.monotonic()
        for payload in msg.payloads:
            data = reasm.add(payload, now)
            if data is not None:
                self.stats.messages_received += 1
                for q in self.subscribers.get(msg.identity, ()):
                    q.put_nowait(data)
                for listener in self.message_listeners:
                    listener(msg.identity, data)

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

    def _on_sender_stats(self, msg: control.SenderStats) -> None:
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
        now = time.monotonic()
        s.messages_incomplete += sum(len(r.expire(now)) for r in self.reassemblers.values())
        if s.connected >= len(self.identities):
            self._sender_connected.set()
        for listener in self.stats_listeners:
            listener(s, msg)

    # -- identities joining and leaving a running client --
    def add_identities(self, identities: list[Identity]) -> range:
        """Join identities while running: registered at their providers (the topology's, round
        robin as at start, unless pinned) and given streams on the schedule. Returns their indexes."""
        if not self.running:
            raise ClientError("the client is not running")
        first = len(self.identities)
        providers = sorted(self.topology.providers, key=lambda p: p.pub_key)
        chosen = []
        for k, ident in enumerate(identities):
            key = ident.provider_key
            if key is None:
                key = providers[(first + k) % len(providers)].pub_key
            elif self.topology.provider_by_key(key) is None:
                raise ClientError(f"provider {sphinx_key(key)} is not in the topology")
            chosen.append(key)
        self.identities.extend(identities)
        self.provider_of.extend(chosen)
        for key in dict.fromkeys(chosen):
            if key not in self.provider_keys:
                self.provider_keys.append(key)  # appended: the indexes children hold stay valid
        index = {key: i for i, key in enumerate(self.provider_keys)}
        endpoints = [control.ProviderEndpoint(key, *self.topology.provider_by_key(key).address)
                     for key in self.provider_keys]
        new = range(first, len(self.identities))
        self.sender.chan.send(control.AddSenderIdentities(
            [control.SenderIdentity(self.identities[i].keys.secret, self.identities[i].keys.public,
                                    index[self.provider_of[i]]) for i in new], endpoints))
        for w, child in enumerate(self.workers):
            classes: dict[tuple[float, float, float], int] = {}
            infos = []
            for i in new:
                if self.partitioned and i % self.n_workers != w:
                    continue
                ident = self.identities[i]
                rates = (ident.payload_rate, ident.loop_rate, ident.drop_rate)
                infos.append(control.IdentityInfo(ident.keys.public, index[self.provider_of[i]],
                                                  classes.setdefault(rates, len(classes))))
            if infos and child is not None and child.chan is not None:
                child.chan.send(control.AddWorkerIdentities(infos, list(self.provider_keys),
                                                            [control.RateClass(*r) for r in classes]))
        return new

    def remove_identities(self, indexes: list[int]) -> None:
        """Identities leave: no more streams or messages for them (indexes are never reused)."""
        gone = sorted(set(indexes) - self.removed)
        if not gone:
            return
        self.removed.update(gone)
        msg = control.RemoveIdentities(gone)
        self.sender.chan.send(msg)
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
        return self.identities[identity].keys.public, self.provider_of[identity]


def sphinx_key(key: bytes) -> str:
    return b64url_encode(key)


__all__ = ["ClientError", "Coordinator", "DirectoryError", "Identity", "LoopCodec", "RecipientError", "RuntimeOptions", "Stats"]
