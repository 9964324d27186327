"""The directory server of the local testnet: the 2019 nym-directory API plus a live dashboard.

Nodes announce themselves every couple of seconds and vanish from the topology when they stop, so
the topology a client fetches is the set of nodes that are actually up. Nodes also post their
traffic counters, which the dashboard at `/` turns into per-second rates.

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
from aiohttp import web

from loopix.topology import (
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

Count = Annotated[int, msgspec.Meta(ge=0)]
T = TypeVar("T")


# --- request and response bodies -----------------------------------------------------------------


class ClientKey(msgspec.Struct, rename="camel"):
    pub_key: str


class MixPresence(msgspec.Struct, rename="camel"):
    """`POST /api/presence/mixnodes`."""

    host: str
    pub_key: str
    layer: Annotated[int, msgspec.Meta(ge=1, le=255)]


class ProviderPresence(msgspec.Struct, rename="camel"):
    """`POST /api/presence/mixproviders`. `clientListener` is an optional extension."""

    host: str
    pub_key: str
    registered_clients: list[ClientKey] | None = None
    client_listener: str | None = None


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


class Ok(msgspec.Struct):
    ok: bool = True


class ErrorBody(msgspec.Struct):
    error: str


_encoder = msgspec.json.Encoder()
_OK = _encoder.encode(Ok())
_JSON = "application/json"


class BadRequest(ValueError):
    """A request body we refuse; its message goes back to the client in a 400."""


# --- state ---------------------------------------------------------------------------------------


class Registry:
    """Presence and metrics, with expiry. Clocks are injectable so tests need not sleep."""

    def __init__(
        self,
        expiry_s: float = DEFAULT_EXPIRY_S,
        metrics_window_s: float = DEFAULT_METRICS_WINDOW_S,
        monotonic: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if expiry_s <= 0 or metrics_window_s <= 0:
            raise ValueError("expiry and metrics window must be positive")
        self.expiry_s = expiry_s
        self.metrics_window_s = metrics_window_s
        self._monotonic = monotonic
        self._wall_ns = wall_ns
        self._mixes: dict[bytes, tuple[float, MixNode]] = {}
        self._providers: dict[bytes, tuple[float, Provider]] = {}
        self._reports: dict[bytes, deque[tuple[float, dict[str, Any]]]] = {}

    def announce_mix(self, req: MixPresence) -> MixNode:
        host = _host(req.host, "host")
        key = _key(req.pub_key, f"mix node {req.host!r}")
        node = MixNode(host, key, req.layer, self._wall_ns())
        self._mixes[key] = (self._monotonic(), node)
        return node

    def announce_provider(self, req: ProviderPresence) -> Provider:
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
        node = Provider(host, key, clients, self._wall_ns(), listener)
        self._providers[key] = (self._monotonic(), node)
        return node

    def topology(self) -> Topology:
        """The nodes heard from within the expiry window, in a stable order."""
        self._prune_presence()
        mixes = sorted((n for _, n in self._mixes.values()), key=lambda n: (n.layer, n.host))
        providers = sorted((p for _, p in self._providers.values()), key=lambda p: p.host)
        return Topology(mixes, providers)

    def add_report(self, raw: dict[str, Any]) -> None:
        """Store a validated report; `raw` keeps any extra fields the node sent."""
        report = msgspec.convert(raw, MetricsReport)
        key = _key(report.pub_key, "metrics report")
        raw["pubKey"] = b64url_encode(key)
        raw["timestamp"] = self._wall_ns()
        reports = self._reports.get(key)
        if reports is None:
            reports = self._reports[key] = deque(maxlen=MAX_REPORTS_PER_NODE)
        reports.append((self._monotonic(), raw))

    def reports(self) -> list[dict[str, Any]]:
        """Reports from the metrics window, oldest first."""
        cutoff = self._monotonic() - self.metrics_window_s
        out: list[dict[str, Any]] = []
        for key in list(self._reports):
            reports = self._reports[key]
            while reports and reports[0][0] < cutoff:
                reports.popleft()
            if not reports:
                del self._reports[key]
                continue
            out.extend(r for _, r in reports)
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

REGISTRY: web.AppKey[Registry] = web.AppKey("registry", Registry)
DASHBOARD: web.AppKey[bytes] = web.AppKey("dashboard", bytes)


def _json(body: bytes, status: int = 200, cors: bool = False) -> web.Response:
    headers = {"Access-Control-Allow-Origin": "*", "Cache-Control": "no-store"} if cors else None
    return web.Response(body=body, status=status, content_type=_JSON, headers=headers)


def _error(status: int, message: str) -> web.Response:
    return _json(_encoder.encode(ErrorBody(message)), status)


async def _decode(request: web.Request, kind: type[T], name: str) -> T:
    body = await request.read()
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid {name}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


async def post_mix(request: web.Request) -> web.Response:
    req = await _decode(request, MixPresence, "mix node presence")
    request.app[REGISTRY].announce_mix(req)
    return _json(_OK, 201)


async def post_provider(request: web.Request) -> web.Response:
    req = await _decode(request, ProviderPresence, "provider presence")
    request.app[REGISTRY].announce_provider(req)
    return _json(_OK, 201)


async def get_topology(request: web.Request) -> web.Response:
    return _json(encode_topology(request.app[REGISTRY].topology()), cors=True)


async def post_metrics(request: web.Request) -> web.Response:
    raw = await _decode(request, dict[str, Any], "metrics report")  # type: ignore[arg-type]
    try:
        request.app[REGISTRY].add_report(raw)
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
        return _error(400, str(exc))
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
) -> web.Application:
    """The directory as an aiohttp application (state lives in `app[REGISTRY]`)."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    app[REGISTRY] = registry or Registry(expiry_s, metrics_window_s)
    app[DASHBOARD] = _load_dashboard()
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
    ) -> None:
        self.host = host
        self.port = port
        self.app = create_app(expiry_s, metrics_window_s)
        self._runner: web.AppRunner | None = None

    @property
    def registry(self) -> Registry:
        return self.app[REGISTRY]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> DirectoryServer:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def close(self) -> None:
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
) -> None:
    """Run until `stop` is set (or the task is cancelled), printing the ready line first."""
    stop = stop or asyncio.Event()
    async with DirectoryServer(host, port, expiry_s, metrics_window_s) as server:
        print(f"directory listening on {server.url}/", flush=True)
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
    args = parser.parse_args(argv)
    if args.expiry <= 0 or args.metrics_window <= 0:
        parser.error("--expiry and --metrics-window must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, args.expiry, args.metrics_window, stop)

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
