"""Testnet nodes serve their counters for Prometheus."""

from __future__ import annotations

import random
import socket
import time
import urllib.request

from conftest import wait_until
from loopix import sphinx
from loopix.testnet.launcher import Testnet
from loopix.wire.address import encode_node_address
from loopix.wire.framing import encode_frame


def free_port_pair() -> int:
    for _ in range(200):
        base = random.randrange(20000, 60000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
            return base
        except OSError:
            continue
    raise RuntimeError("no two free ports in a row")


def scrape(port: int, deadline: float) -> str:
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_nodes_export_their_counters():
    base = free_port_pair()
    with Testnet(layers=1, mixnodes_per_layer=1, providers=1, mean_hop_delay_ms=0.0,
                 presence_interval=1.0, prometheus_base_port=base) as net:
        mix, provider = net.nodes["mix-1-1"], net.nodes["provider-1"]
        deadline = time.monotonic() + 20
        before = metric(scrape(base, deadline), "loopix_node_received_packets_total")
        route = [sphinx.Hop(public_key=mix.public_key, address=encode_node_address("127.0.0.1", mix.port)),
                 sphinx.Hop(public_key=provider.public_key, address=encode_node_address("127.0.0.1", provider.port))]
        with socket.create_connection(("127.0.0.1", mix.port), timeout=5) as s:
            for _ in range(5):
                s.sendall(encode_frame(sphinx.build_packet(route, bytes(32), b"x", [0, 0])))
            wait_until(
                lambda: metric(scrape(base, deadline), "loopix_node_received_packets_total") >= before + 5,
                "the mixnode's counter to move", 20, interval=0.1)
        text = scrape(base + 1, deadline)  # the provider: its own counters, drop cover included
        assert 'kind="provider"' in text
        wait_until(lambda: metric(scrape(base + 1, deadline), "loopix_node_drop_cover_total") >= 5,
                   "the provider to count the drop cover", 20, interval=0.1)
