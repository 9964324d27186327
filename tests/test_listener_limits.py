"""Listeners under hostile input, over real TCP on 127.0.0.1: connection caps, idle and partial
timeouts, the peer table, backpressure on a client that never reads, and rate-limited logs."""

from __future__ import annotations

import asyncio
import logging

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import wait_until_async
from loopix import sockets
from loopix.sphinx import Hop, build_packet, keypair
from loopix.testnet.limits import RateLimitedLog
from loopix.testnet.mixnode import MixNode
from loopix.testnet.node import Counters, Forwarder, NodeConfig
from loopix.wire.address import encode_node_address, encode_node_address_unpadded
from loopix.wire.framing import FrameDecoder, frame_header
from loopix.wire.socket_api import ErrorResponse, decode_json_response
from test_sockets import FakeClient

TIMEOUT = 10


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), TIMEOUT) == b""
    except ConnectionError:
        return True


def test_node_caps_connections_times_out_idle_and_partial_ones_and_keeps_forwarding():
    async def main():
        received: list[bytes] = []
        decoder = FrameDecoder()

        class Sink(asyncio.Protocol):
            def data_received(self, data):
                received.extend(f.packet for f in decoder.feed(data))

        loop = asyncio.get_running_loop()
        sink = await loop.create_server(Sink, "127.0.0.1", 0)
        sink_port = sink.sockets[0].getsockname()[1]
        secret, public = keypair()
        _, sink_pub = keypair()
        node = MixNode(NodeConfig(port=0, max_connections=8, idle_timeout=0.5), secret, layer=1)
        await node.start()
        port = node._server.sockets[0].getsockname()[1]
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(12)]
        try:
            # beyond the cap: closed at accept
            await wait_until_async(lambda: node.gate.refused == 4, "4 connections refused")
            assert len(node.gate.live) == 8
            # partial frames (the lone version byte 0x07; a header and half a packet) and idle
            # connections are all closed within the timeout
            conns[0][1].write(b"\x07")
            conns[1][1].write(frame_header(2413) + bytes(1000))
            t0 = loop.time()
            await wait_until_async(lambda: not node.gate.live, "idle links closed")
            assert loop.time() - t0 < 0.5 + 2.0
            assert node.gate.timed_out == 8
            # valid traffic still goes through a fresh connection
            route = [
                Hop(public, encode_node_address("127.0.0.1", 1)),
                Hop(sink_pub, encode_node_address("127.0.0.1", sink_port)),
            ]
            packet = build_packet(route, bytes(32), b"hello", [0, 0])
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(frame_header(len(packet)) + packet)
            await writer.drain()
            await wait_until_async(lambda: len(received) == 1, "the packet forwarded")
            writer.close()
        finally:
            for _, w in conns:
                w.close()
            await node.close()
            sink.close()

    asyncio.run(main())


def test_peer_table_normalises_padding_and_evicts_idle_peers():
    async def main():
        counters = Counters()
        fw = Forwarder(NodeConfig(port=0, max_peers=4, peer_idle=10.0), counters)
        base = encode_node_address_unpadded("127.0.0.1", 7)
        # 100 addresses for one hop that differ only in the padding the decoder ignores
        variants = [(base + bytes([i + 1]) * (32 - len(base))) for i in range(100)]
        for i, address in enumerate(variants):
            assert fw._peer(address, float(i)) is fw._peer(variants[0], float(i))
        assert len(fw.peers) == 1
        # the table is full of peers idle for longer than peer_idle: a new hop evicts them
        for port in range(8, 11):
            fw._peer(encode_node_address("127.0.0.1", port), 0.0)
        assert len(fw.peers) == 4
        assert fw._peer(encode_node_address("127.0.0.1", 99), 5.0) is None  # none idle yet
        assert counters.dropped["too_many_peers"] == 1
        assert fw._peer(encode_node_address("127.0.0.1", 99), 20.0) is not None
        assert counters.extra["peers_evicted"] == 4 and len(fw.peers) == 1

    asyncio.run(main())


def test_rate_limited_log_suppresses_a_flood_and_says_how_much(caplog):
    clock = [0.0]
    limited = RateLimitedLog(logging.getLogger("t"), per_s=1.0, burst=3, clock=lambda: clock[0])
    with caplog.at_level(logging.INFO):
        for _ in range(1000):
            limited.info("remote mistake")
        clock[0] += 1.0
        limited.info("remote mistake")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4
    assert lines[-1] == "remote mistake (997 similar lines suppressed)"


# --- the socket API -----------------------------------------------------------------------------


