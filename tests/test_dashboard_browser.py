"""The dashboard in a real headless Chromium, driven over the DevTools protocol.

The directory runs in this process; nodes are simulated by announcing and posting growing counters.
We read the page's DOM until every node is shown with non-zero rates, then speed the traffic up and
wait for the displayed rates to follow.
"""

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import connect

from conftest import wait_until_async
from loopix.testnet.directory import DirectoryServer
from loopix.wire.b64 import b64url_encode

CHROMIUM = os.environ.get("LOOPIX_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]

pytestmark = pytest.mark.skipif(
    not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)),
    reason=f"chromium not installed ({CHROMIUM}); apt-get install chromium",
)

MIXES = [
    (f"127.0.0.1:{9001 + i}", b64url_encode(bytes([i + 1]) * 32), layer)
    for i, layer in enumerate([1, 1, 2, 3])
]
PROVIDER = ("127.0.0.1:9100", b64url_encode(bytes([99]) * 32))
ALL_KEYS = {key for _, key, _ in MIXES} | {PROVIDER[1]}

READ_ROWS = """JSON.stringify({
  status: document.getElementById("status").dataset.state,
  polls: Number(document.body.dataset.polls),
  rows: [...document.querySelectorAll("tr.node")].map((tr) => ({
    pubkey: tr.dataset.pubkey,
    kind: tr.dataset.kind,
    section: tr.closest("section").dataset.section,
    sent: Number(tr.querySelector(".rate-sent").dataset.rate),
    received: Number(tr.querySelector(".rate-received").dataset.rate),
  })),
})"""




class DevTools:
    """Just enough of the Chrome DevTools protocol: numbered calls, events ignored."""

    def __init__(self, ws):
        self.ws = ws
        self.last_id = 0

    async def call(self, method, **params):
        self.last_id += 1
        call_id = self.last_id
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"]["value"]


class Traffic:
    """Simulated nodes: announce presence and post cumulative counters at a settable speed."""

    def __init__(self, http):
        self.http = http
        self.speed = 1.0
        self.sent = dict.fromkeys(ALL_KEYS, 0)
        self.received = dict.fromkeys(ALL_KEYS, 0)

    async def announce(self):
        for host, key, layer in MIXES:
            body = {"host": host, "pubKey": key, "layer": layer}
            async with self.http.post("/api/presence/mixnodes", json=body) as r:
                assert r.status == 201
        body = {"host": PROVIDER[0], "pubKey": PROVIDER[1], "registeredClients": []}
        async with self.http.post("/api/presence/mixproviders", json=body) as r:
            assert r.status == 201

    async def report(self):
        for i, key in enumerate(sorted(ALL_KEYS)):
            self.sent[key] += round(self.speed * 10 * (i + 1))
            self.received[key] += round(self.speed * 5 * (i + 1))
            body = {
                "pubKey": key,
                "sent": {"127.0.0.1:9100": self.sent[key]},
                "received": self.received[key],
                "queue": i,
            }
            async with self.http.post("/api/metrics/mixes", json=body) as r:
                assert r.status == 201

    async def run(self):
        tick = 0
        while True:
            if tick % 10 == 0:
                await self.announce()
            await self.report()
            tick += 1
            await asyncio.sleep(0.1)


async def start_chromium(profile: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so its helpers can be killed with it
    )
    port_file = profile / "DevToolsActivePort"

    async def port_known():
        if proc.poll() is not None:
            raise AssertionError(f"chromium exited early with {proc.returncode}")
        text = port_file.read_text() if port_file.exists() else ""
        return int(text.split()[0]) if text.strip() else None

    try:
        port = await wait_until_async(port_known, "the browser's debugging port", timeout=60, interval=0.1)
    except BaseException:
        stop_chromium(proc)
        raise
    return proc, port


