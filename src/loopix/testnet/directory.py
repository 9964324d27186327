"""The directory server of the local testnet: the 2019 nym-directory API plus a live dashboard.

Nodes announce themselves every couple of seconds and vanish from the topology when they stop, so
the topology a client fetches is the set of nodes that are actually up. Nodes also post their
traffic counters, which the dashboard at `/` turns into per-second rates.

Presence is authenticated when the operator gives an allow-list of node identity keys (`--allow`,
docs/directory-auth.md): every post must then be signed by an allowed identity, fresh, and prove
possession of the Sphinx key it announces. The topology is always served signed by the directory's
own key (headers beside the unchanged 2019 JSON); clients that pin that key check it.

Run it on its own: `python -m loopix.testnet.directory --port 9000`. Once it accepts connections it
prints one line, `directory listening on http://HOST:PORT/`, which tells a launcher that used
`--port 0` where it ended up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.resources
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import msgspec
import nacl.signing
from aiohttp import web

from loopix import directory_auth as auth
from loopix.testnet.limits import ConnectionGate, RateLimitedLog
from loopix.topology import (
    MAX_MIX_LAYERS,
    MixNode,
    Provider,
    Topology,
    TopologyError,
    decode_key,
    encode_topology,
)
from loopix.wire.address import AddressError, format_host, parse_host
from loopix.wire.b64 import b64url_encode

__all__ = [
    "DirectoryServer",
    "MetricsReport",
    "MixPresence",
    "ProviderPresence",
    "Registry",
    "create_app",
    "main",
    "serve",
]

log = logging.getLogger(__name__)

DEFAULT_EXPIRY_S = 5.0
DEFAULT_METRICS_WINDOW_S = 10.0
MAX_REPORTS_PER_NODE = 32
MAX_BODY = 1 << 20
MAX_NODES = 1024
"""Mixnodes (and, separately, providers) the directory lists at most; further posts are refused."""
MAX_REGISTERED_CLIENTS = 10_000
"""Registered clients one provider may list."""
METRICS_BYTE_BUDGET = 8 << 20
"""Bytes of metrics report bodies held in total; beyond it the oldest reports go first."""
MAX_METRICS_BODY = 64 << 10
IDLE_TIMEOUT_S = 30.0
"""A connection that sends nothing for this long is closed."""

Count = Annotated[int, msgspec.Meta(ge=0)]
T = TypeVar("T")


# --- request and response bodies -----------------------------------------------------------------


class ClientKey(msgspec.Struct, rename="camel"):
    pub_key: str


class MixPresence(msgspec.Struct, rename="camel"):
    """`POST /api/presence/mixnodes`."""

    host: str
    pub_key: str
    layer: Annotated[int, msgspec.Meta(ge=1, le=MAX_MIX_LAYERS)]
    identity_key: str | None = None
    timestamp: int | None = None
    key_proof: str | None = None


class ProviderPresence(msgspec.Struct, rename="camel"):
    """`POST /api/presence/mixproviders`. `clientListener` is an optional extension."""

    host: str
    pub_key: str
    registered_clients: Annotated[list[ClientKey], msgspec.Meta(max_length=MAX_REGISTERED_CLIENTS)] | None = None
    client_listener: str | None = None
    identity_key: str | None = None
    timestamp: int | None = None
    key_proof: str | None = None


class MetricsReport(msgspec.Struct, rename="camel"):
    """`POST /api/metrics/mixes`: a node's counters.

    Counters are cumulative since the node started (rates come from differences; a counter that
    goes down means the node restarted). `sent` maps destination "ip:port" to packets sent there.
    Unknown extra fields are kept and returned by `GET /api/metrics/mixes` as they were posted.
    """

    pub_key: str
    sent: dict[str, Count]
    received: Count
    dropped: dict[str, Count] | None = None
    queue: Count | None = None
    identity_key: str | None = None
    timestamp: int | None = None


class Ok(msgspec.Struct):
    ok: bool = True


class ErrorBody(msgspec.Struct):
    error: str


_encoder = msgspec.json.Encoder()
_OK = _encoder.encode(Ok())
_JSON = "application/json"


class BadRequest(ValueError):
    """A request body we refuse; its message goes back to the client in a 400."""

    status = 400


class Forbidden(BadRequest):
    """A post that is not authenticated as an allowed node (403)."""

    status = 403


class Conflict(BadRequest):
    """A post claiming a key or host another live node holds (409)."""

    status = 409


class PresenceAuth:
    """The operator's allow-list, the directory's key and the replay windows: what a signed post
    must get through. `admit` is pure given `now_ns`."""

    def __init__(self, allowed: frozenset[bytes], key: nacl.signing.SigningKey) -> None:
        self.allowed = allowed
        self.key = key
        self.public = bytes(key.verify_key)
        self._exchange = auth.exchange_secret(key)
        self._windows: dict[str, auth.ReplayWindow] = {}

    def admit(
        self,
        path: str,
        body: bytes,
        identity_text: str | None,
        signature: str | None,
        timestamp: int | None,
        now_ns: int,
    ) -> bytes:
        """The identity key a post is signed by, or `Forbidden` naming what is wrong."""
        if not identity_text or not signature or timestamp is None:
            raise Forbidden("unsigned post: this directory admits only signed presence (identityKey, timestamp, signature)")
        try:
            identity = auth.decode_public(identity_text)
            if identity not in self.allowed:
                raise Forbidden("identity key not allowed by this directory's operator")
            auth.verify_request(identity, path, body, signature)
        except auth.AuthError as exc:
            raise Forbidden(str(exc)) from None
        why = self._windows.setdefault(path, auth.ReplayWindow()).check(identity, timestamp, now_ns)
        if why is not None:
            raise Forbidden(why)
        return identity

    def check_proof(self, sphinx_key: bytes, identity: bytes, timestamp: int, proof: str | None) -> None:
        try:
            auth.verify_key_proof(self._exchange, sphinx_key, identity, timestamp, proof or "")
        except auth.AuthError as exc:
            raise Forbidden(str(exc)) from None


# --- state ---------------------------------------------------------------------------------------


class Registry:
    """Presence and metrics, with expiry. Clocks are injectable so tests need not sleep."""

    def __init__(
        self,
        expiry_s: float = DEFAULT_EXPIRY_S,
        metrics_window_s: float = DEFAULT_METRICS_WINDOW_S,
        monotonic: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        auth: PresenceAuth | None = None,
    ) -> None:
        if expiry_s <= 0 or metrics_window_s <= 0:
            raise ValueError("expiry and metrics window must be positive")
        self.expiry_s = expiry_s
        self.metrics_window_s = metrics_window_s
        self._monotonic = monotonic
        self._wall_ns = wall_ns
        self.auth = auth
        # keyed by identity key when presence is authenticated, by Sphinx key otherwise
        self._mixes: dict[bytes, tuple[float, MixNode]] = {}
        self._providers: dict[bytes, tuple[float, Provider]] = {}
        self._reports: dict[bytes, deque[tuple[float, dict[str, Any], int]]] = {}
        self._report_bytes = 0

    def _slot(
        self, table: dict[bytes, tuple[float, Any]], identity: bytes | None, node: MixNode | Provider
    ) -> bytes:
        """Where `node` goes: refuses a key or host another live node holds (authenticated mode),
        and a new node beyond MAX_NODES."""
        self._prune_presence()
        slot = node.pub_key if identity is None else identity
        if identity is not None:
            for other_table in (self._mixes, self._providers):
                for owner, (_, other) in other_table.items():
                    if owner == identity:
                        continue
                    if other.pub_key == node.pub_key:
                        raise Conflict(f"key {node.key_b64} is announced by another node")
                    if other.host == node.host:
                        raise Conflict(f"host {node.host} is announced by another node")
        if slot not in table and len(table) >= MAX_NODES:
            raise Conflict(f"the directory lists {MAX_NODES} nodes of this kind already")
        return slot

    def _identity(self, path: str, req: MixPresence | ProviderPresence, key: bytes, body: bytes, signature: str | None) -> bytes | None:
        if self.auth is None:
            return None
        identity = self.auth.admit(path, body, req.identity_key, signature, req.timestamp, self._wall_ns())
        self.auth.check_proof(key, identity, req.timestamp or 0, req.key_proof)
        return identity

    def announce_mix(self, req: MixPresence, body: bytes = b"", signature: str | None = None) -> MixNode:
        host = _host(req.host, "host")
        key = _key(req.pub_key, f"mix node {req.host!r}")
        identity = self._identity(MIX_PATH, req, key, body, signature)
        node = MixNode(host, key, req.layer, self._wall_ns())
        slot = self._slot(self._mixes, identity, node)
        self._mixes[slot] = (self._monotonic(), node)
        return node

    def announce_provider(
        self, req: ProviderPresence, body: bytes = b"", signature: str | None = None
    ) -> Provider:
        host = _host(req.host, "host")
        what = f"provider {req.host!r}"
        key = _key(req.pub_key, what)
        clients = [
            _key(c.pub_key, f"{what}: registered client #{i}")
            for i, c in enumerate(req.registered_clients or ())
        ]
        listener = (
            None if req.client_listener is None else _host(req.client_listener, "clientListener")
        )
        identity = self._identity(PROVIDER_PATH, req, key, body, signature)
        node = Provider(host, key, clients, self._wall_ns(), listener)
        slot = self._slot(self._providers, identity, node)
        self._providers[slot] = (self._monotonic(), node)
        return node

    def _announced_key(self, identity: bytes) -> bytes | None:
        for table in (self._mixes, self._providers):
            entry = table.get(identity)
            if entry is not None:
                return entry[1].pub_key
        return None

    def topology(self) -> Topology:
        """The nodes heard from within the expiry window, in a stable order."""
        self._prune_presence()
        mixes = sorted((n for _, n in self._mixes.values()), key=lambda n: (n.layer, n.host))
        providers = sorted((p for _, p in self._providers.values()), key=lambda p: p.host)
        return Topology(mixes, providers)

    def add_report(
        self, raw: dict[str, Any], body: bytes = b"", signature: str | None = None
    ) -> None:
        """Store a validated report; `raw` keeps any extra fields the node sent. Authenticated: the
        report must be signed by an allowed node and is for the Sphinx key that node announced.
        Memory is bounded by METRICS_BYTE_BUDGET (oldest reports go first) and the window."""
        report = msgspec.convert(raw, MetricsReport)
        key = _key(report.pub_key, "metrics report")
        if self.auth is not None:
            identity = self.auth.admit(
                METRICS_PATH, body, report.identity_key, signature, report.timestamp, self._wall_ns()
            )
            if self._announced_key(identity) != key:
                raise Forbidden("metrics for a key this node has not announced")
        raw["pubKey"] = b64url_encode(key)
        raw["timestamp"] = self._wall_ns()
        size = max(len(body), 64)
        reports = self._reports.get(key)
        if reports is None:
            if len(self._reports) >= MAX_NODES * 2:
                raise Conflict("too many nodes report metrics")
            reports = self._reports[key] = deque()
        if len(reports) >= MAX_REPORTS_PER_NODE:
            self._report_bytes -= reports.popleft()[2]
        reports.append((self._monotonic(), raw, size))
        self._report_bytes += size
        self._prune_reports()
        while self._report_bytes > METRICS_BYTE_BUDGET:
            oldest = min(self._reports, key=lambda k: self._reports[k][0][0])
            self._report_bytes -= self._reports[oldest].popleft()[2]
            if not self._reports[oldest]:
                del self._reports[oldest]

    def _prune_reports(self) -> None:
        cutoff = self._monotonic() - self.metrics_window_s
        for key in list(self._reports):
            reports = self._reports[key]
            while reports and reports[0][0] < cutoff:
                self._report_bytes -= reports.popleft()[2]
            if not reports:
                del self._reports[key]

    @property
    def report_bytes(self) -> int:
        return self._report_bytes

    def reports(self) -> list[dict[str, Any]]:
        """Reports from the metrics window, oldest first."""
        self._prune_reports()
        out = [r for reports in self._reports.values() for _, r, _ in reports]
        out.sort(key=lambda r: r["timestamp"])
        return out

    def _prune_presence(self) -> None:
        cutoff = self._monotonic() - self.expiry_s
        for table in (self._mixes, self._providers):
            for key in [k for k, (seen, _) in table.items() if seen < cutoff]:
                del table[key]


def _host(text: str, field: str) -> str:
    try:
        return format_host(*parse_host(text))
    except AddressError as exc:
        raise BadRequest(f"{field}: {exc}") from None


def _key(text: str, what: str) -> bytes:
    try:
        return decode_key(text, what)
    except TopologyError as exc:
        raise BadRequest(str(exc)) from None


# --- HTTP ----------------------------------------------------------------------------------------

MIX_PATH = "/api/presence/mixnodes"
PROVIDER_PATH = "/api/presence/mixproviders"
METRICS_PATH = "/api/metrics/mixes"
REGISTRY: web.AppKey[Registry] = web.AppKey("registry", Registry)
SIGNER: web.AppKey[nacl.signing.SigningKey] = web.AppKey("signer", nacl.signing.SigningKey)
_remote_log = RateLimitedLog(log)
DASHBOARD: web.AppKey[bytes] = web.AppKey("dashboard", bytes)


def _json(body: bytes, status: int = 200, cors: bool = False) -> web.Response:
    headers = {"Access-Control-Allow-Origin": "*", "Cache-Control": "no-store"} if cors else None
    return web.Response(body=body, status=status, content_type=_JSON, headers=headers)


def _error(status: int, message: str) -> web.Response:
    return _json(_encoder.encode(ErrorBody(message)), status)


def decode_body(body: bytes, kind: type[T], name: str) -> T:
    """A request body as `kind`, or `BadRequest` (deep nesting included: never a RecursionError)."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid {name}: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None


