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
from operator import attrgetter

import msgspec

from loopix import sphinx
from loopix.csprng import Csprng
from loopix.keys import KEY_SIZE
from loopix.topology import choose_mixes, route_layers
from loopix.wire.ack import ACK_PAYLOAD_SIZE, ACK_PREFIX_SIZE, inner_size

from . import control
from .acks import COVER_REF, AckCodec
from .messages import LoopCodec
from .profiling import run_profiled
from .ring import SLOT_META_SIZE, Ring
from .schedule import PoissonClock, Stream, StreamRates

_PAYLOAD, _LOOP, _DROP = Stream.PAYLOAD, Stream.LOOP, Stream.DROP
_layer_of = attrgetter("layer")
STATS_INTERVAL_S = 1.0


class Routes:
    """The current topology as the builder needs it; routes come from topology.choose_mixes (one
    random mixnode per layer), then a provider."""

    def __init__(self, topo: control.TopologyUpdate, rng: Csprng):
        self.rng = rng
        layers = route_layers(topo.mixnodes, _layer_of)
        self.layers = () if isinstance(layers, str) else layers  # no route through a broken topology
        # public key ‖ address of every node, in the layout of the C hop record
        self.hop_bytes = {n.public_key: n.public_key + n.address for n in topo.mixnodes}
        self.hop_bytes.update({p.public_key: p.public_key + p.address for p in topo.providers})
        self.providers = {p.public_key: p for p in topo.providers}
        self.provider_list = list(topo.providers)
        self.usable = bool(self.layers) and bool(self.provider_list)

    def mixes(self) -> list[control.MixNodeInfo]:
        return choose_mixes(self.layers, self.rng)


