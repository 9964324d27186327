"""Node parts alone: the replay filter's window, the delay queue, and one node in-process."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from loopix.sphinx import Hop, build_packet, keypair
from loopix.testnet.decisions import DelayQueue, ReplayFilter
from loopix.testnet.mixnode import MixNode
from loopix.testnet.node import Counters, Forwarder, NodeConfig
from loopix.wire.address import encode_node_address
from loopix.wire.framing import FrameDecoder


def test_replay_filter_window():
    f = ReplayFilter(3)
    tags = [bytes([i]) * 32 for i in range(10)]
    assert [f.seen(t) for t in tags[:3]] == [False] * 3  # third add rotates
    assert all(f.seen(t) for t in tags[:3])
    for t in tags[3:6]:
        assert not f.seen(t)  # rotates again: tags[:3] fall out of the window
    assert not f.seen(tags[0])
    assert f.seen(tags[5])
    assert len(f) <= 2 * f.capacity


@given(st.lists(st.integers(0, 50), max_size=200), st.integers(1, 20))
def test_replay_filter_remembers_at_least_capacity(stream, capacity):
    f = ReplayFilter(capacity)
    accepted: list[int] = []
    for x in stream:
        tag = x.to_bytes(32, "big")
        recent = accepted[-capacity:]
        dup = f.seen(tag)
        if x in recent:
            assert dup  # anything among the last `capacity` accepted is caught
        if not dup:
            accepted.append(x)
        assert len(f) <= 2 * capacity


def test_delay_queue_order_and_fifo_ties():
    q: DelayQueue[str] = DelayQueue()
    for due, item in [(3.0, "c"), (1.0, "a1"), (2.0, "b"), (1.0, "a2")]:
        q.push(due, item)
    assert q.next_due() == 1.0
    assert q.pop_due(0.5) == []
    assert q.pop_due(2.0) == ["a1", "a2", "b"]
    assert len(q) == 1 and q.next_due() == 3.0
    assert q.pop_due(10) == ["c"] and q.next_due() is None


@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=100))
def test_delay_queue_pops_sorted(dues):
    q: DelayQueue[float] = DelayQueue()
    for d in dues:
        q.push(d, d)
    out = q.pop_due(50.0) + q.pop_due(100.0)
    assert out == sorted(dues)


async def _sink(received: list[bytes], ready: asyncio.Event):
    decoder = FrameDecoder()

    class Sink(asyncio.Protocol):
        def data_received(self, data):
            received.extend(f.packet for f in decoder.feed(data))
            ready.set()

    loop = asyncio.get_running_loop()
    return await loop.create_server(Sink, "127.0.0.1", 0)


def test_node_in_process_delays_forwards_and_drops_replays():
    async def main():
        received: list[bytes] = []
        got = asyncio.Event()
        server = await _sink(received, got)
        sink_port = server.sockets[0].getsockname()[1]
        secret, public = keypair()
        _, sink_pub = keypair()
        node = MixNode(NodeConfig(port=0), secret, layer=1)
        route = [
            Hop(public, encode_node_address("127.0.0.1", 1)),
            Hop(sink_pub, encode_node_address("127.0.0.1", sink_port)),
        ]
        delayed = build_packet(route, bytes(32), b"later", [30_000_000, 0])
        now = build_packet(route, bytes(32), b"now", [0, 0])
        dead = build_packet(
            [route[0], Hop(sink_pub, encode_node_address("127.0.0.1", 9))], bytes(32), b"x", [0, 0]
        )
        t0 = asyncio.get_running_loop().time()
        tampered = now[:40] + bytes([now[40] ^ 1]) + now[41:]  # flips a MAC bit
        node.handle_packets([delayed, now, now, tampered, dead])
        await asyncio.wait_for(got.wait(), 5)
        assert len(received) == 1  # the undelayed one
        while len(received) < 2:
            got.clear()
            await asyncio.wait_for(got.wait(), 5)
        assert asyncio.get_running_loop().time() - t0 >= 0.025
        c = node.counters
        assert c.received == 5 and c.forwarded == 2
        assert c.dropped["replay"] == 1 and c.dropped["bad_mac"] == 1
        for _ in range(100):  # the dead hop's connection fails in the background
            if c.dropped.get("connect_failed"):
                break
            await asyncio.sleep(0.02)
        assert c.dropped["connect_failed"] == 1
        node.handle_packets([build_packet(route[:1], b"d" * 32, b"final", [0])])
        assert c.dropped["final_at_mixnode"] == 1
        await node.close()
        server.close()

    asyncio.run(main())


def test_node_link_corrupt_frame_counts_and_closes():
    async def main():
        secret, _ = keypair()
        node = MixNode(NodeConfig(port=0), secret, layer=1)
        await node.start()
        port = node._server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x09garbage")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the node
        assert node.counters.dropped["corrupt_frame"] == 1
        writer.close()
        await node.close()

    asyncio.run(main())


def test_forwarder_drops_for_a_hop_that_does_not_read():
    class Stuck:
        """A transport whose peer stopped reading: its buffer is already full."""

        written = 0

        def is_closing(self):
            return False

        def get_write_buffer_size(self):
            return 10**6

        def write(self, data):
            Stuck.written += 1

    async def main():
        counters = Counters()
        fw = Forwarder(NodeConfig(port=0, peer_write_buffer=1000), counters)
        address = encode_node_address("127.0.0.1", 5555)
        fw._peer(address, 0.0).transport = Stuck()
        for _ in range(3):
            fw.send(address, bytes(2413))
        fw.flush()
        assert counters.dropped == {"backpressure": 3} and Stuck.written == 0
        fw.send(bytes(32), bytes(2413))  # not an address at all
        assert counters.dropped["bad_address"] == 1

    asyncio.run(main())


def test_replay_filter_survives_a_restart_under_the_same_key_only(tmp_path):
    """A captured packet replayed after the node restarts is still refused (issue 11)."""

    async def main():
        secret, public = keypair()
        _, next_pub = keypair()
        path = tmp_path / "replay.bin"
        packet = build_packet(
            [Hop(public, encode_node_address("127.0.0.1", 1)), Hop(next_pub, encode_node_address("127.0.0.1", 9))],
            bytes(32), b"once", [0, 0],
        )  # fmt: skip
        node = MixNode(NodeConfig(port=0, replay_file=str(path)), secret, layer=1)
        node.handle_packets([packet])
        await node.close()  # saves the filter
        assert path.stat().st_mode & 0o777 == 0o600
        again = MixNode(NodeConfig(port=0, replay_file=str(path)), secret, layer=1)
        again.handle_packets([packet])
        assert again.counters.dropped.get("replay") == 1
        await again.close()
        other_secret, _ = keypair()  # a rotated key: the old tags are not loaded
        rotated = MixNode(NodeConfig(port=0, replay_file=str(path)), other_secret, layer=1)
        assert rotated.engine.replay_count == 0
        await rotated.close()

    asyncio.run(main())


def test_forwarder_send_many_keeps_order_and_falls_back_to_send():
    """Packets forwarded together: a connected hop gets them framed, in order, in one flush; a hop
    not yet connected goes through `send` (queued while it connects, delivered after); a bad
    address is counted as with `send`."""
    from loopix.testnet.decisions import ForwardNow

    async def main():
        received: list[bytes] = []
        got = asyncio.Event()
        server = await _sink(received, got)
        address = encode_node_address("127.0.0.1", server.sockets[0].getsockname()[1])
        counters = Counters()
        fw = Forwarder(NodeConfig(port=0), counters)
        loop = asyncio.get_running_loop()
        first = [bytes([i]) * 2413 for i in range(3)]
        fw.send_many([ForwardNow(address, p) for p in first] + [ForwardNow(bytes(32), bytes(2413))], loop.time())
        fw.flush()
        assert counters.dropped == {"bad_address": 1}
        deadline = loop.time() + 5
        while len(received) < 3 and loop.time() < deadline:  # connects, then sends what waited
            got.clear()
            await asyncio.wait_for(got.wait(), 5)
        assert received == first
        more = [bytes([10 + i]) * 2413 for i in range(4)] + [bytes([20]) * 386]  # two sizes, one run
        fw.send_many([ForwardNow(address, p) for p in more], loop.time())
        fw.flush()
        while len(received) < 3 + len(more) and loop.time() < deadline:
            got.clear()
            await asyncio.wait_for(got.wait(), 5)
        assert received == first + more
        assert counters.forwarded == 3 + len(more)
        fw.close()
        server.close()

    asyncio.run(main())
