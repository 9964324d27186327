"""The websocket and TCP servers applications use to talk to a running client (loopback only).

Thin asyncio I/O around the sans-IO codec in `loopix.wire.socket_api`; `docs/socket-api.md` is the
protocol. Each connection gets its own subscription to received messages, so two applications on
two connections both see every message. A bad request is answered with an error and the connection
stays open; only a TCP length prefix beyond the limit closes it, since framing is then lost.

The client is duck-typed (the real one is `loopix.client.api.Client`):
`client.address -> str`, `await client.send_message(message: bytes, recipient: str, on_done=f)`
(raises `ValueError` for a bad recipient, returns once queued, calls `f()` once the message has
left its send queue: the servers bound what applications have queued, socket_budget.py) and
`client.subscribe()` returning an async iterator of objects with `.data: bytes`, closed with
`aclose()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
from collections.abc import AsyncIterator, Sequence
from http import HTTPStatus
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.server import Server as _WsServer
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as _ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as _HttpRequest
from websockets.http11 import Response as _HttpResponse

from loopix.socket_budget import ConnectionUse, QueueLimits, SendBudget
from loopix.wire.socket_api import (
    LENGTH_PREFIX_SIZE,
    MAX_MESSAGE_SIZE,
    ClientAddress,
    ClientAddressError,
    Encoding,
    ErrorResponse,
    FramingError,
    Reply,
    Request,
    Response,
    SelfAddress,
    SelfAddressRequest,
    Send,
    TcpFrameDecoder,
    decode_binary_request,
    decode_json_request,
    decode_request,
    encode_binary_response,
    encode_json_response,
    encode_push,
    max_frame_size,
)

__all__ = [
    "DEFAULT_PORT",
    "WEBSOCKET_PATH",
    "SocketClient",
    "SocketServer",
    "check_loopback",
    "serve_tcp",
    "serve_websocket",
]

DEFAULT_PORT: Final = 1863
"""The port `loopix-client socket` uses for either kind of socket unless told otherwise."""
WEBSOCKET_PATH: Final = "/mix"
_READ_CHUNK: Final = 256 * 1024
MAX_CONNECTIONS: Final = 256
"""Connections each socket API listener accepts at most (it serves local applications)."""
PARTIAL_FRAME_TIMEOUT_S: Final = 30.0
"""A TCP frame must be completed this long after its first bytes arrive."""
HANDSHAKE_TIMEOUT_S: Final = 10.0
"""A websocket opening handshake must complete within this."""

log = logging.getLogger("loopix.sockets")


class SocketClient(Protocol):
    """What the servers need from a client."""

    @property
    def address(self) -> str: ...

    async def send_message(self, message: bytes, recipient: str, *, on_done: Any = None) -> None: ...

    # optional: `send_message(..., reply_surbs=N)` and `reply(sender_tag, message)` (anonymous
    # replies); a client without them answers those requests with an error line

    def subscribe(self) -> Any: ...


def check_loopback(host: str) -> str:
    """The IP to bind for `host`, refusing anything but loopback: the socket API has no auth.

    "localhost" becomes 127.0.0.1 so that port 0 binds one socket, not one per resolved address.
    """
    if host == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"refusing to serve the socket API on {host!r}: give a loopback IP such as 127.0.0.1 "
            "or ::1 (anyone who reaches the socket can send and read this client's messages)"
        ) from None
    if not ip.is_loopback:
        raise ValueError(
            f"refusing to serve the socket API on non-loopback address {host}: it has no "
            "authentication, so it listens on loopback only (127.0.0.1 or ::1)"
        )
    return str(ip)


class SocketServer:
    """A running socket server: where it listens, and how to stop it (also an async context)."""

    def __init__(self, kind: str, host: str, port: int) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self.budget: SendBudget | None = None
        """What the connections have in the client's send queue (and the peak), for status."""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.kind == "websocket":
            return f"ws://{host}:{self.port}{WEBSOCKET_PATH}"
        return f"tcp://{host}:{self.port}"

    def close(self) -> None:
        """Stop listening and close every connection."""
        raise NotImplementedError

    async def wait_closed(self) -> None:
        """Return once the listener and all connection handlers are done."""
        raise NotImplementedError

    async def __aenter__(self) -> SocketServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        return f"<SocketServer {self.url}>"


