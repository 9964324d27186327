"""A provider of the local testnet: the clients' entry to and exit from the mixnet.

    python -m loopix.testnet.provider --port 9007 --key-file provider.pem \
        --directory http://127.0.0.1:9000 [--inbox inbox.sqlite]

One port serves both sides; the first byte of a connection tells them apart (Nym frames start
with version 7 or 8, clients with the magic "LPX1", see docs/provider-protocol.md).
- Mixnode side: packets are unwrapped like at a mixnode. A `Forward` is forwarded (a provider may
  be a middle hop). A `Final` addressed to all zeros is drop cover: discarded and counted. Any
  other `Final` goes into the inbox of the client whose public key is its destination, if that
  client ever registered here; otherwise it is dropped and counted.
- Client side: a client proves its key (challenge and response), then its SENDs are forwarded to
  the first hop it names, and its inbox is pushed to it (unless it asked not to) and pulled by it.
  Messages leave the inbox only when the owner ACKs them.
- Fleet connections carry many identities (up to `--max-fleet-keys`). Each read's registrations
  go to SQLite in one transaction; each key is routed to the newest connection that registered
  it; presence posts after registrations are debounced, and above `--presence-client-limit`
  clients the presence carries a count instead of the list (docs/provider-protocol.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any, Final

from loopix.argtypes import argtype, count, positive_number
from loopix.sphinx.constants import DROP_COVER_DESTINATION
from loopix.testnet.client_limits import (
    DEFAULT_CLIENT_LIMITS,
    ClientLimits,
    InboxQuota,
    Refuse,
    RegistrationTable,
)
from loopix.testnet.decisions import ForwardNow, PresenceDebounce
from loopix.testnet.delivery import DeliveryPolicy
from loopix.testnet.inbox import Inbox
from loopix.testnet.limits import RateLimitedLog
from loopix.testnet.node import (
    Node,
    NodeConfig,
    NodeLink,
    add_node_arguments,
    load_or_create_secret,
    node_config_from_args,
    run_node,
)
from loopix.wire.ack import split_ack
from loopix.wire.b64 import b64url_encode
from loopix.wire.framing import PACKET_SIZES
from loopix.wire.provider import (
    DEFAULT_MAX_FLEET_KEYS,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PULL_SLOTS,
    MAGIC,
    AckReceived,
    ClientHello,
    ClientRegistered,
    ClientUnregistered,
    FleetClientRefused,
    FleetClientRegistered,
    PacketSubmitted,
    ProtocolError,
    ProviderSide,
    PullRequested,
)

__all__ = ["ClientSession", "Provider", "main"]

log = logging.getLogger(__name__)
_remote_log = RateLimitedLog(log)

_VALID_SIZES = frozenset(PACKET_SIZES.values())
FLEET_SLICE: Final = 16 << 10
"""Bytes of a fleet connection handled per event-loop iteration: ~230 REGISTERs, each an X25519
(~65 us), so a fleet registering 100,000 identities never blocks the loop for more than ~15 ms."""
PRESENCE_DEBOUNCE: Final = 0.5
"""A lone registration is announced at once; a burst once more, this long after it settles."""
DEFAULT_PRESENCE_CLIENT_LIMIT: Final = 1000
"""Above this many registered clients the presence omits the list (about 57 bytes per client)."""
TAKEN_OVER: Final = "registered on a newer connection"
IDLE_WRITE_SLICE: Final = 4096
"""Last-seen times written per event-loop turn after connections close (~40 ms of SQLite)."""


class ClientSession:
    """One client connection: I/O around a `ProviderSide` machine and a `DeliveryPolicy`.

    The policy decides what is pushed (windows, cursors, each key's turn); this class reads the
    inbox for it and writes what the machine encodes (`send_delivery`, `send_pull_answer`: DELIVER
    or DELIVER_TO, PULLED or PULLED_FOR). A single-identity connection is a fleet of one key whose
    window is `push_window`; a fleet connection's keys share `fleet_push_window` and get at most
    `push_window` each per round. What still differs is who owns a key: a newer fleet connection
    takes keys from an older one, while single connections of one key coexist.

    Input is handled `FLEET_SLICE` bytes per loop iteration (reading paused meanwhile) until a
    single registration is done, so that thousands of fleet registrations do not stall the
    provider's other work. Everything a slice of input causes leaves in one write.
    """

    def __init__(self, provider: Provider, transport: asyncio.Transport) -> None:
        self.provider = provider
        self.transport = transport
        self.side = ProviderSide(
            provider._secret,
            pull_slots=provider.pull_slots,
            max_message_size=provider.max_message_size,
            max_fleet_keys=provider.max_fleet_keys,
        )
        self.key: bytes | None = None
        """The key of a single-identity connection, once registered."""
        self.delivery = DeliveryPolicy(provider.push_window, provider.push_window)
        self._out: list[bytes] = []
        self._rest: memoryview | None = None
        self._paused = False
        self._out_bytes = 0
        self._held: list[Any] | None = None
        """Events not yet handled because the client does not read our answers (backpressure)."""

    # --- input ---

    def data_received(self, data: bytes) -> None:
        if self._rest is not None or self._held is not None:  # earlier input first: keep the order
            if self._rest is None:
                self._rest = memoryview(data)
                return
            self._rest = memoryview(bytes(self._rest) + data)
            return
        self._consume(memoryview(data))

    def _consume(self, data: memoryview) -> None:
        """Handle `data`, a slice at a time unless this is a registered single connection."""
        single = self.side.registered and not self.side.fleet
        if not single and len(data) > FLEET_SLICE:
            self._rest = data[FLEET_SLICE:]
            data = data[:FLEET_SLICE]
            if not self._paused:
                self._paused = True
                self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._next_slice)
        self._handle(data)

    def _next_slice(self) -> None:
        if self._held is not None:
            return  # resumed by writes_resumed, in order
        rest, self._rest = self._rest, None
        if rest is None or self.transport.is_closing():
            return
        self._consume(rest)
        if self._rest is None and self._paused and not self.transport.is_closing():
            self._paused = False
            if self.transport.get_write_buffer_size() <= _PortProtocol.WRITE_HIGH_WATER:
                self.transport.resume_reading()

    def _backed_up(self) -> bool:
        return (
            self._out_bytes + self.transport.get_write_buffer_size()
            > _PortProtocol.WRITE_HIGH_WATER
        )

    def writes_resumed(self) -> None:
        """The client reads again: handle the events held back, then the input after them."""
        held, self._held = self._held, None
        if held is None or self.transport.is_closing():
            return
        self._run(held)
        if self._held is None:
            if self._rest is not None:
                self._next_slice()
            elif self._paused:
                self._paused = False
                self.transport.resume_reading()

    def _handle(self, data: memoryview) -> None:
        self._run(self.side.receive_data(data))

    def _run(self, events: list[Any]) -> None:
        provider = self.provider
        if self.side.closed:
            # the input ended in a protocol error: the machine is closed, so answer only that
            # (answering a HELLO that came before the garbage would be a transition from CLOSED)
            events = [e for e in events if isinstance(e, ProtocolError)][:1]
        try:
            joined: list[bytes] = []  # consecutive fleet registrations: one batch
            for i, event in enumerate(events):
                if isinstance(event, FleetClientRegistered):
                    joined.append(event.client_key)
                    continue
                if joined:
                    self._fleet_registered(joined)
                    joined = []
                match event:
                    case PacketSubmitted(first_hop=first_hop, packet=packet):
                        provider.submit(first_hop, packet)
                    case AckReceived(ids=ids):
                        self._ack(ids)
                    case PullRequested(client_key=key):
                        if self._backed_up():  # never build answers a client does not read
                            self._held = events[i:]
                            provider.counters.bump("client_backpressure")
                            if not self._paused:
                                self._paused = True
                                self.transport.pause_reading()
                            break
                        self._pull(self.key if key is None else key)
                    case FleetClientRefused(client_key=key, reason=reason):
                        provider.counters.bump("fleet_refused")
                        self._write(self.side.send_refused_key(key, reason))
                        provider.drop_fleet_route(key, self)
                    case ClientHello():
                        self._write(self.side.send_challenge())
                    case ClientRegistered(client_key=key):
                        if not self._registered(key):
                            break
                    case ClientUnregistered(client_keys=keys):
                        self._unregistered(keys)
                    case ProtocolError(reason=reason):
                        provider.counters.bump("client_errors")
                        _remote_log.info("client protocol error: %s", reason)
                        self._write(self.side.send_error(reason))
                        self.flush()
                        self.transport.close()
                        break
            if joined:
                self._fleet_registered(joined)
            self.flush()
            if self._held is not None and not self._backed_up():
                # the kernel took it all: no pause_writing/resume_writing will come to wake us
                asyncio.get_running_loop().call_soon(self.writes_resumed)
        except Exception:  # a bug: lose this connection, keep the provider
            log.exception("provider: error in a client session")
            self.transport.abort()
        provider.forwarder.flush()

    def _write(self, data: bytes) -> None:
        """Queue for `flush`: all a slice of input causes leaves in one write."""
        self._out.append(data)
        self._out_bytes += len(data)

    def flush(self) -> None:
        if self._out:
            out, self._out = self._out, []
            self._out_bytes = 0
            if not self.transport.is_closing():
                self.transport.write(b"".join(out))

    # --- registration ---

    def _registered(self, key: bytes) -> bool:
        """A single registration: a fleet of one key with the connection's window. False if the
        provider is full (ERROR sent, the connection closes)."""
        refusal = self.provider.admit(key)
        if refusal is not None:
            self._write(self.side.send_error(refusal))
            self.flush()
            self.transport.close()
            return False
        self.key = key
        self.provider.register(key, self)
        self._write(self.side.send_registered())
        if self.side.push:
            self.delivery.has_mail(key)
            self._push_round()
        return True

    def _fleet_registered(self, keys: list[bytes]) -> None:
        """A batch of proven keys: one SQLite transaction, answers (in order) in one write, then
        pushes. Keys the provider-wide limit refuses get REFUSED_KEY."""
        provider = self.provider
        self.delivery.connection_window = provider.fleet_push_window  # the fleet's shared window
        answers: list[bytes | None] = []
        accepted: list[bytes] = []
        for key in keys:
            refusal = provider.admit(key)
            if refusal is None:
                accepted.append(key)
                answers.append(None)
            else:
                answers.append(self.side.send_refused_key(key, refusal))
        if accepted:
            provider.register_fleet(accepted, self)
        send_registered_key = self.side.send_registered_key
        taken = iter(accepted)
        self._out.extend(a if a is not None else send_registered_key(next(taken)) for a in answers)
        provider.counters.bump("fleet_registered", len(accepted))
        if self.side.push and accepted:
            for key in provider.inbox.recipients_with_mail(accepted):
                self.delivery.has_mail(key)
            self._push_round()

    def _unregistered(self, keys: tuple[bytes, ...]) -> None:
        """The fleet client gives these keys up for good: forget them (and their mail, unless
        another connection holds them), answer UNREGISTERED."""
        self._write(self.side.send_unregistered(keys))
        self.provider.unregister_keys(keys, self)
        if self.delivery.forget(set(keys)) and self.side.push:
            self._push_round()  # their in-flight pushes no longer hold the window

    # --- delivery ---

    def mail_arrived(self, key: bytes) -> None:
        """New mail for `key` was stored; `push()` hands it out (if this connection takes pushes)."""
        if self.side.push:
            self.delivery.has_mail(key)

    def push(self) -> None:
        """Push what the policy allows now, and write it."""
        self._push_round()
        self.flush()

    def _push_round(self) -> None:
        """Queue the DELIVERs the policy allows now (`flush` writes them)."""
        if self.transport.is_closing():
            return
        delivery, inbox, keys = self.delivery, self.provider.inbox, self.side.client_keys
        deliver = self.side.send_delivery
        pushed = 0
        while (request := delivery.next_push()) is not None:
            if request.key not in keys:  # taken over or refused meanwhile
                continue
            found = inbox.pending(request.key, request.limit, request.after)
            delivery.pushed(request, [m.id for m in found])
            self._out.extend(deliver(request.key, m.id, m.message) for m in found)
            pushed += len(found)
        if pushed:
            self.provider.counters.bump("pushed", pushed)

    def _ack(self, ids: tuple[int, ...]) -> None:
        provider = self.provider
        gone = provider.inbox.delete_owned_sized(ids, self.side.client_keys)
        removed = provider.quota.removed
        for recipient, size in gone:
            removed(recipient, size)
        deleted = len(gone)
        provider.counters.bump("acked", deleted)
        if deleted < len(ids):
            provider.counters.bump("acks_ignored", len(ids) - deleted)
        self.delivery.acked(ids)
        if self.side.push:
            self._push_round()

    def _pull(self, key: bytes | None) -> None:
        assert key is not None  # the machine emits PullRequested only once registered
        delivery = self.delivery
        found = self.provider.inbox.pending(key, self.side.pull_slots, delivery.pull_after(key))
        delivery.pulled(key, [m.id for m in found])
        self.provider.counters.bump("pulled", len(found))
        self._write(self.side.send_pull_answer(key, [(m.id, m.message) for m in found]))

    def lose_keys(self, keys: list[bytes], reason: str = TAKEN_OVER) -> None:
        """Another connection registered `keys`: tell this one, forget their state here.

        One pass over the in-flight window for the whole batch, so a reconnecting fleet of
        10,000 keys costs O(keys + window), not O(keys × window)."""
        mine = self.side.client_keys
        lost = {k for k in keys if k in mine}
        if self.side.closed or not lost:
            return
        for key in lost:
            self._write(self.side.send_refused_key(key, reason))
        if self.delivery.forget(lost) and self.side.push:
            self._push_round()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._rest = None
        if self.key is not None:
            self.provider.unregister_session(self.key, self)
        if self.side.fleet:
            self.provider.unregister_fleet(self)


class _PortProtocol(asyncio.Protocol):
    """Sniffs the first byte: "L" starts a client session, anything else a Nym-framed link.

    A connection that has neither sent a byte nor (as a client) registered within
    `HANDSHAKE_TIMEOUT` seconds is closed, so idle sockets cannot pile up.
    """

    HANDSHAKE_TIMEOUT = 10.0
    WRITE_HIGH_WATER = 1 << 20
    """Bytes queued for a client that does not read before we stop reading its requests."""
    reports_progress = True
    """For the listener's gate: links count whole frames; registered clients are not timed out."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.transport: asyncio.Transport | None = None
        self.delegate: ClientSession | NodeLink | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.gate_connection: Any = None
        self._writes_blocked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=self.WRITE_HIGH_WATER)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.HANDSHAKE_TIMEOUT, self._handshake_expired)

    def _handshake_expired(self) -> None:
        self._timer = None
        d = self.delegate
        if d is None or (isinstance(d, ClientSession) and not d.side.registered):
            self.provider.counters.bump("handshake_timeouts")
            if self.transport is not None:
                self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # garbage after a close we already decided on
        if self.delegate is None:
            if data[0] == MAGIC[0]:
                self.delegate = ClientSession(self.provider, self.transport)
            else:
                link = NodeLink(self.provider)
                link.gate_connection = self.gate_connection
                link.connection_made(self.transport)
                self.delegate = link
        self.delegate.data_received(data)
        if isinstance(self.delegate, ClientSession) and self.gate_connection is not None:
            self.gate_connection.progress()
            if self.delegate.side.registered:
                self.gate_connection.exempt()  # authenticated: it may stay quiet (push mode)

    def pause_writing(self) -> None:
        """The client does not read what we send: stop reading its requests (PULLs) until it
        does, so its answers cannot pile up in memory."""
        self._writes_blocked = True
        if isinstance(self.delegate, ClientSession) and self.transport is not None:
            self.provider.counters.bump("client_backpressure")
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writes_blocked = False
        session = self.delegate
        if isinstance(session, ClientSession) and self.transport is not None:
            if session._held is not None:
                session.writes_resumed()
            elif not session._paused:
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.delegate is not None:
            self.delegate.connection_lost(exc)


