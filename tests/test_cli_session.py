"""`loopix-client run`/`socket`/`testnet` and `./scripts/demo` as a user drives them: Ctrl-C at
several moments (exit 130, quiet, nothing left: processes, temp dirs, /dev/shm), one identity
running once, socket mistakes logged as one line, messages held while no application is there."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import msgspec
import pytest
import websockets

from _procs import alive, children_of
from conftest import wait_until
from loopix import config as cfg
from loopix.cli import init_client
from loopix.testnet.launcher import Testnet
from loopix.wire.b64 import b64url_encode

SRC = str(Path(__file__).resolve().parents[1] / "src")
INTERRUPTED = (130, -signal.SIGINT)  # -2: the signal came before Python could handle it at all


@pytest.fixture(scope="module")
def testnet():
    with Testnet(layers=3, mixnodes_per_layer=1, providers=2, mean_hop_delay_ms=5.0,
                 presence_interval=1.0) as net:
        yield net


def descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        for child in children_of(todo.pop()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def processes_with_home(home: Path) -> set[int]:
    """Every live process that inherited LOOPIX_HOME=home: whatever we started, however deep."""
    marker = f"LOOPIX_HOME={home}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(b"\0") and alive(int(entry)):
                        found.add(int(entry))
            except OSError:
                continue
    return found


def shm_names() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


class Cli:
    """A `loopix-client` process whose output lines are collected by threads. Every one started is
    also killed (with its process group's leftovers) when its test ends, passed or failed."""

    started: ClassVar[list[Cli]] = []

    def __init__(self, args: list[str], home: Path, tmp: Path, module: str = "loopix"):
        env = {**os.environ, "LOOPIX_HOME": str(home), "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.home = home
        Cli.started.append(self)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(s, d), daemon=True)
                         for s, d in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 60, stream: str = "out") -> None:
        lines = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        while not any(text in line for line in lines):
            if self.proc.poll() is not None:
                time.sleep(0.1)  # the readers may still hold the last lines
                if any(text in line for line in lines):
                    return
                raise AssertionError(f"exited {self.proc.returncode} before {text!r}: {self.out} {self.err}")
            assert time.monotonic() < deadline, f"no {text!r} within {timeout}s: {self.out} {self.err}"
            time.sleep(0.02)

    def interrupt(self, timeout: float = 20) -> int:
        """SIGINT, as Ctrl-C sends it; the exit status (within `timeout`, or the test fails)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for t in self._threads:
            t.join(5)


def assert_quiet_and_clean(cli: Cli, code: int, kids: set[int], tmp: Path, shm_before: set[str]) -> None:
    assert code in INTERRUPTED, (code, cli.out, cli.err)
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in cli.out + cli.err), cli.err
    deadline = time.monotonic() + 10
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [k for k in kids if alive(k)], "processes left behind"
    while processes_with_home(cli.home) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with_home(cli.home) == set(), "processes left behind"
    assert list(tmp.iterdir()) == [], "temporary files left behind"
    assert shm_names() <= shm_before, "shared memory left behind"


def make_client(home: Path, name: str, net: Testnet | None, hop_delay_ms: float = 5.0) -> None:
    init_client(name, home=home, directory=net.topology_url if net else "http://127.0.0.1:9/",
                provider=b64url_encode(net.nodes["provider-1"].public_key) if net else "",
                directory_key=b64url_encode(net.directory_public_key) if net else None)
    path = cfg.config_path(name, home)
    conf = cfg.load(path)
    traffic = msgspec.structs.replace(conf.traffic, payload_rate=20.0, loop_rate=5.0, drop_rate=5.0,
                                      mean_hop_delay_ms=hop_delay_ms)
    cfg.save(msgspec.structs.replace(conf, traffic=traffic, runtime=msgspec.structs.replace(conf.runtime, workers=1)), path)


@pytest.fixture
def dirs(tmp_path):
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    yield home, tmp
    while Cli.started:  # a test that failed half-way must not leave its processes running
        cli = Cli.started.pop()
        if cli.proc.poll() is None:
            cli.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                cli.proc.wait(30)
        cli.close()
    for pid in processes_with_home(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- Ctrl-C while starting ---------------------------------------------------------------------------


def wait_loaded(pid: int, library: str, timeout: float = 30) -> None:
    """Until the process has mapped `library` (an extension module): a known moment of its start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/maps") as f:
                if library in f.read():
                    return
        except OSError:
            pass
        time.sleep(0.002)
    raise AssertionError(f"{library} not loaded within {timeout}s")


@pytest.mark.parametrize("library", [
    "msgspec/_core",  # loading the command line itself
    "uvloop/loop",  # loading the client runtime
    "_sphinx_c",  # the C core: nearly done loading
])
def test_ctrl_c_while_python_loads_is_quiet(dirs, library):
    """Ctrl-C while our modules are still loading; the directory is never reached. (Before any
    loopix code runs, the interpreter's own start-up is not ours to make quiet.)"""
    home, tmp = dirs
    make_client(home, "alice", None)
    shm = shm_names()
    cli = Cli(["run", "--id", "alice", "--directory", "http://127.0.0.1:9/"], home, tmp)
    wait_loaded(cli.proc.pid, library)
    assert_quiet_and_clean(cli, cli.interrupt(), set(), tmp, shm)
    assert cli.out == []