def test_websocket_refuses_cross_origin_pages_unless_allowed():
    async def main():
        client = FakeClient()
        server = await sockets.serve_websocket(client, "127.0.0.1", 0, origins=["http://localhost:3000"])
        url = f"ws://127.0.0.1:{server.port}/mix"
        try:
            with pytest.raises(InvalidStatus) as info:
                async with connect(url, origin="http://evil.example"):
                    pass
            assert info.value.response.status_code == 403
            async with connect(url, origin="http://localhost:3000") as ws:  # listed
                await ws.send('{"type": "selfAddress"}')
                assert "selfAddress" in await asyncio.wait_for(ws.recv(), TIMEOUT)
            async with connect(url) as ws:  # not a browser: no Origin header
                # deep nesting is an error reply, and the connection stays open
                await ws.send('{"type": "send", "x": ' + "[" * 100_000)
                reply = decode_json_response(await asyncio.wait_for(ws.recv(), TIMEOUT))
                assert isinstance(reply, ErrorResponse) and "nested too deeply" in reply.message
                await ws.send('{"type": "selfAddress"}')
                assert "selfAddress" in await asyncio.wait_for(ws.recv(), TIMEOUT)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_tcp_socket_caps_connections_and_times_out_partial_frames(monkeypatch):
    monkeypatch.setattr(sockets, "PARTIAL_FRAME_TIMEOUT_S", 0.3)

    async def main():
        client = FakeClient()
        server = await sockets.serve_tcp(client, "127.0.0.1", 0, max_connections=2)
        try:
            a = await asyncio.open_connection("127.0.0.1", server.port)
            b = await asyncio.open_connection("127.0.0.1", server.port)
            await wait_until_async(lambda: len(server._tasks) == 2, "two connections served")
            c = await asyncio.open_connection("127.0.0.1", server.port)
            assert await _closed_by_peer(c[0])  # beyond the cap
            # b starts a frame and never finishes it: an error, then closed
            b[1].write((100).to_bytes(8, "big") + b"{")
            await b[1].drain()
            answer = await asyncio.wait_for(b[0].read(), TIMEOUT)  # to EOF: the node closed it
            assert b"frame not completed in time" in answer
            await wait_until_async(lambda: len(server._tasks) == 1, "the partial one closed")
            # a, idle between frames (a subscriber), stays
            assert not a[0].at_eof()
            for conn in (a, b, c):
                conn[1].close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


# --- the provider ---------------------------------------------------------------------------------


def test_provider_stops_reading_pulls_from_a_client_that_never_reads(tmp_path):
    """PULLs whose answers are not read: the provider's write buffer stays bounded, and once the
    client reads, every PULL is answered."""
    from loopix.testnet.inbox import Inbox
    from loopix.testnet.provider import Provider, _PortProtocol
    from loopix.wire.provider import ChallengeReceived, ClientSide, PullResult

    async def main():
        secret, public = keypair()
        provider = Provider(NodeConfig(port=0), secret, Inbox(tmp_path / "inbox.sqlite"))
        await provider.start()
        port = provider._server.sockets[0].getsockname()[1]
        client_secret, _ = keypair()
        side = ClientSide(client_secret, public, push=False)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(side.send_hello())
        while not any(isinstance(e, ChallengeReceived) for e in side.receive_data(await reader.read(4096))):
            pass
        pulls = 1000  # ~33 MB of answers (16 slots of 2 KiB each): more than the kernel buffers
        writer.write(side.send_register() + b"".join(side.send_pull() for _ in range(pulls)))
        await writer.drain()
        session = None

        def held():
            nonlocal session
            sessions = [c.inner.delegate for c in provider.gate.live]
            session = next((s for s in sessions if getattr(s, "_held", None)), None)
            return session is not None

        await wait_until_async(held, "the provider holds PULLs back")
        # bounded: what is queued for this client is about the high-water mark, not 20,000 answers
        assert session.transport.get_write_buffer_size() <= 2 * _PortProtocol.WRITE_HIGH_WATER
        assert provider.counters.extra["client_backpressure"] >= 1
        # now read everything: every PULL is answered
        answered = 0
        while answered < pulls:
            data = await asyncio.wait_for(reader.read(1 << 20), TIMEOUT)
            assert data
            answered += sum(isinstance(e, PullResult) for e in side.receive_data(data))
        assert answered == pulls
        writer.close()
        await provider.close()

    asyncio.run(main())


def test_provider_garbage_after_magic_and_lone_version_byte(tmp_path, caplog):
    from loopix.testnet.inbox import Inbox
    from loopix.testnet.provider import Provider

    async def main():
        secret, _ = keypair()
        provider = Provider(NodeConfig(port=0, idle_timeout=0.5), secret, Inbox(tmp_path / "i.sqlite"))
        await provider.start()
        port = provider._server.sockets[0].getsockname()[1]
        for _ in range(20):  # garbage after the magic: one error answer, then closed
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"LPX1\xff\xff\xff\xff" + bytes(64))
            await asyncio.wait_for(reader.read(), TIMEOUT)
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x07")  # a mixnode frame's version byte, then nothing
        assert await _closed_by_peer(reader)
        writer.close()
        await provider.close()

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    assert not [r for r in caplog.records if r.exc_info]  # no traceback
    assert len([r for r in caplog.records if "protocol error" in r.getMessage()]) <= 6  # rate-limited
