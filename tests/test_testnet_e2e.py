"""End to end on a real testnet: directory, 3 mixnodes and 2 providers as processes on 127.0.0.1.

One testnet serves the whole module; tests that disturb it (restart, kill) put it back. Waiting is
always polling against a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from typing import Any

import pytest

from conftest import DEADLINE, make_testnet_fixture, wait_until
from loopix.csprng import Csprng
from loopix.sphinx import Hop, build_packet, keypair
from loopix.testnet.launcher import Testnet
from loopix.wire.ack import ACK_PREFIX_SIZE
from loopix.wire.address import encode_node_address
from loopix.wire.framing import encode_frame
from loopix.wire.provider import (
    ChallengeReceived,
    ClientSide,
    Delivered,
    PullResult,
    RegistrationAccepted,
)

PRESENCE = 0.5
EXPIRY = 1.5


net = make_testnet_fixture(
    "net",
    layers=3,
    mixnodes_per_layer=1,
    providers=2,
    presence_interval=PRESENCE,
    expiry=EXPIRY,
    metrics_interval=0.2,
)


def counter(net: Testnet, name: str, key: str, sub: str | None = None) -> int:
    report = net.latest_metrics(name) or {}
    value = report.get(key, 0)
    if sub is not None:
        value = (value or {}).get(sub, 0)
    return int(value or 0)


def route(net: Testnet, provider: str) -> tuple[list[Hop], bytes]:
    """Hops mix-1 → mix-2 → mix-3 → provider, from the directory's topology."""
    topo = net.topology()
    nodes = topo.choose_route(Csprng.seeded(1), net.nodes[provider].public_key)
    hops = [Hop(n.pub_key, n.sphinx_address) for n in nodes]
    return hops, nodes[0].sphinx_address


def packet_for(net: Testnet, provider: str, recipient: bytes, message: bytes) -> bytes:
    hops, _ = route(net, provider)
    return build_packet(hops, recipient, message, [1_000_000] * len(hops), identifier=bytes(16))


def send_raw(net: Testnet, name: str, *packets: bytes) -> None:
    """Nym-framed packets straight to a node, as another node would send them."""
    with socket.create_connection(net.nodes[name].address, timeout=5) as s:
        s.sendall(b"".join(encode_frame(p) for p in packets))


class Client:
    """A minimal asyncio client over `ClientSide` (the real runtime lives in loopix.client)."""

    def __init__(self, secret: bytes, provider_key: bytes, push: bool = True) -> None:
        self.side = ClientSide(secret, provider_key, push=push)
        self.events: list[Any] = []

    async def connect(self, address: tuple[str, int]) -> Client:
        self.reader, self.writer = await asyncio.open_connection(*address)
        self.writer.write(self.side.send_hello())
        await self.expect(ChallengeReceived)
        self.writer.write(self.side.send_register())
        event = await self.next_event()
        if not isinstance(event, RegistrationAccepted):
            raise AssertionError(f"registration failed: {event}")
        return self

    async def next_event(self, timeout: float = DEADLINE) -> Any:
        while not self.events:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("provider closed the connection")
            self.events += self.side.receive_data(data)
        return self.events.pop(0)

    async def expect(self, kind: type, timeout: float = DEADLINE) -> Any:
        event = await self.next_event(timeout)
        assert isinstance(event, kind), event
        return event

    async def pull(self) -> PullResult:
        self.writer.write(self.side.send_pull())
        return await self.expect(PullResult)

    async def pull_until_message(self, timeout: float = DEADLINE) -> PullResult:
        deadline = time.monotonic() + timeout
        while True:
            result = await self.pull()
            if result.messages or time.monotonic() > deadline:
                return result
            await asyncio.sleep(0.05)

    def ack(self, ids: list[int]) -> None:
        self.writer.write(self.side.send_ack(ids))

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def connect(net: Testnet, provider: str, secret: bytes, push: bool = True) -> Any:
    return Client(secret, net.nodes[provider].public_key, push).connect(net.nodes[provider].address)


