"""Topology JSON (both directory spellings), route choice, and the base64url key helpers."""

import os

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopix.csprng import Csprng
from loopix.topology import (
    MixNode,
    Provider,
    Topology,
    TopologyError,
    encode_topology,
    parse_topology,
)
from loopix.wire.address import encode_node_address
from loopix.wire.b64 import B64Error, b64url_decode, b64url_encode


def key(i: int) -> bytes:
    return bytes([i]) * 32


def k64(i: int) -> str:
    return b64url_encode(key(i))


V004 = {
    "cocoNodes": [],
    "mixNodes": [
        {"host": "127.0.0.1:9001", "pubKey": k64(1), "layer": 1, "lastSeen": 1575915096255174700},
        {"host": "127.0.0.1:9002", "pubKey": k64(2), "layer": 2, "lastSeen": 1575915096255174701},
        {"host": "[::1]:9003", "pubKey": k64(3), "layer": 3, "lastSeen": 1},
        {"host": "127.0.0.1:9004", "pubKey": k64(4), "layer": 1, "lastSeen": 2},
    ],
    "mixProviderNodes": [
        {
            "host": "127.0.0.1:9100",
            "pubKey": k64(9),
            "registeredClients": [{"pubKey": k64(20)}, {"pubKey": k64(21)}],
            "lastSeen": 3,
        }
    ],
}

# v0.0.3: PascalCase top level, null for empty lists, extra fields (version, location).
V003 = b"""{
  "CocoNodes": null,
  "MixNodes": [
    {"host": "52.56.99.196:1789", "pubKey": "_ObRUsYnHDJOPDHXyfq5bnIoSbdn3BsSRcrLl-FCY1c=",
     "layer": 2, "lastSeen": 1572258570490299400, "version": "0.1.0", "location": "unknown"},
    {"host": "18.130.86.190:1789", "pubKey": "dMtoH6vWDBfwjrU0EzPd-fhZDOGJazELsTp2qLyt72U=",
     "layer": 1, "lastSeen": 1572258571193777000}
  ],
  "MixProviderNodes": [
    {"host": "3.8.176.11:1789", "pubKey": "54U6krAr-j9nQXFlsHk3io04_p0tctuqH71t7w_usgI=",
     "registeredClients": null, "lastSeen": 1572258571193777001}
  ]
}"""


def test_parse_v004():
    topo = parse_topology(orjson.dumps(V004))
    assert [n.layer for n in topo.mix_nodes] == [1, 2, 3, 1]
    assert topo.mix_nodes[0] == MixNode("127.0.0.1:9001", key(1), 1, 1575915096255174700)
    assert topo.mix_nodes[2].host == "[::1]:9003"
    assert topo.mix_nodes[2].address == ("::1", 9003)
    assert topo.mix_nodes[2].sphinx_address == encode_node_address("::1", 9003)
    (provider,) = topo.providers
    assert provider.pub_key == key(9)
    assert provider.registered_clients == [key(20), key(21)]
    assert provider.has_client(key(21))
    assert topo.provider_of_client(key(20)) is provider
    assert topo.provider_of_client(key(22)) is None
    assert provider.client_listener is None


def test_parse_v003_pascal_case():
    topo = parse_topology(V003)
    assert [n.host for n in topo.mix_nodes] == ["52.56.99.196:1789", "18.130.86.190:1789"]
    assert topo.providers[0].registered_clients == []
    assert topo.providers[0].key_b64 == "54U6krAr-j9nQXFlsHk3io04_p0tctuqH71t7w_usgI="
    assert topo.num_layers == 2


def test_pascal_case_all_null():
    topo = parse_topology(b'{"CocoNodes":null,"MixNodes":null,"MixProviderNodes":null}')
    assert topo == Topology([], [])


def test_later_provider_shape():
    """Dec 2019 directories published mixnetListener/clientListener instead of host."""
    doc = {
        "mixNodes": [],
        "mixProviderNodes": [
            {
                "clientListener": "3.8.176.11:8888",
                "mixnetListener": "3.8.176.11:9999",
                "pubKey": k64(5),
                "registeredClients": [],
            }
        ],
    }
    (p,) = parse_topology(orjson.dumps(doc)).providers
    assert (p.host, p.client_listener, p.last_seen) == ("3.8.176.11:9999", "3.8.176.11:8888", 0)


