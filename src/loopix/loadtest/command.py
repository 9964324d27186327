"""`loopix-client loadtest`: the subcommand's options, their validation, and its handler.

Every option is checked before anything starts (no testnet, no process, no load): a bad value is
one line `loopix-client loadtest: error: ...` and exit 2 (usage) or 1 (a port in use, an output
directory we cannot write or that already holds a report). A run ends with 0, 99 when a threshold
is violated, 130 when interrupted (Ctrl-C or SIGTERM: the report of what was measured so far is
still written, marked interrupted), never with a traceback.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

from loopix.argtypes import argtype, count, duration, fixed_port, rate
from loopix.units import UnitError

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_USAGE", "add_parser", "run_command"]

PROG = "loopix-client loadtest"
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class CommandError(Exception):
    """A check that failed before the run: one line, exit status 1."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from loopix import config as cfg
    from loopix.loadtest.thresholds import argparse_threshold

    p = sub.add_parser(
        "loadtest", help="drive N identities open loop and measure the mixnet",
        description="Run N ephemeral identities in one client for a fixed time, against an embedded "
        "testnet (default) or --directory URL; live figures, thresholds, a verdict, a report. "
        "Durations need a unit (30s, 2m, 500ms). Exit: 0 ok, 1 error, 2 usage, 99 threshold "
        "violated, 130 interrupted (the report is still written). Across machines: `loadtest --master "
        "--expect-workers N ...` and `loadtest --worker --master-host H` run it on Locust "
        "(`loopix-client loadtest --master --help`, docs/distributed.md).")
    p.add_argument("--identities", type=argtype(count(1)), default=100, help="at least 1 (default 100)")
    p.add_argument("--duration", type=argtype(duration), default=60.0, help="e.g. 60s, 2m (default 60s)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--testnet", action="store_true", help="start an embedded testnet (the default)")
    where.add_argument("--directory", type=argtype(cfg.validate_directory_url), help="a running network's topology URL")
    p.add_argument("--payload-rate", type=argtype(rate), default=2.0, help="per identity, packets/s (default 2)")
    p.add_argument("--loop-rate", type=argtype(rate), default=1.0, help="per identity (default 1)")
    p.add_argument("--drop-rate", type=argtype(rate), default=1.0, help="per identity (default 1)")
    p.add_argument("--messages", type=argtype(rate), default=0.0, metavar="RATE",
                   help="real messages per second between random pairs of identities (default 0)")
    p.add_argument("--message-size", type=argtype(count(1)), default=1024)
    p.add_argument("--mean-hop-delay-ms", type=argtype(rate), default=20.0)
    p.add_argument("--workers", type=argtype(count(0)), default=0, help="packet workers (default: cores)")
    p.add_argument("--senders", type=argtype(count(0)), default=0,
                   help="sender processes, each owning a share of the identities (default: one per 8 workers)")
    p.add_argument("--sender-coalesce-us", type=argtype(count(0, 1000)), default=300, metavar="US",
                   help="packets due within this after the next one are sent with the last of them, each at "
                   "most this late (default 300; 0: each at its own time)")
    p.add_argument("--threshold", action="append", default=[], type=argparse_threshold,
                   help='e.g. "rtt_p99<2s", "loss<0.1%%" (durations need a unit); any violated: exit 99')
    p.add_argument("--out", metavar="DIR", help="write summary.json, history.csv, nodes.csv, resources.csv, "
                   "report.html (checked before the run)")
    p.add_argument("--force", action="store_true", help="overwrite a report already in --out")
    p.add_argument("--metrics-port", type=argtype(fixed_port), help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--grace", type=argtype(duration), default=None,
                   help="how long to wait for stragglers after the load, e.g. 5s (default: from the delays)")
    p.add_argument("--layers", type=argtype(count(1)), default=3, help="embedded testnet: mix layers")
    p.add_argument("--mixnodes-per-layer", type=argtype(count(1)), default=2)
    p.add_argument("--providers", type=argtype(count(1)), default=2)
    from .capacity import add_capacity_arguments

    add_capacity_arguments(p)
    p.set_defaults(handler=run_command)
    return p


def check_out_dir(path: str, force: bool) -> Path:
    """Make sure the report can be written before any load: a directory we can create and write,
    not holding a previous report unless `force`."""
    from .report import SUMMARY_FILE

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {path}: exists and is not a directory")
    if ((out / SUMMARY_FILE).exists() or (out / "capacity.json").exists()) and not force:
        raise CommandError(f"--out {path}: already holds a report (use --force to overwrite it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise CommandError(f"--out {path}: cannot write there ({exc.strerror or exc})") from None
    return out


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise CommandError(f"--metrics-port {port}: cannot listen there ({exc.strerror or exc})") from None


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def run_command(args: argparse.Namespace) -> int:
    import uvloop

    from loopix.client.coordinator import ClientError
    from loopix.testnet.launcher import TestnetError

    from .run import Interrupted, LoadTestOptions, run_loadtest

    try:
        if args.out:
            check_out_dir(args.out, args.force)
        if args.metrics_port:
            check_port_free(args.metrics_port)
    except CommandError as exc:
        return _error(str(exc))
    opts = LoadTestOptions(
        identities=args.identities, duration_s=args.duration, directory_url=args.directory,
        payload_rate=args.payload_rate, loop_rate=args.loop_rate, drop_rate=args.drop_rate,
        messages_rate=args.messages, message_size=args.message_size, mean_hop_delay_ms=args.mean_hop_delay_ms,
        workers=args.workers, senders=args.senders, sender_coalesce_us=args.sender_coalesce_us,
        thresholds=[t.expression for t in args.threshold], out_dir=args.out,
        metrics_port=args.metrics_port, grace_s=args.grace, layers=args.layers,
        mixnodes_per_layer=args.mixnodes_per_layer, providers=args.providers,
        command_line=["loopix-client", *sys.argv[1:]],
    )
    try:
        if args.find_capacity:
            from .capacity import run_capacity_command

            return run_capacity_command(args, opts)
        return uvloop.run(run_loadtest(opts)).exit_code
    except Interrupted as exc:
        print(f"{PROG}: interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ClientError, TestnetError, UnitError, OSError) as exc:
        return _error(str(exc))
