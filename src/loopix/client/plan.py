"""A worker's batch in C (csrc/plan.c): the route table of the current topology, and `WorkerBatch`,
which plans and builds a whole batch into the ring in one call (`lx_worker_batch`): routes, ack
routes and per-hop delays from the worker's CSPRNG, drop payloads, loop and SURB-ack payloads, the ack
packets, the packets, and each ring slot's prefix and metadata. Python sets six numbers per slot and
reads back only what concerns real fragments (their route delays, for the retransmission timer).

`RouteTable.draw` (`lx_draw_routes`) is the routes-only call, for tests and benchmarks.
"""

from __future__ import annotations

from operator import attrgetter

from loopix import sphinx
from loopix.csprng import Csprng
from loopix.sphinx._sphinx_c import ffi, lib
from loopix.topology import route_layers
from loopix.wire.ack import ACK_PAYLOAD_SIZE, ACK_PREFIX_SIZE

from . import control
from .ring import Ring

_layer_of = attrgetter("layer")
ANY_PROVIDER = lib.LX_ANY_PROVIDER
NO_PROVIDER = ANY_PROVIDER  # in `own_provider`: the identity's provider is not in the topology
REAL, LOOP, DROP, PREBUILT = lib.LX_SLOT_REAL, lib.LX_SLOT_LOOP, lib.LX_SLOT_DROP, lib.LX_SLOT_PREBUILT
assert lib.LX_ACK_PREFIX == ACK_PREFIX_SIZE and lib.LX_ACK_PAYLOAD == ACK_PAYLOAD_SIZE
assert sphinx.packet_size(ACK_PAYLOAD_SIZE) == lib.LX_ACK_PACKET

class RouteTable:
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


class BatchError(RuntimeError):
    """lx_worker_batch refused its arguments (a bug if seen: the worker checks what it passes)."""


class WorkerBatch:
    """The buffers of `lx_worker_batch` for up to `capacity` slots, and the call.

    Per slot i the caller sets `kind[i]` (REAL, LOOP, DROP, PREBUILT), `stream[i]`, `local[i]` (its
    identity's index in `set_identities`), `identity[i]` (global), `t[i]`, `seq[i]` (a fragment's
    ref for REAL and PREBUILT), and for REAL also `provider[i]`, `message_len[i]`, the destination
    (`set_destination`) and the message (`set_real_message`). `run` does the rest."""

    def __init__(self, capacity: int, payload_size: int, wire_header: bytes, ack_key: bytes, loop_key: bytes):
        c = self._c = ffi.new("lx_batch *")
        self.capacity = capacity
        self.payload_size = payload_size
        self.packet_size = sphinx.packet_size(payload_size)
        self._keep = []

        def array(ctype: str, n: int):
            a = ffi.new(f"{ctype}[]", max(1, n))
            self._keep.append(a)
            return a

        c.capacity, c.payload_size = capacity, payload_size
        c.specs, c.ack_specs = array("lx_packet_spec", capacity), array("lx_packet_spec", capacity)
        c.status, c.ack_status = array("int32_t", capacity), array("int32_t", capacity)
        self.messages = bytearray(capacity * payload_size)
        self._messages_c = ffi.from_buffer(self.messages)
        c.messages = self._messages_c
        c.ack_messages = array("uint8_t", capacity * ACK_PAYLOAD_SIZE)
        c.ack_out = array("uint8_t", capacity * lib.LX_ACK_PACKET)
        c.blocks = array("uint8_t", capacity * 16)
        c.ack_refs, c.ack_of = array("uint64_t", capacity), array("uint32_t", capacity)
        c.uniforms = array("double", capacity * 2 * (2 * sphinx.MAX_PATH_LENGTH + 1))
        c.secrets = array("uint8_t", capacity * 2 * sphinx.KEY_SIZE)
        c.ack_key, c.loop_key = ack_key, loop_key
        c.drop_destination = sphinx.DROP_COVER_DESTINATION
        self._header = array("uint8_t", len(wire_header))
        ffi.memmove(self._header, wire_header, len(wire_header))
        c.wire_header, c.wire_header_len = self._header, len(wire_header)
        self.wire_len = len(wire_header) + sphinx.NODE_ADDRESS_SIZE + self.packet_size
        self.kind = c.kind = array("uint8_t", capacity)
        self.stream = c.stream = array("uint8_t", capacity)
        self.local = c.local = array("uint32_t", capacity)
        self.identity = c.identity = array("uint32_t", capacity)
        self.t = c.t = array("uint64_t", capacity)
        self.seq = c.seq = array("uint64_t", capacity)
        self.provider = c.provider = array("uint32_t", capacity)
        self.message_len = c.message_len = array("uint32_t", capacity)
        self.destinations = bytearray(capacity * sphinx.KEY_SIZE)
        self._destinations_c = ffi.from_buffer(self.destinations)
        c.destinations = self._destinations_c
        self.route_delay_ns = c.route_delay_ns = array("uint64_t", capacity)
        self.placed = c.placed = array("int64_t", capacity)
        self.built, self.failed = c.built, c.failed
        self._ring: Ring | None = None
        self._ring_c = None
        self.table: RouteTable | None = None

    def set_table(self, table: RouteTable) -> None:
        self.table = table
        self._c.table = table.table

    def set_identities(self, public_keys: bytes, own_provider: list[int]) -> None:
        """Loop destinations (the local identities' public keys, 32 bytes each, back to back) and each
        identity's provider index in the current table (NO_PROVIDER when it is not in the topology)."""
        self._keys = ffi.new("uint8_t[]", bytes(public_keys) or b"\0")
        self._own = ffi.new("uint32_t[]", own_provider or [NO_PROVIDER])
        c = self._c
        c.identity_keys, c.own_provider, c.n_identities = self._keys, self._own, len(own_provider)

    def set_destination(self, i: int, key: bytes) -> None:
        self.destinations[32 * i : 32 * i + 32] = key

    def set_real_message(self, i: int, payload: bytes) -> None:
        off = i * self.payload_size + ACK_PREFIX_SIZE
        self.messages[off : off + len(payload)] = payload
        self.message_len[i] = len(payload)

    def run(self, rng: Csprng, count: int, ring: Ring, start: int) -> int:
        """Plan and build slots 0..count into ring slots start.. (contiguous: the caller keeps count
        within `contiguous_free`); returns how many were written (failures close up)."""
        if not 0 <= count <= self.capacity or start % ring.slots + count > ring.slots:
            raise BatchError(f"{count} slots from ring index {start} do not fit the batch or the ring")
        if ring is not self._ring:
            self.release()
            self._ring, self._ring_c = ring, ffi.from_buffer(ring.buf, require_writable=True)
        slot = self._ring_c + ring.slot_offset(start)
        n = lib.lx_worker_batch(self._c, rng.c_state(), count, slot, ring.slot_size)
        if n < 0:
            raise BatchError(f"lx_worker_batch refused the batch ({n})")
        return n

    def release(self) -> None:
        """Drop the C view of the ring (so the ring can be unmapped)."""
        if self._ring_c is not None:
            ffi.release(self._ring_c)
        self._ring, self._ring_c = None, None