def test_encode_round_trip():
    topo = parse_topology(orjson.dumps(V004))
    data = encode_topology(topo)
    doc = orjson.loads(data)
    assert list(doc) == ["cocoNodes", "mixNodes", "mixProviderNodes"]
    assert doc == V004
    assert parse_topology(data) == topo


def test_encode_pads_keys_and_keeps_client_listener():
    topo = Topology([], [Provider("1.2.3.4:5", key(7), [], 0, "1.2.3.4:6")])
    doc = orjson.loads(encode_topology(topo))
    assert doc["mixProviderNodes"][0]["pubKey"].endswith("=")
    assert doc["mixProviderNodes"][0]["clientListener"] == "1.2.3.4:6"
    assert doc["mixNodes"] == [] and doc["cocoNodes"] == []


def test_unpadded_keys_accepted():
    doc = {"mixNodes": [{"host": "1.2.3.4:5", "pubKey": k64(1).rstrip("="), "layer": 1}]}
    assert parse_topology(orjson.dumps(doc)).mix_nodes[0].pub_key == key(1)


def mix(**override):
    node = {"host": "127.0.0.1:9001", "pubKey": k64(1), "layer": 1, "lastSeen": 1}
    node.update(override)
    return node


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"error": "boom"}', "not a topology"),
        (b'{"mixNodes": {}}', "mixNodes must be an array"),
        (b'{"mixNodes": [1]}', "mix node #0 must be an object"),
        ({"mixNodes": [mix(host=None)]}, r"mix node #0.*host must be"),
        ({"mixNodes": [{"pubKey": k64(1), "layer": 1}]}, r"mix node #0 \(pubKey.*host.*missing"),
        (
            {"mixNodes": [mix(), mix(host="example.com:80")]},
            r"mix node #1 \(host 'example.com:80'\)",
        ),
        ({"mixNodes": [mix(host="1.2.3.4")]}, "expected 'ip:port'"),
        ({"mixNodes": [mix(host="1.2.3.4:99999")]}, "out of range"),
        (
            {"mixNodes": [mix(pubKey=k64(1)[:-4])]},
            r"mix node #0 \(host '127.0.0.1:9001'\).*30 bytes, expected 32",
        ),
        ({"mixNodes": [mix(pubKey="a+b/" * 11)]}, "not base64url"),
        ({"mixNodes": [mix(pubKey=12)]}, "pubKey must be a string"),
        ({"mixNodes": [mix(layer="1")]}, "layer must be an integer, got a string"),
        ({"mixNodes": [mix(layer=True)]}, "layer must be an integer, got a boolean"),
        ({"mixNodes": [mix(layer=1.5)]}, "layer must be an integer"),
        ({"mixNodes": [mix(layer=0)]}, "layer must be 1 or more"),
        ({"mixNodes": [mix(lastSeen="x")]}, "lastSeen must be an integer"),
        (
            {
                "mixProviderNodes": [
                    {"host": "1.2.3.4:5", "pubKey": k64(1), "registeredClients": {}}
                ]
            },
            "registeredClients must be an array",
        ),
        (
            {
                "mixProviderNodes": [
                    {"host": "1.2.3.4:5", "pubKey": k64(1), "registeredClients": [{"pubKey": "x"}]}
                ]
            },
            "provider #0 .*registered client #0",
        ),
        (
            {
                "mixProviderNodes": [
                    {"host": "1.2.3.4:5", "pubKey": k64(1), "registeredClients": ["x"]}
                ]
            },
            "registered client #0 must be an object",
        ),
        (
            {
                "mixProviderNodes": [
                    {"host": "1.2.3.4:5", "pubKey": k64(1), "clientListener": "nope"}
                ]
            },
            "provider #0",
        ),
    ],
)
def test_parse_errors(doc, message):
    data = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    with pytest.raises(TopologyError, match=message):
        parse_topology(data)


