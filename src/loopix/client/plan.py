"""Bulk route and delay draws in C (csrc/plan.c): one call fills the routes and per-hop delays of a
whole batch of builder slots from a CSPRNG, one random mixnode per layer, then a provider.

The building block for the worker's batch path (issue 14). The worker does not use it yet: its
SURB-ack packets need their own routes and the route delays read back for the retransmission
timer, and those are still drawn per packet in Python (from the same CSPRNG).
"""

from __future__ import annotations

from operator import attrgetter

from loopix import sphinx
from loopix.csprng import Csprng
from loopix.sphinx._sphinx_c import ffi, lib
from loopix.topology import route_layers

from . import control

_layer_of = attrgetter("layer")
ANY_PROVIDER = lib.LX_ANY_PROVIDER

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