class Worker:
    def __init__(self, setup: control.WorkerSetup, ring: Ring, ctl: control.BlockingControl):
        self.setup = setup
        self.ring = ring
        self.ctl = ctl
        self.rng = Csprng()  # routes, delays, schedule and drop payloads: docs/randomness.md
        # our identities, flat: the i-th's public key at [32i, 32i + 32), its provider's index
        self.public_keys = setup.public_keys
        self.provider_of = array.array("H", setup.provider_of)
        self.routes = Routes(setup.topology, self.rng)
        self.loops = LoopCodec(setup.loop_key)
        self.pending: dict[int, collections.deque[control.Fragment]] = {}
        self.payload_size = setup.payload_size
        self.inner_size = inner_size(setup.payload_size)  # after the SURB-ack prefix
        self.builder = sphinx.PacketBuilder(setup.batch_size, setup.payload_size)
        # SURB-acks: one ack packet per real or loop packet, built in the same batch, one C call
        self.acks = AckCodec(setup.ack_key)
        self.ack_builder = sphinx.PacketBuilder(setup.batch_size, ACK_PAYLOAD_SIZE)
        self.ack_out = bytearray(setup.batch_size * self.ack_builder.packet_size)
        self.ack_slots: list[tuple[int, bytes]] = []  # (main slot, ack first hop) this batch
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
        rate_of = setup.rate_of
        self.provider_keys = setup.provider_keys
        classes = [StreamRates(c.payload, c.loop, c.drop) for c in setup.rate_classes]
        rates = self.rates = [classes[c] for c in array.array("H", rate_of)]
        # the keys are kept once, above (they grow as identities join): not in the setup too
        self.setup = msgspec.structs.replace(setup, public_keys=b"", provider_of=b"", rate_of=b"")
        self.removed: set[int] = set()  # global indexes of identities that left: their events are skipped
        share = setup.share
        # the schedule starts when this process can build it, not when the coordinator spawned it
        start_ns = max(setup.start_ns, time.monotonic_ns())
        self.clock = PoissonClock(rates, start_ns, share=share, rng=self.rng) if rates else None
        self.mean_delay_s = setup.mean_hop_delay_ms / 1000.0
        self.payload_cover = _LOOP if setup.payload_cover == "loop" else _DROP
        self.lookahead_ns = int(setup.lookahead_ms * 1e6)
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

    # -- control --
    def handle(self, msg) -> None:
        if isinstance(msg, control.SendFragments):
            for frag in msg.fragments:
                self.pending.setdefault(frag.identity, collections.deque()).append(frag)
        elif isinstance(msg, control.TopologyUpdate):
            self.routes = Routes(msg, self.rng)
        elif isinstance(msg, control.Failover):
            self.move(msg.identities, msg.provider.key)
        elif isinstance(msg, control.Pause):
            self.cover_until_ns = min(self.cover_until_ns, msg.from_ns)
        elif isinstance(msg, control.Resume):
            self.cover_until_ns = control.COVER_FOREVER
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

    # -- building --
    def delays(self, hops: int) -> list[int]:
        if self.mean_delay_s <= 0:
            return [0] * hops
        exp = self.rng.expovariate
        rate = 1.0 / self.mean_delay_s
        # the last hop is the recipient's provider: it does not delay (its delay is never encoded)
        return [int(exp(rate) * 1e9) for _ in range(hops - 1)] + [0]

    def fill(self, slot: int, local: int, identity: int, stream: int):
        """Fill builder slot `slot` for one event of our identity `local` (global `identity`);
        returns (first hop address, fragment ref or -1) or None when there is no route."""
        me_key = self.public_keys[local * KEY_SIZE:(local + 1) * KEY_SIZE]
        me_provider = self.provider_of[local]
        routes = self.routes
        ref = -1
        kind = stream
        if stream == _PAYLOAD:
            queue = self.pending.get(identity)
            if queue:
                frag = queue.popleft()
                if frag.packet:  # pre-built (a reply): the C call builds a drop here, replaced after
                    return self._fill_prebuilt(slot, frag)
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
                provider = routes.providers.get(self.provider_keys[me_provider])
                if provider is None:
                    return None
                destination = me_key
                payload = self.loops.encode(identity, self.seq, self._event_ns, self.inner_size)
            else:
                provider = self.rng.choice(routes.provider_list)
                destination = sphinx.DROP_COVER_DESTINATION
                payload = self.rng.bytes(self.payload_size)  # fresh per packet, from the CSPRNG
        mixes = routes.mixes()
        hop_bytes = routes.hop_bytes
        hops = [hop_bytes[m.public_key] for m in mixes]
        hops.append(hop_bytes[provider.public_key])
        off = slot * self.payload_size
        delays = self.delays(len(hops))
        route_delay = sum(delays)
        size = len(payload)
        if kind != _DROP or ref >= 0:  # real fragments and loops carry a SURB-ack
            own = routes.providers.get(self.provider_keys[me_provider])
            if own is None:  # our provider left the topology: keep the fragment for later
                if ref >= 0:
                    self.pending[identity].appendleft(frag)
                return None
            ack_mixes = routes.mixes()
            ack_hops = [hop_bytes[m.public_key] for m in ack_mixes]
            ack_hops.append(hop_bytes[own.public_key])
            ack_delays = self.delays(len(ack_hops))
            route_delay += sum(ack_delays)
            k = len(self.ack_slots)
            ack_off = k * ACK_PAYLOAD_SIZE
            self.ack_builder.messages[ack_off : ack_off + ACK_PAYLOAD_SIZE] = self.acks.encode(
                ref if ref >= 0 else COVER_REF)
            self.ack_builder.set_packet_fast(k, ack_hops, ack_delays, me_key, ACK_PAYLOAD_SIZE, ack_off)
            self.ack_slots.append((slot, ack_mixes[0].address))
            self.builder.messages[off + ACK_PREFIX_SIZE : off + ACK_PREFIX_SIZE + size] = payload
            size += ACK_PREFIX_SIZE
        else:
            self.builder.messages[off : off + size] = payload
        self.builder.set_packet_fast(slot, hops, delays, destination, size, off)
        return mixes[0].address, ref, route_delay, None

    def _fill_prebuilt(self, slot: int, frag: control.Fragment):
        routes = self.routes
        hop_bytes = routes.hop_bytes
        mixes = routes.mixes()
        hops = [hop_bytes[m.public_key] for m in mixes]
        hops.append(hop_bytes[self.rng.choice(routes.provider_list).public_key])
        off = slot * self.payload_size
        self.rng.fill(self.builder.arena, off, self.payload_size)
        self.builder.set_packet_fast(slot, hops, [0] * len(hops), sphinx.DROP_COVER_DESTINATION,
                                     self.payload_size, off)
        return frag.first_hop, frag.ref, frag.route_delay_ns, frag.packet

    def _build_acks(self) -> set[int]:
        """Build this batch's ack packets (one C call) and put each, behind its first hop, at the
        front of its packet's message; returns the main slots whose ack failed to build."""
        slots, self.ack_slots = self.ack_slots, []
        if not slots:
            return set()
        ab = self.ack_builder
        ab.build(len(slots), self.ack_out)
        size = ab.packet_size
        msgs = self.builder.messages
        failed = set()
        for k, (slot, first_hop) in enumerate(slots):
            if ab.status[k] != 0:
                failed.add(slot)
                continue
            off = slot * self.payload_size
            msgs[off : off + len(first_hop)] = first_hop
            msgs[off + len(first_hop) : off + ACK_PREFIX_SIZE] = self.ack_out[k * size : (k + 1) * size]
        return failed

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
            if t >= self.cover_until_ns and (stream != _PAYLOAD or not self.pending.get(identity)):
                continue
            if not self.routes.usable:
                self.no_route += 1
                self.no_route_by_stream[stream] += 1
                continue
            self._event_ns = t
            filled = self.fill(len(events), local, identity, stream)
            if filled is None:
                self.no_route += 1
                self.no_route_by_stream[stream] += 1
                continue
            events.append((t, identity, stream, *filled))
            self.seq += 1
        if not events:
            self.ring.set_horizon(min(self.next_event[0], horizon))
            return 0
        ack_failed = self._build_acks()
        ring = self.ring
        stride = ring.slot_size
        view = ring.wire_view(start, len(events))
        out = view[self.prefix_len :]
        self.builder.build(len(events), out, stride)
        status = self.builder.status
        built_refs = []
        built_delays = []
        failed_refs = []
        write = start
        header, plen, wire_len = self.wire_header, self.prefix_len, self.wire_len
        hl = len(header)
        for i, (t, identity, stream, first_hop, ref, route_delay, prebuilt) in enumerate(events):
            if status[i] != 0 or i in ack_failed:
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
            view[base + hl : base + plen] = first_hop
            if prebuilt is not None:
                view[base + plen : base + wire_len] = prebuilt
            real = ref >= 0
            # a real packet's seq is its fragment ref: the sender reports when it really left
            seq = ref if real else self.seq - len(events) + i
            ring.write_meta(write, t, identity, stream, wire_len, seq, 1 if real else 0)
            self.built[stream] += 1
            if real:
                built_refs.append(ref)
                built_delays.append(route_delay)
            write += 1
        ring.publish(write, events[-1][0])
        if built_refs:
            self.ctl.send(control.FragmentsBuilt(built_refs, built_delays))
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
                    wait = max(0.0005, min(0.05, (self.next_event[0] - self.lookahead_ns - now) / 1e9))
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
