"""The websocket and TCP servers, for real on 127.0.0.1, in front of a fake client."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable

import pytest
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import wait_until_async
from loopix.sockets import SocketServer, check_loopback, serve_tcp, serve_websocket
from loopix.wire.socket_api import (
    ClientAddress,
    ErrorResponse,
    Received,
    SelfAddress,
    Send,
    decode_binary_response,
    decode_response,
    encode_binary_request,
)

ALICE = ClientAddress(bytes(range(32)), bytes(range(32, 64)))
BOB = ClientAddress(bytes(range(100, 132)), bytes(range(32, 64)))
TIMEOUT = 10


class FakeMessage:
    def __init__(self, data: bytes, sender_tag: bytes | None = None) -> None:
        self.data = data
        self.sender_tag = sender_tag


class FakeSubscription:
    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        client.subscriptions.add(self)

    def __aiter__(self) -> FakeSubscription:
        return self

    async def __anext__(self) -> FakeMessage:
        data = await self.queue.get()
        if data is None:
            raise StopAsyncIteration
        return data if isinstance(data, FakeMessage) else FakeMessage(data)

    async def aclose(self) -> None:
        self.client.subscriptions.discard(self)


class FakeClient:
    """Records what it is asked to send; the test pushes what it 'receives'."""

    def __init__(self) -> None:
        self.address = str(ALICE)
        self.sent: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
        self.subscriptions: set[FakeSubscription] = set()
        self.refuse: Exception | None = None

    async def send_message(self, message: bytes, recipient: str, on_done=None) -> None:
        assert isinstance(message, bytes) and isinstance(recipient, str)
        if self.refuse is not None:
            raise self.refuse
        await self.sent.put((message, recipient))
        if on_done is not None:
            on_done()  # gone at once: the queue bound never holds these tests back

    def subscribe(self) -> FakeSubscription:
        return FakeSubscription(self)

    def push(self, data: bytes) -> None:
        for sub in self.subscriptions:
            sub.queue.put_nowait(data)

    def stop(self) -> None:
        for sub in self.subscriptions:
            sub.queue.put_nowait(None)

    async def wait_subscribers(self, n: int) -> None:
        await wait_until_async(lambda: len(self.subscriptions) == n,
                               lambda: f"{len(self.subscriptions)} subscribers, not {n}", interval=0.005)

    async def next_sent(self) -> tuple[bytes, str]:
        return await asyncio.wait_for(self.sent.get(), TIMEOUT)


def run(test: Callable[[FakeClient], Awaitable[None]]) -> None:
    """Run on the standard loop and on uvloop (what `loopix-client socket` uses)."""

    async def main() -> None:
        await asyncio.wait_for(test(FakeClient()), 60)

    asyncio.run(main())
    uvloop.run(main())


# --- helpers ----------------------------------------------------------------------------------------


async def ws_json(ws: ClientConnection, request: dict | None = None) -> dict:
    if request is not None:
        await ws.send(json.dumps(request))
    frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(frame, str), frame
    return json.loads(frame)


async def ws_binary(ws: ClientConnection, request: bytes | None = None):
    if request is not None:
        await ws.send(request)
    frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(frame, bytes), frame
    return decode_binary_response(frame)


class Tcp:
    """A TCP client speaking length-prefixed frames with asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: SocketServer) -> Tcp:
        return cls(*await asyncio.open_connection("127.0.0.1", server.port))

    async def send(self, frame: bytes) -> None:
        self.writer.write(len(frame).to_bytes(8, "big") + frame)
        await self.writer.drain()

    async def frame(self) -> bytes:
        length = int.from_bytes(await asyncio.wait_for(self.reader.readexactly(8), TIMEOUT), "big")
        return await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT)

    async def ask(self, frame: bytes) -> bytes:
        await self.send(frame)
        return await self.frame()

    async def at_eof(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), TIMEOUT) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


# --- websocket ------------------------------------------------------------------------------------------