def test_packet_through_three_mixnodes_pushed_and_pulled(net):
    alice_sk, alice_pk = keypair()
    bob_sk, bob_pk = keypair()
    carol_sk, _ = keypair()
    msg_a = os.urandom(2048)  # a full payload, byte for byte
    msg_b = b"for bob, by pull"

    async def main():
        alice = await connect(net, "provider-1", alice_sk)
        bob = await connect(net, "provider-1", bob_sk, push=False)
        carol = await connect(net, "provider-1", carol_sk, push=False)
        # Into mix-1 as a node would send it; out of provider-1 by push.
        send_raw(net, "mix-1-1", packet_for(net, "provider-1", alice_pk, msg_a))
        delivered = await alice.expect(Delivered)
        # a full payload starts with a SURB-ack prefix (here random bytes: its "first hop" is no
        # address, so that ack goes nowhere); the provider stores what follows it, byte for byte
        assert delivered.message == msg_a[ACK_PREFIX_SIZE:]
        alice.ack([delivered.id])
        # Into the mixnet through Alice's provider connection (SEND); out by Bob's pull.
        _, first_hop = route(net, "provider-1")
        alice.writer.write(
            alice.side.send_packet(first_hop, packet_for(net, "provider-1", bob_pk, msg_b))
        )
        pulled = await bob.pull_until_message()
        assert [m.message for m in pulled.messages] == [msg_b]
        # Carol, registered at the same provider, cannot read Bob's inbox.
        assert (await carol.pull()).messages == ()
        # Nor can someone who claims Bob's key without his secret.
        impostor = Client(carol_sk, net.nodes["provider-1"].public_key)
        impostor.side.client_key = bob_pk
        with pytest.raises(AssertionError, match=r"registration failed: ProviderError.*bad proof"):
            await impostor.connect(net.nodes["provider-1"].address)
        # Unacknowledged on this connection: not handed out twice, but still stored.
        assert (await bob.pull()).messages == ()
        bob.ack([m.id for m in pulled.messages])
        await bob.close()
        bob = await connect(net, "provider-1", bob_sk, push=False)
        assert (await bob.pull()).messages == ()  # the ACK deleted it
        for c in (alice, bob, carol):
            await c.close()

    asyncio.run(main())
    assert wait_until(lambda: counter(net, "provider-1", "stored") >= 2, "stored counter")


def test_replayed_packet_is_dropped(net):
    sk, pk = keypair()

    async def main():
        client = await connect(net, "provider-2", sk)
        before = counter(net, "mix-1-1", "dropped", "replay")
        packet = packet_for(net, "provider-2", pk, b"once")
        send_raw(net, "mix-1-1", packet)
        send_raw(net, "mix-1-1", packet)
        assert (await client.expect(Delivered)).message == b"once"
        wait_until(
            lambda: counter(net, "mix-1-1", "dropped", "replay") > before, "replay drop counted"
        )
        with pytest.raises(TimeoutError):
            await client.next_event(timeout=0.3)
        await client.close()

    asyncio.run(main())


def test_replayed_packet_is_refused_by_a_restarted_mixnode(net):
    """The launcher gives each node a replay file (0600, beside its key): a packet captured before
    a restart is refused after it, not forwarded again."""
    replay_file = os.path.join(net.nodes["mix-1-1"].key_dir, "replay.bin")
    sk, pk = keypair()

    async def main():
        client = await connect(net, "provider-2", sk)
        packet = packet_for(net, "provider-2", pk, b"captured")
        send_raw(net, "mix-1-1", packet)
        assert (await client.expect(Delivered)).message == b"captured"
        net.restart("mix-1-1")  # SIGTERM: the filter is saved at shutdown
        assert os.stat(replay_file).st_mode & 0o777 == 0o600
        tags = (os.path.getsize(replay_file) - 5 - 32) // 32  # magic, node key, 32-byte tags
        assert tags >= 1
        wait_until(  # the first report of the new process: it loaded the file
            lambda: counter(net, "mix-1-1", "replay_tags_loaded") == tags, "restarted node's metrics"
        )
        send_raw(net, "mix-1-1", packet)  # the replay, to the restarted node
        wait_until(lambda: counter(net, "mix-1-1", "dropped", "replay") > 0, "replay drop counted")
        with pytest.raises(TimeoutError):
            await client.next_event(timeout=0.5)
        await client.close()

    asyncio.run(main())