class _Queue:
    """A server's `SendBudget` with waiting: a connection whose message does not fit waits (and
    so stops reading) until messages leave the client's queue."""

    def __init__(self, limits: QueueLimits | None) -> None:
        self.budget = SendBudget(limits)
        self._changed = asyncio.Event()

    async def admit(self, use: ConnectionUse, size: int) -> Any:
        """Wait until `size` bytes fit; returns the callback that gives them back (once)."""
        budget = self.budget
        while not budget.fits(use, size):
            await self._changed.wait()
        budget.take(use, size)
        given = False

        def done() -> None:
            nonlocal given
            if not given:
                given = True
                budget.give_back(use, size)
                self._changed.set()
                self._changed = asyncio.Event()

        return done


def _queued_size(request: Any) -> int | None:
    """Bytes a request puts in the client's send queue (None: it queues nothing)."""
    body = getattr(request, "body", request)  # a fleet frame wraps the request
    if isinstance(body, Send | Reply):
        return len(body.message)
    return None


def _is_error(response: Any) -> bool:
    return isinstance(getattr(response, "body", response), ErrorResponse)


class _Connection:
    """One connection's view of the client: its subscription and the encoding it spoke last.

    Pushed messages follow the encoding of the last frame received (JSON only if the message is
    UTF-8 text), so an application gets messages in the form it uses itself. A send is admitted
    by the server's queue bound first (`handle`), and `on_done` goes with it to the client.
    """

    queue: _Queue | None = None
    on_done: Any = None

    def __init__(self, client: SocketClient, encoding: Encoding, max_message_size: int) -> None:
        self.client = client
        self.encoding = encoding
        self.max_message_size = max_message_size
        self.use = ConnectionUse()

    async def handle(self, request: Any) -> Any:
        """`answer`, after waiting for room in the queue if the request queues a message."""
        size = _queued_size(request)
        if size is None or self.queue is None:
            return await self.answer(request)
        done = await self.queue.admit(self.use, size)
        self.on_done = done
        try:
            response = await self.answer(request)
        except BaseException:
            done()
            raise
        finally:
            self.on_done = None
        if _is_error(response):  # not queued: it does not count
            done()
        return response

    async def answer(self, request: Request | ErrorResponse) -> Response | None:
        """Carry out a decoded request; failures become error responses, never exceptions."""
        if isinstance(request, ErrorResponse):
            return request
        if isinstance(request, SelfAddressRequest):
            try:
                return SelfAddress(ClientAddress.parse(self.client.address))
            except ClientAddressError as exc:
                log.error("client has an unparseable address: %s", exc)
                return ErrorResponse(f"this client's address is malformed: {exc}")
            except Exception as exc:
                return ErrorResponse(f"the address is not available: {exc}")
        try:
            done = {} if self.on_done is None else {"on_done": self.on_done}
            if isinstance(request, Reply):
                await self.client.reply(request.sender_tag, request.message, **done)
            elif request.reply_surbs:
                await self.client.send_message(request.message, str(request.recipient),
                                               reply_surbs=request.reply_surbs, **done)
            else:
                await self.client.send_message(request.message, str(request.recipient), **done)
        except ValueError as exc:  # the application's mistake (bad recipient, too large): one line
            log.warning("send refused: %s", exc)
            return ErrorResponse(str(exc))
        except Exception as exc:  # e.g. the client is stopping; one line, the application is told
            log.error("could not queue a message: %s", exc or type(exc).__name__)
            return ErrorResponse(f"could not queue the message: {exc}")
        return None

    def encode(self, response: Response) -> tuple[Encoding, bytes]:
        if self.encoding is Encoding.JSON:
            return Encoding.JSON, encode_json_response(response)
        return Encoding.BINARY, encode_binary_response(response)

    # The codec, one method per kind of frame, so a fleet connection can speak its own form.
    def decode_text(self, frame: str) -> Request | ErrorResponse:
        self.encoding = Encoding.JSON
        return decode_json_request(frame, max_message_size=self.max_message_size)

    def decode_binary(self, frame: bytes) -> Request | ErrorResponse:
        self.encoding = Encoding.BINARY
        return decode_binary_request(frame, max_message_size=self.max_message_size)

    def decode_tcp(self, frame: bytes) -> Request | ErrorResponse:
        self.encoding, request = decode_request(frame, max_message_size=self.max_message_size)
        return request

    def push(self, item: Any) -> tuple[Encoding, bytes]:
        """A received message (from the subscription) as a frame for this connection."""
        return encode_push(_payload(item), self.encoding, _sender_tag(item))