def test_websocket_self_address_and_send():
    async def test(client: FakeClient) -> None:
        async with await serve_websocket(client, port=0) as server:
            assert server.url == f"ws://127.0.0.1:{server.port}/mix"
            async with connect(server.url) as ws:
                assert await ws_json(ws, {"type": "selfAddress"}) == {
                    "type": "selfAddress", "address": str(ALICE)}
                assert await ws_binary(ws, b"\x01") == SelfAddress(ALICE)

                await ws.send(json.dumps({"type": "send", "message": "héllo", "recipient": str(BOB)}))
                assert await client.next_sent() == ("héllo".encode(), str(BOB))
                await ws.send(encode_binary_request(Send(b"\x00\xff" * 1000, BOB)))
                assert await client.next_sent() == (b"\x00\xff" * 1000, str(BOB))
                big = bytes(range(256)) * 4096  # 1 MiB
                await ws.send(encode_binary_request(Send(big, BOB)))
                assert await client.next_sent() == (big, str(BOB))

    run(test)


def test_websocket_pushes_follow_the_last_encoding():
    async def test(client: FakeClient) -> None:
        async with await serve_websocket(client, port=0) as server, connect(server.url) as ws:
            await client.wait_subscribers(1)
            client.push(b"hi there")  # nothing said yet: JSON, like Nym
            assert await ws_json(ws) == {"type": "received", "message": "hi there"}
            client.push(b"\xff\xfe")  # not UTF-8: binary even in JSON mode
            assert await ws_binary(ws) == Received(b"\xff\xfe")

            assert await ws_binary(ws, b"\x01") == SelfAddress(ALICE)  # now binary mode
            client.push(b"text")
            assert await ws_binary(ws) == Received(b"text")

            assert (await ws_json(ws, {"type": "selfAddress"}))["type"] == "selfAddress"
            client.push(b"text again")
            assert await ws_json(ws) == {"type": "received", "message": "text again"}

    run(test)


def test_websocket_bad_requests_keep_the_connection():
    async def test(client: FakeClient) -> None:
        async with (await serve_websocket(client, port=0, max_message_size=100) as server,
                    connect(server.url) as ws):
            for bad, words in [
                ("not json", "bad JSON"),
                ('{"type":"fetch"}', "unknown request type 'fetch'"),
                ('{"type":"send","message":"x"}', "`recipient`"),
                ('{"type":"send","message":5,"recipient":"x"}', "`$.message`"),
                ('{"type":"send","message":"x","recipient":"bob"}', "bad recipient"),
                (json.dumps({"type": "send", "message": "x" * 101, "recipient": str(BOB)}),
                 "101 bytes exceeds the maximum of 100"),
            ]:
                await ws.send(bad)
                reply = await ws_json(ws)
                assert reply["type"] == "error" and words in reply["message"], (bad, reply)
            for bad, words in [
                (b"", "empty frame"),
                (b"\x07", "unknown request tag 0x07"),
                (b"\x00\x01", "truncated send request"),
                (b'{"type":"selfAddress"}', "JSON goes in text frames"),
            ]:
                reply = await ws_binary(ws, bad)
                assert isinstance(reply, ErrorResponse) and words in reply.message, (bad, reply)

            client.refuse = ValueError("bad recipient address: no such provider")
            reply = await ws_json(ws, {"type": "send", "message": "x", "recipient": str(BOB)})
            assert reply == {"type": "error", "message": "bad recipient address: no such provider"}
            client.refuse = RuntimeError("the client is not running")
            reply = await ws_json(ws, {"type": "send", "message": "x", "recipient": str(BOB)})
            assert reply["message"] == "could not queue the message: the client is not running"
            client.refuse = None

            assert (await ws_json(ws, {"type": "selfAddress"}))["address"] == str(ALICE)
            await ws.send(json.dumps({"type": "send", "message": "ok", "recipient": str(BOB)}))
            assert await client.next_sent() == (b"ok", str(BOB))
            assert client.sent.empty()  # no bad request reached the client

    run(test)


