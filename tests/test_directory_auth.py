"""Authenticated presence and the signed topology: every spoofing attempt of issue 11 is refused.

The directory runs over real TCP on 127.0.0.1; posts are built the way a node builds them
(`Node.signed_body`'s format), then altered the way an attacker would.
"""

import asyncio
import contextlib
import logging
import time

import aiohttp
import msgspec
import nacl.signing
import pytest

from loopix import directory_auth as auth
from loopix import keys
from loopix.client.topology_source import TopologyRefused, TopologySource
from loopix.testnet.directory import METRICS_BYTE_BUDGET, DirectoryServer, Registry
from loopix.topology import (
    MixNode,
    Provider,
    Topology,
    TopologyError,
    encode_topology,
    validate_topology,
)
from loopix.wire.b64 import b64url_encode

MIX = "/api/presence/mixnodes"
PROV = "/api/presence/mixproviders"
METRICS = "/api/metrics/mixes"


class FakeNode:
    """A node's identity and Sphinx key pair, posting as testnet/node.py does."""

    def __init__(self, directory_key: bytes, port: int, layer: int = 1):
        self.identity = nacl.signing.SigningKey.generate()
        self.sphinx = keys.generate_keypair()
        self.host = f"127.0.0.1:{port}"
        self.layer = layer
        self.proof_key = auth.proof_key(self.sphinx.secret, directory_key)

    @property
    def identity_public(self) -> bytes:
        return bytes(self.identity.verify_key)

    def presence(self, now_ns: int, **override) -> dict:
        body = {
            "host": self.host,
            "pubKey": b64url_encode(self.sphinx.public),
            "layer": self.layer,
            "identityKey": b64url_encode(self.identity_public),
            "timestamp": now_ns,
            "keyProof": auth.key_proof(self.proof_key, self.identity_public, self.sphinx.public, now_ns),
        }
        body.update(override)
        return body

    def signed(self, path: str, body: dict, signer=None) -> tuple[bytes, dict]:
        raw = msgspec.json.encode(body)
        sig = auth.sign_request(signer or self.identity, path, raw)
        return raw, {"Content-Type": "application/json", auth.SIGNATURE_HEADER: sig}


def run(scenario, n_allowed=3, extra_nodes=1):
    async def main():
        key = nacl.signing.SigningKey.generate()
        directory_public = bytes(key.verify_key)
        nodes = [FakeNode(directory_public, 20000 + i) for i in range(n_allowed + extra_nodes)]
        allowed = frozenset(n.identity_public for n in nodes[:n_allowed])
        async with (
            DirectoryServer(key=key, allowed=allowed) as server,
            aiohttp.ClientSession(base_url=server.url) as http,
        ):

            async def post(path, raw, headers):
                async with http.post(path, data=raw, headers=headers) as r:
                    return r.status, await r.json()

            async def topology():
                async with http.get("/api/presence/topology") as r:
                    return await r.read(), dict(r.headers)

            await scenario(server, nodes, post, topology)

    asyncio.run(main())


def test_allowed_signed_presence_is_admitted_and_the_topology_is_signed():
    async def scenario(server, nodes, post, topology):
        node = nodes[0]
        status, _ = await post(MIX, *node.signed(MIX, node.presence(time.time_ns())))
        assert status == 201
        body, headers = await topology()
        source = TopologySource("test", server.public_key)
        doc = msgspec.json.decode(body)
        assert [m["host"] for m in doc["mixNodes"]] == [node.host]
        assert set(doc) == {"cocoNodes", "mixNodes", "mixProviderNodes"}  # the 2019 shape
        # the signature checks out against the pinned key (validation fails: no provider yet)
        with pytest.raises(TopologyRefused, match="no providers"):
            source.accept(body, headers, time.time_ns())

    run(scenario)


