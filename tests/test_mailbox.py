"""Messages received while no application is connected to `socket` are held (bounded, oldest
dropped and counted) and delivered to the next connection; real websocket and TCP servers."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from websockets.asyncio.client import connect

from conftest import wait_until_async
from loopix.mailbox import BoundedMessages, Mailbox
from loopix.sockets import serve_tcp, serve_websocket
from loopix.wire.socket_api import Received, decode_response
from test_sockets import TIMEOUT, FakeClient, Tcp, run, ws_json


def test_bounded_by_count_oldest_dropped_and_counted():
    q = BoundedMessages(max_messages=3, max_bytes=1000)
    assert [q.put(bytes([i])) for i in range(5)] == [0, 0, 0, 1, 1]
    assert (len(q), q.bytes, q.dropped, q.dropped_bytes) == (3, 3, 2, 2)
    assert [q.pop() for _ in range(4)] == [b"\x02", b"\x03", b"\x04", None]
    assert q.bytes == 0


def test_bounded_by_bytes_keeps_one_oversized_message():
    q = BoundedMessages(max_messages=100, max_bytes=10)
    q.put(b"a" * 4)
    q.put(b"b" * 4)
    assert q.put(b"c" * 4) == 1  # 12 bytes > 10: "aaaa" goes
    assert q.take_all() == [b"b" * 4, b"c" * 4]
    assert q.put(b"x" * 50) == 0 and len(q) == 1  # alone, it stays
    assert q.put(b"y") == 1 and q.take_all() == [b"y"]
    with pytest.raises(ValueError):
        BoundedMessages(0, 10)


def test_held_messages_go_to_the_next_websocket_connection(caplog):
    async def test(client: FakeClient) -> None:
        mailbox = await Mailbox(client, max_messages=3, max_bytes=1 << 20).start()
        await client.wait_subscribers(1)  # the mailbox listens from the start, connection or not
        async with await serve_websocket(mailbox, "127.0.0.1", 0) as server:
            with caplog.at_level(logging.WARNING, logger="loopix.mailbox"):
                for i in range(5):
                    client.push(f"m{i}".encode())
                await wait_until_async(lambda: mailbox.dropped == 2, lambda: f"dropped {mailbox.dropped}, not 2")
            assert "no application is connected" in caplog.text and "dropped 2 so far" in caplog.text
            async with connect(f"ws://127.0.0.1:{server.port}/mix") as ws:
                got = [(await ws_json(ws))["message"] for _ in range(3)]
                assert got == ["m2", "m3", "m4"]  # the newest three, oldest first
                client.push(b"live")
                assert (await ws_json(ws))["message"] == "live"
            # disconnected again: held once more, for the next one
            await wait_until_async(lambda: not mailbox._outlets, "the closed connection to leave the mailbox")
            client.push(b"later")
            async with connect(f"ws://127.0.0.1:{server.port}/mix") as ws:
                assert (await ws_json(ws)) == {"type": "received", "message": "later"}
                await ws.send(json.dumps({"type": "selfAddress"}))  # the mailbox stands in for the client
                assert (await ws_json(ws))["type"] == "selfAddress"
        await mailbox.close()

    run(test)


def test_held_messages_go_to_the_next_tcp_connection_and_end_with_the_client():
    async def test(client: FakeClient) -> None:
        mailbox = await Mailbox(client).start()
        await client.wait_subscribers(1)
        client.push(b"\x00binary\xff")
        async with await serve_tcp(mailbox, "127.0.0.1", 0) as server:
            conn = await Tcp.open(server)
            assert decode_response(await conn.frame()) == Received(b"\x00binary\xff")
            client.stop()  # the client's stream ends: the connection is closed
            assert await conn.at_eof()
            await conn.close()
        await mailbox.close()

    run(test)


def test_a_slow_reader_is_bounded_too():
    async def test(client: FakeClient) -> None:
        mailbox = await Mailbox(client, max_messages=2, max_bytes=1 << 20).start()
        await client.wait_subscribers(1)
        outlet = mailbox.subscribe()
        for i in range(4):
            mailbox.deliver(bytes([i]))
        assert mailbox.dropped == 2
        assert [await asyncio.wait_for(outlet.__anext__(), TIMEOUT) for _ in range(2)] == [b"\x02", b"\x03"]
        mailbox.deliver(b"unread")
        await outlet.aclose()  # the last connection leaves: its unread message is held again
        assert mailbox.held.take_all() == [b"unread"]
        await mailbox.close()

    run(test)