def test_websocket_wrong_path_is_404():
    async def test(client: FakeClient) -> None:
        async with await serve_websocket(client, port=0) as server:
            for path in ("/", "/mixx", "/mix/more"):
                with pytest.raises(InvalidStatus) as info:
                    async with connect(f"ws://127.0.0.1:{server.port}{path}"):
                        pass
                assert info.value.response.status_code == 404
            async with connect(f"ws://127.0.0.1:{server.port}/mix?x=1") as ws:  # query is fine
                assert (await ws_json(ws, {"type": "selfAddress"}))["type"] == "selfAddress"
            # plain HTTP too
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /other HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status = await asyncio.wait_for(reader.readline(), TIMEOUT)
            assert status.startswith(b"HTTP/1.1 404")
            writer.close()
            assert not client.subscriptions

    run(test)


def test_websocket_two_connections_both_receive():
    async def test(client: FakeClient) -> None:
        async with await serve_websocket(client, port=0) as server:
            async with connect(server.url) as one, connect(server.url) as two:
                await client.wait_subscribers(2)
                client.push(b"to everyone")
                assert await ws_json(one) == {"type": "received", "message": "to everyone"}
                assert await ws_json(two) == {"type": "received", "message": "to everyone"}
            await client.wait_subscribers(0)  # each connection's subscription was closed

    run(test)


def test_websocket_oversized_frame_closes_with_1009():
    async def test(client: FakeClient) -> None:
        async with (await serve_websocket(client, port=0, max_message_size=10) as server,
                    connect(server.url, max_size=None) as ws):
            await ws.send(b"\x00" * (6 * 10 + 64 * 1024 + 1))
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009

    run(test)


def test_websocket_server_close_and_client_stop():
    async def test(client: FakeClient) -> None:
        server = await serve_websocket(client, port=0)
        async with connect(server.url) as ws:
            await client.wait_subscribers(1)
            client.stop()  # the client's message stream ends: the connection is closed
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        async with connect(server.url) as ws:
            await client.wait_subscribers(1)
            server.close()
            await server.wait_closed()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert not client.subscriptions
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.port)

    run(test)


def test_loopback_only():
    async def test(client: FakeClient) -> None:
        for host in ("0.0.0.0", "192.168.1.10", "::", "example.com", ""):
            with pytest.raises(ValueError, match="refusing to serve the socket API"):
                await serve_websocket(client, host, 0)
            with pytest.raises(ValueError, match="loopback"):
                await serve_tcp(client, host, 0)
        async with await serve_websocket(client, "localhost", 0) as server:
            assert server.host == "127.0.0.1"

    run(test)
    assert check_loopback("127.0.0.2") == "127.0.0.2"
    assert check_loopback("::1") == "::1"


# --- TCP ------------------------------------------------------------------------------------------------


def test_tcp_self_address_send_and_push():
    async def test(client: FakeClient) -> None:
        async with await serve_tcp(client, port=0) as server:
            assert server.url == f"tcp://127.0.0.1:{server.port}"
            tcp = await Tcp.open(server)
            assert decode_response(await tcp.ask(b"\x01")) == SelfAddress(ALICE)
            reply = await tcp.ask(b'{"type":"selfAddress"}')
            assert json.loads(reply) == {"type": "selfAddress", "address": str(ALICE)}

            await tcp.send(json.dumps({"type": "send", "message": "héllo", "recipient": str(BOB)}).encode())
            assert await client.next_sent() == ("héllo".encode(), str(BOB))
            big = bytes(range(256)) * 4096
            await tcp.send(encode_binary_request(Send(big, BOB)))
            assert await client.next_sent() == (big, str(BOB))

            client.push(b"\xffbinary")  # last request was binary
            assert decode_response(await tcp.frame()) == Received(b"\xffbinary")
            await tcp.ask(b'{"type":"selfAddress"}')  # now JSON
            client.push(b"text")
            assert json.loads(await tcp.frame()) == {"type": "received", "message": "text"}
            client.push(b"\xff")
            assert decode_response(await tcp.frame()) == Received(b"\xff")
            await tcp.close()
            await client.wait_subscribers(0)

    run(test)


