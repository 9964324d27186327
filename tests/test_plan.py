"""The worker's bulk route and delay draws (csrc/plan.c through client/plan.RouteTable): packets built
on drawn routes unwrap hop by hop with the real node keys, along one mixnode per layer."""

from __future__ import annotations

import os

import pytest
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


def _unwrap(secrets, address: bytes, packet: bytes):
    """(node names along the way, per-hop delays, the Final) of one packet."""
    names, delays = [], []
    while True:
        sk, name = secrets[address]
        names.append(name)
        res = sphinx.process_packet(sk, packet)
        if isinstance(res, sphinx.Final):
            return names, delays, res
        delays.append(res.delay_ns)
        address, packet = res.next_address, res.packet


def test_worker_batch_builds_real_loop_and_drop_packets_with_their_acks():
    """One lx_worker_batch call on a real ring: every slot unwraps through one mixnode per layer to
    the right provider; loops and acks decode with the client's keys; each real or loop packet's ack
    packet unwraps back to the sender's own provider; route delays read back are the sum of the
    packet's and its ack's sampled mix delays; metadata, header and first hop are in each slot."""
    from loopix.client.acks import COVER_REF, AckCodec
    from loopix.client.messages import LoopCodec
    from loopix.client.plan import DROP, LOOP, REAL, WorkerBatch
    from loopix.client.ring import Ring, slot_size_for
    from loopix.wire.ack import split_ack

    topo, secrets = _net()
    routes = Routes(topo, Csprng.seeded(8))
    routes.table.mean_delay_ns = 5e6
    _, me_pk = sphinx.keypair()
    ack_key, loop_key, header = os.urandom(32), os.urandom(32), b"HDR!"
    batch = WorkerBatch(8, 2048, header, ack_key, loop_key)
    batch.set_table(routes)
    batch.set_identities(bytes(32) + me_pk, [0, 1])  # local 1 is ours, at provider 1
    kinds = [REAL, LOOP, DROP, REAL, DROP, LOOP]
    recipient = bytes([7]) * 32
    for i, k in enumerate(kinds):
        batch.kind[i], batch.stream[i], batch.local[i] = k, {REAL: 0, LOOP: 1, DROP: 2}[k], 1
        batch.identity[i], batch.t[i], batch.seq[i] = 40 + i, 10**9 + i, 1000 + i
        if k == REAL:
            batch.provider[i] = 0
            batch.set_destination(i, recipient)
            batch.set_real_message(i, bytes([i]) * 100)
    wire = len(header) + 32 + sphinx.packet_size(2048)
    ring = Ring.create(16, slot_size_for(wire))
    try:
        assert batch.run(Csprng.seeded(9), len(kinds), ring, 3) == len(kinds)
        assert list(batch.built) == [2, 2, 2] and list(batch.failed) == [0, 0, 0]
        acks, loops = AckCodec(ack_key), LoopCodec(loop_key)
        # ephemeral secrets from the CSPRNG: a fresh alpha per packet, and wiped after the build
        alphas = {bytes(ring.wire_view(3 + i)[36:68]) for i in range(len(kinds))}
        assert len(alphas) == len(kinds)
        assert bytes(ffi.buffer(batch._c.secrets, 2 * 8 * 32)) == bytes(2 * 8 * 32)
        assert all(bytes(batch._c.specs[i].ephemeral_secret) == bytes(32) for i in range(len(kinds)))
        for i, k in enumerate(kinds):
            assert batch.placed[i] == i
            t, identity, stream, flags, wire_len, seq = ring.peek(3 + i)
            assert (t, identity, stream, flags, wire_len, seq) == (
                10**9 + i, 40 + i, {REAL: 0, LOOP: 1, DROP: 2}[k], int(k == REAL), wire, 1000 + i)
            view = bytes(ring.wire_view(3 + i)[:wire])
            assert view[:4] == header
            names, delays, final = _unwrap(secrets, view[4:36], view[36:])
            assert names[:3] == ["mix1", "mix2", "mix3"]
            if k == DROP:
                assert final.destination == sphinx.DROP_COVER_DESTINATION
                continue
            assert names[3] == ("provider0" if k == REAL else "provider1")
            ack_hop, ack_packet, inner = split_ack(final.message)
            if k == REAL:
                assert final.destination == recipient and inner == bytes([i]) * 100
            else:
                assert final.destination == me_pk and len(final.message) == 2048
                info = loops.decode(inner)
                assert info is not None and (info.identity, info.seq, info.sent_ns) == (40 + i, 1000 + i, 10**9 + i)
            ack_names, ack_delays, ack_final = _unwrap(secrets, ack_hop, ack_packet)
            assert ack_names == ["mix1", "mix2", "mix3", "provider1"] and ack_final.destination == me_pk
            assert acks.decode(ack_final.message) == (1000 + i if k == REAL else COVER_REF)
            assert batch.route_delay_ns[i] == sum(delays) + sum(ack_delays) > 0
    finally:
        batch.release()
        ring.close()