def test_every_spoofed_presence_is_refused():
    async def scenario(server, nodes, post, topology):
        now = time.time_ns()
        a, b, c, outsider = nodes
        assert (await post(MIX, *a.signed(MIX, a.presence(now))))[0] == 201
        # 1. unsigned 2019-style posts (the 20 fake layer-1 nodes)
        for i in range(20):
            body = {"host": f"127.0.0.2:{i + 1}", "pubKey": b64url_encode(bytes([i + 1]) * 32), "layer": 1}
            status, err = await post(MIX, msgspec.json.encode(body), {"Content-Type": "application/json"})
            assert status == 403 and "unsigned" in err["error"]
        # 2. a correctly signed post by an identity the operator did not allow (a new layer)
        spoof = outsider.presence(now, layer=4)
        status, err = await post(MIX, *outsider.signed(MIX, spoof))
        assert status == 403 and "not allowed" in err["error"]
        # 3. an allowed identity's signature over a different body (tampered host)
        raw, headers = b.signed(MIX, b.presence(now))
        tampered = raw.replace(b.host.encode(), b"127.0.0.9:9")
        assert (await post(MIX, tampered, headers))[0] == 403
        # 4. a live node's Sphinx key announced with another host, by another allowed identity:
        #    b cannot prove possession of a's Sphinx key
        steal = b.presence(now + 1, pubKey=b64url_encode(a.sphinx.public), host="127.0.0.9:1")
        status, err = await post(MIX, *b.signed(MIX, steal))
        assert status == 403 and "proof" in err["error"]
        # 5. another allowed node claiming a live node's host (with its own key and proof)
        status, err = await post(MIX, *b.signed(MIX, b.presence(now + 2, host=a.host)))
        assert status == 409 and "host" in err["error"]
        # 6. replay of a's captured post, and an old post outside the window
        captured = a.signed(MIX, a.presence(now + 3))
        assert (await post(MIX, *captured))[0] == 201
        status, err = await post(MIX, *captured)
        assert status == 403 and "replay" in err["error"]
        old = now - 2 * auth.REPLAY_WINDOW_NS
        status, err = await post(MIX, *c.signed(MIX, c.presence(old)))
        assert status == 403 and "window" in err["error"]
        # 7. a presence signature reused for another path (presence signed, posted as a provider)
        raw, headers = c.signed(MIX, c.presence(now + 4))
        assert (await post(PROV, raw, headers))[0] == 403
        # 8. a layer beyond what a route can carry
        status, _ = await post(MIX, *c.signed(MIX, c.presence(now + 5, layer=5)))
        assert status == 400
        # 9. a missing or wrong key proof
        no_proof = c.presence(now + 6)
        del no_proof["keyProof"]
        assert (await post(MIX, *c.signed(MIX, no_proof)))[0] == 403
        # nothing but a's entry reached the topology
        body, _ = await topology()
        assert [m["host"] for m in msgspec.json.decode(body)["mixNodes"]] == [a.host]

    run(scenario)


def test_spoofed_metrics_are_refused():
    async def scenario(server, nodes, post, topology):
        now = time.time_ns()
        a, b, _, _ = nodes
        assert (await post(MIX, *a.signed(MIX, a.presence(now))))[0] == 201
        assert (await post(MIX, *b.signed(MIX, b.presence(now))))[0] == 201
        report = {"pubKey": b64url_encode(a.sphinx.public), "sent": {}, "received": 1, "dropped": {"x": 10**9}}
        # unsigned (the `dropped: 1e9` that changed a verdict)
        status, _ = await post(METRICS, msgspec.json.encode(report), {"Content-Type": "application/json"})
        assert status == 403
        # signed by b, about a's key
        forged = {**report, "identityKey": b64url_encode(b.identity_public), "timestamp": now + 1}
        assert (await post(METRICS, *b.signed(METRICS, forged)))[0] == 403
        # a's own report is accepted
        own = {**report, "dropped": {}, "identityKey": b64url_encode(a.identity_public), "timestamp": now + 1}
        assert (await post(METRICS, *a.signed(METRICS, own)))[0] == 201
        assert [r["received"] for r in server.registry.reports()] == [1]

    run(scenario)


def test_deep_json_is_a_typed_400():
    async def scenario(server, nodes, post, topology):
        for path in (MIX, PROV, METRICS):
            for deep in (b'{"host":' + b"[" * 200_000, b'{"unknownField":' + b"[" * 200_000):
                status, err = await post(path, deep, {"Content-Type": "application/json"})
                assert status == 400 and isinstance(err["error"], str)
        status, err = await post(METRICS, b'{"x":' + b"[" * 60_000, {"Content-Type": "application/json"})
        assert status == 400 and "nested too deeply" in err["error"]

    run(scenario)


