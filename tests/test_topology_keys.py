"""Node keys are checked when the client loads a topology: a node whose key is not an X25519
public key is refused, by name, and never routed through."""

from __future__ import annotations

import logging

from loopix import sphinx
from loopix.client.coordinator import usable_topology
from loopix.topology import MixNode, Provider, Topology

ORDER_8_POINT = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def test_bad_node_keys_are_refused_by_name(caplog):
    good = [sphinx.keypair()[1] for _ in range(3)]
    topo = Topology(
        mix_nodes=[MixNode("127.0.0.1:1001", good[0], 1), MixNode("127.0.0.1:1002", ORDER_8_POINT, 1),
                   MixNode("127.0.0.1:1003", good[1], 2)],
        providers=[Provider("127.0.0.1:2001", good[2]), Provider("127.0.0.1:2002", bytes(32))],
    )
    refused: set[bytes] = set()
    with caplog.at_level(logging.ERROR, logger="loopix.coordinator"):
        kept = usable_topology(topo, refused)
        usable_topology(topo, refused)  # a refresh: refused again, logged once
    assert [m.host for m in kept.mix_nodes] == ["127.0.0.1:1001", "127.0.0.1:1003"]
    assert [p.host for p in kept.providers] == ["127.0.0.1:2001"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert any("mixnode 127.0.0.1:1002" in m for m in messages)
    assert any("provider 127.0.0.1:2002" in m for m in messages)


def test_a_clean_topology_is_returned_as_it_is():
    keys = [sphinx.keypair()[1] for _ in range(2)]
    topo = Topology(mix_nodes=[MixNode("127.0.0.1:1", keys[0], 1)], providers=[Provider("127.0.0.1:2", keys[1])])
    assert usable_topology(topo, set()) is topo