def test_worker_batch_refuses_bad_slots_without_writing():
    """A slot naming an identity or provider the batch does not have, or a run past the ring's end,
    is refused as a whole (a bug in the caller), and nothing is written to the ring."""
    from loopix.client.plan import LOOP, REAL, BatchError, WorkerBatch
    from loopix.client.ring import Ring, slot_size_for

    topo, _ = _net()
    routes = Routes(topo, Csprng.seeded(10))
    batch = WorkerBatch(4, 2048, b"", os.urandom(32), os.urandom(32))
    batch.set_table(routes)
    batch.set_identities(bytes(32), [0])
    ring = Ring.create(8, slot_size_for(32 + sphinx.packet_size(2048)))
    try:
        for field, kind, value in (("local", LOOP, 5), ("provider", REAL, 9)):
            batch.kind[0], batch.stream[0], batch.local[0], batch.provider[0] = kind, 0, 0, 0
            getattr(batch, field)[0] = value
            with pytest.raises(BatchError):
                batch.run(Csprng(), 1, ring, 0)
            assert bytes(ring.wire_view(0)[:64]) == bytes(64)
        batch.local[0], batch.provider[0] = 0, 0
        with pytest.raises(BatchError, match="do not fit"):
            batch.run(Csprng(), 2, ring, 7)  # would run past the ring's last slot
    finally:
        batch.release()
        ring.close()


def test_worker_batch_delays_are_exponential_and_read_back_whole():
    """KS at alpha = 0.01: each mix hop's delay in a batch's packets and acks is Exp(mean), and the
    route delay read back for a loop is the sum of its six (packet and ack), i.e. Erlang(6, mean)."""
    import math

    from loopix.client.plan import LOOP, WorkerBatch
    from loopix.client.ring import Ring, slot_size_for

    def ks(sample, cdf) -> float:
        xs = sorted(sample)
        n = len(xs)
        return max(max(cdf(x) - i / n, (i + 1) / n - cdf(x)) for i, x in enumerate(xs))

    topo, _ = _net()
    routes = Routes(topo, Csprng.seeded(12))
    mean = 1e6
    routes.table.mean_delay_ns = mean
    batch = WorkerBatch(128, 2048, b"", os.urandom(32), os.urandom(32))
    batch.set_table(routes)
    batch.set_identities(sphinx.keypair()[1], [0])
    ring = Ring.create(128, slot_size_for(32 + sphinx.packet_size(2048)))
    rng = Csprng.seeded(13)
    hops, sums = [], []
    try:
        for _ in range(4):
            for i in range(128):
                batch.kind[i], batch.stream[i], batch.local[i], batch.identity[i] = LOOP, 1, 0, 0
                batch.t[i], batch.seq[i] = 1, i
            assert batch.run(rng, 128, ring, 0) == 128
            for i in range(128):
                six = [s[i].hops[k].delay_ns for s in (batch._c.specs, batch._c.ack_specs) for k in range(3)]
                assert batch._c.specs[i].hops[3].delay_ns == batch._c.ack_specs[i].hops[3].delay_ns == 0
                assert batch.route_delay_ns[i] == sum(six)
                hops += [d / mean for d in six]
                sums.append(batch.route_delay_ns[i] / mean)
    finally:
        batch.release()
        ring.close()
    assert ks(hops, lambda x: 1 - math.exp(-x)) < 1.63 / math.sqrt(len(hops))

    def erlang6(x: float) -> float:
        return 1 - math.exp(-x) * sum(x**k / math.factorial(k) for k in range(6))

    assert ks(sums, erlang6) < 1.63 / math.sqrt(len(sums))
