"""Clients on a real local mixnet: messages alice → bob through three mixnodes and two providers,
intact (1 MiB included); loops come back; the sockets carry it all."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import uvloop
import websockets

from _procs import alive, children_of
from conftest import make_testnet_fixture, wait_until, wait_until_async
from loopix import config as cfg
from loopix.cli import init_client
from loopix.client.api import Client
from loopix.testnet.launcher import Testnet
from loopix.wire.b64 import b64url_encode

testnet = make_testnet_fixture(
    "testnet", layers=3, mixnodes_per_layer=1, providers=2, mean_hop_delay_ms=5.0, presence_interval=1.0
)


def make_client(home: Path, name: str, net: Testnet, provider: bytes, payload_rate: float = 200.0,
                delivery: str = "push") -> None:
    init_client(name, directory=net.topology_url, provider=b64url_encode(provider), home=home)
    path = cfg.config_path(name, home)
    conf = cfg.load(path)
    traffic = msgspec.structs.replace(conf.traffic, payload_rate=payload_rate, loop_rate=10.0,
                                      drop_rate=5.0, mean_hop_delay_ms=5.0, delivery=delivery, fetch_rate=20.0)
    cfg.save(msgspec.structs.replace(conf, traffic=traffic, runtime=msgspec.structs.replace(conf.runtime, workers=1)), path)


async def next_message(sub, timeout: float) -> bytes:
    return (await asyncio.wait_for(sub.__anext__(), timeout)).data


def test_python_api_delivers_messages_intact(testnet, tmp_path):
    p1, p2 = (testnet.nodes[n].public_key for n in ("provider-1", "provider-2"))
    make_client(tmp_path, "alice", testnet, p1)
    make_client(tmp_path, "bob", testnet, p2, delivery="pull")  # Loopix pulls; alice takes pushes
    big = os.urandom(2**20)

    async def scenario():
        async with Client.load("alice", tmp_path) as alice, Client.load("bob", tmp_path) as bob:
            assert bob.address.endswith(b64url_encode(p2))
            inbox = bob.subscribe()
            await alice.send_message(b"hello bob", bob.address)
            assert await next_message(inbox, 30) == b"hello bob"
            await alice.send_message(big, bob.address)
            assert await next_message(inbox, 90) == big
            back = alice.subscribe()
            await bob.send_message("héllo alice".encode(), alice.address)
            assert await next_message(back, 30) == "héllo alice".encode()
            await wait_until_async(lambda: alice.stats.loops_back > 0, "a loop to come back", 20)
            assert alice.stats.messages_received == 1 and bob.stats.messages_received == 2
            with pytest.raises(ValueError, match="recipient"):
                await alice.send_message(b"x", "not-an-address")

    uvloop.run(scenario())


def test_websocket_clients_as_processes(testnet, tmp_path):
    """`loopix-client socket` for two identities, talking through ws://localhost:PORT/mix."""
    p1 = testnet.nodes["provider-1"].public_key
    make_client(tmp_path, "carol", testnet, p1, payload_rate=50.0)
    make_client(tmp_path, "dave", testnet, p1, payload_rate=50.0)
    env = {**os.environ, "LOOPIX_HOME": str(tmp_path)}
    procs = []
    kids: set[int] = set()
    try:
        ports = []
        for name in ("carol", "dave"):
            proc = subprocess.Popen(
                [sys.executable, "-m", "loopix", "socket", "--id", name, "--socket", "websocket", "--port", "0",
                 "--status-interval", "1"],
                env=env, stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            for line in proc.stdout:  # bounded by the process: it prints these lines or exits
                if line.startswith("Listening on ws://"):
                    ports.append(int(line.rsplit(":", 1)[1].split("/")[0]))
                    break
            assert len(ports) == len(procs), f"{name} did not start"

        async def talk():
            async with websockets.connect(f"ws://127.0.0.1:{ports[0]}/mix") as carol, \
                    websockets.connect(f"ws://127.0.0.1:{ports[1]}/mix") as dave:
                await dave.send(json.dumps({"type": "selfAddress"}))
                dave_addr = json.loads(await asyncio.wait_for(dave.recv(), 10))["address"]
                await carol.send(json.dumps({"type": "send", "message": "hi dave", "recipient": dave_addr}))
                await carol.send(json.dumps({"type": "send", "message": "x", "recipient": "nope"}))
                err = json.loads(await asyncio.wait_for(carol.recv(), 10))
                assert err["type"] == "error"
                got = json.loads(await asyncio.wait_for(dave.recv(), 30))
                assert got == {"type": "received", "message": "hi dave"}

        uvloop.run(talk())
        kids = set().union(*(children_of(p.pid) for p in procs))
        assert len(kids) >= 4, "each client runs a sender and workers"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                assert proc.wait(15) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.stdout.close()
    wait_until(lambda: not any(alive(pid) for pid in kids), "the workers and senders to exit with their client")

