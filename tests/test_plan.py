"""The worker's bulk route and delay draws (csrc/plan.c through client/plan.RouteTable): packets built
on drawn routes unwrap hop by hop with the real node keys, along one mixnode per layer."""

from __future__ import annotations

import os

from loopix.sphinx._sphinx_c import ffi

from loopix import sphinx
from loopix.client import control
from loopix.client.plan import ANY_PROVIDER
from loopix.client.plan import RouteTable as Routes
from loopix.csprng import Csprng


def _net(layers: int = 3, per_layer: int = 2, providers: int = 2):
    secrets: dict[bytes, tuple[bytes, str]] = {}
    mixes, provs = [], []
    for layer in range(1, layers + 1):
        for k in range(per_layer):
            sk, pk = sphinx.keypair()
            addr = bytes([layer, k]) + bytes(30)
            secrets[addr] = (sk, f"mix{layer}")
            mixes.append(control.MixNodeInfo(layer, pk, addr))
    for k in range(providers):
        sk, pk = sphinx.keypair()
        addr = bytes([99, k]) + bytes(30)
        secrets[addr] = (sk, f"provider{k}")
        provs.append(control.ProviderInfo(pk, addr, "127.0.0.1", 1000 + k))
    return control.TopologyUpdate(mixes, provs), secrets


def test_drawn_routes_unwrap_through_one_mixnode_per_layer():
    topo, secrets = _net()
    routes = Routes(topo, Csprng.seeded(4))
    assert routes.usable
    n = 64
    builder = sphinx.PacketBuilder(n, 2048)
    last_hops = [0 if i % 2 == 0 else ANY_PROVIDER for i in range(n)]
    for i in range(n):
        msg = os.urandom(100)
        builder.messages[i * 2048 : i * 2048 + 100] = msg
        builder.set_message(i, bytes([i]) * 32, 100, i * 2048)
    c_last = ffi.new("uint32_t[]", last_hops)
    mean_ns = 2_000_000.0
    routes.draw(builder, n, c_last, mean_ns)
    out = bytearray(builder.packet_size * n)
    assert builder.build(n, out) == n
    seen: set[bytes] = set()
    providers_any: set[str] = set()
    delays = []
    for i in range(n):
        packet = bytes(out[i * builder.packet_size : (i + 1) * builder.packet_size])
        address = bytes(builder.first_hop_address(i))
        names = []
        while True:
            sk, name = secrets[address]
            names.append(name)
            seen.add(address)
            res = sphinx.process_packet(sk, packet)
            if isinstance(res, sphinx.Final):
                assert res.destination == bytes([i]) * 32
                break
            delays.append(res.delay_ns)
            address, packet = res.next_address, res.packet
        assert names[:3] == ["mix1", "mix2", "mix3"]
        if last_hops[i] == 0:
            assert names[3] == "provider0"
        else:
            providers_any.add(names[3])
    assert seen == set(secrets)  # every mixnode and provider drawn at least once
    assert providers_any == {"provider0", "provider1"}
    assert len(delays) == 3 * n and 0.6 * mean_ns < sum(delays) / len(delays) < 1.5 * mean_ns


def test_no_delay_and_unusable_topologies():
    topo, _ = _net()
    routes = Routes(topo, Csprng.seeded(5))
    builder = sphinx.PacketBuilder(4, 2048)
    routes.draw(builder, 4, ffi.new("uint32_t[]", [1] * 4), 0.0)
    for i in range(4):
        spec = builder.specs[i]
        assert spec.n_hops == 4
        assert [spec.hops[k].delay_ns for k in range(4)] == [0, 0, 0, 0]
    too_long, _ = _net(layers=5, per_layer=1)
    assert not Routes(too_long, Csprng()).usable  # 5 mix layers + a provider > 5 hops
    gap = control.TopologyUpdate([m for m in topo.mixnodes if m.layer != 2], topo.providers)
    assert not Routes(gap, Csprng()).usable
    assert not Routes(control.TopologyUpdate(topo.mixnodes, []), Csprng()).usable


def test_drawn_delays_are_exponential_with_the_mean():
    """KS at alpha = 0.01 against Exp(mean) over 3 x 1,000 mix-hop delays."""
    import math

    topo, _ = _net()
    routes = Routes(topo, Csprng.seeded(6))
    builder = sphinx.PacketBuilder(1000, 2048)
    mean_ns = 50e6
    routes.draw(builder, 1000, ffi.new("uint32_t[]", [ANY_PROVIDER] * 1000), mean_ns)
    delays = sorted(builder.specs[i].hops[k].delay_ns / mean_ns for i in range(1000) for k in range(3))
    n = len(delays)
    d = max(max((1 - math.exp(-x)) - i / n, (i + 1) / n - (1 - math.exp(-x))) for i, x in enumerate(delays))
    assert d < 1.63 / math.sqrt(n)
