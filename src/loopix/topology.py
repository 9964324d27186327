"""The nym-directory topology (v0.0.4 JSON and the older PascalCase form) and route choice.

Parsing checks everything a sender will later rely on, so that a bad directory entry fails here,
with the node named, instead of deep inside packet construction: keys are 32 bytes of base64url,
hosts are "ip:port" IP literals (they must fit a Sphinx node address), layers are positive ints.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from typing import Any, TypeVar

import msgspec

from loopix.csprng import Csprng, require_csprng
from loopix.sphinx.constants import KEY_SIZE, MAX_PATH_LENGTH
from loopix.wire.address import AddressError, encode_node_address, format_host, parse_host
from loopix.wire.b64 import B64Error, b64url_decode, b64url_encode

__all__ = [
    "MixNode",
    "Node",
    "Provider",
    "Topology",
    "TopologyError",
    "choose_mixes",
    "decode_key",
    "encode_topology",
    "parse_host",
    "parse_topology",
    "route_layers",
    "validate_topology",
]

MAX_MIX_LAYERS = MAX_PATH_LENGTH - 1
"""Mix layers a route can cross: the header has room for MAX_PATH_LENGTH hops, one is the provider."""



class TopologyError(ValueError):
    """A topology document that cannot be used, or a route that cannot be built from it."""


N = TypeVar("N")


def route_layers(nodes: Iterable[N], layer_of: Callable[[N], int]) -> tuple[tuple[N, ...], ...] | str:
    """Mixnodes grouped into layers 1..L, in layer order, for route choice; or, as text, why they
    cannot carry a route (no mixnodes, or a layer missing between 1 and the highest)."""
    layers: dict[int, list[N]] = {}
    for node in nodes:
        layers.setdefault(layer_of(node), []).append(node)
    if not layers:
        return "the topology has no mixnodes"
    top = max(layers)
    missing = [n for n in range(1, top + 1) if n not in layers]
    if missing:
        names = ", ".join(str(n) for n in missing)
        return f"mix layers must be contiguous from 1 to {top}; layer(s) {names} are empty"
    return tuple(tuple(layers[n]) for n in range(1, top + 1))


def choose_mixes(layers: Sequence[Sequence[N]], rng: Csprng) -> list[N]:
    """Route choice, the one implementation: one mixnode drawn from each layer, in layer order.
    The caller appends the last hop (the recipient's provider, or any provider for drop cover).

    Routes are what an observer links messages by, so `rng` must be a `Csprng` (docs/randomness.md):
    anything else, a `random.Random` above all, is a TypeError."""
    choice = require_csprng(rng, "a route").choice
    return [choice(layer) for layer in layers]


class _Node(msgspec.Struct, dict=True):
    """What every node has: the "ip:port" it listens on and its X25519 key."""

    host: str
    pub_key: bytes

    @property
    def key_b64(self) -> str:
        return b64url_encode(self.pub_key)

    @functools.cached_property
    def address(self) -> tuple[str, int]:
        return parse_host(self.host)

    @functools.cached_property
    def sphinx_address(self) -> bytes:
        """The 32-byte Sphinx node address of this node."""
        return encode_node_address(*self.address)


class MixNode(_Node):
    """A mixnode: `host` is the normalised "ip:port" it listens on for framed packets."""

    layer: int
    last_seen: int = 0  # unix ns, as reported by the directory


class Provider(_Node):
    """A provider: the last hop of a route and the inbox of its registered clients.

    `client_listener` is the optional "ip:port" clients connect to, when it differs from `host`
    (later nym-directory versions published `clientListener`/`mixnetListener`).
    """

    registered_clients: list[bytes] = []
    last_seen: int = 0
    client_listener: str | None = None

    def has_client(self, key: bytes) -> bool:
        return key in self.registered_clients


Node = MixNode | Provider
_layer_of = attrgetter("layer")


class Topology(msgspec.Struct, frozen=True, dict=True):
    """A snapshot of the network. Treat it as immutable: derived tables are cached on first use."""

    mix_nodes: list[MixNode] = []
    providers: list[Provider] = []

    def layers(self) -> dict[int, list[MixNode]]:
        """Mixnodes grouped by layer, in ascending layer order."""
        out: dict[int, list[MixNode]] = {}
        for node in sorted(self.mix_nodes, key=lambda n: n.layer):
            out.setdefault(node.layer, []).append(node)
        return out

    @functools.cached_property
    def _route_layers(self) -> tuple[tuple[MixNode, ...], ...] | str:
        return route_layers(self.mix_nodes, _layer_of)

    @property
    def num_layers(self) -> int:
        """The route length before the provider; `TopologyError` if layers are not usable."""
        return len(self._checked_layers())

    def _checked_layers(self) -> tuple[tuple[MixNode, ...], ...]:
        table = self._route_layers
        if isinstance(table, str):
            raise TopologyError(table)
        return table

    @functools.cached_property
    def _providers_by_key(self) -> dict[bytes, Provider]:
        return {p.pub_key: p for p in self.providers}

    def provider_by_key(self, key: bytes | str) -> Provider | None:
        """The provider with this public key (raw bytes or base64url), or None."""
        if isinstance(key, str):
            try:
                key = b64url_decode(key)
            except B64Error:
                return None
        return self._providers_by_key.get(bytes(key))

    def provider_of_client(self, client_key: bytes) -> Provider | None:
        """The provider that lists `client_key` among its registered clients."""
        for provider in self.providers:
            if client_key in provider.registered_clients:
                return provider
        return None

    def choose_route(self, rng: Csprng, recipient_provider: Provider | bytes | str) -> list[Node]:
        """One random mixnode per layer 1..L, in order, then the recipient's provider.

        `rng` is a `Csprng` (`Csprng()` keys itself from the OS): predictable routes weaken
        unlinkability, so a `random.Random` is refused.
        """
        if not isinstance(recipient_provider, Provider):
            found = self.provider_by_key(recipient_provider)
            if found is None:
                shown = (
                    recipient_provider
                    if isinstance(recipient_provider, str)
                    else b64url_encode(bytes(recipient_provider))
                )
                raise TopologyError(f"provider {shown} is not in the topology")
            recipient_provider = found
        route: list[Node] = [*choose_mixes(self._checked_layers(), rng), recipient_provider]
        return route


# --- JSON ----------------------------------------------------------------------------------------


class _ClientOut(msgspec.Struct, rename="camel"):
    pub_key: str


class _MixOut(msgspec.Struct, rename="camel"):
    host: str
    pub_key: str
    layer: int
    last_seen: int


class _ProviderOut(msgspec.Struct, rename="camel", omit_defaults=True):
    host: str
    pub_key: str
    registered_clients: list[_ClientOut]
    last_seen: int
    client_listener: str | None = None


class _TopologyOut(msgspec.Struct, rename="camel"):
    coco_nodes: list[Any]
    mix_nodes: list[_MixOut]
    mix_provider_nodes: list[_ProviderOut]


_encoder = msgspec.json.Encoder()


def encode_topology(topology: Topology) -> bytes:
    """The v0.0.4 JSON shape (camelCase keys, empty lists rather than null, padded keys)."""
    doc = _TopologyOut(
        coco_nodes=[],
        mix_nodes=[
            _MixOut(n.host, b64url_encode(n.pub_key), n.layer, n.last_seen)
            for n in topology.mix_nodes
        ],
        mix_provider_nodes=[
            _ProviderOut(
                p.host,
                b64url_encode(p.pub_key),
                [_ClientOut(b64url_encode(c)) for c in p.registered_clients],
                p.last_seen,
                p.client_listener,
            )
            for p in topology.providers
        ],
    )
    return _encoder.encode(doc)


def decode_key(text: object, what: str) -> bytes:
    """A 32-byte public key from base64url text; `TopologyError` naming `what` otherwise."""
    if not isinstance(text, str):
        raise TopologyError(f"{what}: pubKey must be a string, got {_json_type(text)}")
    try:
        key = b64url_decode(text)
    except B64Error as exc:
        raise TopologyError(f"{what}: pubKey {text!r} is not base64url: {exc}") from None
    if len(key) != KEY_SIZE:
        raise TopologyError(
            f"{what}: pubKey {text!r} decodes to {len(key)} bytes, expected {KEY_SIZE}"
        )
    return key


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _pick(doc: dict[str, Any], camel: str, pascal: str) -> tuple[bool, list[Any]]:
    """The list under `camel` or `pascal`; null means empty (v0.0.3 did that)."""
    present = camel in doc or pascal in doc
    value = doc.get(camel)
    if value is None:
        value = doc.get(pascal)
    if value is None:
        return present, []
    if not isinstance(value, list):
        raise TopologyError(f"{camel} must be an array, got {_json_type(value)}")
    return present, value


def _describe(kind: str, index: int, entry: dict[str, Any]) -> str:
    for field in ("host", "mixnetListener", "pubKey"):
        value = entry.get(field)
        if isinstance(value, str):
            return f"{kind} #{index} ({field} {value!r})"
    return f"{kind} #{index}"


def _host(entry: dict[str, Any], field: str, what: str, required: bool = True) -> str | None:
    value = entry.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        missing = field not in entry
        got = "it is missing" if missing else f"got {_json_type(value)}"
        raise TopologyError(f"{what}: {field} must be an 'ip:port' string, {got}")
    try:
        return format_host(*parse_host(value))
    except AddressError as exc:
        raise TopologyError(f"{what}: {exc}") from None


def _int(entry: dict[str, Any], field: str, what: str, default: int | None = None) -> int:
    value = entry.get(field)
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        got = "it is missing" if field not in entry else f"got {_json_type(value)}"
        raise TopologyError(f"{what}: {field} must be an integer, {got}")
    return value


def _parse_mix(index: int, entry: object) -> MixNode:
    if not isinstance(entry, dict):
        raise TopologyError(f"mix node #{index} must be an object, got {_json_type(entry)}")
    what = _describe("mix node", index, entry)
    host = _host(entry, "host", what)
    key = decode_key(entry.get("pubKey"), what)
    layer = _int(entry, "layer", what)
    if layer < 1:
        raise TopologyError(f"{what}: layer must be 1 or more, got {layer}")
    assert host is not None
    return MixNode(host, key, layer, _int(entry, "lastSeen", what, 0))


def _parse_provider(index: int, entry: object) -> Provider:
    if not isinstance(entry, dict):
        raise TopologyError(f"provider #{index} must be an object, got {_json_type(entry)}")
    what = _describe("provider", index, entry)
    host_field = "host" if "host" in entry or "mixnetListener" not in entry else "mixnetListener"
    host = _host(entry, host_field, what)
    key = decode_key(entry.get("pubKey"), what)
    clients_raw = entry.get("registeredClients")
    if clients_raw is None:
        clients_raw = []
    if not isinstance(clients_raw, list):
        raise TopologyError(
            f"{what}: registeredClients must be an array, got {_json_type(clients_raw)}"
        )
    clients = []
    for i, client in enumerate(clients_raw):
        if not isinstance(client, dict):
            raise TopologyError(f"{what}: registered client #{i} must be an object")
        clients.append(decode_key(client.get("pubKey"), f"{what}: registered client #{i}"))
    client_listener = _host(entry, "clientListener", what, required=False)
    assert host is not None
    return Provider(host, key, clients, _int(entry, "lastSeen", what, 0), client_listener)


def parse_topology(data: bytes | str) -> Topology:
    """Parse a directory's topology JSON (v0.0.4 camelCase or v0.0.3 PascalCase)."""
    try:
        doc = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # invalid UTF-8 inside a string
        raise TopologyError(f"topology is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TopologyError(f"topology must be a JSON object, got {_json_type(doc)}")
    has_mixes, mixes = _pick(doc, "mixNodes", "MixNodes")
    has_providers, providers = _pick(doc, "mixProviderNodes", "MixProviderNodes")
    if not (has_mixes or has_providers):
        keys = ", ".join(sorted(doc)[:5]) or "none"
        raise TopologyError(f"not a topology: no mixNodes or mixProviderNodes (keys: {keys})")
    return Topology(
        [_parse_mix(i, e) for i, e in enumerate(mixes)],
        [_parse_provider(i, e) for i, e in enumerate(providers)],
    )


def _sane_host(host: str, what: str) -> None:
    ip = ipaddress.ip_address(parse_host(host)[0])
    if ip.is_unspecified or ip.is_multicast or (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255")):
        raise TopologyError(f"{what}: host {host!r} is not a unicast address")


def validate_topology(topo: Topology) -> Topology:
    """`topo` if a client can use it, else `TopologyError` saying why: mix layers contiguous from 1
    and at most MAX_MIX_LAYERS of them (routes of at most MAX_PATH_LENGTH hops), at least one
    mixnode and one provider, every key and every host listed once, unicast hosts only.

    A topology that fails is never partly used: the caller keeps its last good one."""
    if not topo.mix_nodes:
        raise TopologyError("the topology has no mixnodes")
    if not topo.providers:
        raise TopologyError("the topology has no providers")
    table = route_layers(topo.mix_nodes, _layer_of)
    if isinstance(table, str):
        raise TopologyError(table)
    if len(table) > MAX_MIX_LAYERS:
        raise TopologyError(
            f"{len(table)} mix layers make routes longer than {MAX_PATH_LENGTH} hops"
        )
    keys: set[bytes] = set()
    hosts: set[str] = set()
    nodes: list[MixNode | Provider] = [*topo.mix_nodes, *topo.providers]
    for node in nodes:
        what = f"{'mix node' if isinstance(node, MixNode) else 'provider'} {node.host}"
        if node.pub_key in keys:
            raise TopologyError(f"{what}: key {node.key_b64} is listed twice")
        keys.add(node.pub_key)
        listeners = [node.host]
        if isinstance(node, Provider) and node.client_listener not in (None, node.host):
            listeners.append(node.client_listener)  # type: ignore[arg-type]
        for host in listeners:
            _sane_host(host, what)
            if host in hosts:
                raise TopologyError(f"{what}: host {host} is listed twice")
            hosts.add(host)
    return topo
