"""Start a whole local mixnet: the directory, mixnodes and providers, each in its own process.

`loopix-client testnet` runs it in the foreground (`run_testnet`); tests use the `Testnet` context
manager, which starts the same processes in a temporary home on free ports and checks on exit that
none is left behind.

Node keys live in `$LOOPIX_HOME/testnet/<node>/` (secret keys 0600, directories 0700), so a
restarted testnet keeps its identities and its providers keep their inboxes. Each child runs in
its own process group (so a node's own children go with it) and, on Linux, is asked to receive
SIGTERM if the launcher dies without cleaning up (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from loopix import directory_auth, keys
from loopix.topology import Topology, TopologyError, parse_topology

__all__ = [
    "NodeInfo",
    "Testnet",
    "TestnetError",
    "add_testnet_parser",
    "cmd_testnet",
    "run_testnet",
]

DEFAULT_MEAN_HOP_DELAY_MS = 50.0
DEFAULT_BASE_PORT = 9000  # = loopix.config.DEFAULT_DIRECTORY_PORT: where `init` looks by default
STATE_FILE = "testnet.json"
IDENTITY_FILE = "identity.key"
ALLOW_FILE = "allowed-identities"
REPLAY_FILE = "replay.bin"


class TestnetError(RuntimeError):
    """The testnet could not start, or a node misbehaved."""

    __test__ = False  # not a pytest test class


class NodeInfo(msgspec.Struct, kw_only=True):
    """One process of the testnet."""

    name: str
    kind: str  # "directory" | "mixnode" | "provider"
    port: int
    layer: int = 0
    key_dir: str = ""
    public_key: bytes = b""

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def _free_ports(host: str, n: int) -> list[int]:
    """n distinct ports the kernel had free a moment ago (held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ensure_keys(directory: Path) -> bytes:
    """The node's public key, creating the key pair on first use."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    if not (directory / keys.PRIVATE_KEY_FILE).exists():
        keys.save_keypair(keys.generate_keypair(), directory)
    return keys.load_keypair(directory).public


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM this child when the launcher's thread goes away."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Testnet:
    """A running local mixnet: directory + `layers` x `mixnodes_per_layer` mixnodes + providers.

        with Testnet(layers=3, providers=2) as net:
            topo = net.topology()          # parsed nym-directory topology
            net.kill("mix-1-1")            # SIGKILL one node
            net.start_node("mix-1-1")      # start it again (same key, port, inbox)

    `home=None` uses a fresh temporary directory (removed on exit) and free ports; `base_port`
    pins the directory to it and the nodes to the ports after it. Start waits, with a deadline,
    until every node is in the topology; exit stops every process and raises `TestnetError` if one
    survives.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        layers: int = 3,
        mixnodes_per_layer: int = 1,
        providers: int = 2,
        base_port: int | None = None,
        host: str = "127.0.0.1",
        mean_hop_delay_ms: float = DEFAULT_MEAN_HOP_DELAY_MS,
        presence_interval: float = 2.0,
        expiry: float | None = None,
        metrics_interval: float = 1.0,
        ready_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        node_args: Sequence[str] = (),
        extra_node_args: dict[str, Sequence[str]] | None = None,
        prometheus_base_port: int | None = None,
        log_to_files: bool = True,
        replay_files: bool = True,
    ) -> None:
        if layers < 1 or mixnodes_per_layer < 1 or providers < 1:
            raise ValueError("need at least one layer, one mixnode per layer and one provider")
        if presence_interval <= 0 or metrics_interval <= 0:
            raise ValueError("intervals must be positive")
        self.host = host
        self.layers = layers
        self.mean_hop_delay_ms = mean_hop_delay_ms
        self.presence_interval = presence_interval
        self.expiry = expiry if expiry is not None else max(2.5 * presence_interval, 1.0)
        self.metrics_interval = metrics_interval
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.node_args = list(node_args)
        self.extra_node_args = {k: list(v) for k, v in (extra_node_args or {}).items()}  # per node name
        self.prometheus_base_port = prometheus_base_port  # node i serves /metrics on base + i
        self.log_to_files = log_to_files
        self.replay_files = replay_files
        """Each node keeps its replay filter in `replay.bin` beside its key (0600), so a restarted
        node still refuses packets it forwarded before (docs/hostile-input.md)."""
        count = 1 + layers * mixnodes_per_layer + providers
        if base_port is None:
            ports = _free_ports(host, count)
        else:
            if not 1 <= base_port <= 65535 - count:
                raise ValueError(f"base port {base_port} leaves no room for {count} ports")
            ports = list(range(base_port, base_port + count))
        self.directory = NodeInfo(name="directory", kind="directory", port=ports[0])
        self.nodes: dict[str, NodeInfo] = {}
        it = iter(ports[1:])
        for layer in range(1, layers + 1):
            for i in range(1, mixnodes_per_layer + 1):
                name = f"mix-{layer}-{i}"
                self.nodes[name] = NodeInfo(name=name, kind="mixnode", port=next(it), layer=layer)
        for i in range(1, providers + 1):
            name = f"provider-{i}"
            self.nodes[name] = NodeInfo(name=name, kind="provider", port=next(it))
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stopped: set[str] = set()  # nodes stopped on purpose
        self.directory_public_key = b""
        """The directory's Ed25519 key: clients pin it (set by `start`)."""
        # Set (e.g. from a signal handler) to make start() give up at its next wait, undoing what it
        # did: safer than raising from the handler, which can land where it is swallowed.
        self.cancelled = threading.Event()
        # Last, so nothing can fail between making a temporary home and owning its removal.
        self._temp = home is None
        self.home = Path(tempfile.mkdtemp(prefix="loopix-testnet-") if home is None else home)
        self.root = self.home / "testnet"
        if self._temp:  # its keys and inboxes go even if a caller is interrupted before stop()
            atexit.register(self._stop_at_exit)

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    # --- addresses and views ---

    @property
    def directory_url(self) -> str:
        return f"http://{self.host}:{self.directory.port}"

    @property
    def topology_url(self) -> str:
        return f"{self.directory_url}/api/presence/topology"

    @property
    def mixnodes(self) -> list[NodeInfo]:
        return [n for n in self.nodes.values() if n.kind == "mixnode"]

    @property
    def providers(self) -> list[NodeInfo]:
        return [n for n in self.nodes.values() if n.kind == "provider"]

    def secret_key(self, name: str) -> bytes:
        """A node's secret key (tests build packets for and as nodes)."""
        return keys.load_keypair(self.root / name).secret

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.directory_url + path, timeout=2) as resp:
            return resp.read()

    def topology(self) -> Topology:
        return parse_topology(self._get("/api/presence/topology"))

    def metrics(self) -> list[dict[str, Any]]:
        """All metrics reports the directory still holds, oldest first."""
        return json.loads(self._get("/api/metrics/mixes"))

    def latest_metrics(self, name: str) -> dict[str, Any] | None:
        """The newest counters report of one node (None before its first report)."""
        key = keys.key_to_b64url(self.nodes[name].public_key)
        mine = [r for r in self.metrics() if r.get("pubKey") == key]
        return mine[-1] if mine else None

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    # --- processes ---

    def _command(self, info: NodeInfo) -> list[str]:
        if info.kind == "directory":
            return [
                sys.executable, "-m", "loopix.testnet.directory",
                "--host", self.host, "--port", str(info.port), "--expiry", str(self.expiry),
                "--key-file", str(Path(info.key_dir) / IDENTITY_FILE),
                "--allow", str(self.root / ALLOW_FILE),
            ]  # fmt: skip
        cmd = [
            sys.executable, "-m", f"loopix.testnet.{info.kind}",
            "--host", self.host, "--port", str(info.port),
            "--key-file", str(Path(info.key_dir) / keys.PRIVATE_KEY_FILE),
            "--directory", self.directory_url,
            "--presence-interval", str(self.presence_interval),
            "--metrics-interval", str(self.metrics_interval),
            "--identity-file", str(Path(info.key_dir) / IDENTITY_FILE),
            # one argument: a base64url key may start with "-", which argparse takes for a flag
            f"--directory-key={keys.key_to_b64url(self.directory_public_key)}",
        ]  # fmt: skip
        if info.kind == "mixnode":
            cmd += ["--layer", str(info.layer)]
        else:
            cmd += ["--inbox", str(Path(info.key_dir) / "inbox.sqlite")]
        if self.replay_files:
            cmd += ["--replay-file", str(Path(info.key_dir) / REPLAY_FILE)]
        if self.prometheus_base_port:
            cmd += ["--prometheus-port", str(self.prometheus_base_port + list(self.nodes).index(info.name))]
        return cmd + self.node_args + self.extra_node_args.get(info.name, [])

    def _spawn(self, info: NodeInfo) -> None:
        if self.log_to_files:
            logs = self.root / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            out: Any = open(self.log_path(info.name), "ab")  # noqa: SIM115 - handed to the child
        else:
            out = subprocess.DEVNULL
        try:
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            self._procs[info.name] = subprocess.Popen(
                self._command(info),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                process_group=0,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    def start(self) -> Testnet:
        """Create keys, start every process, wait until the topology lists every node."""
        try:  # whatever stops us (an error, Ctrl-C), stop() undoes it: processes, temp home, keys
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            for info in self.nodes.values():
                info.key_dir = str(self.root / info.name)
                info.public_key = _ensure_keys(Path(info.key_dir))
            self._arrange_identities()
            self._spawn(self.directory)
            self._wait(self._directory_up, "the directory to listen")
            for info in self.nodes.values():
                self._spawn(info)
            self.wait_ready()
            self._write_state()
        except BaseException:
            self.stop()
            raise
        return self

    def _arrange_identities(self) -> None:
        """The directory's signing key and the allow-list of this testnet's node identities: only
        these nodes can post presence (docs/directory-auth.md)."""
        self.directory.key_dir = str(self.root / self.directory.name)
        Path(self.directory.key_dir).mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory.key_dir, 0o700)
        signer = directory_auth.load_or_create_identity(Path(self.directory.key_dir) / IDENTITY_FILE)
        self.directory_public_key = bytes(signer.verify_key)
        identities = [
            bytes(directory_auth.load_or_create_identity(Path(n.key_dir) / IDENTITY_FILE).verify_key)
            for n in self.nodes.values()
        ]
        directory_auth.write_allowed(self.root / ALLOW_FILE, identities)

    def start_node(self, name: str, wait: bool = True) -> None:
        """Start a node that was killed or stopped (same key, port and inbox); with `wait`,
        return once it listens and has announced itself anew."""
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            raise TestnetError(f"{name} is still running")
        since = time.time_ns()
        self._spawn(self.nodes[name])
        self._stopped.discard(name)
        if wait:
            self.wait_ready([name], since_ns=since)

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float | None = None) -> int:
        """Signal one node and wait for it to exit; returns its exit status."""
        proc = self._procs[name]
        self._stopped.add(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout or self.stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    def restart(self, name: str) -> None:
        """Stop a node gracefully (SIGTERM) and start it again."""
        self.kill(name, signal.SIGTERM)
        self.start_node(name)

    def running(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def _directory_up(self) -> bool:
        try:
            self._get("/api/healthcheck")
        except (OSError, urllib.error.URLError):
            return False
        return True

    def _listening(self, names: Sequence[str]) -> bool:
        for name in names:
            try:
                socket.create_connection((self.host, self.nodes[name].port), timeout=1).close()
            except OSError:
                return False
        return True

    def _present(self, names: Sequence[str], since_ns: int = 0) -> bool:
        try:
            topo = self.topology()
        except (OSError, urllib.error.URLError, TopologyError):
            return False
        seen = {n.pub_key: n.last_seen for n in topo.mix_nodes}
        seen.update((p.pub_key, p.last_seen) for p in topo.providers)
        return all(seen.get(self.nodes[n].public_key, -1) >= since_ns for n in names)

    def wait_ready(
        self,
        names: Sequence[str] | None = None,
        timeout: float | None = None,
        since_ns: int = 0,
    ) -> None:
        """Wait until the named nodes (default: all) listen and are in the topology (announced
        at or after `since_ns`, unix ns)."""
        names = list(self.nodes) if names is None else list(names)
        what = f"{', '.join(names)} to listen and be in the topology"
        self._wait(lambda: self._present(names, since_ns) and self._listening(names), what, timeout)

    def wait_absent(self, name: str, timeout: float | None = None) -> float:
        """Wait until `name` has left the topology; returns the seconds it took."""
        t0 = time.monotonic()
        key = self.nodes[name].public_key

        def gone() -> bool:
            topo = self.topology()
            return key not in {n.pub_key for n in topo.mix_nodes} | {
                p.pub_key for p in topo.providers
            }

        self._wait(gone, f"{name} to leave the topology", timeout, check_children=False)
        return time.monotonic() - t0

    def _wait(self, ready: Any, what: str, timeout: float | None = None,
              check_children: bool = True) -> None:  # fmt: skip
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        while not ready():
            if self.cancelled.is_set():
                raise KeyboardInterrupt
            if check_children:
                self._check_children()
            if time.monotonic() > deadline:
                raise TestnetError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def _check_children(self) -> None:
        for name, proc in self._procs.items():
            code = proc.poll()
            if code is not None and name not in self._stopped:
                raise TestnetError(f"{name} exited with status {code}: {self._log_tail(name)}")

    def _log_tail(self, name: str) -> str:
        try:
            return self.log_path(name).read_text(errors="replace")[-800:].strip()
        except OSError:
            return "(no log)"

    def _write_state(self) -> None:
        """testnet.json: what a client needs to find this testnet (and the hop delay to use)."""
        state = {
            "pid": os.getpid(),  # `init` uses this testnet only while it runs
            "directory": self.directory_url,
            "topology": self.topology_url,
            "directoryKey": keys.key_to_b64url(self.directory_public_key),
            "meanHopDelayMs": self.mean_hop_delay_ms,
            "presenceInterval": self.presence_interval,
            "nodes": [
                {"name": n.name, "kind": n.kind, "host": f"{self.host}:{n.port}", "layer": n.layer,
                 "pubKey": keys.key_to_b64url(n.public_key)}
                for n in self.nodes.values()
            ],
        }  # fmt: skip
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def alive_pids(self) -> list[int]:
        """Processes of ours still running (including anything left in their groups)."""
        alive = []
        for proc in self._procs.values():
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                continue
            alive.append(proc.pid)
        return alive

    def stop(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after `stop_timeout`; a temporary
        home (keys, inboxes) is removed even if this is interrupted."""
        procs = list(self._procs.values())
        try:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.0, deadline - time.monotonic()))
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            left = self.alive_pids()
            if self._temp:
                shutil.rmtree(self.home, ignore_errors=True)
                atexit.unregister(self._stop_at_exit)
            else:
                self._remove_state()
        if left:
            raise TestnetError(f"processes survived the stop: {left}")

    def _remove_state(self) -> None:
        """testnet.json goes with the testnet that wrote it (init must not aim at a dead one)."""
        path = self.root / STATE_FILE
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()

    def __enter__(self) -> Testnet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_testnet(
    home: str | os.PathLike[str],
    layers: int = 3,
    mixnodes_per_layer: int = 2,
    providers: int = 2,
    base_port: int = DEFAULT_BASE_PORT,
    mean_hop_delay_ms: float = DEFAULT_MEAN_HOP_DELAY_MS,
    presence_interval: float = 2.0,
    expiry: float | None = None,
    host: str = "127.0.0.1",
    prometheus_base_port: int | None = None,
) -> int:
    """Run a testnet in the foreground until SIGINT (130) or SIGTERM (0); 1 if it failed.

    `base_port=0` picks free ports. The client-side mean hop delay is not something the 2019
    directory can publish, so it is written to `testnet/testnet.json` beside the node keys.
    A signal while the nodes start stops them at once (no waiting for the topology).
    """
    stop = threading.Event()
    got: list[int] = []

    def on_signal(sig: int, frame: object) -> None:
        got.append(sig)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    net = None
    try:
        net = Testnet(
            home,
            layers=layers,
            mixnodes_per_layer=mixnodes_per_layer,
            providers=providers,
            base_port=base_port or None,
            host=host,
            mean_hop_delay_ms=mean_hop_delay_ms,
            presence_interval=presence_interval,
            expiry=expiry,
            prometheus_base_port=prometheus_base_port,
        )
        net.cancelled = stop  # a signal while the nodes start stops them at once
        print(f"starting {len(net.nodes)} nodes under {net.root} ...", flush=True)
        if stop.is_set():
            raise KeyboardInterrupt
        net.start()
        if stop.is_set():
            raise KeyboardInterrupt
        print(f"testnet ready: directory {net.directory_url}/", flush=True)
        print(f"topology {net.topology_url}  (mean hop delay {mean_hop_delay_ms:g} ms; "
              f"logs in {net.root / 'logs'}; Ctrl-C stops)", flush=True)  # fmt: skip
        reported: set[str] = set()
        while not stop.wait(0.5):
            for name in net.nodes:
                if name not in reported and not net.running(name):
                    reported.add(name)
                    print(f"warning: {name} exited; see {net.log_path(name)}", file=sys.stderr)
        print("stopping ...", flush=True)
    except KeyboardInterrupt:
        pass
    except TestnetError as exc:
        print(f"loopix-client testnet: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. a LOOPIX_HOME we cannot write
        print(f"loopix-client testnet: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        for sig in previous:  # a second Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        try:
            if net is not None:
                net.stop()
        except TestnetError as exc:
            print(f"loopix-client testnet: error: {exc}", file=sys.stderr)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 130 if got and got[0] == signal.SIGINT else 0


# --- CLI -----------------------------------------------------------------------------------------


def _checked(convert: Any, test: Any, what: str) -> Any:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return value

    return parse


_at_least_one = _checked(int, lambda n: 1 <= n <= 1000, "must be a whole number from 1 to 1000")
_port = _checked(int, lambda n: 0 <= n <= 65535, "must be a port, 0 (any free ports) to 65535")
def _duration_s(text: str) -> float:
    """A duration ("2s", "500ms") or, as these flags always took, a bare number of seconds."""
    from loopix.units import parse_duration

    try:
        return float(text)
    except ValueError:
        return parse_duration(text)  # UnitError is a ValueError


_seconds = _checked(_duration_s, lambda x: 0 < x < 86400, "must be a duration > 0 (e.g. 2s, 500ms; a bare number is seconds)")
_milliseconds = _checked(float, lambda x: 0 <= x < 3_600_000, "must be a number of milliseconds >= 0")


def add_testnet_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`loopix-client testnet ...`; sets `handler=cmd_testnet`."""
    p = subparsers.add_parser(
        "testnet",
        help="run a local mixnet (directory, mixnodes, providers) in the foreground",
        description="Start a directory, mixnodes and providers on 127.0.0.1, each in its own "
        "process; keys under $LOOPIX_HOME/testnet/. While it runs, `loopix-client init` (same "
        "LOOPIX_HOME) makes clients for it. Ctrl-C stops everything.",
    )
    p.add_argument("--layers", metavar="N", type=_at_least_one, default=3, help="mix layers (default 3)")
    p.add_argument("--mixnodes-per-layer", metavar="N", type=_at_least_one, default=2, help="mixnodes in each layer (default 2)")
    p.add_argument("--providers", metavar="N", type=_at_least_one, default=2, help="providers (default 2)")
    p.add_argument("--base-port", metavar="PORT", type=_port, default=DEFAULT_BASE_PORT,
                   help=f"directory port; nodes take the ports after it (default {DEFAULT_BASE_PORT}, "
                   "where `init` looks; 0: any free ports)")  # fmt: skip
    p.add_argument("--mean-hop-delay-ms", metavar="MS", type=_milliseconds, default=DEFAULT_MEAN_HOP_DELAY_MS,
                   help=f"mean per-hop delay clients made for it use, milliseconds (default {DEFAULT_MEAN_HOP_DELAY_MS:g})")  # fmt: skip
    p.add_argument("--presence-interval", metavar="DURATION", type=_seconds, default=2.0,
                   help="time between node announcements, e.g. 2s, 500ms; a bare number is seconds (default 2s)")  # fmt: skip
    p.add_argument("--expiry", metavar="DURATION", type=_seconds, default=None,
                   help="time before a silent node leaves the topology, as above (default 2.5 x presence interval)")  # fmt: skip
    p.add_argument("--metrics-port", metavar="PORT", type=_port, default=None,
                   help="Prometheus: node i (mixnodes, then providers) serves /metrics on PORT+i (default: off)")  # fmt: skip
    p.set_defaults(handler=cmd_testnet)
    return p


def _check_ports_free(host: str, first: int, count: int) -> None:
    """TestnetError naming the first port of first..first+count-1 we cannot bind now."""
    if first + count > 65535:  # as Testnet checks it
        raise TestnetError(f"--base-port {first} leaves no room for {count} ports")
    for port in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                raise TestnetError(f"port {port} on {host} is not free ({(exc.strerror or str(exc)).lower()}); "
                                   f"the testnet needs ports {first}-{first + count - 1}: choose another "
                                   "--base-port, or 0 for any free ports") from None


def cmd_testnet(args: argparse.Namespace) -> int:
    from loopix.config import loopix_home

    count = 1 + args.layers * args.mixnodes_per_layer + args.providers
    if args.base_port:
        _check_ports_free("127.0.0.1", args.base_port, count)
    if args.metrics_port:
        _check_ports_free("127.0.0.1", args.metrics_port, count)
    return run_testnet(
        loopix_home(),
        layers=args.layers,
        mixnodes_per_layer=args.mixnodes_per_layer,
        providers=args.providers,
        base_port=args.base_port,
        mean_hop_delay_ms=args.mean_hop_delay_ms,
        presence_interval=args.presence_interval,
        expiry=args.expiry,
        prometheus_base_port=args.metrics_port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m loopix.testnet.launcher`: the same as `loopix-client testnet`."""
    parser = argparse.ArgumentParser(prog="python -m loopix.testnet.launcher")
    sub = parser.add_subparsers(required=True)
    add_testnet_parser(sub)
    args = parser.parse_args(["testnet", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.handler(args)
    except TestnetError as exc:
        print(f"testnet: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