def test_tcp_fresh_connection_pushes_binary_and_two_connections_receive():
    async def test(client: FakeClient) -> None:
        async with await serve_tcp(client, port=0) as server:
            one, two = await Tcp.open(server), await Tcp.open(server)
            await client.wait_subscribers(2)
            client.push(b"both")
            assert decode_response(await one.frame()) == Received(b"both")
            assert decode_response(await two.frame()) == Received(b"both")
            await one.close()
            await two.close()

    run(test)


def test_tcp_bad_requests_keep_the_connection():
    async def test(client: FakeClient) -> None:
        async with await serve_tcp(client, port=0, max_message_size=100) as server:
            tcp = await Tcp.open(server)
            for bad, words in [
                (b"", "empty frame"),
                (b"\x42", "unknown request tag 0x42"),
                (b"\x80", "response, not a request"),
                (b"\x00" + bytes(64) + (101).to_bytes(8, "big") + bytes(101), "exceeds the maximum"),
                (b" {}", "a JSON frame must start with '{'"),
            ]:
                reply = decode_response(await tcp.ask(bad))
                assert isinstance(reply, ErrorResponse) and words in reply.message, (bad, reply)
            for bad, words in [
                (b"{nope", "bad JSON"),
                (b'{"type":"send","message":"x","recipient":"a@b"}', "bad recipient"),
            ]:
                reply = json.loads(await tcp.ask(bad))  # JSON in, JSON error out
                assert reply["type"] == "error" and words in reply["message"], (bad, reply)
            assert decode_response(await tcp.ask(b"\x01")) == SelfAddress(ALICE)
            assert client.sent.empty()
            await tcp.close()

    run(test)


def test_tcp_oversized_length_closes_the_connection():
    async def test(client: FakeClient) -> None:
        async with await serve_tcp(client, port=0, max_message_size=10) as server:
            tcp = await Tcp.open(server)
            tcp.writer.write((2**40).to_bytes(8, "big"))
            reply = decode_response(await tcp.frame())
            assert isinstance(reply, ErrorResponse) and "closing the connection" in reply.message
            assert await tcp.at_eof()
            await client.wait_subscribers(0)
            await tcp.close()
            # a request split across writes, before and after, is fine on a new connection
            tcp = await Tcp.open(server)
            frame = b"\x00\x00\x00\x00\x00\x00\x00\x01\x01"
            for byte in frame:
                tcp.writer.write(bytes([byte]))
                await tcp.writer.drain()
                await asyncio.sleep(0)
            assert decode_response(await tcp.frame()) == SelfAddress(ALICE)
            await tcp.close()

    run(test)


def test_tcp_server_close_ends_connections():
    async def test(client: FakeClient) -> None:
        server = await serve_tcp(client, port=0)
        tcp = await Tcp.open(server)
        await client.wait_subscribers(1)
        server.close()
        await server.wait_closed()
        assert await tcp.at_eof()
        assert not client.subscriptions
        await tcp.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.port)

        server = await serve_tcp(client, port=0)  # the client stopping also ends connections
        tcp = await Tcp.open(server)
        await client.wait_subscribers(1)
        client.stop()
        assert await tcp.at_eof()
        await tcp.close()
        server.close()
        await server.wait_closed()

    run(test)