def test_corrupt_frame_closes_only_that_connection(net):
    sk, pk = keypair()

    async def main():
        client = await connect(net, "provider-2", sk)
        before = counter(net, "mix-1-1", "dropped", "corrupt_frame")
        good = socket.create_connection(net.nodes["mix-1-1"].address, timeout=5)
        bad = socket.create_connection(net.nodes["mix-1-1"].address, timeout=5)
        with good, bad:
            bad.sendall(b"\x09 this is not a Nym frame")
            assert bad.recv(10) == b""  # the node closed it
            good.sendall(encode_frame(packet_for(net, "provider-2", pk, b"still flowing")))
            assert (await client.expect(Delivered)).message == b"still flowing"
        wait_until(
            lambda: counter(net, "mix-1-1", "dropped", "corrupt_frame") > before, "corrupt count"
        )
        await client.close()

    asyncio.run(main())


def test_dead_next_hop_does_not_stall(net):
    sk, pk = keypair()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    _, dead_key = keypair()
    mix1 = net.topology().mix_nodes[0]
    dead_route = [
        Hop(mix1.pub_key, mix1.sphinx_address),
        Hop(dead_key, encode_node_address("127.0.0.1", dead_port)),
    ]
    doomed = [build_packet(dead_route, pk, b"lost", [0, 0]) for _ in range(200)]

    async def main():
        client = await connect(net, "provider-2", sk)
        t0 = time.monotonic()
        send_raw(net, "mix-1-1", *doomed, packet_for(net, "provider-2", pk, b"alive"))
        assert (await client.expect(Delivered, timeout=5)).message == b"alive"
        assert time.monotonic() - t0 < 5
        await client.close()

    asyncio.run(main())

    def dead_drops() -> int:
        return sum(counter(net, "mix-1-1", "dropped", r) for r in ("connect_failed", "peer_down"))

    assert wait_until(lambda: dead_drops() >= len(doomed), "drops for the dead hop")


def test_provider_restart_keeps_undelivered_messages(net):
    sk, pk = keypair()

    async def register_and_leave():
        client = await connect(net, "provider-2", sk, push=False)
        await client.close()

    asyncio.run(register_and_leave())
    stored = counter(net, "provider-2", "stored")
    send_raw(net, "mix-1-1", packet_for(net, "provider-2", pk, b"survives a restart"))
    wait_until(lambda: counter(net, "provider-2", "stored") > stored, "message stored")
    net.restart("provider-2")

    async def come_back():
        client = await connect(net, "provider-2", sk)
        assert (await client.expect(Delivered)).message == b"survives a restart"
        await client.close()

    asyncio.run(come_back())


def test_killed_mixnode_leaves_topology_within_presence_window(net):
    net.kill("mix-2-1", signal.SIGKILL)
    took = net.wait_absent("mix-2-1", timeout=EXPIRY + 2 * PRESENCE + 1)
    assert took <= EXPIRY + 2 * PRESENCE + 0.5
    assert len(net.topology().mix_nodes) == 2
    net.start_node("mix-2-1")
    assert len(net.topology().mix_nodes) == 3


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_foreground_launcher_stops_every_process(tmp_path, sig):
    import subprocess
    import sys

    env = dict(os.environ, LOOPIX_HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "loopix.testnet.launcher", "--layers", "1",
           "--mixnodes-per-layer", "1", "--providers", "1", "--base-port", "0",
           "--presence-interval", "0.5"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            lines.append(line)
            if "testnet ready" in line or not line:
                break
        assert any("testnet ready: directory http://127.0.0.1:" in x for x in lines), lines
        children = _children(proc.pid)
        assert len(children) == 3  # directory, mixnode, provider
        assert (tmp_path / "testnet" / "testnet.json").exists()
        proc.send_signal(sig)
        assert proc.wait(15) == (130 if sig == signal.SIGINT else 0)  # Ctrl-C: 130, as a shell reports it
        wait_until(lambda: not any(_alive(c) for c in children), "children gone", 5)
        assert not (tmp_path / "testnet" / "testnet.json").exists()  # init must not aim at a stopped testnet
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
