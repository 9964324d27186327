"""The sender: a uvloop process that puts every packet on the wire at its scheduled instant.

It reads the workers' rings (each already in schedule order), writes each packet when its time
comes over the identity's persistent provider connection (all packets due together in one write),
and handles what the provider pushes back: returning loops are recognised and timed here, real
fragments go up to the coordinator. Started as `python -m loopix.client.sender CONTROL_FD`; the ring
file descriptors are inherited and named in its setup message. It exits when the control socket
closes, so it never outlives the coordinator.

Timing: uvloop's timers have millisecond granularity, so the sender sleeps on a timer until about two
milliseconds before the next packet is due, then sleeps the rest on the kernel's high-resolution
timer (blocking the loop for at most a few ms) and yields to the loop for the last few tens of µs.
It runs SCHED_FIFO where allowed (see raise_priority). Packets are never sent early; lateness is
measured and reported.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable

import msgspec
import uvloop

from loopix.csprng import Csprng
from loopix.keys import KEY_SIZE as KEY
from loopix.wire import provider as pp

from . import control
from .messages import LoopCodec
from .profiling import run_profiled
from .ring import Ring
from .schedule import Stream
from .trace import TraceWriter

LOOP = Stream.LOOP.value

log = logging.getLogger("loopix.sender")

TIMER_SLACK_NS = 3_000_000  # sleep on the event loop's timer only when the next packet is further
TIMER_EARLY_NS = 2_000_000  # ...and wake this much before it (uvloop timers have 1 ms granularity)
NAP_MIN_NS = 60_000  # below this, yield to the loop instead of sleeping
NAP_EARLY_NS = 40_000  # wake this much early from a nap (the kernel adds its timer slack)
MAX_PER_ROUND = 1024
REGISTER_CHUNK = 512  # REGISTERs in flight per link: a fleet registers in chunks, not one 10 MB burst
LATENESS_SAMPLES = 2000
MAX_LOOP_SAMPLES = 1_000_000  # per stats interval
STATS_INTERVAL_S = 1.0
CONNECTED_REPORT_S = 0.05  # a change in how many identities are connected reaches the coordinator this soon
SENT_REPORT_INTERVAL_S = 0.05  # how often the coordinator learns which real fragments left (ack timers)
HOLD_MAX = 8192  # real packets due while their provider connection is down wait, at most this many...
HOLD_MAX_NS = 30_000_000_000  # ...and at most this long; beyond, dropped (real ones retransmitted)


class KeyIndex:
    """Public key -> identity for keys kept flat (identity i's at [32i, 32i + 32) of `publics`).

    Open addressing over an array("I") of identity + 1 (0: empty), at most half full, probed from
    the key's hash (SipHash, keyed per process): about 8 bytes an identity where a dict of 32-byte
    keys costs ~150, and a lookup is one hash and a slice compare. Identities are never taken out
    (indexes are not reused); a link's flags say who is a member."""

    def __init__(self) -> None:
        self._publics = b""
        self._slots = array.array("I", bytes(4 * 16))
        self._count = 0

    def add(self, publics: bytes, identities: range) -> None:
        """Index `identities`, whose keys are in `publics` (the whole buffer, grown)."""
        self._publics = publics
        if 2 * (self._count + len(identities)) > len(self._slots):
            size = len(self._slots)
            while 2 * (self._count + len(identities)) > size:
                size *= 2
            old = self._slots
            self._slots = array.array("I", bytes(4 * size))
            self._count = 0
            for v in old:
                if v:
                    self._put(v - 1)
        for i in identities:
            self._put(i)

    def _put(self, i: int) -> None:
        slots, publics = self._slots, self._publics
        key = publics[i * KEY:(i + 1) * KEY]
        mask = len(slots) - 1
        j = hash(key) & mask
        while slots[j]:
            k = slots[j] - 1
            if publics[k * KEY:(k + 1) * KEY] == key:  # the same key twice: the later identity has it
                slots[j] = i + 1
                return
            j = (j + 1) & mask
        slots[j] = i + 1
        self._count += 1

    def get(self, key: bytes) -> int | None:
        slots, publics = self._slots, self._publics
        mask = len(slots) - 1
        j = hash(key) & mask
        while v := slots[j]:
            if publics[(v - 1) * KEY:v * KEY] == key:
                return v - 1
            j = (j + 1) & mask
        return None


class RegisteredKeys:
    """What `FleetClientSide.registered_keys` holds (the keys the provider accepted on this
    connection), as one flag per identity instead of a set of 32-byte keys. A key that is not one
    of ours (never expected) goes to a small set."""

    def __init__(self, keys: KeyIndex, n: int):
        self._keys = keys
        self._flags = bytearray(n)
        self._others: set[bytes] = set()
        self._count = 0

    def __contains__(self, key: bytes) -> bool:
        i = self._keys.get(key)
        if i is None:
            return key in self._others
        return i < len(self._flags) and bool(self._flags[i])

    def add(self, key: bytes) -> None:
        i = self._keys.get(key)
        if i is None:
            self._others.add(key)
            return
        if i >= len(self._flags):
            self._flags.extend(bytes(i + 1 - len(self._flags)))
        if not self._flags[i]:
            self._flags[i] = 1
            self._count += 1

    def discard(self, key: bytes) -> None:
        i = self._keys.get(key)
        if i is None:
            self._others.discard(key)
        elif i < len(self._flags) and self._flags[i]:
            self._flags[i] = 0
            self._count -= 1

    def difference_update(self, keys) -> None:
        for key in keys:
            self.discard(key)

    def __len__(self) -> int:
        return self._count + len(self._others)


def _grown(flags: bytearray, n: int) -> bytearray:
    if len(flags) < n:
        flags.extend(bytes(n - len(flags)))
    return flags


class ProviderLink(asyncio.Protocol):
    """The persistent, registered connection to one provider (reconnects on loss).

    It is always a fleet connection, whatever the number of identities (one is a fleet of one):
    it registers them all and demultiplexes what the provider pushes by recipient key, so a fleet
    of thousands costs one socket per provider, not one per identity.
    """

    def __init__(self, sender: Sender, members: Iterable[int], endpoint: control.ProviderEndpoint):
        self.sender = sender
        self.endpoint = endpoint
        # one flag per identity of the sender (a fleet has 100,000: no set or dict of them)
        self.member = bytearray(sender.n_identities)  # registers on this link
        self.registered = bytearray(sender.n_identities)  # ...and the provider accepted it here
        for i in members:
            self.member[i] = 1
        self.transport: asyncio.Transport | None = None
        self.proto: pp.FleetClientSide | None = None
        self.backoff = 0.2
        self.closing = False
        self.refusals_logged = 0
        self.to_register = array.array("I")  # members still to register on this connection...
        self._register_next = 0  # ...from this position on

    @property
    def members(self) -> list[int]:
        return list(itertools.compress(range(len(self.member)), self.member))

    def member_of(self, key: bytes) -> int | None:
        """The member identity with this public key, if any."""
        i = self.sender.keys.get(key)
        return i if i is not None and i < len(self.member) and self.member[i] else None

    async def connect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closing:
            try:
                await loop.create_connection(lambda: self, self.endpoint.host, self.endpoint.port)
                return
            except OSError as e:
                log.warning("provider %s:%d unreachable (%s); retrying in %.1fs",
                            self.endpoint.host, self.endpoint.port, e, self.backoff)
                await asyncio.sleep(self.backoff)
                self.backoff = min(5.0, self.backoff * 2)

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.proto = pp.FleetClientSide(self.endpoint.key, push=self.sender.setup.push,
                                        registered=RegisteredKeys(self.sender.keys, self.sender.n_identities))
        transport.write(self.proto.send_hello())

    def _set_ready(self, identity: int, ready: bool) -> None:
        """Registered here or not; the identity is ready if any of its links (home, standby) is,
        and sends through one that is."""
        _grown(self.registered, identity + 1)[identity] = ready
        self.sender.link_state_changed(identity)

    def data_received(self, data: bytes) -> None:
        proto, sender = self.proto, self.sender
        acks: list[int] = []
        for ev in proto.receive_data(data):
            match ev:
                case pp.Delivered(id=message_id, message=message, client_key=key):
                    identity = self.member_of(key)
                    if identity is not None:
                        sender.on_message(identity, message)
                    acks.append(message_id)
                case pp.PullResult(messages=messages, client_key=key):
                    identity = self.member_of(key)
                    for m in messages:
                        if identity is not None:
                            sender.on_message(identity, m.message)
                        acks.append(m.id)
                case pp.ChallengeReceived():
                    self.to_register = array.array("I", self.members)
                    self._register_next = 0
                    self._register_more()
                case pp.KeyRegistered(client_key=key):
                    identity = self.member_of(key)
                    if identity is not None:
                        self._set_ready(identity, True)
                    self.backoff = 0.2
                    if self._register_next < len(self.to_register):
                        self._register_more()
                case pp.KeyRefused(client_key=key, reason=reason):
                    identity = self.member_of(key)
                    if identity is not None:
                        self._set_ready(identity, False)
                    if self._register_next < len(self.to_register):
                        self._register_more()
                    if self.refusals_logged < 5:
                        self.refusals_logged += 1
                        log.warning("provider refused identity %s: %s", identity, reason)
                case pp.KeysUnregistered():
                    pass  # identities that left (leave): nothing of theirs is kept here
                case pp.ProviderError(reason=reason) | pp.ProtocolError(reason=reason):
                    log.warning("provider %s:%d closed the session: %s",
                                self.endpoint.host, self.endpoint.port, reason)
                    self.transport.close()
                    return
        if acks and not proto.closed:
            # the fragments reach the coordinator (one local socket, in order) before the provider
            # may delete them
            sender.flush_received()
            self.transport.write(proto.send_ack(acks))

    def _register_more(self) -> None:
        """Keep up to REGISTER_CHUNK registrations in flight until every member is registered."""
        proto, queue, sender = self.proto, self.to_register, self.sender
        if self.transport is None or proto is None or proto.closed:
            return
        secrets, publics = sender.secrets, sender.publics
        while self._register_next < len(queue) and len(proto.pending) <= REGISTER_CHUNK // 2:
            start = self._register_next
            take = queue[start:start + REGISTER_CHUNK]
            try:
                frames = proto.send_register_many(
                    (secrets[i * KEY:(i + 1) * KEY], publics[i * KEY:(i + 1) * KEY]) for i in take)
            except pp.ProtocolStateError:  # not challenged yet: ChallengeReceived starts over with every member
                return
            self._register_next = start + len(take)
            if self._register_next == len(queue):  # all sent: drop the list
                self.to_register, self._register_next = array.array("I"), 0
                queue = self.to_register
            self.transport.write(frames)

    def join(self, identities: Iterable[int]) -> None:
        """Identities joining a running link: registered now if the session is up, else with the
        rest at the next challenge."""
        ids = array.array("I", identities)
        member = _grown(self.member, self.sender.n_identities)
        _grown(self.registered, self.sender.n_identities)
        for i in ids:
            member[i] = 1
        self.to_register.extend(ids)
        self._register_more()

    def leave(self, identities: set[int]) -> None:
        """Identities leaving: not ready any more, and what arrives for them is acked and dropped.
        The provider is asked to forget them (UNREGISTER); if the link is down, their registration
        expires there on its own (docs/hostile-input.md)."""
        gone = [i for i in identities if i < len(self.member) and self.member[i]]
        if gone and self.transport is not None and self.proto is not None and not self.proto.closed:
            with contextlib.suppress(pp.ProtocolStateError):  # not challenged yet: nothing registered
                self.transport.write(self.proto.send_unregister(self.sender.public_key(i) for i in gone))
        for i in gone:
            self.member[i] = 0
            self._set_ready(i, False)
        if self._register_next < len(self.to_register):
            rest = self.to_register[self._register_next:]
            self.to_register = array.array("I", (i for i in rest if i not in identities))
            self._register_next = 0

    def pull(self, identity: int) -> None:
        if self.transport is None or self.proto is None or identity >= len(self.registered) \
                or not self.registered[identity]:
            return
        self.transport.write(self.proto.send_pull_for(self.sender.public_key(identity)))

    def connection_lost(self, exc) -> None:
        for i in itertools.compress(range(len(self.registered)), self.registered):
            self._set_ready(i, False)
        self.transport = None
        if not self.closing and self.sender.running:
            asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        await asyncio.sleep(self.backoff)
        self.backoff = min(5.0, self.backoff * 2)
        await self.connect_forever()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class IdentityCounts:
    """Per-identity totals in flat arrays (6 x 8 bytes an identity), read on request."""

    def __init__(self, n: int):
        zeros = bytes(8 * n)
        self.sent = [array.array("Q", zeros) for _ in range(3)]
        self.real_sent = array.array("Q", zeros)
        self.received = array.array("Q", zeros)
        self.loops_back = array.array("Q", zeros)
        self.rtt_sum_ns = array.array("Q", zeros)

    def grow(self, k: int) -> None:
        zeros = bytes(8 * k)
        for a in (*self.sent, self.real_sent, self.received, self.loops_back, self.rtt_sum_ns):
            a.frombytes(zeros)

    def row(self, i: int) -> control.IdentityCounters:
        return control.IdentityCounters(i, [s[i] for s in self.sent], self.real_sent[i], self.received[i],
                                        self.loops_back[i], self.rtt_sum_ns[i])

    def reply(self, req: control.IdentityStatsRequest, n: int) -> control.IdentityStatsReply:
        rows = [self.row(i) for i in req.identities if 0 <= i < n]
        top = []
        if req.top > 0:
            p, lo, d = self.sent
            r = self.received  # traffic: packets sent and received
            top = [self.row(i) for i in heapq.nlargest(req.top, range(n), key=lambda i: p[i] + lo[i] + d[i] + r[i])]
        return control.IdentityStatsReply(req.ref, rows, top)


class Sender:
    def __init__(self, setup: control.SenderSetup, ctl: control.ControlChannel):
        self.setup = setup
        self.ctl = ctl
        self.rings = [Ring.attach(fd) for fd in setup.ring_fds]
        # identities, flat (a fleet has 100,000): keys in 32-byte slots, found by key through KeyIndex
        self.secrets, self.publics = setup.secrets, setup.publics
        provider_of = array.array("H", setup.provider_of)
        self.setup = msgspec.structs.replace(setup, secrets=b"", publics=b"", provider_of=b"")  # kept once, here
        n = len(self.publics) // KEY
        self.keys = KeyIndex()
        self.keys.add(self.publics, range(n))
        self.ready = bytearray(n)  # registered and connected, per identity
        self.links: list[ProviderLink] = []
        self.link_of: list[ProviderLink] = [None] * n  # type: ignore[list-item]  # the one it sends through
        self.home_of = array.array("H", bytes(2 * n))  # index into links of each identity's home link
        self._connected_report: asyncio.TimerHandle | None = None
        self.standby_of: dict[int, list[ProviderLink]] = {}  # the few with a standby link (failover)
        self._join(range(n), provider_of, setup.providers)
        self.loops = LoopCodec(setup.loop_key)
        self.trace = TraceWriter(setup.trace_path) if setup.trace_path else None
        self.running = True
        self.connected = 0
        self.sent = [0, 0, 0]
        self.real_sent = 0
        self.dropped_unconnected = 0
        self.unsent_by_stream = [0, 0, 0]  # due while the identity's provider link was down
        self.received = 0
        self.loops_back = 0
        self.loops_sent_by_second: dict[int, int] = {}
        self.sent_by_second: dict[int, list[int]] = {}
        self.loop_back_sent_ns: list[int] = []
        self.loop_back_rtt_ns: list[int] = []
        self.lateness_us: list[float] = []
        self._late_seen = 0
        self._received: dict[int, list[bytes]] = {}
        self.rng = Csprng()  # pull times are seen by the provider: docs/randomness.md
        # packets due while their identity's connection was down: (t, identity, stream, flags, seq, bytes)
        self.held: collections.deque[tuple[int, int, int, int, int, bytes]] = collections.deque()
        self.ready_generation = 0
        self._held_generation = 0
        self._held_check_ns = 0
        self.sent_refs: list[int] = []
        self.sent_ref_ns: list[int] = []
        self.unsent_refs: list[int] = []
        # per identity, for `fleet stats`: 48 bytes each, no per-identity objects
        self.per_identity = IdentityCounts(n)

    @property
    def n_identities(self) -> int:
        return len(self.ready)

    def public_key(self, identity: int) -> bytes:
        return self.publics[identity * KEY:(identity + 1) * KEY]

    def links_of(self, identity: int) -> list[ProviderLink]:
        """The links an identity registers on: its home first, then any standby."""
        return [self.links[self.home_of[identity]], *self.standby_of.get(identity, ())]

    def _join(self, new: range, provider_of: array.array, providers: list[control.ProviderEndpoint]) -> list:
        """Identities `new` (keys already in `secrets`/`publics`) join the link to their provider,
        `providers[provider_of[k]]` for the k-th; returns the links made for providers not seen
        before (not yet connecting)."""
        by_key = {link.endpoint.key: k for k, link in enumerate(self.links)}
        joining: dict[int, array.array] = {}
        for i, p in zip(new, provider_of, strict=True):
            members = joining.get(p)
            if members is None:
                members = joining[p] = array.array("I")
            members.append(i)
        made = []
        for p, members in joining.items():
            endpoint = providers[p]
            k = by_key.get(endpoint.key)
            if k is None:
                k = by_key[endpoint.key] = len(self.links)
                self.links.append(ProviderLink(self, (), endpoint))
                made.append(self.links[k])
            link = self.links[k]
            for i in members:
                self.link_of[i] = link
                self.home_of[i] = k
            link.join(members)
        return made

    def link_state_changed(self, identity: int) -> None:
        ready_links = [link for link in self.links_of(identity)
                       if identity < len(link.registered) and link.registered[identity]]
        ready = bool(ready_links)
        if ready_links:
            self.link_of[identity] = ready_links[0]
        if self.ready[identity] != ready:
            self.ready[identity] = ready
            self.connected += 1 if ready else -1
            if ready:
                self.ready_generation += 1
            if not self._connected_report:
                self._connected_report = asyncio.get_running_loop().call_later(
                    CONNECTED_REPORT_S, self._report_connected)

    def _report_connected(self) -> None:
        self._connected_report = None
        self.ctl.send(control.SenderConnected(self.connected))

    def failover(self, msg: control.Failover) -> None:
        """Register these identities at a standby provider too (their home is gone from the
        topology); the home link keeps reconnecting, so whatever waits there is fetched later."""
        link = next((lk for lk in self.links if lk.endpoint.key == msg.provider.key), None)
        new = link is None
        if new:
            link = ProviderLink(self, [], msg.provider)
            self.links.append(link)
        ids = [i for i in msg.identities if link not in self.links_of(i)]
        for i in ids:
            self.standby_of.setdefault(i, []).append(link)
        link.join(ids)
        if new:
            asyncio.get_running_loop().create_task(link.connect_forever())

    # -- receiving --
    def on_message(self, identity: int, payload: bytes) -> None:
        self.received += 1
        counts = self.per_identity
        counts.received[identity] += 1
        info = self.loops.decode(payload)
        if info is not None:
            self.loops_back += 1
            rtt = time.monotonic_ns() - info.sent_ns
            counts.loops_back[identity] += 1
            counts.rtt_sum_ns[identity] += max(0, rtt)
            if len(self.loop_back_sent_ns) < MAX_LOOP_SAMPLES:
                self.loop_back_sent_ns.append(info.sent_ns)
                self.loop_back_rtt_ns.append(rtt)
            return
        self._received.setdefault(identity, []).append(payload)

    def flush_received(self) -> None:
        for identity, payloads in self._received.items():
            self.ctl.send(control.Received(identity, payloads))
        self._received.clear()

    # -- sending --
    async def pump(self) -> None:
        rings, link_of, ready = self.rings, self.link_of, self.ready
        reads = [r.read_index for r in rings]
        mono = time.monotonic_ns
        trace = self.trace
        sent = self.sent
        while self.running:
            now = mono()
            next_t = -1
            batch: dict[ProviderLink, list[memoryview]] = {}
            due: list[tuple[int, int, int, int, int]] = []
            if self.held and (self.ready_generation != self._held_generation or now >= self._held_check_ns):
                self._release_held(now, batch, due)
            for k, ring in enumerate(rings):
                r, w = reads[k], ring.write_index
                while r < w and len(due) < MAX_PER_ROUND:
                    t, identity, stream, flags, wire_len, seq = ring.peek(r)
                    if t > now:
                        if next_t < 0 or t < next_t:
                            next_t = t
                        break
                    if ready[identity]:
                        batch.setdefault(link_of[identity], []).append(ring.wire_bytes(r, wire_len))
                        due.append((t, identity, stream, flags, seq))
                    elif flags & 1:  # a real packet waits for the link (bounded)
                        self._hold(t, identity, stream, flags, seq, bytes(ring.wire_bytes(r, wire_len)))
                    else:  # stale cover sent in a burst later would be overhead, and visible
                        self.dropped_unconnected += 1
                        self.unsent_by_stream[stream] += 1
                    r += 1
                reads[k] = r
            if due:
                actual = mono()
                for link, views in batch.items():
                    link.transport.write(b"".join(views))
                del batch
                for k, ring in enumerate(rings):
                    ring.release(reads[k])
                self._account(due, actual, sent, trace)
                await asyncio.sleep(0)
                continue
            for k, ring in enumerate(rings):  # slots of unconnected identities were consumed too
                ring.release(reads[k])
            if next_t < 0:
                await asyncio.sleep(0.001)  # rings empty: the workers run ahead, so poll gently
                continue
            wait = next_t - mono()
            if wait > TIMER_SLACK_NS:
                await asyncio.sleep((wait - TIMER_EARLY_NS) / 1e9)
            elif wait > NAP_MIN_NS:
                # the kernel's high-resolution timer, blocking the loop for at most ~3 ms
                time.sleep((wait - NAP_EARLY_NS) / 1e9)
            else:
                await asyncio.sleep(0)

    def _hold(self, t: int, identity: int, stream: int, flags: int, seq: int, data: bytes) -> None:
        """A real packet due while its connection is down waits for it (bounded: HOLD_MAX,
        HOLD_MAX_NS); its lateness, when it finally goes, is the wait. Cover due meanwhile is dropped
        and counted: sent late in a burst it would cover nothing and stand out."""
        if len(self.held) >= HOLD_MAX:
            self._give_up(self.held.popleft())
        self.held.append((t, identity, stream, flags, seq, data))

    def _give_up(self, item) -> None:
        self.dropped_unconnected += 1
        self.unsent_by_stream[item[2]] += 1
        if item[3] & 1:
            self.unsent_refs.append(item[4])

    def _release_held(self, now: int, batch, due) -> None:
        self._held_generation = self.ready_generation
        self._held_check_ns = now + 100_000_000
        ready, link_of = self.ready, self.link_of
        keep: collections.deque = collections.deque()
        for item in self.held:
            t, identity, stream, flags, seq, data = item
            if ready[identity]:
                batch.setdefault(link_of[identity], []).append(data)
                due.append((t, identity, stream, flags, seq))
            elif now - t > HOLD_MAX_NS:
                self._give_up(item)
            else:
                keep.append(item)
        self.held = keep

    def _account(self, due, actual: int, sent: list[int], trace: TraceWriter | None) -> None:
        samples = self.lateness_us
        by_second = self.loops_sent_by_second
        per_sent, per_real = self.per_identity.sent, self.per_identity.real_sent
        all_by_second = self.sent_by_second
        for t, identity, stream, flags, seq in due:
            sent[stream] += 1
            per_sent[stream][identity] += 1
            sec = t // 1_000_000_000
            counts = all_by_second.get(sec)
            if counts is None:
                counts = all_by_second[sec] = [0, 0, 0, 0]
            counts[stream] += 1
            if stream == LOOP:
                by_second[sec] = by_second.get(sec, 0) + 1
            real = flags & 1
            if real:
                self.real_sent += 1
                self.sent_refs.append(seq)
                self.sent_ref_ns.append(actual)
                per_real[identity] += 1
                counts[3] += 1
            self._late_seen += 1
            if len(samples) < LATENESS_SAMPLES:
                samples.append((actual - t) / 1e3)
            else:  # reservoir sampling keeps an unbiased sample of the interval
                j = self.rng.randrange(self._late_seen)
                if j < LATENESS_SAMPLES:
                    samples[j] = (actual - t) / 1e3
            if trace is not None:
                trace.add(t, actual, identity, stream, bool(real))

    # -- pulling (Loopix clients that do not take pushes) --
    async def pull_loop(self) -> None:
        rate = self.setup.fetch_rate * self.n_identities
        if self.setup.push or rate <= 0:
            return
        while self.running:  # one clock for every identity's fetches; the link picks who pulls
            await asyncio.sleep(self.rng.expovariate(rate))
            identity = self.rng.randrange(self.n_identities)
            self.link_of[identity].pull(identity)

    def report_sent(self) -> None:
        if self.sent_refs or self.unsent_refs:
            self.ctl.send(control.FragmentsSent(self.sent_refs, self.sent_ref_ns, self.unsent_refs))
            self.sent_refs, self.sent_ref_ns, self.unsent_refs = [], [], []

    async def sent_loop(self) -> None:
        while self.running:
            await asyncio.sleep(SENT_REPORT_INTERVAL_S)
            self.report_sent()

    async def stats_loop(self) -> None:
        while self.running:
            await asyncio.sleep(STATS_INTERVAL_S)
            self.flush_received()
            self.ctl.send(control.SenderStats(
                sent=list(self.sent), real_sent=self.real_sent, loops_back=self.loops_back,
                loops_sent_by_second=self.loops_sent_by_second, loop_back_sent_ns=self.loop_back_sent_ns,
                loop_back_rtt_ns=self.loop_back_rtt_ns, lateness_us=self.lateness_us, connected=self.connected,
                dropped_unconnected=self.dropped_unconnected, received=self.received,
                unsent_by_stream=list(self.unsent_by_stream), sent_by_second=self.sent_by_second,
            ))
            self.sent_by_second = {}
            self.lateness_us, self._late_seen = [], 0
            self.loops_sent_by_second, self.loop_back_sent_ns, self.loop_back_rtt_ns = {}, [], []
            if self.trace is not None:
                self.trace.flush()

    async def control_loop(self) -> None:
        while self.running:
            msg = await self.ctl.recv()
            if msg is None or isinstance(msg, control.Stop):
                self.running = False
                return
            if isinstance(msg, control.Failover):
                self.failover(msg)
            elif isinstance(msg, control.AddSenderIdentities):
                self.add_identities(msg)
            elif isinstance(msg, control.IdentityStatsRequest):
                self.ctl.send(self.per_identity.reply(msg, self.n_identities))
            elif isinstance(msg, control.RemoveIdentities):
                gone = set(msg.identities)
                for link in self.links:  # home and standby
                    link.leave(gone)

    def add_identities(self, msg: control.AddSenderIdentities) -> None:
        """Append identities (global indexes go on from ours) and register them at their providers,
        on the existing link to each, or a new one. Costs the new identities, plus one copy of the
        key buffers."""
        first = self.n_identities
        self.secrets += msg.secrets
        self.publics += msg.publics
        new = range(first, len(self.publics) // KEY)
        self.keys.add(self.publics, new)
        self.ready.extend(bytes(len(new)))
        self.per_identity.grow(len(new))
        self.setup.providers = msg.providers
        self.link_of.extend([None] * len(new))
        self.home_of.frombytes(bytes(2 * len(new)))
        for link in self._join(new, array.array("H", msg.provider_of), msg.providers):
            asyncio.get_running_loop().create_task(link.connect_forever())

    async def run(self) -> None:
        for link in self.links:
            asyncio.get_running_loop().create_task(link.connect_forever())
        tasks = [asyncio.create_task(c) for c in (self.pump(), self.stats_loop(), self.pull_loop(),
                                                       self.sent_loop())]
        try:
            await self.control_loop()
        finally:
            self.running = False
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.flush_received()
            for link in self.links:
                link.close()
            if self.trace is not None:
                self.trace.close()
            for ring in self.rings:
                ring.close()


async def amain(ctl_fd: int) -> int:
    ctl = await control.ControlChannel.open(socket.socket(fileno=ctl_fd))
    msg = await ctl.recv()
    if not isinstance(msg, control.SenderSetup):
        return 0
    sender = Sender(msg, ctl)
    await sender.run()
    return 0


def raise_priority() -> None:
    """Real-time scheduling (SCHED_FIFO) where allowed (root or CAP_SYS_NICE), else a higher
    priority than the workers; LOOPIX_SENDER_REALTIME=0 skips the real-time part.

    On a busy machine a sender whose sleep ends must wait for a CPU: measured at 2,000 packets/s
    with both cores loaded, time.sleep overslept by 2.3 ms at p99 under the normal scheduler and by
    51 us under SCHED_FIFO (lateness p99 from 2.4 ms to well under 1 ms). The sender sleeps between
    packets, so it never holds a core for long."""
    if os.environ.get("LOOPIX_SENDER_REALTIME", "1") != "0":
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            return
        except (OSError, AttributeError):
            pass
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, max(-10, os.getpriority(os.PRIO_PROCESS, 0) - 5))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sender %(levelname)s %(message)s")
    raise_priority()
    try:
        return run_profiled("sender", lambda: uvloop.run(amain(int(argv[0]))))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ProviderLink", "Sender", "Stream"]