async def _decode(request: web.Request, kind: type[T], name: str) -> tuple[T, bytes]:
    body = await request.read()
    return decode_body(body, kind, name), body


async def post_mix(request: web.Request) -> web.Response:
    req, body = await _decode(request, MixPresence, "mix node presence")
    request.app[REGISTRY].announce_mix(req, body, request.headers.get(auth.SIGNATURE_HEADER))
    return _json(_OK, 201)


async def post_provider(request: web.Request) -> web.Response:
    req, body = await _decode(request, ProviderPresence, "provider presence")
    request.app[REGISTRY].announce_provider(req, body, request.headers.get(auth.SIGNATURE_HEADER))
    return _json(_OK, 201)


async def get_topology(request: web.Request) -> web.Response:
    """The 2019 JSON, unchanged, with the directory's signature over it in headers."""
    body = encode_topology(request.app[REGISTRY].topology())
    now = time.time_ns()
    response = _json(body, cors=True)
    response.headers[auth.TOPOLOGY_TIME_HEADER] = str(now)
    response.headers[auth.TOPOLOGY_SIGNATURE_HEADER] = auth.sign_topology(request.app[SIGNER], body, now)
    response.headers["Access-Control-Expose-Headers"] = (
        f"{auth.TOPOLOGY_TIME_HEADER}, {auth.TOPOLOGY_SIGNATURE_HEADER}"
    )
    return response