class Provider(Node):
    kind = "provider"

    def __init__(
        self,
        config: NodeConfig,
        secret: bytes,
        inbox: Inbox,
        *,
        pull_slots: int = DEFAULT_PULL_SLOTS,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        push_window: int = 128,
        fleet_push_window: int = 4096,
        max_fleet_keys: int = DEFAULT_MAX_FLEET_KEYS,
        presence_client_limit: int = DEFAULT_PRESENCE_CLIENT_LIMIT,
        limits: ClientLimits = DEFAULT_CLIENT_LIMITS,
    ) -> None:
        super().__init__(config, secret)
        self._secret = secret  # for the sessions' challenge-response; never logged
        self.inbox = inbox
        self.pull_slots = pull_slots
        self.max_message_size = max_message_size
        self.push_window = push_window
        self.fleet_push_window = fleet_push_window
        self.max_fleet_keys = max_fleet_keys
        self.presence_client_limit = presence_client_limit
        self.limits = limits
        self.registrations = RegistrationTable(limits, inbox.clients_seen())
        self.registered: set[bytes] = self.registrations.registered
        """Every registered key (live or idle): the same set as `registrations.registered`."""
        self.quota = InboxQuota(limits, inbox.usage())
        self._admitted_new = False
        self._closed = False
        self._idle_now: list[bytes] = []
        """Keys released since their last-seen time was written (one transaction per loop turn)."""
        self.sessions: dict[bytes, set[ClientSession]] = {}
        self.fleet_routes: dict[bytes, ClientSession] = {}
        """Key → the newest fleet connection that registered it (where its mail is pushed)."""
        self.fleet_sessions: set[ClientSession] = set()
        self._client_list: list[dict[str, str]] | None = None  # presence cache
        self._announce_timer: asyncio.TimerHandle | None = None
        self.debounce = PresenceDebounce(PRESENCE_DEBOUNCE)

    def __repr__(self) -> str:
        return f"Provider({self.host}, {self.public_b64})"

    def protocol_factory(self) -> asyncio.Protocol:
        return _PortProtocol(self)

    # --- clients ---

    def admit(self, key: bytes) -> str | None:
        """Why `key` may not register now (the provider is full of live clients), or None; a
        registration idle the longest gives way if that makes room."""
        decision = self.registrations.admit(key)
        if isinstance(decision, Refuse):
            self.counters.bump("registrations_refused")
            return decision.reason
        if decision.evict:
            self.counters.bump("registrations_evicted", len(decision.evict))
            self.forget_clients(list(decision.evict), "registration_evicted")
        self.registrations.held(key)  # counts against the limit from now on
        self._admitted_new = self._admitted_new or decision.new
        return None

    def forget_clients(self, keys: list[bytes], reason: str) -> None:
        """End these registrations; their stored messages are dropped, counted under `reason`."""
        for key in keys:
            self.registrations.forget(key)
            self.quota.forget(key)
        gone = self.inbox.forget_clients(keys)
        if gone:
            self.counters.drop(reason, gone)
        self._clients_changed()

    def _live(self, key: bytes) -> bool:
        return key in self.sessions or key in self.fleet_routes

    def _released(self, key: bytes) -> None:
        """A connection let `key` go: idle from now if no other connection holds it."""
        if not self._live(key) and key in self.registered and not self._closed:
            self.registrations.released(key, time.time())
            if not self._idle_now:
                asyncio.get_running_loop().call_soon(self._write_idle)
            self._idle_now.append(key)

    def _write_idle(self) -> None:
        """Write the last-seen times of released keys, `IDLE_WRITE_SLICE` per loop turn (a fleet of
        100,000 disconnecting must not stall everyone else for a second)."""
        keys = self._idle_now[:IDLE_WRITE_SLICE]
        del self._idle_now[:IDLE_WRITE_SLICE]
        if self._idle_now and not self._closed:
            asyncio.get_running_loop().call_soon(self._write_idle)
        if keys and not self._closed:
            self.inbox.touch_clients(keys, time.time())

    def unregister_keys(self, keys: tuple[bytes, ...], session: ClientSession) -> None:
        """A fleet connection gave `keys` up for good. A key another connection still holds
        stays registered there; the others are forgotten with their mail (`unregistered`)."""
        for key in keys:
            if self.fleet_routes.get(key) is session:
                del self.fleet_routes[key]
        gone = [k for k in keys if not self._live(k) and k in self.registered]
        self.counters.bump("unregistered", len(gone))
        if gone:
            self.forget_clients(gone, "unregistered")

    def sweep(self, now: float) -> None:
        """Forget registrations idle past their TTL and drop messages past their age (`now`:
        wall-clock seconds)."""
        expired = self.registrations.expired(now)
        if expired:
            self.counters.bump("registrations_expired", len(expired))
            self.forget_clients(expired, "registration_expired")
        old = self.inbox.expire(now - self.limits.message_max_age_s)
        if old:
            removed = self.quota.removed
            for recipient, size in old:
                removed(recipient, size)
            self.counters.drop("message_expired", len(old))

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.limits.sweep_interval_s)
            self.sweep(time.time())

    async def start(self) -> None:
        await super().start()
        self._tasks.append(asyncio.get_running_loop().create_task(self._sweep_loop()))

    def _announce_new(self) -> None:
        if self._admitted_new:
            self._admitted_new = False
            self._clients_changed()

    def register(self, key: bytes, session: ClientSession) -> None:
        """A single connection proved `key` (after `admit` allowed it)."""
        self.inbox.register_client(key, time.time())
        self._announce_new()
        self.sessions.setdefault(key, set()).add(session)
        fleet = self.fleet_routes.pop(key, None)  # the newest registration wins
        if fleet is not None:
            fleet.lose_keys([key])

    def register_fleet(self, keys: list[bytes], session: ClientSession) -> None:
        """Keys proven on a fleet connection: new ones in one transaction; routes to `session`.

        A key another fleet connection held moves here (the newest wins, as after a reconnect),
        and that connection is told with REFUSED_KEY. Single connections of the same key are
        left alone, as two single connections of one key are."""
        self.fleet_sessions.add(session)
        self.inbox.register_clients(keys, time.time())  # new ones, and last seen for all
        self._announce_new()
        routes = self.fleet_routes
        taken: dict[ClientSession, list[bytes]] = {}
        for key in keys:
            old = routes.get(key)
            if old is not session:
                routes[key] = session
                if old is not None:
                    taken.setdefault(old, []).append(key)
        for old, lost in taken.items():
            old.lose_keys(lost)

    def drop_fleet_route(self, key: bytes, session: ClientSession) -> None:
        """`session` no longer holds `key` (refused there): stop routing its mail there."""
        if self.fleet_routes.get(key) is session:
            del self.fleet_routes[key]
            self._released(key)

    def unregister_fleet(self, session: ClientSession) -> None:
        """A fleet connection closed: drop the routes that still point to it."""
        routes = self.fleet_routes
        for key in session.side.client_keys:
            if routes.get(key) is session:
                del routes[key]
                self._released(key)
        self.fleet_sessions.discard(session)

    def _clients_changed(self) -> None:
        """Announce new clients as `PresenceDebounce` says: a lone registration at once, a burst
        once more after it settles; the regular presence interval goes on."""
        self._client_list = None
        if self.debounce.changed(asyncio.get_running_loop().time()):
            self.announce_soon()
        else:
            self._arm_announce_timer()

    def _arm_announce_timer(self) -> None:
        if self._announce_timer is not None:
            self._announce_timer.cancel()
            self._announce_timer = None
        if self.debounce.due is not None:
            loop = asyncio.get_running_loop()
            self._announce_timer = loop.call_at(self.debounce.due, self._announce_timer_fired)

    def _announce_timer_fired(self) -> None:
        self._announce_timer = None
        if self.debounce.fire(asyncio.get_running_loop().time()):
            self.announce_soon()
        else:  # the loop may run a timer a hair early: wait for the rest
            self._arm_announce_timer()

    def unregister_session(self, key: bytes, session: ClientSession) -> None:
        sessions = self.sessions.get(key)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.sessions[key]
                self._released(key)

    def submit(self, first_hop: bytes, packet: bytes) -> None:
        """A packet from a client, into the mixnet (no delay here: the route carries them)."""
        self.counters.bump("from_clients")
        if len(packet) not in _VALID_SIZES:
            self.counters.drop("bad_client_packet")
            return
        self.forwarder.send(first_hop, packet)

    # --- last hop ---

    def on_finals(self, finals: list[tuple[bytes, bytes]]) -> None:
        """Store what is for our clients; then, and only then (the SQLite commit survives a kill),
        send each message's SURB-ack on to its first hop (wire/ack.py)."""
        keep = []
        acks: list[ForwardNow] = []
        counters = self.counters
        registered, max_size, quota = self.registered, self.max_message_size, self.quota
        drops = 0
        for destination, message in finals:
            if destination == DROP_COVER_DESTINATION:
                drops += 1
            elif destination not in registered:
                counters.drop("unknown_recipient")
            elif len(message) > max_size:
                counters.drop("oversize_message")
            else:
                parts = split_ack(message)
                if parts is not None:
                    first_hop, ack_packet, message = parts
                refused = quota.refusal(destination, len(message))
                if refused is not None:  # no SURB-ack: its sender will send it again later
                    counters.drop(refused)
                    continue
                quota.added(destination, len(message))
                keep.append((destination, message))
                if parts is not None:
                    acks.append(ForwardNow(first_hop, ack_packet))
        if drops:
            counters.bump("drop_cover", drops)
        if not keep:
            return
        self.inbox.keep_many(keep, time.time())
        counters.bump("stored", len(keep))
        if acks:
            counters.bump("acks_sent", len(acks))
            self.forwarder.send_many(acks, asyncio.get_running_loop().time())
            self.forwarder.flush()
        touched: dict[ClientSession, None] = {}
        routes = self.fleet_routes
        for destination in dict.fromkeys(d for d, _ in keep):  # in arrival order
            for session in self.sessions.get(destination, ()):
                session.mail_arrived(destination)
                touched[session] = None
            fleet = routes.get(destination)
            if fleet is not None:
                fleet.mail_arrived(destination)
                touched[fleet] = None
        for session in touched:  # one write per connection
            session.push()

    # --- directory ---

    def presence(self) -> tuple[str, dict[str, Any]]:
        """The 2019 presence; above `presence_client_limit` clients, a count instead of the list.

        Clients address recipients as `<client key>@<provider key>`, so nothing needs the list;
        at 100,000 clients it would be ~5.7 MB every interval, over the directory's 1 MiB body
        limit. An empty list keeps every topology parser happy; `registeredClientCount` (an
        extension, ignored by directories that do not know it) says how many there are."""
        body: dict[str, Any] = {"host": self.host, "pubKey": self.public_b64}
        if len(self.registered) > self.presence_client_limit:
            body["registeredClients"] = []
            body["registeredClientCount"] = len(self.registered)
            return "/api/presence/mixproviders", body
        if self._client_list is None:
            self._client_list = [{"pubKey": b64url_encode(k)} for k in sorted(self.registered)]
        body["registeredClients"] = self._client_list
        return "/api/presence/mixproviders", body

    def metrics(self) -> dict[str, Any]:
        return {
            **super().metrics(),
            "clients": len(self.registered),
            "connectedClients": len(self.sessions),
            "fleetClients": len(self.fleet_routes),
            "fleetConnections": len(self.fleet_sessions),
            "idleClients": len(self.registrations.idle),
        }

    async def close(self) -> None:
        if self._announce_timer is not None:
            self._announce_timer.cancel()
        await super().close()
        # keys still held count as seen now (their connections end with us), then the file closes
        self._idle_now.extend(self.sessions)
        self._idle_now.extend(self.fleet_routes)
        self.inbox.touch_clients(self._idle_now, time.time())
        self._idle_now = []
        self._closed = True
        self.inbox.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loopix.testnet.provider", description=__doc__)
    add_node_arguments(parser)
    parser.add_argument("--inbox", default=None, help="SQLite file (default: beside the key)")
    parser.add_argument("--pull-slots", type=int, default=DEFAULT_PULL_SLOTS)
    parser.add_argument("--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE_SIZE)
    parser.add_argument(
        "--max-fleet-keys",
        type=int,
        default=DEFAULT_MAX_FLEET_KEYS,
        help=f"identities per fleet connection (default {DEFAULT_MAX_FLEET_KEYS})",
    )
    parser.add_argument(
        "--presence-client-limit",
        type=int,
        default=DEFAULT_PRESENCE_CLIENT_LIMIT,
        help="above this many clients, presence posts a count instead of the list "
        f"(default {DEFAULT_PRESENCE_CLIENT_LIMIT})",
    )
    defaults = DEFAULT_CLIENT_LIMITS
    parser.add_argument(
        "--max-clients",
        type=argtype(count(1)),
        default=defaults.max_clients,
        help="registered clients per provider; when full, the registration idle the longest "
        f"gives way (default {defaults.max_clients})",
    )
    parser.add_argument(
        "--registration-ttl",
        type=argtype(positive_number),
        default=defaults.registration_ttl_s,
        help="seconds a registration no connection holds is kept, with its mail "
        f"(default {defaults.registration_ttl_s:g})",
    )
    parser.add_argument(
        "--inbox-max-messages",
        type=argtype(count(1)),
        default=defaults.inbox_max_messages,
        help=f"stored messages per client (default {defaults.inbox_max_messages})",
    )
    parser.add_argument(
        "--inbox-max-bytes",
        type=argtype(count(1)),
        default=defaults.inbox_max_bytes,
        help=f"stored bytes per client (default {defaults.inbox_max_bytes})",
    )
    parser.add_argument(
        "--message-max-age",
        type=argtype(positive_number),
        default=defaults.message_max_age_s,
        help="seconds a stored, unacknowledged message is kept "
        f"(default {defaults.message_max_age_s:g})",
    )
    args = parser.parse_args(argv)
    limits = ClientLimits(
        max_clients=args.max_clients,
        registration_ttl_s=args.registration_ttl,
        inbox_max_messages=args.inbox_max_messages,
        inbox_max_bytes=args.inbox_max_bytes,
        message_max_age_s=args.message_max_age,
    )
    if (problem := limits.check()) is not None:
        parser.error(problem)
    if not 1 <= args.pull_slots <= 0xFFFF or args.max_message_size < 1:
        parser.error("--pull-slots must be 1..65535 and --max-message-size positive")
    if args.max_fleet_keys < 1 or args.presence_client_limit < 0:
        parser.error("--max-fleet-keys must be positive and --presence-client-limit not negative")
    config = node_config_from_args(args)
    inbox_path = Path(args.inbox or Path(args.key_file).with_name("inbox.sqlite"))

    def make() -> Provider:
        secret = load_or_create_secret(args.key_file)
        return Provider(
            config,
            secret,
            Inbox(inbox_path),
            pull_slots=args.pull_slots,
            max_message_size=args.max_message_size,
            max_fleet_keys=args.max_fleet_keys,
            presence_client_limit=args.presence_client_limit,
            limits=limits,
        )

    return run_node(make, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
