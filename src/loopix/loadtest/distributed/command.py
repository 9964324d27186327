"""`python -m loopix.loadtest.distributed master|worker|locustfile`: the loadtest flags checked
here (one clear line on bad input), then Locust itself, in place of this process, with the shipped
locustfile. Arguments we do not know go to Locust unchanged (--csv, --html, --web-port, ...).

`main_from_loadtest` is the hook for `loopix-client loadtest --master|--worker`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from loopix import config as cfg
from loopix.argtypes import (
    OneLineParser,
    argtype,
    count,
    duration,
    fixed_port,
    positive_number,
    rate,
)
from loopix.loadtest.thresholds import argparse_threshold

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


EXIT_USAGE = 2


def _url(text: str) -> str:
    try:
        return cfg.validate_directory_url(text)
    except cfg.ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(prog: str = "python -m loopix.loadtest.distributed") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog,
                                description="Distributed loopix load tests on Locust (docs/distributed.md).")
    sub = p.add_subparsers(dest="role", required=True, metavar="ROLE", parser_class=OneLineParser)
    m = sub.add_parser("master", help="hand out the shares, merge, report, apply thresholds")
    m.add_argument("--expect-workers", type=argtype(count(1)), required=True)
    m.add_argument("--expect-timeout", type=argtype(duration), default=60.0,
                   help="give up when fewer workers connected by then (default 60s)")
    m.add_argument("--directory", type=_url, required=True, help="the network's topology URL")
    m.add_argument("--identities", type=argtype(count(1)), default=100, help="over all workers")
    m.add_argument("--duration", type=argtype(duration), default=60.0)
    m.add_argument("--payload-rate", type=argtype(rate), default=2.0)
    m.add_argument("--loop-rate", type=argtype(rate), default=1.0)
    m.add_argument("--drop-rate", type=argtype(rate), default=1.0)
    m.add_argument("--mean-hop-delay-ms", type=argtype(positive_number), default=20.0)
    m.add_argument("--workers", type=argtype(count(0)), default=0, help="packet workers per machine (0: cores)")
    m.add_argument("--grace", type=argtype(duration), default=None)
    m.add_argument("--threshold", action="append", default=[], type=argparse_threshold)
    m.add_argument("--out", metavar="DIR", help="write the loopix report (summary.json, ...)")
    m.add_argument("--event-budget", type=argtype(positive_number), default=100.0,
                   help="Locust request events per second per worker (sampled; default 100)")
    m.add_argument("--bind-host", default="*", help="Locust master bind host (default all)")
    m.add_argument("--port", type=argtype(fixed_port), default=5557, help="Locust master port (default 5557)")
    m.add_argument("--web", action="store_true", help="keep Locust's web UI (default headless)")
    w = sub.add_parser("worker", help="run this machine's share in a child process")
    w.add_argument("--master-host", required=True)
    w.add_argument("--port", type=argtype(fixed_port), default=5557)
    sub.add_parser("locustfile", help="print the path of the shipped locustfile")
    return p


def locust_argv(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """The Locust command line for a parsed role."""
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    if args.role == "worker":
        return [*base, "--worker", "--master-host", args.master_host, "--master-port", str(args.port), *extra]
    argv = [*base, "--master", "--master-bind-host", args.bind_host, "--master-bind-port", str(args.port),
            "--expect-workers", str(args.expect_workers),
            "--expect-workers-max-wait", str(int(args.expect_timeout) + 1),
            "-u", "0", "-r", "1",
            "--loopix-expect-timeout", str(args.expect_timeout),
            "--loopix-directory", args.directory,
            "--loopix-identities", str(args.identities), "--loopix-duration", str(args.duration),
            "--loopix-payload-rate", str(args.payload_rate), "--loopix-loop-rate", str(args.loop_rate),
            "--loopix-drop-rate", str(args.drop_rate),
            "--loopix-mean-hop-delay-ms", str(args.mean_hop_delay_ms),
            "--loopix-packet-workers", str(args.workers), "--loopix-event-budget", str(args.event_budget)]
    argv += ["--autostart"] if args.web else ["--headless"]
    if args.grace is not None:
        argv += ["--loopix-grace", str(args.grace)]
    for t in args.threshold:
        argv += ["--loopix-threshold", t.expression]
    if args.out:
        argv += ["--loopix-out", args.out]
    return [*argv, *extra]


def main_from_loadtest(argv: Sequence[str]) -> int:
    """`loopix-client loadtest --master ...` / `--worker ...`: the loadtest subcommand's arguments
    (after "loadtest") with --master or --worker among them."""
    args = list(argv)
    for flag, role in (("--master", "master"), ("--worker", "worker")):
        if flag in args:
            args.remove(flag)
            return main([role, *args], prog="loopix-client loadtest")
    raise ValueError("neither --master nor --worker")


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog) if prog else build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.role == "master" and args.identities < args.expect_workers:
        parser.error(f"--identities {args.identities} is fewer than --expect-workers {args.expect_workers}: "
                     f"every worker needs at least one identity")
    if args.role == "locustfile":
        print(LOCUSTFILE)
        return 0
    cmd = locust_argv(args, extra)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)  # Locust (and gevent) own this process from here
    return 1  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