def test_unavailable_client_is_reported():
    class Stopped(FakeClient):
        @property
        def address(self) -> str:  # type: ignore[override]
            raise RuntimeError("the address is known once the client has started")

        @address.setter
        def address(self, value: str) -> None:
            pass

        def subscribe(self) -> FakeSubscription:
            if self.refuse is not None:
                raise self.refuse
            return super().subscribe()

    async def test(_: FakeClient) -> None:
        client = Stopped()
        async with await serve_tcp(client, port=0) as server:
            tcp = await Tcp.open(server)
            reply = decode_response(await tcp.ask(b"\x01"))
            assert reply == ErrorResponse(
                "the address is not available: the address is known once the client has started")
            await tcp.close()
            client.refuse = RuntimeError("client is not running")
            tcp = await Tcp.open(server)
            reply = decode_response(await tcp.frame())
            assert reply == ErrorResponse("client unavailable: client is not running")
            assert await tcp.at_eof()
            await tcp.close()
        async with await serve_websocket(client, port=0) as server, connect(server.url) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert info.value.rcvd.code == 1011
            assert "client is not running" in info.value.rcvd.reason

    run(test)


def test_failing_message_stream_closes_the_connection():
    class Broken(FakeSubscription):
        async def __anext__(self) -> FakeMessage:
            await self.queue.get()
            raise RuntimeError("boom")

    async def test(client: FakeClient) -> None:
        client.subscribe = lambda: Broken(client)  # type: ignore[method-assign]
        async with await serve_websocket(client, port=0) as server, connect(server.url) as ws:
            await client.wait_subscribers(1)
            client.push(b"x")
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert info.value.rcvd.code == 1011
        async with await serve_tcp(client, port=0) as server:
            tcp = await Tcp.open(server)
            await client.wait_subscribers(1)
            client.push(b"x")
            assert await tcp.at_eof()
            await tcp.close()
        await client.wait_subscribers(0)

    run(test)


class ReplyingClient(FakeClient):
    """A fake client with anonymous replies: records reply_surbs and replies."""

    def __init__(self) -> None:
        super().__init__()
        self.with_surbs: asyncio.Queue[int] = asyncio.Queue()
        self.replies: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()

    async def send_message(self, message: bytes, recipient: str, reply_surbs: int = 0, on_done=None) -> None:
        await super().send_message(message, recipient, on_done)
        await self.with_surbs.put(reply_surbs)

    async def reply(self, sender_tag: bytes, message: bytes, on_done=None) -> None:
        await self.replies.put((sender_tag, message))
        if on_done is not None:
            on_done()


def test_websocket_reply_fields():
    tag = bytes(range(16))

    async def main() -> None:
        client = ReplyingClient()
        async with await serve_websocket(client, port=0) as server, connect(server.url) as ws:
            await ws.send(json.dumps({"type": "send", "message": "hi", "recipient": str(BOB), "replySurbs": 10}))
            assert await client.next_sent() == (b"hi", str(BOB))
            assert await asyncio.wait_for(client.with_surbs.get(), TIMEOUT) == 10
            await client.wait_subscribers(1)
            for sub in client.subscriptions:
                sub.queue.put_nowait(FakeMessage(b"from a stranger", tag))
            got = await ws_json(ws)
            assert got["message"] == "from a stranger" and got["senderTag"] == "AAECAwQFBgcICQoLDA0ODw=="
            await ws.send(json.dumps({"type": "reply", "message": "back", "senderTag": got["senderTag"]}))
            assert await asyncio.wait_for(client.replies.get(), TIMEOUT) == (tag, b"back")

    asyncio.run(asyncio.wait_for(main(), 60))


# --- the send-queue bound -----------------------------------------------------------------------


