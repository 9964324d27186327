"""The directory server over real TCP on 127.0.0.1: presence, expiry, bad input, metrics."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from conftest import wait_until_async
from loopix.testnet.directory import DirectoryServer, MixPresence, Registry
from loopix.topology import Topology, parse_topology
from loopix.wire.b64 import b64url_encode

SRC = Path(__file__).resolve().parents[1] / "src"


def k64(i: int) -> str:
    return b64url_encode(bytes([i]) * 32)


def run(coro_fn, **server_kwargs):
    async def main():
        async with (
            DirectoryServer(**server_kwargs) as server,
            aiohttp.ClientSession(base_url=server.url) as http,
        ):
            await coro_fn(server, http)

    asyncio.run(main())


async def post(http, path, body):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(path, data=data, headers={"Content-Type": "application/json"}) as r:
        return r.status, orjson.loads(await r.read())


async def get_topology(http) -> Topology:
    async with http.get("/api/presence/topology") as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        return parse_topology(await r.read())


def test_healthcheck_and_empty_topology():
    async def scenario(server, http):
        async with http.get("/api/healthcheck") as r:
            assert (r.status, await r.json()) == (200, {"ok": True})
        async with http.get("/api/presence/topology") as r:
            assert orjson.loads(await r.read()) == {
                "cocoNodes": [],
                "mixNodes": [],
                "mixProviderNodes": [],
            }
        assert await get_topology(http) == Topology([], [])

    run(scenario)


def test_presence_round_trip():
    async def scenario(server, http):
        for i, layer in ((1, 1), (2, 2), (3, 3), (4, 1)):
            body = {"host": f"127.0.0.1:{9000 + i}", "pubKey": k64(i), "layer": layer}
            assert await post(http, "/api/presence/mixnodes", body) == (201, {"ok": True})
        provider = {
            "host": "[::1]:9100",
            "pubKey": k64(9).rstrip("="),  # unpadded is accepted, and published padded
            "registeredClients": [{"pubKey": k64(20)}],
        }
        assert await post(http, "/api/presence/mixproviders", provider) == (201, {"ok": True})
        before = time.time_ns()
        # Announcing again refreshes rather than duplicates.
        await post(
            http, "/api/presence/mixnodes", {"host": "127.0.0.1:9001", "pubKey": k64(1), "layer": 1}
        )

        topo = await get_topology(http)
        assert [(n.host, n.layer) for n in topo.mix_nodes] == [
            ("127.0.0.1:9001", 1),
            ("127.0.0.1:9004", 1),
            ("127.0.0.1:9002", 2),
            ("127.0.0.1:9003", 3),
        ]
        assert topo.mix_nodes[0].last_seen >= before
        (p,) = topo.providers
        assert (p.host, p.key_b64, p.registered_clients) == (
            "[::1]:9100",
            k64(9),
            [bytes([20]) * 32],
        )
        assert topo.num_layers == 3
        async with http.get("/api/presence/topology") as r:
            raw = orjson.loads(await r.read())
        assert raw["mixProviderNodes"][0]["pubKey"] == k64(9)

    run(scenario)


def test_entries_expire_when_not_refreshed():
    async def scenario(server, http):
        kept = {"host": "127.0.0.1:9001", "pubKey": k64(1), "layer": 1}
        gone = {"host": "127.0.0.1:9002", "pubKey": k64(2), "layer": 1}
        gone_provider = {"host": "127.0.0.1:9100", "pubKey": k64(9), "registeredClients": []}
        await post(http, "/api/presence/mixnodes", kept)
        await post(http, "/api/presence/mixnodes", gone)
        await post(http, "/api/presence/mixproviders", gone_provider)
        topo = await get_topology(http)
        assert len(topo.mix_nodes) == 2 and len(topo.providers) == 1

        async def only_kept_left():
            await post(http, "/api/presence/mixnodes", kept)  # the live node keeps announcing
            t = await get_topology(http)
            return [n.host for n in t.mix_nodes] == ["127.0.0.1:9001"] and not t.providers

        await wait_until_async(only_kept_left, "only the live node left", timeout=10, interval=0.02)
        # And a node that comes back reappears.
        await post(http, "/api/presence/mixnodes", gone)
        assert len((await get_topology(http)).mix_nodes) == 2

    run(scenario, expiry_s=0.3)


def test_registry_expiry_with_a_fake_clock():
    now = [100.0]
    registry = Registry(expiry_s=5.0, metrics_window_s=10.0, monotonic=lambda: now[0])
    registry.announce_mix(MixPresence("127.0.0.1:1", k64(1), 1))
    now[0] += 4.9
    assert len(registry.topology().mix_nodes) == 1
    now[0] += 0.2
    assert registry.topology().mix_nodes == []
    registry.add_report({"pubKey": k64(1), "sent": {}, "received": 1})
    now[0] += 9.9
    assert len(registry.reports()) == 1
    now[0] += 0.2
    assert registry.reports() == []


MIX_OK = {"host": "127.0.0.1:9001", "pubKey": k64(1), "layer": 1}
PROVIDER_OK = {
    "host": "127.0.0.1:9100",
    "pubKey": k64(9),
    "registeredClients": [{"pubKey": k64(2)}],
}
METRICS_OK = {"pubKey": k64(1), "sent": {"127.0.0.1:9002": 3}, "received": 4}

BAD = [
    ("/api/presence/mixnodes", b"", "malformed JSON"),
    ("/api/presence/mixnodes", b"{", "malformed JSON"),
    ("/api/presence/mixnodes", b"\xff\xfe", "malformed JSON"),
    ("/api/presence/mixnodes", b"[]", "Expected `object`"),
    ("/api/presence/mixnodes", b"null", "Expected `object`"),
    ("/api/presence/mixnodes", {**MIX_OK, "layer": 0}, "layer"),
    ("/api/presence/mixnodes", {**MIX_OK, "layer": -1}, "layer"),
    ("/api/presence/mixnodes", {**MIX_OK, "layer": 256}, "layer"),
    (
        "/api/presence/mixnodes",
        b'{"host":"127.0.0.1:1","pubKey":"x","layer":1' + b"0" * 30 + b"}",
        "layer",
    ),
    ("/api/presence/mixnodes", {**MIX_OK, "layer": "1"}, "layer"),
    ("/api/presence/mixnodes", {**MIX_OK, "layer": True}, "layer"),
    ("/api/presence/mixnodes", {**MIX_OK, "layer": 1.5}, "layer"),
    ("/api/presence/mixnodes", {"host": "127.0.0.1:9001", "pubKey": k64(1)}, "layer"),
    ("/api/presence/mixnodes", {**MIX_OK, "host": 5}, "host"),
    ("/api/presence/mixnodes", {**MIX_OK, "host": "localhost:9001"}, "not an IP address"),
    ("/api/presence/mixnodes", {**MIX_OK, "host": "127.0.0.1"}, "ip:port"),
    ("/api/presence/mixnodes", {**MIX_OK, "host": "127.0.0.1:0"}, "out of range"),
    ("/api/presence/mixnodes", {**MIX_OK, "pubKey": "shorty"}, "expected 32"),
    ("/api/presence/mixnodes", {**MIX_OK, "pubKey": "a+/=" * 11}, "not base64url"),
    ("/api/presence/mixnodes", {**MIX_OK, "pubKey": None}, "pubKey"),
    ("/api/presence/mixproviders", b"{]", "malformed JSON"),
    ("/api/presence/mixproviders", {**PROVIDER_OK, "registeredClients": "x"}, "registeredClients"),
    (
        "/api/presence/mixproviders",
        {**PROVIDER_OK, "registeredClients": [{"pubKey": "x"}]},
        "registered client #0",
    ),
    ("/api/presence/mixproviders", {**PROVIDER_OK, "registeredClients": [7]}, "registeredClients"),
    ("/api/presence/mixproviders", {**PROVIDER_OK, "host": "[::1]"}, "[ipv6]:port"),
    ("/api/presence/mixproviders", {**PROVIDER_OK, "clientListener": "x:1"}, "clientListener"),
    ("/api/presence/mixproviders", {**PROVIDER_OK, "pubKey": k64(9)[:-2]}, "expected 32"),
    ("/api/metrics/mixes", b"nope", "malformed JSON"),
    ("/api/metrics/mixes", b"[1, 2]", "Expected `object`"),
    ("/api/metrics/mixes", {**METRICS_OK, "pubKey": "zz"}, "expected 32"),
    ("/api/metrics/mixes", {**METRICS_OK, "sent": [1]}, "sent"),
    ("/api/metrics/mixes", {**METRICS_OK, "sent": {"a": "1"}}, "sent"),
    ("/api/metrics/mixes", {**METRICS_OK, "sent": {"a": -1}}, "sent"),
    ("/api/metrics/mixes", {**METRICS_OK, "received": -5}, "received"),
    ("/api/metrics/mixes", {"pubKey": k64(1), "sent": {}}, "received"),
    ("/api/metrics/mixes", {**METRICS_OK, "dropped": {"full": "x"}}, "dropped"),
    ("/api/metrics/mixes", {**METRICS_OK, "queue": -1}, "queue"),
]


def test_bad_input_is_a_400_with_a_message():
    async def scenario(server, http):
        for path, body, message in BAD:
            status, reply = await post(http, path, body)
            assert status == 400, (path, body, reply)
            assert set(reply) == {"error"} and message in reply["error"], (path, body, reply)
        # Nothing bad got in, and the server is still fine.
        assert await get_topology(http) == Topology([], [])
        async with http.get("/api/metrics/mixes") as r:
            assert await r.json() == []
        for path, body in (
            ("/api/presence/mixnodes", MIX_OK),
            ("/api/presence/mixproviders", PROVIDER_OK),
            ("/api/metrics/mixes", METRICS_OK),
        ):
            assert await post(http, path, body) == (201, {"ok": True})

    run(scenario)


def test_other_errors_are_json_too():
    async def scenario(server, http):
        async with http.get("/api/nothing") as r:
            assert r.status == 404 and "error" in await r.json()
        async with http.put("/api/presence/mixnodes", data=b"{}") as r:
            assert r.status == 405 and "error" in await r.json()
        async with http.post("/api/presence/mixnodes", data=b"x" * (2 << 20)) as r:
            assert r.status == 413 and "error" in await r.json()
        async with http.get("/api/healthcheck") as r:
            assert r.status == 200

    run(scenario)


def test_metrics_reports():
    async def scenario(server, http):
        before = time.time_ns()
        await post(http, "/api/metrics/mixes", {**METRICS_OK, "pubKey": k64(1).rstrip("=")})
        extra = {
            "pubKey": k64(2),
            "sent": {"127.0.0.1:9001": 10, "127.0.0.1:9004": 5},
            "received": 20,
            "dropped": {"queue full": 2},
            "queue": 7,
            "custom": {"anything": [1, 2]},
        }
        await post(http, "/api/metrics/mixes", extra)
        await post(http, "/api/metrics/mixes", {**METRICS_OK, "received": 9})
        async with http.get("/api/metrics/mixes") as r:
            assert r.status == 200
            reports = orjson.loads(await r.read())
        assert [r["pubKey"] for r in reports] == [k64(1), k64(2), k64(1)]
        stamps = [r.pop("timestamp") for r in reports]
        assert stamps == sorted(stamps) and stamps[0] >= before
        assert reports[1] == extra
        assert reports[2]["received"] == 9

    run(scenario)


def test_dashboard_page_is_self_contained():
    async def scenario(server, http):
        async with http.get("/") as r:
            assert r.status == 200
            assert r.content_type == "text/html"
            page = await r.text()
        assert "/api/presence/topology" in page and "/api/metrics/mixes" in page
        assert "data-pubkey" in page and "rate-sent" in page and "rate-received" in page
        assert "://" not in page.replace("http://www.w3.org", "")  # no external assets

    run(scenario)


def test_main_runs_as_a_process():
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopix.testnet.directory", "--port", "0", "--expiry", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("directory listening on http://127.0.0.1:"), line
        url = line.split()[-1]

        async def check():
            async with aiohttp.ClientSession() as http, http.get(url + "api/healthcheck") as r:
                assert await r.json() == {"ok": True}

        asyncio.run(check())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_main_reports_a_busy_port():
    async def scenario(server, http):
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loopix.testnet.directory",
            "--port",
            str(server.port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            _out, err = await asyncio.wait_for(proc.communicate(), timeout=20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 1
        assert b"cannot listen" in err

    run(scenario)


@pytest.mark.parametrize("args", [["--expiry", "0"], ["--port", "x"]])
def test_main_rejects_bad_arguments(args):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-m", "loopix.testnet.directory", *args],
        capture_output=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
