"""A packet worker: runs its share of the aggregated Poisson clock and builds every packet ahead of
its scheduled time, straight into its shared-memory ring, one C call per batch.

Started by the coordinator as `python -m loopix.client.worker CONTROL_FD RING_FD`; it exits when the
control socket closes (so it never outlives the coordinator).
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import sys
import time
from operator import attrgetter

from loopix import sphinx
from loopix.csprng import Csprng
from loopix.sphinx._sphinx_c import ffi, lib
from loopix.topology import route_layers

from . import control
from .messages import LoopCodec
from .profiling import run_profiled
from .ring import SLOT_META_SIZE, Ring
from .schedule import PoissonClock, Stream, StreamRates

_PAYLOAD, _LOOP, _DROP = Stream.PAYLOAD, Stream.LOOP, Stream.DROP
_layer_of = attrgetter("layer")
ANY_PROVIDER = lib.LX_ANY_PROVIDER
STATS_INTERVAL_S = 1.0


class Routes:
    """The current topology as the builder needs it. The layers come from topology.route_layers (one
    home for what a usable topology is); a batch's routes and delays are drawn in one C call
    (`draw`: one random mixnode per layer, then a provider) from the worker's CSPRNG."""

    def __init__(self, topo: control.TopologyUpdate, rng: Csprng):
        self.rng = rng
        layers = route_layers(topo.mixnodes, _layer_of)
        self.layers = () if isinstance(layers, str) else layers  # no route through a broken topology
        self.providers = {p.public_key: p for p in topo.providers}
        self.provider_list = list(topo.providers)
        self.provider_index = {p.public_key: i for i, p in enumerate(self.provider_list)}
        self.usable = (bool(self.layers) and bool(self.provider_list)
                       and len(self.layers) < sphinx.MAX_PATH_LENGTH)
        # the C route table: public key ‖ address of every node (the C hop record), per layer
        self._records = [ffi.new("uint8_t[]", b"".join(m.public_key + m.address for m in layer) or b"\0")
                         for layer in self.layers]
        self._provider_records = ffi.new(
            "uint8_t[]", b"".join(p.public_key + p.address for p in self.provider_list) or b"\0")
        self.table = ffi.new("lx_route_table *")
        if self.usable:
            self.table.n_layers = len(self.layers)
            for k, layer in enumerate(self.layers):
                self.table.layer_size[k] = len(layer)
                self.table.layer_hops[k] = self._records[k]
            self.table.n_providers = len(self.provider_list)
            self.table.provider_hops = self._provider_records

    def draw(self, builder: sphinx.PacketBuilder, count: int, last_hops, mean_delay_ns: float) -> None:
        """Routes and delays of builder slots 0..count: last_hops[i] is the provider index of slot
        i's last hop, or ANY_PROVIDER for one drawn at random."""
        self.table.mean_delay_ns = mean_delay_ns
        if lib.lx_draw_routes(self.rng.c_state(), self.table, builder.specs, count, last_hops) != 0:
            raise ValueError("route table refused")  # usable tables are checked above: a bug if seen


