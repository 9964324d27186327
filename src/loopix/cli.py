"""`loopix-client`: the command line. One small handler per subcommand.

To add a subcommand: write `_add_NAME(subparsers)` that builds its parser and sets
`handler=_cmd_NAME`, write `_cmd_NAME(args) -> int`, and list `_add_NAME` in `_COMMANDS`.
User errors are one line on stderr (exit 2 for bad usage, 1 for everything else), never a
traceback.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import secrets
import shutil
import string
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from loopix import config as cfg
from loopix import keys

PROG = "loopix-client"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _arg(convert: Callable[[str], object]) -> Callable[[str], object]:
    """Wrap a ValueError-raising validator as an argparse `type=`, keeping its message."""

    def parse(text: str) -> object:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = convert.__name__
    return parse


# --- init ---------------------------------------------------------------------------------


def _provider_key(text: str) -> str:
    try:
        return keys.key_to_b64url(keys.key_from_b64url(text))
    except ValueError as exc:
        raise ValueError(f"invalid provider key {text!r}: {exc}") from None


def _random_id() -> str:
    """An 8-character id, as the Go client made when none was given."""
    return "".join(secrets.choice(string.ascii_letters) for _ in range(8))


def _add_init(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="create a client identity: key pair and config.toml",
        description="Create $LOOPIX_HOME/clients/ID/config with a fresh key pair and config.toml.",
    )
    p.add_argument(
        "--id",
        type=_arg(cfg.validate_client_id),
        default=None,
        help="client id, [A-Za-z0-9_-]{1,64} (default: 8 random letters)",
    )
    p.add_argument(
        "--directory",
        type=_arg(cfg.validate_directory_url),
        default=cfg.DEFAULT_DIRECTORY,
        help=f"directory topology URL (default: {cfg.DEFAULT_DIRECTORY})",
    )
    p.add_argument(
        "--provider",
        type=_arg(_provider_key),
        default=None,
        help="provider public key, base64url (default: choose one at random on first run)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing client with this id (its keys are lost)",
    )
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


def _testnet_traffic(directory: str, home: Path | None) -> cfg.TrafficSection:
    """Default traffic settings; for the local testnet's directory, its mean hop delay.

    `loopix-client testnet --mean-hop-delay-ms` writes it to $LOOPIX_HOME/testnet/testnet.json
    (the 2019 directory API has no field for it), so clients made for that testnet use it.
    """
    state = (home or cfg.loopix_home()) / "testnet" / "testnet.json"
    try:
        data = json.loads(state.read_text())
        if data.get("topology") == directory:
            return cfg.TrafficSection(mean_hop_delay_ms=float(data["meanHopDelayMs"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return cfg.TrafficSection()


def _testnet_directory_key(directory: str, home: Path | None) -> str:
    """The local testnet's directory key (from testnet.json) when `directory` is that testnet's:
    clients made for it pin it."""
    state = (home or cfg.loopix_home()) / "testnet" / "testnet.json"
    try:
        data = json.loads(state.read_text())
        if data.get("topology") == directory:
            return str(data.get("directoryKey") or "")
    except (OSError, ValueError, TypeError):
        pass
    return ""


def init_client(
    client_id: str,
    *,
    directory: str = cfg.DEFAULT_DIRECTORY,
    provider: str = "",
    force: bool = False,
    home: Path | None = None,
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
                directory_key=_testnet_directory_key(directory, home),
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
    private_path, public_path, config_file = init_client(
        args.id or _random_id(),
        directory=args.directory,
        provider=args.provider or "",
        force=args.force,
    )
    print(f"Saved generated private key to {private_path}")
    print(f"Saved generated public key to {public_path}")
    print(f"Saved generated config to {config_file}")
    return EXIT_OK


# --- run / socket -------------------------------------------------------------------------


def _add_client_options(p: argparse.ArgumentParser, id_required: bool = True) -> None:
    p.add_argument("--id", required=id_required, type=_arg(cfg.validate_client_id), help="client id (see init)")
    p.add_argument("--trace", metavar="FILE", help="write one binary record per packet sent (see docs/trace.md)")
    p.add_argument("--workers", type=int, default=None, help="packet workers (default: config, 0 = cores)")
    p.add_argument("--directory", type=_arg(cfg.validate_directory_url), default=None,
                   help="directory topology URL (default: the config's)")


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a client in the foreground until Ctrl-C",
                       description="Send Poisson cover and real traffic, print a status line every few seconds.")
    _add_client_options(p, id_required=False)
    p.add_argument("--fleet", metavar="DIR", help="run every identity initialised under DIR "
                   "(LOOPIX_HOME=DIR loopix-client init --id NAME) in this one client")
    p.add_argument("--status-interval", type=float, default=5.0, help="seconds between status lines")
    p.set_defaults(handler=_cmd_run)


def _add_socket(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("socket", help="run a client serving a websocket or TCP socket on loopback",
                       description="Run a client and serve ws://localhost:PORT/mix or a TCP socket (docs/socket-api.md).")
    _add_client_options(p)
    p.add_argument("--socket", choices=("websocket", "tcp"), default="websocket")
    p.add_argument("--port", type=int, default=1863)
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (e.g. http://localhost:3000) whose pages may use the websocket;"
                        " repeatable. By default browser pages are refused")
    p.add_argument("--status-interval", type=float, default=5.0, help="seconds between status lines")
    p.set_defaults(handler=_cmd_socket)


def _load_client(args: argparse.Namespace):
    from loopix.client.api import Client
    from loopix.client.coordinator import ClientError

    try:
        return Client.load(args.id, trace_path=args.trace, workers=args.workers, directory_url=args.directory)
    except ClientError as exc:
        raise CliError(str(exc)) from None


def _announce(client) -> None:
    print(f"Our Public Key is: {client.public_key_b64}")
    print(f"Our address is: {client.address}", flush=True)


def _start(client, serve=None, interval: float = 5.0) -> int:
    from loopix.client.coordinator import ClientError

    try:
        return client.start(status_interval_s=interval, on_ready=_announce, serve=serve)
    except ClientError as exc:
        raise CliError(str(exc)) from None


def _cmd_run(args: argparse.Namespace) -> int:
    if args.fleet:
        if args.id:
            raise CliError("give --id or --fleet, not both")
        from loopix.client.coordinator import ClientError
        from loopix.loadtest.fleet import Fleet, run_fleet

        try:
            return run_fleet(Fleet(args.fleet), trace_path=args.trace, workers=args.workers,
                             directory_url=args.directory, status_interval_s=args.status_interval)
        except ClientError as exc:
            raise CliError(str(exc)) from None
    if not args.id:
        raise CliError("run needs --id (or --fleet DIR)")
    return _start(_load_client(args), interval=args.status_interval)


def _cmd_socket(args: argparse.Namespace) -> int:
    from loopix import sockets

    async def serve(client):
        if args.socket == "websocket":
            server = await sockets.serve_websocket(client, "127.0.0.1", args.port,
                                                   origins=args.allow_origin)
            print(f"Listening on ws://localhost:{server.port}/mix", flush=True)
        else:
            server = await sockets.serve_tcp(client, "127.0.0.1", args.port)
            print(f"Listening on tcp://127.0.0.1:{server.port}", flush=True)
        return server

    return _start(_load_client(args), serve, args.status_interval)


# --- entry point --------------------------------------------------------------------------

# --- loadtest / report ----------------------------------------------------------------------


def _duration(text: str) -> float:
    """"60s", "2m", "500ms" or plain seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)], units[suffix]
            break
    else:
        number, scale = text, 1.0
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"bad duration {text!r} (use e.g. 60s, 2m, 500ms)") from None
    if value <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return value