async def get_directory_key(request: web.Request) -> web.Response:
    """The directory's Ed25519 key (for operators to pin out of band, not to trust from here)."""
    key = b64url_encode(bytes(request.app[SIGNER].verify_key))
    registry = request.app[REGISTRY]
    return _json(msgspec.json.encode({"directoryKey": key, "authenticatedPresence": registry.auth is not None}), cors=True)


async def post_metrics(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_METRICS_BODY:
        raise BadRequest(f"metrics report over {MAX_METRICS_BODY} bytes")
    raw, body = await _decode(request, dict[str, Any], "metrics report")  # type: ignore[arg-type]
    if len(body) > MAX_METRICS_BODY:
        raise BadRequest(f"metrics report over {MAX_METRICS_BODY} bytes")
    try:
        request.app[REGISTRY].add_report(raw, body, request.headers.get(auth.SIGNATURE_HEADER))
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid metrics report: {exc}") from None
    return _json(_OK, 201)


async def get_metrics(request: web.Request) -> web.Response:
    return _json(_encoder.encode(request.app[REGISTRY].reports()), cors=True)


async def healthcheck(request: web.Request) -> web.Response:
    return _json(_OK, cors=True)


async def dashboard(request: web.Request) -> web.Response:
    """The page with the current topology and reports inside, so it shows rates at load."""
    registry = request.app[REGISTRY]
    initial = b'{"topology":%s,"reports":%s}' % (
        encode_topology(registry.topology()), _encoder.encode(registry.reports()))
    return web.Response(
        body=request.app[DASHBOARD].replace(b"__LOOPIX_INITIAL__", initial.replace(b"</", b"<\\/")),
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure leaves as JSON `{"error": ...}`: 400 for bad input, never an HTML page."""
    try:
        return await handler(request)
    except BadRequest as exc:
        _remote_log.info("directory: refused %s %s from %s: %s", request.method, request.path, request.remote, exc)
        return _error(exc.status, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except Exception:  # a bug: say so in the log, keep serving
        log.exception("directory: unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal error")


def _load_dashboard() -> bytes:
    return importlib.resources.files(__package__).joinpath("dashboard.html").read_bytes()


def create_app(
    expiry_s: float = DEFAULT_EXPIRY_S,
    metrics_window_s: float = DEFAULT_METRICS_WINDOW_S,
    registry: Registry | None = None,
    key: nacl.signing.SigningKey | None = None,
    allowed: frozenset[bytes] | None = None,
) -> web.Application:
    """The directory as an aiohttp application (state lives in `app[REGISTRY]`).

    `key` signs the topology (a fresh one if None); `allowed` turns on authenticated presence
    (None: the 2019 open directory, which anyone can post to)."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    app[SIGNER] = key or nacl.signing.SigningKey.generate()
    presence_auth = None if allowed is None else PresenceAuth(allowed, app[SIGNER])
    app[REGISTRY] = registry or Registry(expiry_s, metrics_window_s, auth=presence_auth)
    app[DASHBOARD] = _load_dashboard()
    app.router.add_get(auth.KEY_ENDPOINT, get_directory_key)
    app.router.add_get("/", dashboard)
    app.router.add_get("/api/healthcheck", healthcheck)
    app.router.add_get("/api/presence/topology", get_topology)
    app.router.add_post("/api/presence/mixnodes", post_mix)
    app.router.add_post("/api/presence/mixproviders", post_provider)
    app.router.add_get("/api/metrics/mixes", get_metrics)
    app.router.add_post("/api/metrics/mixes", post_metrics)
    return app


class DirectoryServer:
    """The app bound to a TCP port, for tests and in-process use (`port=0` picks a free port)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        expiry_s: float = DEFAULT_EXPIRY_S,
        metrics_window_s: float = DEFAULT_METRICS_WINDOW_S,
        key: nacl.signing.SigningKey | None = None,
        allowed: frozenset[bytes] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.app = create_app(expiry_s, metrics_window_s, key=key, allowed=allowed)
        self.gate = ConnectionGate(idle_timeout=IDLE_TIMEOUT_S)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

    @property
    def registry(self) -> Registry:
        return self.app[REGISTRY]

    @property
    def public_key(self) -> bytes:
        return bytes(self.app[SIGNER].verify_key)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> DirectoryServer:
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, keepalive_timeout=IDLE_TIMEOUT_S
        )
        await runner.setup()
        loop = asyncio.get_running_loop()
        try:
            # the gate caps connections and closes idle ones; aiohttp serves what it lets in
            assert runner.server is not None
            self._server = await loop.create_server(
                self.gate.wrap(runner.server), self.host, self.port, reuse_address=True, backlog=128
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self.gate.close_all()
            self._server = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> DirectoryServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve(
    host: str = "127.0.0.1",
    port: int = 9000,
    expiry_s: float = DEFAULT_EXPIRY_S,
    metrics_window_s: float = DEFAULT_METRICS_WINDOW_S,
    stop: asyncio.Event | None = None,
    key: nacl.signing.SigningKey | None = None,
    allowed: frozenset[bytes] | None = None,
) -> None:
    """Run until `stop` is set (or the task is cancelled), printing the ready line first."""
    stop = stop or asyncio.Event()
    async with DirectoryServer(host, port, expiry_s, metrics_window_s, key, allowed) as server:
        if allowed is None:
            print(
                "directory: WARNING: no --allow list: anyone who reaches this directory can change"
                " the topology (2019 open presence)",
                file=sys.stderr,
                flush=True,
            )
        print(f"directory listening on {server.url}/", flush=True)
        print(f"directory key {b64url_encode(server.public_key)}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loopix.testnet.directory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="TCP port, 0 for any (default 9000, as `loopix-client testnet`)")
    parser.add_argument(
        "--expiry",
        type=float,
        default=DEFAULT_EXPIRY_S,
        help="seconds after which a node that stopped announcing leaves the topology",
    )
    parser.add_argument(
        "--metrics-window",
        type=float,
        default=DEFAULT_METRICS_WINDOW_S,
        help="seconds of metrics reports kept for GET /api/metrics/mixes",
    )
    parser.add_argument(
        "--key-file",
        help="the directory's Ed25519 signing key (created 0600 if missing; default: a fresh key per run)",
    )
    parser.add_argument(
        "--allow",
        help="file of node identity keys (base64url, one a line) admitted to post presence;"
        " without it presence is unauthenticated",
    )
    args = parser.parse_args(argv)
    if args.expiry <= 0 or args.metrics_window <= 0:
        parser.error("--expiry and --metrics-window must be positive")
    try:
        key = auth.load_or_create_identity(args.key_file) if args.key_file else None
        allowed = auth.load_allowed(args.allow) if args.allow else None
    except (OSError, auth.AuthError) as exc:
        print(f"directory: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, args.expiry, args.metrics_window, stop, key, allowed)

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but the server needs none
        runner: Callable[..., Any] = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(run())
    except OSError as exc:
        print(f"directory: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