def test_layers_and_route():
    topo = parse_topology(orjson.dumps(V004))
    layers = topo.layers()
    assert list(layers) == [1, 2, 3]
    assert [n.pub_key for n in layers[1]] == [key(1), key(4)]
    provider = topo.providers[0]
    rng = Csprng.seeded(7)
    seen_first = set()
    for _ in range(200):
        route = topo.choose_route(rng, provider)
        assert [getattr(n, "layer", None) for n in route] == [1, 2, 3, None]
        assert route[-1] is provider
        seen_first.add(route[0].pub_key)
    assert seen_first == {key(1), key(4)}
    assert topo.choose_route(Csprng.seeded(1), key(9))[-1] is provider
    assert topo.choose_route(Csprng.seeded(1), k64(9))[-1] is provider
    assert topo.provider_by_key(k64(9)) is provider
    assert topo.provider_by_key(key(8)) is None
    assert topo.provider_by_key("not base64!") is None


def test_route_is_reproducible_with_a_seed():
    topo = parse_topology(orjson.dumps(V004))
    a = topo.choose_route(Csprng.seeded(3), key(9))
    b = topo.choose_route(Csprng.seeded(3), key(9))
    assert a == b


def test_route_errors():
    provider = Provider("1.2.3.4:5", key(9), [])
    with pytest.raises(TopologyError, match="no mixnodes"):
        Topology([], [provider]).choose_route(Csprng(), provider)
    gap = Topology([MixNode("1.2.3.4:1", key(1), 1), MixNode("1.2.3.4:3", key(3), 3)], [provider])
    with pytest.raises(TopologyError, match=r"layer\(s\) 2 are empty"):
        gap.choose_route(Csprng(), provider)
    with pytest.raises(TopologyError, match="contiguous"):
        _ = gap.num_layers
    no_first = Topology([MixNode("1.2.3.4:2", key(2), 2)], [provider])
    with pytest.raises(TopologyError, match=r"layer\(s\) 1 are empty"):
        no_first.choose_route(Csprng(), provider)
    ok = Topology([MixNode("1.2.3.4:1", key(1), 1)], [provider])
    with pytest.raises(TopologyError, match="not in the topology"):
        ok.choose_route(Csprng(), key(8))


# --- base64url -----------------------------------------------------------------------------------


def test_b64_key_is_44_chars():
    text = b64url_encode(os.urandom(32))
    assert len(text) == 44 and text.endswith("=")
    assert "+" not in text and "/" not in text


@settings(deadline=None)
@given(st.binary(max_size=80))
def test_b64_round_trip(data):
    text = b64url_encode(data)
    assert b64url_decode(text) == data
    assert b64url_decode(text.rstrip("=")) == data
    assert b64url_decode(text.encode()) == data


def test_b64_known_value():
    assert b64url_decode("_ObRUsYnHDJOPDHXyfq5bnIoSbdn3BsSRcrLl-FCY1c=")[:3] == bytes(
        [0xFC, 0xE6, 0xD1]
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ab+d", "invalid character '\\+'"),
        ("ab/d", "invalid character"),
        ("ab d", "invalid character"),
        ("abcd\n", "invalid character"),
        ("é", "invalid character"),
        ("abcde", "impossible length"),
        ("abc==", "padding"),
        ("ab=", "padding"),
        ("a=b=", "invalid character"),
    ],
)
def test_b64_errors(text, message):
    with pytest.raises(B64Error, match=message):
        b64url_decode(text)


def test_b64_rejects_non_text():
    with pytest.raises(B64Error):
        b64url_decode(42)  # type: ignore[arg-type]
    with pytest.raises(B64Error, match="non-ASCII"):
        b64url_decode(b"\xff")


def test_invalid_utf8_inside_a_string_is_a_topology_error():
    """Found by the fuzzer: msgspec raises UnicodeDecodeError there, not a DecodeError."""
    with pytest.raises(TopologyError):
        parse_topology(b'{"mixNodes": [{"host": "\xff\xfe", "pubKey": "x", "layer": 1}]}')


def test_worker_routes_use_the_topology_layers():
    """What a usable topology is has one home (route_layers): the worker's route table takes its
    layers from there (its draws are tested in test_plan.py)."""
    from loopix.client.coordinator import topology_update
    from loopix.client.worker import Routes

    topo = parse_topology(orjson.dumps(V004))
    routes = Routes(topology_update(topo), Csprng.seeded(11))
    assert routes.usable
    assert [[m.public_key for m in layer] for layer in routes.layers] == [
        [n.pub_key for n in layer] for layer in topo.layers().values()]
    gap = Topology([MixNode("1.2.3.4:1", key(1), 1), MixNode("1.2.3.4:3", key(3), 3)], topo.providers)
    assert not Routes(topology_update(gap), Csprng()).usable
