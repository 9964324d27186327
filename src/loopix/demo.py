"""`./scripts/demo`: a local mixnet, two clients on it, real messages both ways through their
websockets, and the cover traffic that hides them. Everything it starts, it stops.

Each step runs the real command line (`loopix-client testnet`, `init`, `socket`) as a process, and
prints the command, so the demo doubles as a tour.
"""

from __future__ import annotations

try:  # Ctrl-C while the modules load: quiet, status 130, as at any other moment
    from loopix.interrupts import held_sigint

    with held_sigint(exit_code=130):
        import argparse
        import asyncio
        import json
        import os
        import re
        import shutil
        import signal
        import subprocess
        import sys
        import tempfile
        import threading
        import time
        import urllib.request

        import websockets

        from loopix.topology import parse_topology
        from loopix.wire.b64 import b64url_encode
except KeyboardInterrupt:
    raise SystemExit(130) from None

CLI = [sys.executable, "-m", "loopix"]


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}", flush=True)


class Proc:
    """A child process whose output lines are echoed with a prefix and kept for matching."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], echo: bool = True):
        print(f"    $ loopix-client {' '.join(args)}", flush=True)
        self.name = name
        self.lines: list[str] = []
        self.proc = subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.echo = echo
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip()
            self.lines.append(line)
            if self.echo:
                print(f"    [{self.name}] {line}", flush=True)

    def wait_line(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                m = re.search(pattern, line)
                if m:
                    return m
            seen = len(self.lines)
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited (code {self.proc.returncode}) before printing {pattern!r}")
            time.sleep(0.05)
        raise SystemExit(f"{self.name}: no {pattern!r} within {timeout:.0f}s")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


async def exchange(alice_port: int, bob_port: int) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{alice_port}/mix") as alice, \
            websockets.connect(f"ws://127.0.0.1:{bob_port}/mix") as bob:
        addresses = {}
        for name, ws in (("alice", alice), ("bob", bob)):
            await ws.send(json.dumps({"type": "selfAddress"}))
            addresses[name] = json.loads(await asyncio.wait_for(ws.recv(), 10))["address"]
            print(f"    {name}'s address: {addresses[name]}")
        plan = [
            (alice, bob, "bob", "Hello Bob, this went through three mixnodes."),
            (bob, alice, "alice", "Hi Alice! Nobody watching the wires can tell we talked."),
            (alice, bob, "bob", "And our packets look exactly like the cover traffic around them."),
        ]
        for sender, receiver, to, text in plan:
            frm = "alice" if to == "bob" else "bob"
            t0 = time.monotonic()
            await sender.send(json.dumps({"type": "send", "message": text, "recipient": addresses[to]}))
            got = json.loads(await asyncio.wait_for(receiver.recv(), 60))
            print(f"    {frm} -> {to}: {got['message']!r}  ({(time.monotonic() - t0) * 1000:.0f} ms)", flush=True)
            assert got == {"type": "received", "message": text}, got


def node_names(home: str) -> dict[str, tuple[str, int]]:
    """pubKey -> (kind, layer) of every node, from the testnet.json the testnet wrote."""
    try:
        with open(os.path.join(home, "testnet", "testnet.json")) as f:
            nodes = json.load(f).get("nodes", [])
    except (OSError, ValueError):
        return {}
    return {n["pubKey"]: (n.get("kind", "?"), int(n.get("layer") or 0)) for n in nodes if "pubKey" in n}


def counter_lines(latest: dict, names: dict[str, tuple[str, int]]) -> list[str]:
    """One line per node: its kind and layer (mixnodes by layer, then providers), then counters."""
    def order(item):
        kind, layer = names.get(str(item[0]), ("?", 0))
        return (kind != "mixnode", layer, str(item[0]))

    lines = []
    for key, r in sorted(latest.items(), key=order):
        kind, layer = names.get(str(key), ("node", 0))
        what = f"mixnode, layer {layer}" if kind == "mixnode" else kind
        sent = sum((r.get("sent") or {}).values())
        lines.append(f"{what:<17} {str(key)[:12]}…  received {r.get('received', 0):6}  sent {sent:6}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./scripts/demo",
        description="Start a local mixnet (a directory, 3 layers x 2 mixnodes, 2 providers on 127.0.0.1), "
        "run two clients with a websocket each, send real messages both ways, show the cover "
        "traffic, then stop everything. Everything lives in a temporary LOOPIX_HOME, removed at the "
        "end. Ctrl-C stops it at any moment (exit status 130).",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        parse_args(argv)
        return _demo()
    except KeyboardInterrupt:  # everything started is stopped on the way out (finally below)
        print("    interrupted", flush=True)
        return 130


def _demo() -> int:
    procs: list[Proc] = []
    home = ""
    try:
        home = tempfile.mkdtemp(prefix="loopix-demo-")
        env = {**os.environ, "LOOPIX_HOME": home, "PYTHONUNBUFFERED": "1"}
        say("Starting a local mixnet: a directory, 3 layers x 2 mixnodes, 2 providers (127.0.0.1)")
        net = Proc("testnet", ["testnet", "--base-port", "0", "--mean-hop-delay-ms", "20"], env)
        procs.append(net)
        url = net.wait_line(r"(http://127\.0\.0\.1:\d+)", 60).group(1)
        topology_url = f"{url}/api/presence/topology"
        with urllib.request.urlopen(topology_url, timeout=5) as resp:
            topo = parse_topology(resp.read())
        providers = sorted(p.pub_key for p in topo.providers)
        print(f"    directory {url}: {len(topo.mix_nodes)} mixnodes, {len(topo.providers)} providers; "
              f"dashboard at {url}/")

        say("Creating two identities, each with its own provider")
        for name, provider in (("alice", providers[0]), ("bob", providers[-1])):
            # "--provider=KEY": a base64url key may start with "-"
            p = Proc(name, ["init", "--id", name, "--directory", topology_url, f"--provider={b64url_encode(provider)}"], env)
            procs.append(p)  # stopped with the rest if we are interrupted meanwhile
            if p.proc.wait(30) != 0:
                raise SystemExit(f"init {name} failed")
            procs.remove(p)
            p.stop()

        say("Running both clients with a websocket each (Poisson cover traffic starts at once)")
        ports = {}
        for name in ("alice", "bob"):
            p = Proc(name, ["socket", "--id", name, "--socket", "websocket", "--port", "0", "--status-interval", "3"], env)
            procs.append(p)
            ports[name] = int(p.wait_line(r"Listening on ws://localhost:(\d+)/mix", 60).group(1))

        say("Sending real messages both ways through the websockets")
        asyncio.run(exchange(ports["alice"], ports["bob"]))

        say("Letting the cover traffic flow for a few seconds (status lines every 3 s)")
        time.sleep(7)
        with urllib.request.urlopen(f"{url}/api/metrics/mixes", timeout=5) as resp:
            reports = json.loads(resp.read())
        latest = {}
        for r in reports if isinstance(reports, list) else reports.get("reports", []):
            latest[r.get("pubKey")] = r
        print("    node counters from the directory (cumulative):")
        for line in counter_lines(latest, node_names(home)):
            print(f"      {line}")
        say("Stopping everything")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        try:
            for p in reversed(procs):
                code = p.stop()
                print(f"    {p.name} stopped (exit {code})", flush=True)
        finally:
            if home:
                shutil.rmtree(home, ignore_errors=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # between two statements of main: nothing of ours is running
        sys.exit(130)
