"""The sender: a uvloop process that puts every packet on the wire at its scheduled instant.

The timing loop is C (client/pacer.py, csrc/pacer.c) in a thread of this process: it reads the
workers' rings (each already in schedule order), sleeps on the kernel's absolute high-resolution timer
until the next packet is due, writes every packet due together over the identity's persistent
provider connection (one sendmsg per link) and counts what it sent in flat arrays. This event loop
keeps the protocol: it connects and registers, writes its frames through the pacer (so they never
interleave with packets), handles what the provider pushes back (returning loops are recognised and
timed here, real fragments go up to the coordinator), holds real packets due while their link is down,
and reports the pacer's counts once per interval. Started as `python -m loopix.client.sender
CONTROL_FD`; the ring file descriptors are inherited and named in its setup message. It exits when
the control socket closes, so it never outlives the coordinator.

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
from .pacer import SEND_FULL, Pacer
from .profiling import run_profiled
from .ring import Ring
from .schedule import Stream
from .trace import TraceWriter

log = logging.getLogger("loopix.sender")

REGISTER_CHUNK = 512  # REGISTERs in flight per link: a fleet registers in chunks, not one 10 MB burst
LATENESS_SAMPLES = 2000
MAX_LOOP_SAMPLES = 1_000_000  # per stats interval
STATS_INTERVAL_S = 1.0
CONNECTED_REPORT_S = 0.05  # a change in how many identities are connected reaches the coordinator this soon
SENT_REPORT_INTERVAL_S = 0.05  # how often the coordinator learns which real fragments left (ack timers)
HOLD_MAX = 8192  # real packets due while their provider connection is down wait, at most this many...
HOLD_MAX_NS = 30_000_000_000  # ...and at most this long; beyond, dropped (real ones retransmitted)
HELD_HANDOFF = 256  # real packets the pacer can hand over per drain (SENT_REPORT_INTERVAL_S) before it waits
SENT_REFS_CAP = 1 << 16  # real fragments sent per drain the pacer can note before it waits
TRACE_CAP = 1 << 16  # trace records per drain
LINK_BUFFER = 4 << 20  # bytes buffered per provider link when its socket is full; beyond, the link waits


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

    def __init__(self, sender: Sender, members: Iterable[int], endpoint: control.ProviderEndpoint, number: int):
        self.sender = sender
        self.number = number  # the pacer's index of this link (its place in sender.links)
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
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # every write goes through the pacer, on its own descriptor of this socket
        self.sender.pacer.set_link(self.number, os.dup(sock.fileno()))
        self.proto = pp.FleetClientSide(self.endpoint.key, push=self.sender.setup.push,
                                        registered=RegisteredKeys(self.sender.keys, self.sender.n_identities))
        self.write(self.proto.send_hello())

    def write(self, data: bytes) -> None:
        """A frame to the provider, in order with the packets the pacer writes."""
        if self.sender.pacer.send(self.number, data) == SEND_FULL and self.transport is not None:
            log.warning("provider %s:%d does not read (%d bytes waiting); reconnecting",
                        self.endpoint.host, self.endpoint.port, LINK_BUFFER)
            self.drop()

    def drop(self) -> None:
        """Close this connection: the pacer stops writing to it at once (then connection_lost)."""
        self.sender.pacer.set_link(self.number, -1)
        if self.transport is not None:
            self.transport.close()

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
                    self.drop()
                    return
        if acks and not proto.closed:
            # the fragments reach the coordinator (one local socket, in order) before the provider
            # may delete them
            sender.flush_received()
            self.write(proto.send_ack(acks))

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
            self.write(frames)

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
                self.write(self.proto.send_unregister(self.sender.public_key(i) for i in gone))
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
        self.write(self.proto.send_pull_for(self.sender.public_key(identity)))

    def connection_lost(self, exc) -> None:
        self.sender.pacer.set_link(self.number, -1)
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
            self.drop()


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

    def row(self, i: int, first: int = 0, step: int = 1) -> control.IdentityCounters:
        return control.IdentityCounters(first + i * step, [s[i] for s in self.sent], self.real_sent[i],
                                        self.received[i], self.loops_back[i], self.rtt_sum_ns[i])

    def reply(self, req: control.IdentityStatsRequest, ours: list[int], n: int, first: int = 0,
              step: int = 1) -> control.IdentityStatsReply:
        """Rows of `ours` (our indexes of the requested identities that are ours), and our top ones."""
        rows = [self.row(i, first, step) for i in ours]
        top = []
        if req.top > 0:
            p, lo, d = self.sent
            r = self.received  # traffic: packets sent and received
            top = [self.row(i, first, step)
                   for i in heapq.nlargest(req.top, range(n), key=lambda i: p[i] + lo[i] + d[i] + r[i])]
        return control.IdentityStatsReply(req.ref, rows, top)


class Sender:
    def __init__(self, setup: control.SenderSetup, ctl: control.ControlChannel):
        self.setup = setup
        self.ctl = ctl
        self.rings = [Ring.attach(fd) for fd in setup.ring_fds]
        self.first, self.step = setup.first, setup.step  # our identity j is the client's first + j * step
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
        self.link_index = array.array("I", bytes(4 * n))  # the link each identity sends through, as the pacer reads it
        self._join(range(n), provider_of, setup.providers)
        self.loops = LoopCodec(setup.loop_key)
        self.trace = TraceWriter(setup.trace_path) if setup.trace_path else None
        self.running = True
        self.connected = 0
        self.given_up = [0, 0, 0]  # held real packets dropped (HOLD_MAX, HOLD_MAX_NS), by stream
        self.received = 0
        self.loops_back = 0
        self.loop_back_sent_ns: list[int] = []
        self.loop_back_rtt_ns: list[int] = []
        self._received: dict[int, list[bytes]] = {}
        self.rng = Csprng()  # pull times are seen by the provider: docs/randomness.md
        # packets due while their identity's connection was down: (t, identity, stream, flags, seq, bytes)
        self.held: collections.deque[tuple[int, int, int, int, int, bytes]] = collections.deque()
        self.ready_generation = 0
        self._held_generation = 0
        self._held_check_ns = 0
        self.unsent_refs: list[int] = []
        self._dropped_bytes = 0
        # per identity, for `fleet stats`: 48 bytes each, no per-identity objects
        self.per_identity = IdentityCounts(n)
        self.pacer = Pacer(self.rings, samples=LATENESS_SAMPLES, refs_cap=SENT_REFS_CAP,
                           trace_cap=TRACE_CAP if self.trace is not None else 0, held_cap=HELD_HANDOFF,
                           link_buffer=LINK_BUFFER)
        self.pacer.set_coalesce(setup.coalesce_us * 1000)
        self.pacer.set_min_gap(setup.min_gap_us * 1000)
        self.pacer.set_id_map(self.first, self.step)
        with self.pacer.locked():
            self._bind_pacer()

    def _bind_pacer(self) -> None:
        """The per-identity arrays the pacer reads and counts into (with its lock held)."""
        counts = self.per_identity
        self.pacer.bind(self.ready, self.link_index, counts.sent, counts.real_sent)

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
                self.links.append(ProviderLink(self, (), endpoint, k))
                made.append(self.links[k])
            link = self.links[k]
            for i in members:
                self.link_of[i] = link
                self.link_index[i] = k
                self.home_of[i] = k
            link.join(members)
        return made

    def link_state_changed(self, identity: int) -> None:
        ready_links = [link for link in self.links_of(identity)
                       if identity < len(link.registered) and link.registered[identity]]
        ready = bool(ready_links)
        if ready_links:
            self.link_of[identity] = ready_links[0]
            self.link_index[identity] = ready_links[0].number  # before the ready flag: the pacer reads both
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
            link = ProviderLink(self, [], msg.provider, len(self.links))
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
            self.ctl.send(control.Received(self.first + identity * self.step, payloads))
        self._received.clear()

    # -- sending: the pacer writes; here only what waits for a link --
    def drain_held(self) -> None:
        for item in self.pacer.take_held():
            self._hold(item)

    def _hold(self, item: tuple[int, int, int, int, int, bytes]) -> None:
        """A real packet due while its connection is down waits for it (bounded: HOLD_MAX,
        HOLD_MAX_NS); its lateness, when it finally goes, is the wait. Cover due meanwhile is dropped
        and counted by the pacer: sent late in a burst it would cover nothing and stand out."""
        if len(self.held) >= HOLD_MAX:
            self._give_up(self.held.popleft())
        self.held.append(item)

    def _give_up(self, item) -> None:
        self.given_up[item[2]] += 1
        if item[3] & 1:
            self.unsent_refs.append(item[4])

    def release_held(self, now: int) -> None:
        """Held packets whose identity is ready again go out through the pacer's queue of their link
        (in order with its writes) and are accounted as it accounts its own; too old ones are given up."""
        if not self.held or (self.ready_generation == self._held_generation and now < self._held_check_ns):
            return
        self._held_generation = self.ready_generation
        self._held_check_ns = now + 100_000_000
        self.report_sent()  # room for these refs and trace records in the pacer's buffers
        self.drain_trace()
        ready, link_of, pacer = self.ready, self.link_of, self.pacer
        keep: collections.deque = collections.deque()
        for item in self.held:
            t, identity, stream, flags, seq, data = item
            i = self.ours(identity)
            if i < 0:  # not one of ours: cannot happen with the coordinator's split; never sent
                self._give_up(item)
            elif ready[i] and pacer.send(link_of[i].number, data) == 0:
                if not pacer.account(t, time.monotonic_ns(), identity, stream, flags, seq):
                    log.error("held packet sent but not accounted (the pacer's buffers are full)")
            elif now - t > HOLD_MAX_NS:
                self._give_up(item)
            else:
                keep.append(item)
                if ready[i]:  # its link's buffer is full: try again at the next report
                    self._held_check_ns = now
        self.held = keep

    def ours(self, identity: int) -> int:
        """Our index of the client's identity, or -1."""
        j, r = divmod(identity - self.first, self.step)
        return j if identity >= self.first and r == 0 and j < self.n_identities else -1

    def ours_of(self, identities: list[int]) -> list[int]:
        return [j for j in map(self.ours, identities) if j >= 0]

    def drain_trace(self) -> None:
        if self.trace is not None:
            self.trace.add_records(self.pacer.take_trace())

    def check_pacer(self) -> bool:
        """False (and the coordinator told) when the pacer stopped on a ring it cannot read."""
        error = self.pacer.totals()["error"]
        if not error and (self.pacer.alive or not self.running):
            return True
        message = f"the sender's pacer stopped (ring error {error})"
        log.error(message)
        self.ctl.send(control.Fatal(message))
        self.running = False
        return False

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
        refs, sent_ns = self.pacer.take_refs()
        if refs or self.unsent_refs:
            self.ctl.send(control.FragmentsSent(refs, sent_ns, self.unsent_refs))
            self.unsent_refs = []

    async def sent_loop(self) -> None:
        while self.running:
            await asyncio.sleep(SENT_REPORT_INTERVAL_S)
            self.drain_held()
            self.release_held(time.monotonic_ns())
            self.report_sent()
            self.drain_trace()

    def stats(self) -> control.SenderStats:
        """What was sent since start (totals) and in this interval (seconds, samples), from the pacer."""
        totals = self.pacer.totals()
        if totals["dropped_bytes"] > self._dropped_bytes:  # written into a connection that then broke
            log.warning("%d bytes of packets were lost with broken provider connections (%d write errors)",
                        totals["dropped_bytes"] - self._dropped_bytes, totals["write_errors"])
            self._dropped_bytes = totals["dropped_bytes"]
        seconds = self.pacer.take_seconds()
        late_ns, seen = self.pacer.take_lateness()
        unsent = [a + b for a, b in zip(totals["unconnected"], self.given_up, strict=True)]
        stats = control.SenderStats(
            sent=totals["sent"], real_sent=totals["real_sent"], loops_back=self.loops_back,
            loops_sent_by_second={sec: n[1] for sec, n in seconds if n[1]},
            loop_back_sent_ns=self.loop_back_sent_ns, loop_back_rtt_ns=self.loop_back_rtt_ns,
            lateness_us=[ns / 1e3 for ns in late_ns], connected=self.connected,
            dropped_unconnected=sum(unsent), received=self.received, unsent_by_stream=unsent,
            sent_by_second=dict(seconds), lateness_seen=seen,
        )
        self.loop_back_sent_ns, self.loop_back_rtt_ns = [], []
        return stats

    async def stats_loop(self) -> None:
        while self.running:
            await asyncio.sleep(STATS_INTERVAL_S)
            if not self.check_pacer():
                return
            self.flush_received()
            self.ctl.send(self.stats())
            if self.trace is not None:
                self.drain_trace()
                self.trace.flush()

    async def control_loop(self) -> None:
        while self.running:
            msg = await self.ctl.recv()
            if msg is None or isinstance(msg, control.Stop):
                self.running = False
                return
            if isinstance(msg, control.Failover):
                ours = self.ours_of(msg.identities)
                if ours:
                    self.failover(control.Failover(ours, msg.provider))
            elif isinstance(msg, control.AddSenderIdentities):
                self.add_identities(msg)
            elif isinstance(msg, control.IdentityStatsRequest):
                self.ctl.send(self.per_identity.reply(msg, self.ours_of(msg.identities), self.n_identities,
                                                      self.first, self.step))
            elif isinstance(msg, control.RemoveIdentities):
                gone = set(self.ours_of(msg.identities))
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
        with self.pacer.locked():  # the pacer reads these arrays: not while they move
            self.pacer.unbind()
            self.ready.extend(bytes(len(new)))
            self.per_identity.grow(len(new))
            self.link_index.frombytes(bytes(4 * len(new)))
            self._bind_pacer()
        self.setup.providers = msg.providers
        self.link_of.extend([None] * len(new))
        self.home_of.frombytes(bytes(2 * len(new)))
        for link in self._join(new, array.array("H", msg.provider_of), msg.providers):
            asyncio.get_running_loop().create_task(link.connect_forever())

    async def run(self) -> None:
        for link in self.links:
            asyncio.get_running_loop().create_task(link.connect_forever())
        self.pacer.start()
        tasks = [asyncio.create_task(c) for c in (self.stats_loop(), self.pull_loop(), self.sent_loop())]
        try:
            await self.control_loop()
        finally:
            self.running = False
            self.pacer.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.flush_received()
            self.report_sent()
            self.drain_trace()
            totals = self.pacer.totals()
            log.debug("pacer: %d packets in %d wake-ups and %d writes; %d write errors, %d bytes dropped "
                     "with their connection", sum(totals["sent"]), totals["wakeups"], totals["writes"],
                     totals["write_errors"], totals["dropped_bytes"])
            for link in self.links:
                link.close()
            self.pacer.close()
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
