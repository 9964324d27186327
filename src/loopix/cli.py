"""`loopix-client`: the command line. One small handler per subcommand.

To add a subcommand: write `_add_NAME(subparsers)` that builds its parser and sets
`handler=_cmd_NAME`, write `_cmd_NAME(args) -> int`, and list `_add_NAME` in `_COMMANDS`.
Everything a command is given is checked before it announces keys or starts processes.

Exit status (also in `--help`): 0 ok; 1 error (one line on stderr, `loopix-client CMD: error: ...`);
2 bad usage (same form); 99 a load-test threshold was violated; 130 interrupted (Ctrl-C, at any
moment, including while Python is still importing: quiet, nothing left behind).
"""

from __future__ import annotations

try:  # Ctrl-C while the modules load is an interruption like any other: quiet, status 130
    from loopix.interrupts import held_sigint

    with held_sigint(exit_code=130):
        import argparse
        import ctypes
        import errno
        import importlib
        import json
        import logging
        import os
        import re
        import secrets
        import shutil
        import socket
        import string
        import sys
        import tempfile
        from collections.abc import Callable, Sequence
        from pathlib import Path

        from loopix import __version__, argtypes, keys
        from loopix import config as cfg
        from loopix.units import UnitError, parse_duration
except KeyboardInterrupt:
    raise SystemExit(130) from None

PROG = "loopix-client"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_THRESHOLD = 99  # loadtest: a --threshold was violated
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT); a SIGTERM is a normal stop, 0
EXIT_CODES_HELP = (
    "exit status: 0 ok, 1 error, 2 bad usage, 99 a loadtest threshold violated, 130 interrupted "
    "(Ctrl-C). Errors are one line: loopix-client COMMAND: error: ..."
)


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


class UsageError(CliError):
    """Options that do not go together: printed as one line, exit status 2."""


# --- option values (checks in loopix.argtypes) -----------------------------------------------

port_number = argtypes.port
worker_count = argtypes.count(1, 1024, "workers")  # more than 1024 is surely a typo
positive_count = argtypes.count(1, what="count")


MIN_STATUS_INTERVAL_S = 0.1


def status_interval(text: str) -> float:
    """A duration such as 5s or 500ms; a bare number is seconds, as this flag always took."""
    try:
        seconds = float(text)  # backwards compatible: `--status-interval 3` meant 3 s
    except ValueError:
        try:
            seconds = parse_duration(text)
        except UnitError as exc:
            raise ValueError(str(exc)) from None
    if not seconds >= MIN_STATUS_INTERVAL_S or seconds == float("inf"):
        raise ValueError(f"status interval must be at least 100ms, got {text!r}")
    return seconds


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def byte_size(text: str) -> int:
    """A number of bytes: 65536, 64KiB, 64MiB, 1GB (k/M/G are powers of 1000, KiB/MiB/GiB of 1024)."""
    m = _SIZE.match(text)
    unit = m[2].lower() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r} (use e.g. 65536, 512KiB, 64MiB)")
    n = int(float(m[1]) * _SIZE_UNITS[unit])
    if n < 1:
        raise ValueError(f"size must be at least 1 byte, got {text!r}")
    return n