class Worker:
    def __init__(self, setup: control.WorkerSetup, ring: Ring, ctl: control.BlockingControl):
        self.setup = setup
        self.ring = ring
        self.ctl = ctl
        self.rng = Csprng()  # routes, delays, schedule and drop payloads: docs/randomness.md
        self.identities = setup.identities
        self.routes = Routes(setup.topology, self.rng)
        self.loops = LoopCodec(setup.loop_key)
        self.pending: dict[int, collections.deque[control.Fragment]] = {}
        self.payload_size = setup.payload_size
        self.builder = sphinx.PacketBuilder(setup.batch_size, setup.payload_size)
        self.last_hops = ffi.new("uint32_t[]", setup.batch_size)  # per slot: provider index or ANY
        self.wire_header = setup.wire_header
        self.prefix_len = len(self.wire_header) + sphinx.NODE_ADDRESS_SIZE  # SEND header, first hop
        self.wire_len = self.prefix_len + self.builder.packet_size
        if ring.slot_size < self.wire_len + SLOT_META_SIZE:
            raise ValueError("ring slots too small for this packet size")
        # Either this worker owns some identities outright (a fleet: an identity's fragments then
        # wait for its own payload slots, 1/λP on average) or it runs 1/W of every identity's rates
        # (fewer identities than workers: one identity can use every core). Identity i here is
        # global identity first + i * step.
        self.first, self.step = setup.first, setup.step
        self.provider_keys = setup.provider_keys
        classes = [StreamRates(c.payload, c.loop, c.drop) for c in setup.rate_classes]
        rates = self.rates = [classes[i.rates] for i in self.identities]
        self.removed: set[int] = set()  # global indexes of identities that left: their events are skipped
        share = setup.share
        # the schedule starts when this process can build it, not when the coordinator spawned it
        start_ns = max(setup.start_ns, time.monotonic_ns())
        self.clock = PoissonClock(rates, start_ns, share=share, rng=self.rng) if rates else None
        self.mean_delay_s = setup.mean_hop_delay_ms / 1000.0
        self.payload_cover = _LOOP if setup.payload_cover == "loop" else _DROP
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
        self.paused = setup.paused  # while paused only payload events that carry a real fragment go out

    # -- control --
    def handle(self, msg) -> None:
        if isinstance(msg, control.SendFragments):
            for frag in msg.fragments:
                self.pending.setdefault(frag.identity, collections.deque()).append(frag)
        elif isinstance(msg, control.TopologyUpdate):
            self.routes = Routes(msg, self.rng)
        elif isinstance(msg, control.Pause):
            self.paused = True
        elif isinstance(msg, control.Resume):
            self.paused = False
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
        self.identities = [*self.identities, *msg.identities]
        self.rates.extend(classes[i.rates] for i in msg.identities)
        self.provider_keys = msg.provider_keys
        if self.clock is None:
            self.clock = PoissonClock(self.rates, self.last_event_ns, share=self.setup.share, rng=self.rng)
        else:
            self.clock.set_rates(self.rates, self.setup.share)
            self.clock.now_ns = self.last_event_ns
        self.next_event = self.clock.next() if self.clock.total_rate > 0 else None

    # -- building --
    def fill(self, slot: int, local: int, identity: int, stream: int):
        """Fill builder slot `slot` (all but its route, which `Routes.draw` adds for the whole batch)
        for one event of our identity `local` (global `identity`); returns the fragment ref or -1, or
        None when there is no route."""
        me = self.identities[local]
        routes = self.routes
        ref = -1
        kind = stream
        if stream == _PAYLOAD:
            queue = self.pending.get(identity)
            if queue:
                frag = queue.popleft()
                provider = routes.providers.get(frag.recipient_provider_key)
                if provider is None:
                    self.ctl.send(control.FragmentsFailed([frag.ref], "recipient's provider left the topology"))
                    return None
                ref = frag.ref
                destination, payload = frag.recipient_key, frag.payload
            else:
                kind = self.payload_cover
        if ref < 0:
            if kind == _LOOP:
                provider = routes.providers.get(self.provider_keys[me.provider])
                if provider is None:
                    return None
                destination = me.public_key
                payload = self.loops.encode(identity, self.seq, self._event_ns, self.payload_size)
            else:
                provider = None  # drawn with the route
                destination = sphinx.DROP_COVER_DESTINATION
                payload = None  # fresh CSPRNG bytes, written straight into the arena below
        self.last_hops[slot] = ANY_PROVIDER if provider is None else routes.provider_index[provider.public_key]
        off = slot * self.payload_size
        if payload is None:
            size = self.payload_size
            self.rng.fill(self.builder.arena, off, size)
        else:
            size = len(payload)
            self.builder.messages[off : off + size] = payload
        self.builder.set_message(slot, destination, size, off)
        return ref

    def build_batch(self, now_ns: int) -> int:
        """Build the events due within the lookahead into the ring; returns how many."""
        if self.next_event is None:
            return 0
        horizon = now_ns + self.lookahead_ns
        start, room = self.ring.contiguous_free()
        room = min(room, self.builder.capacity)
        events = []
        while room > len(events) and self.next_event[0] <= horizon:
            t, local, stream = self.next_event
            self.next_event = self.clock.next()
            identity = self.first + local * self.step
            self.last_event_ns = t
            if self.removed and identity in self.removed:
                continue  # thinning by identity: everyone else's streams stay Poisson
            if self.paused and (stream != _PAYLOAD or not self.pending.get(identity)):
                continue
            if not self.routes.usable:
                self.no_route += 1
                self.no_route_by_stream[stream] += 1
                continue
            self._event_ns = t
            ref = self.fill(len(events), local, identity, stream)
            if ref is None:
                self.no_route += 1
                self.no_route_by_stream[stream] += 1
                continue
            events.append((t, identity, stream, ref))
            self.seq += 1
        if not events:
            self.ring.set_horizon(min(self.next_event[0], horizon))
            return 0
        ring = self.ring
        stride = ring.slot_size
        view = ring.wire_view(start, len(events))
        out = view[self.prefix_len :]
        self.routes.draw(self.builder, len(events), self.last_hops, self.mean_delay_s * 1e9)
        self.builder.build(len(events), out, stride)
        status = self.builder.status
        built_refs = []
        failed_refs = []
        write = start
        header, plen, wire_len = self.wire_header, self.prefix_len, self.wire_len
        hl = len(header)
        first_hop = self.builder.first_hop_address
        for i, (t, identity, stream, ref) in enumerate(events):
            if status[i] != 0:
                self.build_errors += 1
                self.build_errors_by_stream[stream] += 1
                if ref >= 0:
                    failed_refs.append(ref)
                continue
            base = (write - start) * stride
            if write != start + i:  # close the gap a failed build left
                src = i * stride
                view[base + plen : base + wire_len] = view[src + plen : src + wire_len]
            view[base : base + hl] = header
            view[base + hl : base + plen] = first_hop(i)
            real = ref >= 0
            ring.write_meta(write, t, identity, stream, wire_len, self.seq - len(events) + i, 1 if real else 0)
            self.built[stream] += 1
            if real:
                built_refs.append(ref)
            write += 1
        ring.publish(write, events[-1][0])
        if built_refs:
            self.ctl.send(control.FragmentsBuilt(built_refs))
        if failed_refs:
            self.ctl.send(control.FragmentsFailed(failed_refs, "packet build failed"))
        del view, out
        return len(events)

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
    setup = None
    while setup is None and not ctl.closed:
        for msg in ctl.poll(None):
            if isinstance(msg, control.WorkerSetup):
                setup = msg
    if setup is None:
        return 0
    with contextlib.suppress(OSError):
        os.nice(5)  # the sender's timing matters more than a worker's throughput on a busy box
    ring = Ring.attach(ring_fd)
    try:
        run_profiled("worker", Worker(setup, ring, ctl).run)
    except KeyboardInterrupt:
        pass
    except Exception as e:  # report, then exit non-zero: the coordinator decides what to do
        with contextlib.suppress(OSError):
            ctl.send(control.Fatal(f"worker {setup.worker_index}: {type(e).__name__}: {e}"))
        raise
    finally:
        ring.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