def stop_chromium(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    # Whatever is left of the group (renderers, zygotes) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def page_socket(port: int) -> str:
    async def page():
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/json/list") as r,
        ):
            targets = await r.json()
        return next((t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"), None)

    return await wait_until_async(page, "the dashboard page", timeout=30, interval=0.1)


def test_dashboard_shows_nodes_and_live_rates():
    async def scenario():
        with tempfile.TemporaryDirectory(prefix="loopix-chromium-") as profile:
            async with (
                DirectoryServer(expiry_s=5.0) as server,
                aiohttp.ClientSession(base_url=server.url) as http,
            ):
                traffic = Traffic(http)
                await traffic.announce()
                feeder = asyncio.create_task(traffic.run())
                proc, port = await start_chromium(Path(profile))
                try:
                    async with connect(await page_socket(port), max_size=None) as ws:
                        cdp = DevTools(ws)
                        await cdp.call("Page.navigate", url=f"{server.url}/?poll=250")

                        async def rows_with_rates():
                            try:
                                state = json.loads(await cdp.evaluate(READ_ROWS))
                            except RuntimeError:  # still navigating: the page's elements aren't there yet
                                return None
                            rows = {r["pubkey"]: r for r in state["rows"]}
                            if set(rows) != ALL_KEYS or state["status"] != "ok":
                                return None
                            if all(r["sent"] > 0 and r["received"] > 0 for r in rows.values()):
                                return rows
                            return None

                        rows = await wait_until_async(rows_with_rates, "rows with rates", timeout=30, interval=0.1)
                        for host, key, layer in MIXES:
                            assert rows[key]["kind"] == "mix", host
                            assert rows[key]["section"] == f"layer-{layer}", host
                        assert rows[PROVIDER[1]]["kind"] == "provider"
                        assert rows[PROVIDER[1]]["section"] == "providers"

                        # Five times the traffic: every displayed rate must rise well above before.
                        traffic.speed = 5.0

                        async def rates_followed():
                            state = json.loads(await cdp.evaluate(READ_ROWS))
                            now = {r["pubkey"]: r for r in state["rows"]}
                            return set(now) == ALL_KEYS and all(
                                now[k]["sent"] > 2.5 * rows[k]["sent"]
                                and now[k]["received"] > 2.5 * rows[k]["received"]
                                for k in ALL_KEYS
                            )

                        await wait_until_async(rates_followed, "the rates to follow the traffic", timeout=30, interval=0.1)

                        # A screenshot right after load must already show the right rates: with
                        # the page's own polls blocked, only what came inside the page can show.
                        await cdp.call("Network.enable")
                        await cdp.call("Network.setBlockedURLs", urls=["*/api/*"])
                        await cdp.call("Page.navigate", url=f"{server.url}/?poll=60000")

                        async def loaded_rows():
                            try:
                                if await cdp.evaluate("document.readyState") != "complete":
                                    return None
                                state = json.loads(await cdp.evaluate(READ_ROWS))
                            except RuntimeError:  # still navigating
                                return None
                            return state if state["polls"] >= 1 else None  # its one poll has failed

                        state = await wait_until_async(loaded_rows, "the page loaded with its polls blocked", timeout=30, interval=0.1)
                        shown = {r["pubkey"]: r for r in state["rows"]}
                        assert set(shown) == ALL_KEYS
                        # Traffic posts node i's counters +50(i+1) sent, +25(i+1) received per tick
                        # of at least 0.1 s: the rate is at most 500(i+1)/s, and well above 0.
                        for i, key in enumerate(sorted(ALL_KEYS)):
                            assert 100 * (i + 1) < shown[key]["sent"] <= 500 * (i + 1) * 1.05, shown[key]
                            assert 50 * (i + 1) < shown[key]["received"] <= 250 * (i + 1) * 1.05, shown[key]
                finally:
                    feeder.cancel()
                    stop_chromium(proc)
                    with contextlib.suppress(asyncio.CancelledError):
                        await feeder

        async def chromium_gone():
            return not group_alive(proc.pid)

        await wait_until_async(chromium_gone, "chromium to exit", timeout=15, interval=0.1)  # killed helpers may take a moment to be reaped

    asyncio.run(scenario())