def _add_loadtest(sub: argparse._SubParsersAction) -> None:
    from loopix.loadtest.thresholds import argparse_threshold

    p = sub.add_parser("loadtest", help="drive N identities open loop and measure the mixnet",
                       description="Run N ephemeral identities in one client for a fixed time, against "
                       "an embedded testnet (default) or --directory URL; live figures, thresholds, report.")
    p.add_argument("--identities", type=int, default=100)
    p.add_argument("--duration", type=_arg(_duration), default=60.0, help="e.g. 60s, 2m (default 60s)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--testnet", action="store_true", help="start an embedded testnet (the default)")
    where.add_argument("--directory", type=_arg(cfg.validate_directory_url), help="a running network's topology URL")
    p.add_argument("--payload-rate", type=float, default=2.0, help="per identity, packets/s (default 2)")
    p.add_argument("--loop-rate", type=float, default=1.0, help="per identity (default 1)")
    p.add_argument("--drop-rate", type=float, default=1.0, help="per identity (default 1)")
    p.add_argument("--messages", type=float, default=0.0, metavar="RATE",
                   help="real messages per second between random pairs of identities (default 0)")
    p.add_argument("--message-size", type=int, default=1024)
    p.add_argument("--mean-hop-delay-ms", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=0, help="packet workers (default: cores)")
    p.add_argument("--threshold", action="append", default=[], type=argparse_threshold,
                   help='e.g. "rtt_p99<2s", "loss<0.1%%"; any violated: exit 99')
    p.add_argument("--out", metavar="DIR", help="write summary.json, history.csv, report.html")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--grace", type=float, default=None, help="seconds to wait for stragglers after the load")
    p.add_argument("--layers", type=int, default=3, help="embedded testnet: mix layers")
    p.add_argument("--mixnodes-per-layer", type=int, default=2)
    p.add_argument("--providers", type=int, default=2)
    p.set_defaults(handler=_cmd_loadtest)


def _cmd_loadtest(args: argparse.Namespace) -> int:
    import uvloop

    from loopix.client.coordinator import ClientError
    from loopix.loadtest.run import LoadTestOptions, run_loadtest

    opts = LoadTestOptions(
        identities=args.identities, duration_s=args.duration, directory_url=args.directory,
        payload_rate=args.payload_rate, loop_rate=args.loop_rate, drop_rate=args.drop_rate,
        messages_rate=args.messages, message_size=args.message_size, mean_hop_delay_ms=args.mean_hop_delay_ms,
        workers=args.workers, thresholds=[t.expression for t in args.threshold], out_dir=args.out,
        metrics_port=args.metrics_port, grace_s=args.grace, layers=args.layers,
        mixnodes_per_layer=args.mixnodes_per_layer, providers=args.providers,
    )
    try:
        return uvloop.run(run_loadtest(opts)).exit_code
    except ClientError as exc:
        raise CliError(str(exc)) from None


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render report.html again from a load test's data",
                       description="Re-render DIR/report.html from DIR/summary.json and history.csv.")
    p.add_argument("dir", metavar="DIR")
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

    add_testnet_parser(sub)


_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_init, _add_run, _add_socket, _add_testnet, _add_loadtest, _add_report,
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser: one subparser per entry of `_COMMANDS`."""
    parser = _Parser(prog=PROG, description="A Loopix-style mix network client.")
    sub = parser.add_subparsers(
        title="commands", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the exit status (errors are one line on stderr)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.handler(args)
    except (CliError, cfg.ConfigError, keys.KeyFileError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