# --- the client side: signed topology and validation -----------------------------------------------


def _topology(*mixes, providers=1) -> Topology:
    mix_nodes = [MixNode(f"127.0.0.1:{100 + i}", bytes([i + 1]) * 32, layer) for i, layer in enumerate(mixes)]
    provs = [Provider(f"127.0.0.1:{900 + i}", bytes([200 + i]) * 32) for i in range(providers)]
    return Topology(mix_nodes, provs)


def test_pinned_client_refuses_unsigned_forged_stale_and_rolled_back_topologies():
    key = nacl.signing.SigningKey.generate()
    body = encode_topology(_topology(1, 2, 3))
    now = time.time_ns()

    def headers(t, signer=key, b=body):
        return {auth.TOPOLOGY_TIME_HEADER: str(t), auth.TOPOLOGY_SIGNATURE_HEADER: auth.sign_topology(signer, b, t)}

    source = TopologySource("http://x", bytes(key.verify_key))
    with pytest.raises(TopologyRefused, match="not signed"):
        source.accept(body, {}, now)
    with pytest.raises(TopologyRefused, match="bad signature"):
        source.accept(body, headers(now, nacl.signing.SigningKey.generate()), now)
    evil = encode_topology(_topology(1, 2, 3, 4))
    with pytest.raises(TopologyRefused, match="bad signature"):
        source.accept(evil, headers(now), now)  # a signature for another body
    with pytest.raises(TopologyRefused, match="stale"):
        source.accept(body, headers(now - auth.TOPOLOGY_MAX_AGE_NS - 1), now)
    assert source.accept(body, headers(now), now).num_layers == 3
    with pytest.raises(TopologyRefused, match="older"):
        source.accept(body, headers(now - 10), now)
    assert source.refused == 5


def test_unpinned_client_works_with_a_warning(caplog):
    source = TopologySource("http://x")
    body = encode_topology(_topology(1, 2))
    with caplog.at_level(logging.WARNING):
        assert source.accept(body, {}, 0).num_layers == 2
        source.accept(body, {}, 0)
    warnings = [r for r in caplog.records if "unauthenticated" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    ("topology", "reason"),
    [
        (_topology(1, 2, 3, 5), "contiguous"),
        (_topology(2, 3), "contiguous"),
        (_topology(1, 2, 3, 4, 5), "longer than 5 hops"),
        (_topology(1, 2, providers=0), "no providers"),
        (_topology(), "no mixnodes"),
        (Topology([MixNode("127.0.0.1:1", b"k" * 32, 1), MixNode("127.0.0.1:2", b"k" * 32, 2)],
                  [Provider("127.0.0.1:3", b"p" * 32)]), "listed twice"),
        (Topology([MixNode("127.0.0.1:1", b"k" * 32, 1), MixNode("127.0.0.1:1", b"j" * 32, 2)],
                  [Provider("127.0.0.1:3", b"p" * 32)]), "listed twice"),
        (Topology([MixNode("0.0.0.0:1", b"k" * 32, 1)], [Provider("127.0.0.1:3", b"p" * 32)]), "unicast"),
        (Topology([MixNode("224.0.0.1:1", b"k" * 32, 1)], [Provider("127.0.0.1:3", b"p" * 32)]), "unicast"),
    ],
)
def test_client_validation_refuses_unusable_topologies(topology, reason):
    with pytest.raises(TopologyError, match=reason):
        validate_topology(topology)
    with pytest.raises(TopologyRefused, match=reason):
        TopologySource("http://x").accept(encode_topology(topology), {}, 0)


def test_metrics_memory_is_bounded_whatever_is_posted():
    clock = [0.0]
    registry = Registry(monotonic=lambda: clock[0])
    filler = "x" * 30_000
    for i in range(2000):
        raw = {"pubKey": b64url_encode(i.to_bytes(2, "big") * 16), "sent": {}, "received": i, "pad": filler}
        with contextlib.suppress(ValueError):  # too many nodes report: refused, not stored
            registry.add_report(raw, msgspec.json.encode(raw))
        assert registry.report_bytes <= METRICS_BYTE_BUDGET
    assert len(registry.reports()) * 30_000 <= METRICS_BYTE_BUDGET
    clock[0] += 3600  # past the window: everything goes
    assert registry.reports() == [] and registry.report_bytes == 0
