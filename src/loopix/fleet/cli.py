"""The fleet commands of `loopix-client`: `init --fleet`, `run --fleet`, `socket --fleet` and
`fleet list|add|remove`. `loopix.cli` dispatches here; errors are `CliError`s (one line)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loopix import argtypes
from loopix import config as cfg
from loopix.argtypes import argtype
from loopix.cli import CliError, UsageError, positive_count

from .store import FleetError, FleetStore, check_count, create_fleet

SHOWN_ADDRESSES = 20


_RATES = (("payload", 50.0), ("loop", 5.0), ("drop", 5.0))


def add_fleet_rate_options(p: argparse.ArgumentParser) -> None:
    for stream, default in _RATES:
        p.add_argument(f"--{stream}-rate", metavar="PER_S", type=argtype(argtypes.rate), default=None,
                       help=f"with --fleet: each identity's {stream} stream, packets/s (default {default:g}; "
                       "0 turns it off)")


def init_fleet(args: argparse.Namespace, directory: str) -> int:
    """`init --fleet DIR --count N`: N identities in one keystore, in one process."""
    from loopix.cli import _testnet_traffic

    if args.id:
        raise UsageError("give --id or --fleet, not both (fleet identities are named 0, 1, ...)")
    if args.count is None:
        raise UsageError("--fleet needs --count N")
    traffic = _testnet_traffic(directory, None)
    for stream, _ in _RATES:
        rate = getattr(args, f"{stream}_rate")
        if rate is not None:
            setattr(traffic, f"{stream}_rate", rate)
    conf = cfg.ClientConfig(
        client=cfg.ClientSection(id="fleet", directory_server_topology=directory, provider_id=args.provider or ""),
        traffic=traffic,
    )
    try:
        store = create_fleet(args.fleet, check_count(args.count), conf, force=args.force)
    except FleetError as exc:
        raise CliError(str(exc)) from None
    with store:
        print(f"Saved {store.count()} identities (keys and shared config) to {store.path}")
    return 0


def _load(args: argparse.Namespace):
    from loopix.client.coordinator import ClientError
    from loopix.fleet.api import Fleet

    if args.id:
        raise UsageError("give --id or --fleet, not both")
    try:
        fleet = Fleet.load(args.fleet, trace_path=args.trace, workers=args.workers, directory_url=args.directory)
    except (FleetError, ClientError) as exc:
        raise CliError(str(exc)) from None
    fleet.on_waiting = lambda line: print(line, file=sys.stderr, flush=True)
    return fleet


def _announce(fleet) -> None:
    for name in fleet.names[:SHOWN_ADDRESSES]:
        print(f"{name}: {fleet.address(name)}")
    if len(fleet) > SHOWN_ADDRESSES:
        print(f"... and {len(fleet) - SHOWN_ADDRESSES} more identities (`loopix-client fleet list` shows all)")
    print(f"running {len(fleet)} identities; Ctrl-C stops", flush=True)


class _FleetExtras:
    """What runs beside the fleet (a socket server, the metrics exporter) and the end of its status
    line: identities running and connected (their counters: `fleet stats`)."""

    def __init__(self, fleet, server=None, metrics=None) -> None:
        self.fleet, self.server, self.metrics = fleet, server, metrics

    def status(self) -> str:
        line = f"identities {len(self.fleet)} (connected {self.fleet.stats.connected})"
        inner = getattr(self.server, "status", None)
        return f"{line} | {inner()}" if inner else line

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.metrics is not None:
            self.metrics[0].shutdown()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()


def _start(fleet, args: argparse.Namespace, serve=None) -> int:
    from loopix.client.coordinator import ClientError

    async def extras(fleet):
        server = await serve(fleet) if serve is not None else None
        metrics = None
        if args.metrics_port is not None:
            from .metrics import serve_fleet_metrics

            try:
                metrics = serve_fleet_metrics(fleet, args.metrics_port)
            except OSError as exc:
                if server is not None:
                    server.close()
                    await server.wait_closed()
                raise CliError(f"cannot serve metrics on 127.0.0.1:{args.metrics_port}: "
                               f"{exc.strerror or exc}") from None
            print(f"Metrics on http://127.0.0.1:{metrics[0].server_port}/metrics", flush=True)
        return _FleetExtras(fleet, server, metrics)

    try:
        return fleet.start(status_interval_s=args.status_interval, on_ready=_announce, serve=extras)
    except ClientError as exc:
        raise CliError(str(exc)) from None


def run_fleet(args: argparse.Namespace) -> int:
    return _start(_load(args), args)


def socket_fleet(args: argparse.Namespace) -> int:
    from loopix.cli import _ServerWithMailbox
    from loopix.fleet.sockets import FleetMailbox, serve_fleet_tcp, serve_fleet_websocket

    fleet = _load(args)

    async def serve(fleet):
        mailbox = await FleetMailbox(fleet, args.hold_messages, args.hold_bytes).start()
        try:
            if args.socket == "websocket":
                server = await serve_fleet_websocket(mailbox, "127.0.0.1", args.port)
                print(f"Listening on ws://localhost:{server.port}/mix (fleet form)", flush=True)
            else:
                server = await serve_fleet_tcp(mailbox, "127.0.0.1", args.port)
                print(f"Listening on tcp://127.0.0.1:{server.port} (fleet form)", flush=True)
        except OSError as exc:
            await mailbox.close()
            raise CliError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}") from None
        return _ServerWithMailbox(server, mailbox)

    return _start(fleet, args, serve)


# --- `loopix-client fleet ...` -----------------------------------------------------------------------


def add_fleet_parser(sub: argparse._SubParsersAction, epilog: str) -> None:
    p = sub.add_parser("fleet", help="list, add or remove the identities of a fleet",
                       description="Manage a fleet made by `init --fleet DIR --count N` (one keystore, "
                       "DIR/fleet.db).", epilog=epilog)
    actions = p.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True,
                               parser_class=type(p))
    ls = actions.add_parser("list", help="every identity: name and public key")
    ls.add_argument("dir", metavar="DIR")
    add = actions.add_parser("add", help="make N more identities")
    add.add_argument("dir", metavar="DIR")
    add.add_argument("--count", metavar="N", required=True, type=argtype(positive_count),
                     help="how many identities to add (at least 1)")
    st = actions.add_parser("stats", help="a running fleet's counters, per identity and top by traffic")
    st.add_argument("dir", metavar="DIR")
    st.add_argument("ids", metavar="ID", nargs="*", help="identities to show")
    st.add_argument("--top", metavar="K", type=argtype(positive_count), default=None,
                    help="also the K identities with the most packets sent and received "
                    "(default: 10 when no ID is given)")
    rm = actions.add_parser("remove", help="delete identities (their keys are lost)")
    rm.add_argument("dir", metavar="DIR")
    rm.add_argument("ids", metavar="ID", nargs="+")
    p.set_defaults(handler=cmd_fleet)


def _store(root: str) -> FleetStore:
    path = Path(root)
    if (path / "clients").is_dir() and not (path / "fleet.db").exists():
        raise CliError(f"{root} holds one directory per identity; `fleet` manages keystore fleets "
                       f"(made with `loopix-client init --fleet DIR --count N`)")
    try:
        return FleetStore(path)
    except FleetError as exc:
        raise CliError(str(exc)) from None


def _stats_line(s) -> str:
    rtt = f"{s.rtt_mean_ms:.0f}" if s.rtt_mean_ms is not None else "-"
    return (f"{s.identity:>10} {s.sent_payload:>9} {s.real_sent:>6} {s.sent_loop:>8} {s.sent_drop:>8} "
            f"{s.packets_received:>9} {s.loops_back:>10} {rtt:>8} {s.messages_sent:>8} {s.messages_received:>8}")


_STATS_HEADER = (f"{'identity':>10} {'payload':>9} {'real':>6} {'loop':>8} {'drop':>8} {'received':>9} "
                 f"{'loops back':>10} {'rtt ms':>8} {'msgs out':>8} {'msgs in':>8}")


def fleet_stats(args: argparse.Namespace) -> int:
    from .query import SOCKET_FILE, StatsQuery, ask

    top = args.top if args.top is not None else (0 if args.ids else 10)
    try:
        answer = ask(args.dir, StatsQuery(args.ids, top))
    except FileNotFoundError:
        raise CliError(f"no running fleet in {args.dir} (no {SOCKET_FILE}; start it with "
                       f"`loopix-client run --fleet {args.dir}`)") from None
    except ConnectionRefusedError:
        raise CliError(f"no running fleet in {args.dir} (nothing listens on its {SOCKET_FILE})") from None
    except (OSError, ValueError) as exc:
        raise CliError(f"could not ask the fleet in {args.dir}: {exc}") from None
    if answer.error:
        raise CliError(answer.error)
    print(f"fleet {args.dir}: {answer.running} identities running, {answer.connected} connected")
    if answer.identities:
        print(_STATS_HEADER)
        for s in answer.identities:
            print(_stats_line(s))
    if answer.top:
        print(f"top {len(answer.top)} by packets sent and received:")
        print(_STATS_HEADER)
        for s in answer.top:
            print(_stats_line(s))
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from loopix.keys import key_to_b64url

    if args.action == "stats":
        return fleet_stats(args)
    with _store(args.dir) as store:
        try:
            if args.action == "list":
                lines = (f"{m.name} {key_to_b64url(m.keys.public)}\n" for m in store.identities())
                try:
                    sys.stdout.writelines(lines)
                    sys.stdout.flush()
                except BrokenPipeError:  # `fleet list DIR | head`: the reader has what it wanted
                    sys.stdout = None

            elif args.action == "add":
                names = store.add(args.count)
                print(f"added {len(names)} identities ({names[0]}..{names[-1]}); {store.count()} in the fleet")
            else:
                store.remove(args.ids)
                print(f"removed {len(set(args.ids))} identities; {store.count()} in the fleet")
        except FleetError as exc:
            raise CliError(str(exc)) from None
    return 0
