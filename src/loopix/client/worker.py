"""A packet worker: runs its share of the aggregated Poisson clock and builds every packet ahead of
its scheduled time, straight into its shared-memory ring, one C call per batch.

Started by the coordinator as `python -m loopix.client.worker CONTROL_FD RING_FD`; it exits when the
control socket closes (so it never outlives the coordinator).
"""

from __future__ import annotations

import array
import collections
import contextlib
import os
import socket
import sys
import time

import msgspec

from loopix import sphinx
from loopix.csprng import Csprng
from loopix.wire.ack import inner_size

from . import control
from .plan import DROP, LOOP, NO_PROVIDER, PREBUILT, REAL, WorkerBatch
from .plan import RouteTable as Routes
from .profiling import run_profiled
from .ring import SLOT_META_SIZE, Ring
from .schedule import PoissonClock, Stream, StreamRates

_PAYLOAD, _LOOP, _DROP = Stream.PAYLOAD, Stream.LOOP, Stream.DROP
STATS_INTERVAL_S = 1.0

__all__ = ["Routes", "Worker", "main"]


class Worker:
    def __init__(self, setup: control.WorkerSetup, ring: Ring, ctl: control.BlockingControl):
        self.setup = setup
        self.ring = ring
        self.ctl = ctl
        self.rng = Csprng()  # routes, delays, schedule, drop, loop and ack payloads: docs/randomness.md
        # our identities, flat: the i-th's public key at [32i, 32i + 32), its provider's index
        self.public_keys = setup.public_keys
        self.provider_of = array.array("H", setup.provider_of)
        self.pending: dict[int, collections.deque[control.Fragment]] = {}
        self.payload_size = setup.payload_size
        self.inner_size = inner_size(setup.payload_size)  # after the SURB-ack prefix
        # one C call per batch (csrc/plan.c): routes, acks, payloads, packets and ring slots
        self.batch = WorkerBatch(setup.batch_size, setup.payload_size, setup.wire_header, setup.ack_key,
                                 setup.loop_key)
        self.wire_header = setup.wire_header
        self.prefix_len = len(self.wire_header) + sphinx.NODE_ADDRESS_SIZE  # SEND header, first hop
        self.wire_len = self.batch.wire_len
        if ring.slot_size < self.wire_len + SLOT_META_SIZE:
            raise ValueError("ring slots too small for this packet size")
        # Either this worker owns some identities outright (a fleet: an identity's fragments then
        # wait for its own payload slots, 1/λP on average) or it runs 1/W of every identity's rates
        # (fewer identities than workers: one identity can use every core). Identity i here is
        # global identity first + i * step.
        self.first, self.step = setup.first, setup.step
        self.provider_keys = setup.provider_keys
        self.set_routes(setup.topology)
        classes = [StreamRates(c.payload, c.loop, c.drop) for c in setup.rate_classes]
        rates = self.rates = [classes[c] for c in array.array("H", setup.rate_of)]
        # the keys are kept once, above (they grow as identities join): not in the setup too
        self.setup = msgspec.structs.replace(setup, public_keys=b"", provider_of=b"", rate_of=b"")
        self.removed: set[int] = set()  # global indexes of identities that left: their events are skipped
        share = setup.share
        # the schedule starts when this process can build it, not when the coordinator spawned it
        start_ns = max(setup.start_ns, time.monotonic_ns())
        self.clock = PoissonClock(rates, start_ns, share=share, rng=self.rng) if rates else None
        self.mean_delay_s = setup.mean_hop_delay_ms / 1000.0
        self.payload_cover = LOOP if setup.payload_cover == "loop" else DROP
        self.lookahead_ns = int(setup.lookahead_ms * 1e6)
        # Sleep until the first unbuilt event is half a lookahead away, then build up to a lookahead
        # ahead: batches of half a lookahead instead of one or two packets per wake (a small batch
        # runs on cold caches: 2.2 packets per C call at 1,000 packets/s per worker before this).
        self.rebuild_at_ns = self.lookahead_ns // 2
        self.next_event = self.clock.next() if self.clock and self.clock.total_rate > 0 else None
        self.last_event_ns = start_ns
        self.seq = 0
        self.built = [0, 0, 0]
        self.build_errors = 0
        self.no_route = 0
        self.build_errors_by_stream = [0, 0, 0]  # events the schedule asked for and we could not build
        self.no_route_by_stream = [0, 0, 0]
        self.running = True
        # cover only for events due before this; after it only payload events carrying a real fragment
        self.cover_until_ns = setup.cover_until_ns
        self.streams_until = setup.streams_until  # identities from here on wait for registration

    def set_routes(self, topo: control.TopologyUpdate) -> None:
        self.routes = Routes(topo, self.rng)
        self.routes.table.mean_delay_ns = self.setup.mean_hop_delay_ms * 1e6
        self.batch.set_table(self.routes)
        self._set_identities()

    def _set_identities(self) -> None:
        """The C side's view of our identities: loop destinations and each one's provider index in
        the current table (NO_PROVIDER when its provider left the topology)."""
        index = self.routes.provider_index
        by_key = [index.get(k, NO_PROVIDER) for k in self.provider_keys]
        self.own_provider = [by_key[p] for p in self.provider_of]
        self.batch.set_identities(self.public_keys, self.own_provider)

    # -- control --
    def handle(self, msg) -> None:
        if isinstance(msg, control.SendFragments):
            for frag in msg.fragments:
                self.pending.setdefault(frag.identity, collections.deque()).append(frag)
        elif isinstance(msg, control.TopologyUpdate):
            self.set_routes(msg)
        elif isinstance(msg, control.Failover):
            self.move(msg.identities, msg.provider.key)
        elif isinstance(msg, control.Pause):
            self.cover_until_ns = min(self.cover_until_ns, msg.from_ns)
        elif isinstance(msg, control.Resume):
            self.cover_until_ns = control.COVER_FOREVER
        elif isinstance(msg, control.StartStreams):
            self.streams_until = msg.until
        elif isinstance(msg, control.Stop):
            self.running = False
        elif isinstance(msg, control.AddWorkerIdentities):
            self.add_identities(msg)
        elif isinstance(msg, control.RemoveIdentities):
            self.removed.update(msg.identities)
            for identity in msg.identities:
                self.pending.pop(identity, None)

    def add_identities(self, msg: control.AddWorkerIdentities) -> None:
        """Append identities to the clock. The unused next event is drawn again from the last
        event sent at the new total rate (memoryless: the schedule stays Poisson for everyone)."""
        classes = [StreamRates(c.payload, c.loop, c.drop) for c in msg.rate_classes]
        self.public_keys += msg.public_keys
        self.provider_of.frombytes(msg.provider_of)
        self.rates.extend(classes[c] for c in array.array("H", msg.rate_of))
        self.provider_keys = msg.provider_keys
        if self.clock is None:
            self.clock = PoissonClock(self.rates, self.last_event_ns, share=self.setup.share, rng=self.rng)
        else:
            self.clock.set_rates(self.rates, self.setup.share)
            self.clock.now_ns = self.last_event_ns
        self.next_event = self.clock.next() if self.clock.total_rate > 0 else None
        self._set_identities()

    def move(self, identities: list[int], provider_key: bytes) -> None:
        """Loops and acks of these identities end at `provider_key` from now on (a failover)."""
        keys = self.provider_keys = list(self.provider_keys)
        if provider_key not in keys:
            keys.append(provider_key)
        index = keys.index(provider_key)
        for identity in identities:
            local, rest = divmod(identity - self.first, self.step)
            if rest == 0 and 0 <= local < len(self.provider_of):
                self.provider_of[local] = index
        self._set_identities()

    # -- building --
    def _no_route(self, stream: int) -> None:
        """An event with no packet: no usable route, our provider gone, or its fragment failed."""
        self.no_route += 1
        self.no_route_by_stream[stream] += 1

    def _real(self, n: int, local: int, identity: int):
        """Slot n for the next queued fragment of our identity `local`: REAL, PREBUILT, or None when
        it cannot go now (it is failed, or kept for when our provider is back)."""
        queue = self.pending[identity]
        frag = queue.popleft()
        b = self.batch
        if frag.packet:  # pre-built (a reply): a drop is built in its slot, replaced after
            b.kind[n] = PREBUILT
            return frag
        provider = self.routes.provider_index.get(frag.recipient_provider_key)
        if len(frag.payload) > self.inner_size:
            self.ctl.send(control.FragmentsFailed([frag.ref], "fragment larger than the payload"))
            return None
        if provider is None:
            self.ctl.send(control.FragmentsFailed([frag.ref], "recipient's provider left the topology"))
            return None
        if self.own_provider[local] == NO_PROVIDER:  # our provider left the topology: keep it for later
            queue.appendleft(frag)
            return None
        b.kind[n] = REAL
        b.provider[n] = provider
        b.set_destination(n, frag.recipient_key)
        b.set_real_message(n, frag.payload)
        return frag

    def build_batch(self, now_ns: int) -> int:
        """Build the events due within the lookahead into the ring (one C call); returns how many
        events the schedule gave (built or failed)."""
        if self.next_event is None:
            return 0
        horizon = now_ns + self.lookahead_ns
        start, room = self.ring.contiguous_free()
        b = self.batch
        room = min(room, b.capacity)
        kind, stream_of, local_of, identity_of, t_of, seq_of = b.kind, b.stream, b.local, b.identity, b.t, b.seq
        own, first, step, cover = self.own_provider, self.first, self.step, self.payload_cover
        pending, removed, usable = self.pending, self.removed, self.routes.usable
        cover_until, streams_until = self.cover_until_ns, self.streams_until
        reals: list[tuple[int, control.Fragment]] = []
        n = 0
        last_t = 0
        while n < room and self.next_event[0] <= horizon:
            t, local, stream = self.next_event
            self.next_event = self.clock.next()
            identity = first + local * step
            last_t = t
            if identity >= streams_until or (removed and identity in removed):
                continue  # thinning by identity: everyone else's streams stay Poisson
            if t >= cover_until and (stream != _PAYLOAD or not pending.get(identity)):
                continue
            if not usable:
                self._no_route(stream)
                continue
            if stream == _PAYLOAD and pending.get(identity):
                frag = self._real(n, local, identity)
                if frag is None:
                    self._no_route(stream)
                    continue
                reals.append((n, frag))
                seq_of[n] = frag.ref  # a real packet's seq is its ref: the sender reports when it left
            else:
                k = cover if stream == _PAYLOAD else stream
                if k == LOOP and own[local] == NO_PROVIDER:
                    self._no_route(stream)
                    continue
                kind[n] = k
                seq_of[n] = self.seq
            stream_of[n], local_of[n], identity_of[n], t_of[n] = stream, local, identity, t
            n += 1
            self.seq += 1
        if last_t:
            self.last_event_ns = last_t
        if n == 0:
            self.ring.set_horizon(min(self.next_event[0], horizon))
            return 0
        ring = self.ring
        written = b.run(self.rng, n, ring, start)
        built, failed = b.built, b.failed
        for s in (0, 1, 2):
            self.built[s] += built[s]
            self.build_errors += failed[s]
            self.build_errors_by_stream[s] += failed[s]
        built_refs, built_delays, failed_refs = [], [], []
        for i, frag in reals:
            at = b.placed[i]
            if at < 0:
                failed_refs.append(frag.ref)
                continue
            built_refs.append(frag.ref)
            if frag.packet:
                view = ring.wire_view(start + at)
                hl = len(self.wire_header)
                view[hl : self.prefix_len] = frag.first_hop
                view[self.prefix_len : self.wire_len] = frag.packet
                built_delays.append(frag.route_delay_ns)
                del view
            else:
                built_delays.append(b.route_delay_ns[i])
        ring.publish(start + written, last_t)
        if built_refs:
            self.ctl.send(control.FragmentsBuilt(built_refs, built_delays))
        if failed_refs:
            self.ctl.send(control.FragmentsFailed(failed_refs, "packet build failed"))
        return n

    def run(self) -> None:
        last_stats = time.monotonic()
        while self.running and not self.ctl.closed:
            for msg in self.ctl.poll(0.0):
                self.handle(msg)
            now = time.monotonic_ns()
            n = self.build_batch(now)
            if now / 1e9 - last_stats >= STATS_INTERVAL_S:
                last_stats = now / 1e9
                self.ctl.send(control.WorkerStats(self.setup.worker_index, list(self.built),
                                                  self.build_errors, self.no_route,
                                                  list(self.build_errors_by_stream),
                                                  list(self.no_route_by_stream)))
            if n == 0:
                # nothing due within the lookahead, or the ring is full: wait a little for either
                wait = 0.002
                if self.next_event is not None and self.ring.free() > 0:
                    wait = max(0.0005, min(0.05, (self.next_event[0] - self.rebuild_at_ns - now) / 1e9))
                for msg in self.ctl.poll(wait):
                    self.handle(msg)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ctl_fd, ring_fd = int(argv[0]), int(argv[1])
    sock = socket.socket(fileno=ctl_fd)
    ctl = control.BlockingControl(sock)
    setup, early = None, []  # what came with the setup in one read (a Resume, fragments) is not lost
    while setup is None and not ctl.closed:
        for msg in ctl.poll(None):
            if setup is not None:
                early.append(msg)
            elif isinstance(msg, control.WorkerSetup):
                setup = msg
    if setup is None:
        return 0
    with contextlib.suppress(OSError):
        os.nice(5)  # the sender's timing matters more than a worker's throughput on a busy box
    ring = Ring.attach(ring_fd)
    worker = None
    try:
        worker = Worker(setup, ring, ctl)
        for msg in early:
            worker.handle(msg)
        run_profiled("worker", worker.run)
    except KeyboardInterrupt:
        pass
    except Exception as e:  # report, then exit non-zero: the coordinator decides what to do
        with contextlib.suppress(OSError):
            ctl.send(control.Fatal(f"worker {setup.worker_index}: {type(e).__name__}: {e}"))
        raise
    finally:
        if worker is not None:
            worker.batch.release()
        ring.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