async def _subscribe(client: SocketClient) -> Any:
    sub = client.subscribe()
    if inspect.isawaitable(sub):
        sub = await sub
    return sub


async def _aclose(sub: Any) -> None:
    close = getattr(sub, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # pragma: no cover - a failing unsubscribe must not break shutdown
            log.exception("closing a subscription failed")


def _payload(item: Any) -> bytes:
    return bytes(item) if isinstance(item, bytes | bytearray | memoryview) else bytes(item.data)


def _sender_tag(item: Any) -> bytes | None:
    return getattr(item, "sender_tag", None)


async def _stop_task(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --- websocket --------------------------------------------------------------------------------------


class _WebsocketServer(SocketServer):
    def __init__(self, server: _WsServer, host: str, port: int) -> None:
        super().__init__("websocket", host, port)
        self._server = server

    def close(self) -> None:
        self._server.close()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()


def _route(connection: ServerConnection, request: _HttpRequest) -> _HttpResponse | None:
    """Only /mix upgrades to a websocket; anything else is 404."""
    if urlsplit(request.path).path != WEBSOCKET_PATH:
        return connection.respond(
            HTTPStatus.NOT_FOUND, f"Not Found: the loopix socket API is at {WEBSOCKET_PATH}\n"
        )
    return None


async def serve_websocket(
    client: SocketClient,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    max_message_size: int = MAX_MESSAGE_SIZE,
    origins: Sequence[str | None] | None = None,
    max_connections: int = MAX_CONNECTIONS,
    connection: type[_Connection] = _Connection,
    queue_limits: QueueLimits | None = None,
) -> SocketServer:
    """Serve `ws://host:port/mix`. Text frames are JSON, binary frames the tagged encoding.

    A connection starts in JSON mode (what Nym's websocket clients speak) until it sends a binary
    frame. Sends wait for room in the queue bound (`queue_limits`, socket_budget.py); while one
    waits its connection takes no more frames. Browser pages are refused (403) unless their Origin is in `origins`: by default only
    non-browser clients (no Origin header) get in, so a web page cannot use this client.
    A frame beyond `max_frame_size(max_message_size)` closes the connection (code 1009); beyond
    `max_connections` a new connection is answered 503. The websockets library stops reading a
    connection while its frames wait (max_queue), so a flood is paced by how fast we queue sends.
    """
    bind = check_loopback(host)
    allowed: list[str | None] = [None, *(o for o in origins or () if o is not None)]
    live: set[ServerConnection] = set()
    queue = _Queue(queue_limits)

    async def handler(ws: ServerConnection) -> None:
        live.add(ws)
        try:
            await _websocket_connection(ws, client, max_message_size, connection, queue)
        finally:
            live.discard(ws)

    def gate(connection: ServerConnection, request: _HttpRequest) -> _HttpResponse | None:
        if len(live) >= max_connections:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        return _route(connection, request)

    server = await _ws_serve(
        handler, bind, port, process_request=gate, origins=allowed, compression=None,
        max_size=max_frame_size(max_message_size), open_timeout=HANDSHAKE_TIMEOUT_S,
    )
    bound = server.sockets[0].getsockname()[1]
    out = _WebsocketServer(server, bind, bound)
    out.budget = queue.budget
    return out


async def _ws_send(ws: ServerConnection, encoding: Encoding, data: bytes) -> None:
    await ws.send(data, text=encoding is Encoding.JSON)


async def _websocket_connection(
    ws: ServerConnection, client: SocketClient, max_message_size: int,
    connection: type[_Connection] = _Connection, queue: _Queue | None = None,
) -> None:
    conn = connection(client, Encoding.JSON, max_message_size)
    conn.queue = queue
    try:
        sub = await _subscribe(client)
    except Exception as exc:
        await ws.close(1011, f"client unavailable: {exc}"[:120])
        return
    pusher = asyncio.create_task(_websocket_push(ws, sub, conn))
    try:
        async for frame in ws:
            request = conn.decode_text(frame) if isinstance(frame, str) else conn.decode_binary(frame)
            response = await conn.handle(request)
            if response is not None:
                await _ws_send(ws, *conn.encode(response))
    except ConnectionClosed:
        pass
    finally:
        await _stop_task(pusher)
        await _aclose(sub)


async def _websocket_push(ws: ServerConnection, sub: AsyncIterator[Any], conn: _Connection) -> None:
    try:
        async for item in sub:
            await _ws_send(ws, *conn.push(item))
    except ConnectionClosed:
        return
    except Exception:
        log.exception("the received-message stream failed")
        await ws.close(1011, "the client's message stream failed")
        return
    await ws.close(1001, "the client has stopped")


# --- TCP --------------------------------------------------------------------------------------------


class _TcpServer(SocketServer):
    def __init__(self, server: asyncio.Server, host: str, port: int) -> None:
        super().__init__("tcp", host, port)
        self._server = server
        self._tasks: set[asyncio.Task] = set()

    def close(self) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


async def serve_tcp(
    client: SocketClient,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    max_message_size: int = MAX_MESSAGE_SIZE,
    max_connections: int = MAX_CONNECTIONS,
    connection: type[_Connection] = _Connection,
    queue_limits: QueueLimits | None = None,
) -> SocketServer:
    """Serve the socket API on TCP: every frame is `u64 BE length ‖ frame`.

    A frame starting with `{` is JSON, anything else the tagged binary encoding; replies use the
    request's encoding, and a connection starts in binary mode for pushed messages. Beyond
    `max_connections` a connection is closed at accept; a frame left unfinished for
    PARTIAL_FRAME_TIMEOUT_S closes its connection (an idle connection between frames is a
    subscriber waiting for messages and stays). Sends wait for room in the queue bound
    (`queue_limits`); meanwhile nothing more is read from that connection.
    """
    bind = check_loopback(host)
    holder: list[_TcpServer] = []
    queue = _Queue(queue_limits)

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Our own task (not the one asyncio.streams would create) so close() can cancel it cleanly.
        server = holder[0]
        if len(server._tasks) >= max_connections:
            writer.transport.abort()  # beyond the cap: refused at once
            return
        task = asyncio.create_task(
            _tcp_connection(reader, writer, client, max_message_size, connection, queue))
        server._tasks.add(task)
        task.add_done_callback(server._tasks.discard)

    raw = await asyncio.start_server(accept, bind, port)
    server = _TcpServer(raw, bind, raw.sockets[0].getsockname()[1])
    server.budget = queue.budget
    holder.append(server)
    return server


async def _tcp_write(writer: asyncio.StreamWriter, data: bytes) -> None:
    """`encode_tcp_frame`, without copying a large frame to prepend its length."""
    writer.writelines((len(data).to_bytes(LENGTH_PREFIX_SIZE, "big"), data))
    await writer.drain()


async def _tcp_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: SocketClient,
    max_message_size: int, connection: type[_Connection] = _Connection, queue: _Queue | None = None,
) -> None:
    conn = connection(client, Encoding.BINARY, max_message_size)
    conn.queue = queue
    decoder = TcpFrameDecoder(max_frame_size(max_message_size))
    sub = None
    pusher = None
    try:
        try:
            sub = await _subscribe(client)
        except Exception as exc:
            await _tcp_write(writer, conn.encode(ErrorResponse(f"client unavailable: {exc}"))[1])
            return
        pusher = asyncio.create_task(_tcp_push(writer, sub, conn))
        while True:
            try:
                data = await asyncio.wait_for(
                    reader.read(_READ_CHUNK),
                    PARTIAL_FRAME_TIMEOUT_S if decoder.buffered else None,
                )
            except TimeoutError:
                await _tcp_write(writer, conn.encode(ErrorResponse("frame not completed in time"))[1])
                return
            if not data:
                break
            for frame in decoder.feed(data):
                if isinstance(frame, FramingError):
                    await _tcp_write(writer, conn.encode(ErrorResponse(frame.message))[1])
                    return
                request = conn.decode_tcp(frame)
                response = await conn.handle(request)
                if response is not None:
                    await _tcp_write(writer, conn.encode(response)[1])
    except (ConnectionError, asyncio.CancelledError):
        pass  # peer went away, or the server is closing: both end this connection quietly
    finally:
        if pusher is not None:
            await _stop_task(pusher)
        if sub is not None:
            await _aclose(sub)
        writer.close()
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await writer.wait_closed()


async def _tcp_push(writer: asyncio.StreamWriter, sub: AsyncIterator[Any], conn: _Connection) -> None:
    try:
        async for item in sub:
            await _tcp_write(writer, conn.push(item)[1])
    except ConnectionError:
        return
    except Exception:
        log.exception("the received-message stream failed")
    writer.close()  # no more messages will come: tell the application