def check_writable_file(path: str) -> None:
    """CliError unless we can create or append to `path` (checked before anything starts)."""
    p = Path(path)
    if p.is_dir():
        raise CliError(f"cannot write {path}: it is a directory")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise CliError(f"cannot write {path}: permission denied")
        return
    parent = p.parent
    if not parent.is_dir():
        raise CliError(f"cannot write {path}: no directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"cannot write {path}: permission denied in {parent}")


def check_port_free(port: int, host: str = "127.0.0.1", count: int = 1) -> None:
    """CliError if `host:port` (.. port+count-1) cannot be bound now (0 means any port: fine)."""
    if port == 0:
        return
    for p in range(port, port + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            try:
                s.bind((host, p))
            except OSError as exc:
                reason = "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
                raise CliError(f"port {p} on {host}: {reason.lower()} (choose another, or 0 for any)") from None


# --- init ---------------------------------------------------------------------------------


def _provider_key(text: str) -> str:
    try:
        return keys.key_to_b64url(keys.key_from_b64url(text))
    except ValueError as exc:
        raise ValueError(f"invalid provider key {text!r}: {exc}") from None


def _directory_key(text: str) -> str:
    try:
        return keys.key_to_b64url(keys.key_from_b64url(text))
    except ValueError as exc:
        raise ValueError(f"invalid directory key {text!r}: {exc}") from None


def _random_id() -> str:
    """An 8-character id, as the Go client made when none was given."""
    return "".join(secrets.choice(string.ascii_letters) for _ in range(8))


def _add_init(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="create a client identity: key pair and config.toml",
        description="Create $LOOPIX_HOME/clients/ID/config/ (LOOPIX_HOME defaults to ~/.loopix) with a "
        "fresh key pair (private_key.pem, public_key.pem) and config.toml. The config gets the "
        "Loopix rates per identity: payload 50/s, loop cover 5/s, drop cover 5/s, mean hop delay "
        "50 ms (or the hop delay of the testnet it is made for); edit config.toml to change them. "
        "`loadtest` does not read configs and has its own, lighter per-identity defaults "
        "(see `loopix-client help loadtest`).",
        epilog=EXIT_CODES_HELP,
    )
    p.add_argument(
        "--id",
        type=argtypes.argtype(cfg.validate_client_id),
        default=None,
        help="client id, [A-Za-z0-9_-]{1,64} (default: 8 random letters)",
    )
    p.add_argument(
        "--directory",
        metavar="URL",
        type=argtypes.argtype(cfg.validate_directory_url),
        default=None,
        help="directory URL: its base (http://host:port/, as `testnet` prints it) or its topology "
        "URL (default: the testnet running under this LOOPIX_HOME if there is one, else "
        f"{cfg.DEFAULT_DIRECTORY})",
    )
    p.add_argument(
        "--provider",
        metavar="KEY",
        type=argtypes.argtype(_provider_key),
        default=None,
        help="provider public key, base64url (default: none; `run` picks one from the topology)",
    )
    p.add_argument(
        "--directory-key",
        metavar="KEY",
        type=argtypes.argtype(_directory_key),
        default=None,
        help="the directory's Ed25519 key, base64url, to check its topology signature against "
        "(default: the local testnet's, when --directory is that testnet; otherwise unpinned, "
        "which works but leaves the topology unauthenticated; see docs/directory-auth.md)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing client with this id (its keys are lost)",
    )
    p.add_argument("--fleet", metavar="DIR", default=None,
                   help="create a fleet instead: --count identities in one keystore, DIR/fleet.db")
    p.add_argument("--count", metavar="N", type=argtypes.argtype(positive_count), default=None,
                   help="with --fleet: how many identities (at least 1)")
    from loopix.fleet.cli import add_fleet_rate_options

    add_fleet_rate_options(p)
    p.set_defaults(handler=_cmd_init)


def _mkdir_0700(path: Path) -> None:
    """Create `path` and any missing parents with mode 0700; leave existing ones alone."""
    missing = []
    for d in (path, *path.parents):
        if d.exists():  # a file here makes the mkdir below fail with "Not a directory"
            break
        missing.append(d)
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:  # created meanwhile by someone else
            if d.is_dir():
                continue
            raise
        os.chmod(d, 0o700)  # exact mode whatever the umask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def _install_dir(tmp: Path, target: Path, *, force: bool) -> None:
    """Move the finished `tmp` into place; with `force`, replace `target` atomically."""
    if not target.exists():
        os.rename(tmp, target)  # fails if a non-empty target appeared meanwhile
        return
    if not force:
        raise FileExistsError(target)
    if _exchange(tmp, target):
        shutil.rmtree(tmp)  # now holds the old config
        return
    # No RENAME_EXCHANGE: two renames. Never a half-written config; a crash in between
    # leaves the old one complete beside it.
    old = target.with_name(f".{target.name}.old-{os.urandom(4).hex()}")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old)


def _testnet_state(home: Path | None) -> dict:
    """$LOOPIX_HOME/testnet/testnet.json, written by `loopix-client testnet` ({} if none)."""
    state = (home or cfg.loopix_home()) / "testnet" / "testnet.json"
    try:
        data = json.loads(state.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_testnet_directory(home: Path | None = None) -> str | None:
    """The topology URL of the testnet running under this LOOPIX_HOME, or None."""
    data = _testnet_state(home)
    url = data.get("topology")
    if not isinstance(url, str) or not _pid_alive(data.get("pid")):
        return None
    try:
        return cfg.validate_directory_url(url)
    except ValueError:
        return None


def _testnet_traffic(directory: str, home: Path | None) -> cfg.TrafficSection:
    """Default traffic settings; for the local testnet's directory, its mean hop delay.

    `loopix-client testnet --mean-hop-delay-ms` writes it to $LOOPIX_HOME/testnet/testnet.json
    (the 2019 directory API has no field for it), so clients made for that testnet use it.
    """
    data = _testnet_state(home)
    try:
        if cfg.validate_directory_url(data.get("topology")) == cfg.validate_directory_url(directory):
            return cfg.TrafficSection(mean_hop_delay_ms=float(data["meanHopDelayMs"]))
    except (ValueError, KeyError, TypeError):
        pass
    return cfg.TrafficSection()


def _testnet_directory_key(directory: str, home: Path | None) -> str:
    """The local testnet's directory key (from testnet.json) when `directory` is that testnet's:
    clients made for it pin it."""
    data = _testnet_state(home)
    try:
        if cfg.validate_directory_url(data.get("topology")) == cfg.validate_directory_url(directory):
            return str(data.get("directoryKey") or "")
    except (ValueError, TypeError):
        pass
    return ""


def init_client(
    client_id: str,
    *,
    directory: str = cfg.DEFAULT_DIRECTORY,
    provider: str = "",
    force: bool = False,
    home: Path | None = None,
    directory_key: str | None = None,
) -> tuple[Path, Path, Path]:
    """Create a client's keys and config; returns (private key, public key, config) paths.

    Everything is written into a temp dir beside the target and renamed into place, so an
    existing client is never half-replaced and a failed run leaves nothing behind.
    """
    target = cfg.config_dir(client_id, home)
    if target.exists() and not force:
        raise CliError(
            f"client {client_id!r} already exists at {target} (use --force to replace it)"
        )
    try:
        _mkdir_0700(target.parent)
    except OSError as exc:
        raise CliError(
            f"cannot create {exc.filename or target.parent}: {exc.strerror or exc}"
        ) from None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".config-", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise CliError(f"cannot write in {target.parent}: {exc.strerror or exc}") from None
    try:
        conf = cfg.ClientConfig(
            client=cfg.ClientSection(
                id=client_id,
                directory_server_topology=directory,
                provider_id=provider,
                directory_key=(
                    _testnet_directory_key(directory, home) if directory_key is None else directory_key
                ),
            ),
            traffic=_testnet_traffic(directory, home),
        )
        private_tmp, public_tmp = cfg.key_paths(conf, tmp)
        pair = keys.generate_keypair()
        keys.write_private_key(private_tmp, pair.secret)
        keys.write_public_key(public_tmp, pair.public)
        cfg.save(conf, tmp / cfg.CONFIG_FILE)
        os.chmod(tmp, 0o700)
        _fsync_dir(tmp)
        _install_dir(tmp, target, force=force)
        _fsync_dir(target.parent)
    except OSError as exc:
        if not isinstance(exc, FileExistsError) and exc.errno != errno.ENOTEMPTY:
            raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None
        raise CliError(
            f"client {client_id!r} already exists at {target} (use --force to replace it)"
        ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    private_path, public_path = cfg.key_paths(conf, target)
    return private_path, public_path, target / cfg.CONFIG_FILE


def _cmd_init(args: argparse.Namespace) -> int:
    directory = args.directory
    if directory is None:
        directory = running_testnet_directory()
        if directory is not None:
            print(f"Using the testnet running under {cfg.loopix_home()}: {directory}")
        else:
            directory = cfg.DEFAULT_DIRECTORY
    rates = (args.payload_rate, args.loop_rate, args.drop_rate)
    if args.fleet or args.count is not None or rates != (None, None, None):
        if not args.fleet:
            raise UsageError("--count and the rates go with --fleet DIR (a single client's rates are in its config.toml)")
        from loopix.fleet.cli import init_fleet

        return init_fleet(args, directory)
    private_path, public_path, config_file = init_client(
        args.id or _random_id(),
        directory=directory,
        provider=args.provider or "",
        force=args.force,
        directory_key=args.directory_key,
    )
    print(f"Saved generated private key to {private_path}")
    print(f"Saved generated public key to {public_path}")
    print(f"Saved generated config to {config_file}")
    return EXIT_OK


# --- run / socket -------------------------------------------------------------------------

STATUS_HELP = (
    "time between status lines, e.g. 5s, 500ms, 1m; a bare number is seconds, as before "
    "(default 5s, at least 100ms)"
)
STATUS_LINE_HELP = (
    "Status line: packets sent per stream (payload, of which real; loop; drop), loops come back "
    "and their median round trip, 'lateness p99': how far behind its Poisson schedule the sender "
    "wrote the 99th-percentile packet (as in loadtest's live view; loadtest's 'late' is something "
    "else: loops back after its grace period), and messages received (socket: and messages held "
    "for the next application, and dropped). Rates, hop delay and packet "
    "size come from config.toml (init writes 50/5/5 packets/s and 50 ms); loadtest uses its own "
    "per-identity defaults instead."
)


def _add_client_options(p: argparse.ArgumentParser, id_required: bool = True) -> None:
    p.add_argument("--id", required=id_required, type=argtypes.argtype(cfg.validate_client_id),
                   help="client id, as given to `init` (its config: $LOOPIX_HOME/clients/ID/config/)")
    p.add_argument("--directory", metavar="URL", type=argtypes.argtype(cfg.validate_directory_url), default=None,
                   help="directory URL, base or topology (default: the config's "
                   "client.directory_server_topology)")
    p.add_argument("--workers", metavar="N", type=argtypes.argtype(worker_count), default=None,
                   help="packet-building processes, 1 to 1024 (default: the config's runtime.workers, "
                   "where 0 means one per core)")
    p.add_argument("--trace", metavar="FILE",
                   help="write one binary record per packet sent to FILE, replacing it (default: none; docs/trace.md)")
    p.add_argument("--status-interval", metavar="DURATION", type=argtypes.argtype(status_interval), default=5.0,
                   help=STATUS_HELP)
    p.add_argument("--metrics-port", metavar="PORT", type=argtypes.argtype(port_number), default=None,
                   help="with --fleet: the fleet's totals for Prometheus at http://127.0.0.1:PORT/metrics "
                   "(default: none)")


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a client in the foreground until Ctrl-C",
                       description="Send Poisson cover and real traffic with the rates of the client's "
                       "config.toml; print a status line every few seconds. " + STATUS_LINE_HELP,
                       epilog=EXIT_CODES_HELP)
    _add_client_options(p, id_required=False)
    p.add_argument("--fleet", metavar="DIR", help="run every identity of the fleet in DIR (made by "
                   "`init --fleet DIR --count N`, or one LOOPIX_HOME=DIR `init --id NAME` per identity) "
                   "in this one client (default: none)")
    p.set_defaults(handler=_cmd_run)


def _add_socket(sub: argparse._SubParsersAction) -> None:
    from loopix.mailbox import DEFAULT_HOLD_BYTES, DEFAULT_HOLD_MESSAGES
    from loopix.sockets import DEFAULT_PORT

    p = sub.add_parser("socket", help="run a client serving a websocket or TCP socket on loopback",
                       description="Run a client (as `run`) and serve ws://localhost:PORT/mix or a TCP "
                       "socket on 127.0.0.1 (docs/socket-api.md). Messages received while no "
                       "application is connected are kept for the next connection. " + STATUS_LINE_HELP,
                       epilog=EXIT_CODES_HELP)
    _add_client_options(p, id_required=False)
    p.add_argument("--fleet", metavar="DIR", help="serve every identity of the fleet in DIR: requests "
                   "name the sending identity, received messages the receiving one (docs/socket-api.md)")
    p.add_argument("--socket", choices=("websocket", "tcp"), default="websocket",
                   help="kind of socket (default websocket)")
    p.add_argument("--port", type=argtypes.argtype(port_number), default=DEFAULT_PORT,
                   help=f"loopback port, 0 for any free port (default {DEFAULT_PORT})")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (e.g. http://localhost:3000) whose pages may use the websocket;"
                        " repeatable. By default browser pages are refused")
    p.add_argument("--hold-messages", metavar="N", type=argtypes.argtype(positive_count), default=DEFAULT_HOLD_MESSAGES,
                   help="received messages kept while no application is connected; the oldest is "
                   f"dropped (and counted) beyond this (default {DEFAULT_HOLD_MESSAGES})")
    p.add_argument("--hold-bytes", metavar="SIZE", type=argtypes.argtype(byte_size), default=DEFAULT_HOLD_BYTES,
                   help="the same cap in bytes, e.g. 512KiB, 64MiB (default 64MiB)")
    p.set_defaults(handler=_cmd_socket)


def _log_to_stderr(command: str) -> None:
    """Library warnings as one line each, named like our errors (never a traceback)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"{PROG} {command}: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def _waiting(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _load_client(args: argparse.Namespace):
    from loopix.client.api import Client
    from loopix.client.coordinator import ClientError

    try:
        client = Client.load(args.id, trace_path=args.trace, workers=args.workers, directory_url=args.directory)
    except ClientError as exc:
        raise CliError(str(exc)) from None
    client.on_waiting = _waiting
    return client


def _announce(client) -> None:
    print(f"Our Public Key is: {client.public_key_b64}")
    print(f"Our address is: {client.address}", flush=True)


def _start(client, serve=None, interval: float = 5.0) -> int:
    from loopix.client.coordinator import ClientError

    try:
        return client.start(status_interval_s=interval, on_ready=_announce, serve=serve)
    except ClientError as exc:
        raise CliError(str(exc)) from None


def _check_client_options(args: argparse.Namespace) -> None:
    if args.trace:
        check_writable_file(args.trace)
    if args.metrics_port is not None:
        if not args.fleet:
            raise UsageError("--metrics-port goes with --fleet DIR")
        check_port_free(args.metrics_port)


def _cmd_run(args: argparse.Namespace) -> int:
    _check_client_options(args)
    _log_to_stderr("run")
    if args.fleet:
        from loopix.fleet.cli import run_fleet

        return run_fleet(args)
    if not args.id:
        raise UsageError("run needs --id ID (see init) or --fleet DIR")
    return _start(_load_client(args), interval=args.status_interval)


def _cmd_socket(args: argparse.Namespace) -> int:
    _check_client_options(args)
    if not args.id and not args.fleet:
        raise UsageError("socket needs --id ID (see init) or --fleet DIR")
    check_port_free(args.port)  # before any key is announced or process started
    _log_to_stderr("socket")
    if args.fleet:
        from loopix.fleet.cli import socket_fleet

        return socket_fleet(args)
    from loopix import sockets
    from loopix.mailbox import Mailbox

    async def serve(client):
        mailbox = await Mailbox(client, args.hold_messages, args.hold_bytes).start()
        try:
            if args.socket == "websocket":
                server = await sockets.serve_websocket(mailbox, "127.0.0.1", args.port,
                                                       origins=args.allow_origin)
                print(f"Listening on ws://localhost:{server.port}/mix", flush=True)
            else:
                server = await sockets.serve_tcp(mailbox, "127.0.0.1", args.port)
                print(f"Listening on tcp://127.0.0.1:{server.port}", flush=True)
        except OSError as exc:  # taken between our check and now
            await mailbox.close()
            raise CliError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}") from None
        return _ServerWithMailbox(server, mailbox)

    return _start(_load_client(args), serve, args.status_interval)


class _ServerWithMailbox:
    """The socket server and its mailbox, closed together."""

    def __init__(self, server, mailbox) -> None:
        self.server, self.mailbox = server, mailbox

    def status(self) -> str:
        """For the status line: messages waiting for an application, and those dropped."""
        return f"held {len(self.mailbox.held)} (dropped {self.mailbox.dropped})"

    def close(self) -> None:
        self.server.close()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()
        await self.mailbox.close()


# --- entry point --------------------------------------------------------------------------

# --- loadtest / report ----------------------------------------------------------------------


def _add_loadtest(sub: argparse._SubParsersAction) -> None:
    from loopix.loadtest.command import add_parser

    add_parser(sub)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render report.html again from a load test's data",
                       description="Re-render DIR/report.html from DIR/summary.json and history.csv.",
                       epilog=EXIT_CODES_HELP)
    p.add_argument("dir", metavar="DIR", help="a directory written by `loadtest --out DIR`")
    p.set_defaults(handler=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from loopix.loadtest.report import ReportError, render_report

    try:
        print(f"wrote {render_report(args.dir)}")
    except ReportError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK


def _add_testnet(sub: argparse._SubParsersAction) -> None:
    from loopix.testnet.launcher import add_testnet_parser

    add_testnet_parser(sub).epilog = EXIT_CODES_HELP


def _add_help(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("help", help="show the help of a command",
                       description="`loopix-client help COMMAND` is `loopix-client COMMAND --help`.")
    p.add_argument("topic", metavar="COMMAND", nargs="?", help="a command (default: the overview)")
    p.set_defaults(handler=_cmd_help)


def _cmd_help(args: argparse.Namespace) -> int:
    parser = build_parser()
    commands = _subcommands(parser)
    if args.topic is None:
        parser.print_help()
        return EXIT_OK
    if args.topic not in commands:
        raise UsageError(f"no command {args.topic!r} (commands: {', '.join(commands)})")
    commands[args.topic].print_help()
    return EXIT_OK


def _add_fleet(sub: argparse._SubParsersAction) -> None:
    from loopix.fleet.cli import add_fleet_parser

    add_fleet_parser(sub, EXIT_CODES_HELP)


_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_init, _add_run, _add_socket, _add_fleet, _add_testnet, _add_loadtest, _add_report, _add_help,
)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def build_parser() -> argparse.ArgumentParser:
    """The full parser: one subparser per entry of `_COMMANDS`."""
    parser = argtypes.OneLineParser(prog=PROG, description="A Loopix-style mix network client. Clients live in "
                     "$LOOPIX_HOME/clients/ID/config/ (LOOPIX_HOME defaults to ~/.loopix).",
                     epilog=EXIT_CODES_HELP)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(
        title="commands", metavar="COMMAND", dest="command", required=True, parser_class=argtypes.OneLineParser
    )
    for add in _COMMANDS:
        add(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from loopix.fleet.store import FleetError
    from loopix.testnet.launcher import TestnetError

    return (CliError, cfg.ConfigError, keys.KeyFileError, TestnetError, FleetError)


# What each command imports before it starts (loaded with Ctrl-C held: see loopix.interrupts).
_PRELOAD = {
    "run": ("uvloop", "loopix.client.api"),
    "socket": ("uvloop", "loopix.client.api", "loopix.sockets", "loopix.mailbox"),
    "loadtest": ("uvloop", "loopix.client.api"),
}


def _distributed_loadtest(argv: Sequence[str]) -> bool:
    """`loadtest --master …` / `--worker …` hand the command line to Locust (docs/distributed.md)."""
    return len(argv) > 1 and argv[0] == "loadtest" and ("--master" in argv or "--worker" in argv)


def _main(argv: Sequence[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if _distributed_loadtest(argv):
        from loopix.loadtest.distributed.command import main_from_loadtest

        return main_from_loadtest(argv[1:])
    with held_sigint():
        parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    with held_sigint():
        for module in _PRELOAD.get(args.command, ()):
            importlib.import_module(module)
    errors = _user_errors()
    try:
        return args.handler(args)
    except errors as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the exit status (errors are one line on stderr)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while loading or starting: handlers clean up on the way out
        return EXIT_INTERRUPTED