class SlowClient(FakeClient):
    """Keeps every accepted message 'in its send queue' until the test lets it go (`drain`)."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[tuple[bytes, Callable[[], None]]] = []
        self.accepted: list[bytes] = []
        self.peak = 0

    async def send_message(self, message: bytes, recipient: str, on_done=None) -> None:
        assert on_done is not None  # every send through the socket API is tracked
        self.accepted.append(message)
        self.queued.append((message, on_done))
        self.peak = max(self.peak, len(self.queued))

    def drain(self, n: int) -> None:
        for _, done in self.queued[:n]:
            done()
        del self.queued[:n]


@pytest.mark.parametrize("kind", ["tcp", "websocket"])
def test_a_flood_is_held_at_the_queue_bound_and_every_accepted_message_is_sent(kind):
    """Two applications push 20x the bound over real sockets; the client never holds more than
    the bound, reading pauses, and each message is accepted exactly once, in order."""
    from loopix.socket_budget import QueueLimits

    size, per_app = 16 << 10, 160  # 2.5 MiB per application; the connection bound is 4 messages
    limits = QueueLimits(connection_messages=8, connection_bytes=4 * size, total_messages=6, total_bytes=1 << 20)

    async def app_tcp(port: int, tag: int) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(per_app):
            frame = encode_binary_request(Send(bytes([tag]) + i.to_bytes(4, "big") + bytes(size - 5), BOB))
            writer.write(len(frame).to_bytes(8, "big") + frame)
            await writer.drain()  # blocks while the server does not read
        writer.close()

    async def app_ws(port: int, tag: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/mix") as ws:
            for i in range(per_app):
                await ws.send(encode_binary_request(Send(bytes([tag]) + i.to_bytes(4, "big") + bytes(size - 5), BOB)))

    async def main() -> None:
        client = SlowClient()
        serve = serve_tcp if kind == "tcp" else serve_websocket
        server = await serve(client, "127.0.0.1", 0, queue_limits=limits)
        app = app_tcp if kind == "tcp" else app_ws
        apps = [asyncio.create_task(app(server.port, tag)) for tag in (1, 2)]
        try:
            await wait_until_async(lambda: len(client.queued) == 6, "the total bound to fill", TIMEOUT, 0.01)
            for _ in range(20):  # the applications keep writing; the server takes nothing more
                await asyncio.sleep(0)
            assert len(client.accepted) == 6 and server.budget.messages == 6
            while len(client.accepted) < 2 * per_app:
                before = len(client.accepted)
                client.drain(3)
                await wait_until_async(lambda before=before: len(client.accepted) > before, "room to be taken", TIMEOUT, 0.01)
            client.drain(len(client.queued))
            await asyncio.gather(*apps)
        finally:
            for task in apps:
                task.cancel()
            server.close()
            await server.wait_closed()
        assert client.peak <= 6 and server.budget.peak_messages <= 6
        assert server.budget.peak_bytes <= 6 * size and server.budget.messages == 0
        for tag in (1, 2):  # every message once, in the order its application sent it
            mine = [int.from_bytes(m[1:5], "big") for m in client.accepted if m[0] == tag]
            assert mine == list(range(per_app))

    uvloop.run(main())


def test_per_connection_bound_and_refused_sends_do_not_count():
    from loopix.socket_budget import ConnectionUse, QueueLimits, SendBudget

    budget = SendBudget(QueueLimits(connection_messages=2, connection_bytes=100, total_messages=3, total_bytes=1000))
    a, b = ConnectionUse(), ConnectionUse()
    assert budget.fits(a, 5000)  # alone, a message beyond the byte bound still goes
    budget.take(a, 60)
    assert not budget.fits(a, 41) and budget.fits(a, 40)
    budget.take(a, 40)
    assert not budget.fits(a, 1)  # two messages
    assert budget.fits(b, 10)
    budget.take(b, 10)
    assert not budget.fits(ConnectionUse(), 1)  # three in all
    budget.give_back(a, 60)
    assert budget.fits(b, 10) and (budget.messages, budget.bytes) == (2, 50)

    async def main() -> None:
        client = FakeClient()
        client.refuse = ValueError("bad recipient")
        server = await serve_tcp(client, "127.0.0.1", 0, queue_limits=QueueLimits(total_messages=1))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            for _ in range(3):  # each refused send gives its room back, or the second would wait
                frame = encode_binary_request(Send(b"x", BOB))
                writer.write(len(frame).to_bytes(8, "big") + frame)
                async with asyncio.timeout(TIMEOUT):
                    length = int.from_bytes(await reader.readexactly(8), "big")
                    assert isinstance(decode_response(await reader.readexactly(length)), ErrorResponse)
            assert server.budget.messages == 0
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    uvloop.run(main())