@pytest.mark.parametrize("command", ["run", "socket"])
def test_waiting_for_the_directory_says_so_and_ctrl_c_stops_at_once(dirs, command):
    home, tmp = dirs
    make_client(home, "alice", None)
    shm = shm_names()
    args = [command, "--id", "alice", "--directory", "http://127.0.0.1:9/"]
    cli = Cli(args + (["--port", "0"] if command == "socket" else []), home, tmp)
    cli.wait_for("waiting for directory http://127.0.0.1:9/api/presence/topology", stream="err")
    assert "(up to 20s; Ctrl-C to stop)" in cli.err[0]
    kids = descendants(cli.proc.pid)
    assert_quiet_and_clean(cli, cli.interrupt(timeout=5), kids, tmp, shm)  # not the 20 s of retries
    assert len(cli.err) == 1 and cli.out == []


def test_ctrl_c_while_a_testnet_starts(dirs):
    home, tmp = dirs
    shm = shm_names()
    cli = Cli(["testnet", "--base-port", "0", "--layers", "1", "--mixnodes-per-layer", "1", "--providers", "1"],
              home, tmp)
    cli.wait_for("starting 2 nodes")  # the nodes are being started: interrupt now
    assert_quiet_and_clean(cli, cli.interrupt(timeout=10), descendants(cli.proc.pid), tmp, shm)
    assert not any("testnet ready" in line for line in cli.out)


def test_ctrl_c_early_in_a_loadtest_leaves_no_testnet_keys(dirs):
    """The embedded testnet's temporary home holds node keys and an inbox: it must go."""
    home, tmp = dirs
    cli = Cli(["loadtest", "--identities", "2", "--duration", "5s"], home, tmp)
    cli.wait_for("starting a testnet")
    kids = wait_until(lambda: descendants(cli.proc.pid), "the testnet's first node process")  # nodes starting
    cli.interrupt()
    assert not any("Traceback" in line for line in cli.out + cli.err), cli.err
    deadline = time.monotonic() + 10
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [k for k in kids if alive(k)]
    while processes_with_home(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with_home(home) == set()
    assert [p.name for p in tmp.iterdir()] == []


# --- a running client -----------------------------------------------------------------------------------


def test_run_ctrl_c_once_running(testnet, dirs):
    home, tmp = dirs
    make_client(home, "alice", testnet)
    shm = shm_names()
    cli = Cli(["run", "--id", "alice", "--status-interval", "500ms"], home, tmp)
    cli.wait_for("Our address is: ")
    cli.wait_for("sent payload")
    kids = descendants(cli.proc.pid)
    assert len(kids) >= 2, "a sender and a worker"
    assert_quiet_and_clean(cli, cli.interrupt(), kids, tmp, shm)
    assert cli.err == []


def test_socket_session(testnet, dirs):
    """One socket client: a mistake is one log line, a message that arrives while no application
    is connected waits for the next connection, the identity cannot run twice, Ctrl-C is clean."""
    home, tmp = dirs
    make_client(home, "alice", testnet, hop_delay_ms=150.0)  # ~0.5 s through the mixnet
    shm = shm_names()
    cli = Cli(["socket", "--id", "alice", "--port", "0", "--status-interval", "500ms"], home, tmp)
    cli.wait_for("Listening on ws://localhost:")
    cli.wait_for("| held 0 (dropped 0)")  # the status line counts what waits for an application
    port = int(next(line for line in cli.out if line.startswith("Listening")).rsplit(":", 1)[1].split("/")[0])
    nowhere = b64url_encode(bytes(32 * [7]))

    async def scenario() -> None:
        url = f"ws://127.0.0.1:{port}/mix"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "selfAddress"}))
            me = json.loads(await asyncio.wait_for(ws.recv(), 10))["address"]
            stranger = me.split("@")[0] + "@" + nowhere
            await ws.send(json.dumps({"type": "send", "message": "x", "recipient": stranger}))
            err = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert err["type"] == "error" and "not in the topology" in err["message"]
            await ws.send(json.dumps({"type": "send", "message": "kept for later", "recipient": me}))
        # no application connected now; the message is still in the mixnet
        async with websockets.connect(url) as ws:
            got = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert got == {"type": "received", "message": "kept for later"}

    asyncio.run(scenario())
    refused = subprocess.run([sys.executable, "-m", "loopix", "run", "--id", "alice"], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "LOOPIX_HOME": str(home),
                                                         "PYTHONPATH": SRC})
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("loopix-client run: error: client 'alice' is already running (pid ")
    assert len(refused.stderr.splitlines()) == 1
    kids = descendants(cli.proc.pid)
    assert_quiet_and_clean(cli, cli.interrupt(), kids, tmp, shm)
    assert [line for line in cli.err if "send refused" in line] == [
        f"loopix-client socket: WARNING: send refused: recipient's provider {nowhere} is not in the topology"
    ]
    assert len(cli.err) == 1, cli.err


# --- the demo -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("moment", [
    "msgspec/_core",  # still importing (a library being loaded)
    "==> Creating two identities",
    "==> Running both clients",
    "==> Sending real messages",
])
def test_demo_ctrl_c(dirs, moment):
    home, tmp = dirs
    shm = shm_names()
    cli = Cli([], home, tmp, module="loopix.demo")
    loading = not moment.startswith("==>")
    if loading:
        wait_loaded(cli.proc.pid, moment)
    else:
        cli.wait_for(moment)
    kids = descendants(cli.proc.pid)
    assert_quiet_and_clean(cli, cli.interrupt(timeout=30), kids, tmp, shm)
    if not loading:
        assert any("testnet stopped" in line for line in cli.out)


def test_demo_help():
    result = subprocess.run([str(Path(__file__).resolve().parents[1] / "scripts" / "demo"), "--help"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ./scripts/demo")
