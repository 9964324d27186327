"""The fleet commands of `loopix-client`: `init --fleet`, `run --fleet`, `socket --fleet` and
`fleet list|add|remove`. `loopix.cli` dispatches here; errors are `CliError`s (one line)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loopix import config as cfg
from loopix.cli import CliError, UsageError, _arg, positive_count

from .store import FleetError, FleetStore, check_count, create_fleet

SHOWN_ADDRESSES = 20


def init_fleet(args: argparse.Namespace, directory: str) -> int:
    """`init --fleet DIR --count N`: N identities in one keystore, in one process."""
    from loopix.cli import _testnet_traffic

    if args.id:
        raise UsageError("give --id or --fleet, not both (fleet identities are named 0, 1, ...)")
    if args.count is None:
        raise UsageError("--fleet needs --count N")
    conf = cfg.ClientConfig(
        client=cfg.ClientSection(id="fleet", directory_server_topology=directory, provider_id=args.provider or ""),
        traffic=_testnet_traffic(directory, None),
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


def _start(fleet, interval: float, serve=None) -> int:
    from loopix.client.coordinator import ClientError

    try:
        return fleet.start(status_interval_s=interval, on_ready=_announce, serve=serve)
    except ClientError as exc:
        raise CliError(str(exc)) from None


def run_fleet(args: argparse.Namespace) -> int:
    return _start(_load(args), args.status_interval)


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

    return _start(fleet, args.status_interval, serve)


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
    add.add_argument("--count", metavar="N", required=True, type=_arg(positive_count),
                     help="how many identities to add (at least 1)")
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


def cmd_fleet(args: argparse.Namespace) -> int:
    from loopix.keys import key_to_b64url

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
