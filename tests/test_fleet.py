"""Fleets: the keystore (made in one process, 0600/0700, atomic, add/remove), the fleet form of the
socket messages, and 1,000 identities on a real testnet that each send one real message to another
identity of the fleet and receive exactly what was sent to them, through `loopix.Fleet` and through
`loopix-client socket --fleet` (a process, over TCP)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from _procs import alive, children_of
from conftest import make_testnet_fixture, wait_until, wait_until_async
from loopix import config as cfg
from loopix.cli import init_client, main
from loopix.fleet.store import STORE_FILE, FleetError, FleetStore, create_fleet, load_identities
from loopix.keys import public_from_secret
from loopix.testnet.launcher import Testnet
from loopix.wire.fleet_socket_api import (
    FleetFrame,
    decode_fleet_request,
    decode_fleet_response,
    encode_fleet_push,
    encode_fleet_request,
    encode_fleet_response,
)
from loopix.wire.socket_api import (
    ClientAddress,
    Encoding,
    ErrorResponse,
    Received,
    SelfAddress,
    SelfAddressRequest,
    Send,
    TcpFrameDecoder,
    encode_tcp_frame,
)

N = 1000

testnet = make_testnet_fixture(
    "testnet", layers=3, mixnodes_per_layer=1, providers=2, mean_hop_delay_ms=2.0, presence_interval=1.0
)


def fleet_config(directory: str = cfg.DEFAULT_DIRECTORY) -> cfg.ClientConfig:
    """Light rates: 1,000 identities' cover must not swamp a Python testnet on a loaded machine."""
    return cfg.ClientConfig(
        client=cfg.ClientSection(id="fleet", directory_server_topology=directory),
        traffic=cfg.TrafficSection(payload_rate=1.0, loop_rate=0.05, drop_rate=0.0, mean_hop_delay_ms=2.0),
        runtime=cfg.RuntimeSection(workers=1),
    )


# --- the keystore ------------------------------------------------------------------------------------


def test_init_fleet_makes_one_private_keystore(tmp_path, capsys):
    root = tmp_path / "a" / "fleet"
    assert main(["init", "--fleet", str(root), "--count", "50", "--directory", "http://127.0.0.1:9/"]) == 0
    assert "Saved 50 identities" in capsys.readouterr().out
    assert sorted(os.listdir(root)) == [STORE_FILE]  # no temp file left
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / STORE_FILE).stat().st_mode) == 0o600
    contents = load_identities(root)
    assert contents.layout == "keystore" and [m.name for m in contents.members] == [str(i) for i in range(50)]
    assert all(public_from_secret(m.keys.secret) == m.keys.public for m in contents.members)
    assert len({m.keys.secret for m in contents.members}) == 50
    assert contents.config.client.directory_server_topology == "http://127.0.0.1:9" + cfg.TOPOLOGY_PATH
    # a second init does not replace it
    assert main(["init", "--fleet", str(root), "--count", "5", "--directory", "http://127.0.0.1:9/"]) == 1
    assert "already holds a fleet" in capsys.readouterr().err
    assert len(load_identities(root).members) == 50


def test_add_and_remove_keep_names_stable(tmp_path, capsys):
    root = tmp_path / "f"
    create_fleet(root, 3, fleet_config())
    assert main(["fleet", "add", str(root), "--count", "2"]) == 0
    assert main(["fleet", "remove", str(root), "1", "3"]) == 0
    capsys.readouterr()
    assert main(["fleet", "list", str(root)]) == 0
    listed = capsys.readouterr().out.split("\n")
    assert [line.split()[0] for line in listed if line] == ["0", "2", "4"]
    with FleetStore(root) as store:
        assert store.add(1) == ["5"]  # never reuses a removed name
        with pytest.raises(FleetError, match="no identity '7'"):
            store.remove(["0", "7"])
        assert store.names() == ["0", "2", "4", "5"]  # all or nothing


@pytest.mark.parametrize(("argv", "expected"), [
    (["init", "--fleet", "{d}/x", "--count", "0"], "argument --count: must be at least 1, got 0"),
    (["init", "--fleet", "{d}/x", "--count", "-3"], "must be at least 1, got -3"),
    (["init", "--fleet", "{d}/x"], "--fleet needs --count N"),
    (["init", "--count", "3"], "--count and the rates go with --fleet DIR"),
    (["init", "--payload-rate", "1"], "--count and the rates go with --fleet DIR"),
    (["init", "--fleet", "{d}/x", "--count", "1", "--drop-rate", "-1"], "must be a finite number >= 0"),
    (["init", "--fleet", "{d}/x", "--count", "2", "--id", "a"], "not both"),
    (["fleet", "add", "{d}/ok", "--count", "0"], "must be at least 1, got 0"),
    (["fleet", "remove", "{d}/ok", "nobody"], "no identity 'nobody' in the fleet"),
    (["fleet", "list", "{d}/nothing"], "no fleet.db"),
    (["fleet", "list", "{d}/bad"], "not a loopix fleet keystore"),
    (["fleet", "list", "{d}/other"], "not a loopix fleet keystore (format"),
    (["run", "--fleet", "{d}/empty"], "is not a fleet directory"),
    (["run", "--fleet", "{d}/bad"], "not a loopix fleet keystore"),
    (["socket", "--fleet", "{d}/nothing", "--port", "0"], "no fleet directory"),
    (["socket", "--port", "0"], "socket needs --id ID (see init) or --fleet DIR"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, expected):
    create_fleet(tmp_path / "ok", 2, fleet_config())
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / STORE_FILE).write_bytes(b"this is not SQLite" * 10)
    os.chmod(tmp_path / "bad" / STORE_FILE, 0o600)
    (tmp_path / "other").mkdir()
    other = tmp_path / "other" / STORE_FILE
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("INSERT INTO meta VALUES ('format', 'something-else')")
    os.chmod(other, 0o600)
    code = main([a.format(d=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code in (1, 2)
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err


def test_open_keystore_is_refused(tmp_path):
    create_fleet(tmp_path, 1, fleet_config())
    os.chmod(tmp_path / STORE_FILE, 0o644)
    with pytest.raises(FleetError, match="too open"):
        load_identities(tmp_path)


def test_per_identity_directories_still_load(tmp_path):
    for name in ("b", "a"):
        init_client(name, home=tmp_path)
    contents = load_identities(tmp_path)
    assert contents.layout == "directories" and [m.name for m in contents.members] == ["a", "b"]


# --- the fleet form of the socket messages -----------------------------------------------------------

BOB = ClientAddress(bytes(range(32)), bytes(range(32, 64)))


@pytest.mark.parametrize("encoding", [Encoding.JSON, Encoding.BINARY])
def test_fleet_frames_round_trip(encoding):
    for request in (Send(b"hi", BOB), SelfAddressRequest()):
        frame = encode_fleet_request(FleetFrame("17", request), encoding)
        assert decode_fleet_request(frame) == (encoding, FleetFrame("17", request))
    for response in (SelfAddress(BOB), ErrorResponse("no"), Received(b"text")):
        assert decode_fleet_response(encode_fleet_response(FleetFrame("ab_c", response), encoding)) == \
            FleetFrame("ab_c", response)
    used, pushed = encode_fleet_push("9", b"\xff binary", encoding)
    assert used is Encoding.BINARY and decode_fleet_response(pushed) == FleetFrame("9", Received(b"\xff binary"))


def test_fleet_json_names_the_identity_and_bad_frames_say_why():
    frame = b'{"type":"send","identity":"3","message":"hi","recipient":"%s"}' % str(BOB).encode()
    assert decode_fleet_request(frame)[1] == FleetFrame("3", Send(b"hi", BOB))
    assert encode_fleet_push("3", b"hi", Encoding.JSON)[1] == b'{"identity":"3","type":"received","message":"hi"}'
    bad = {
        b'{"type":"selfAddress"}': "names its identity",
        b'{"type":"selfAddress","identity":5}': '"identity" must be a string',
        b"\x00\x01": "names its identity",
        b"\x41abc": "at most 64 bytes",
        b"\x05ab": "truncated fleet frame",
        b"\x01a\x42": "unknown request tag 0x42",
    }
    for data, why in bad.items():
        body = decode_fleet_request(data)[1].body
        assert isinstance(body, ErrorResponse) and why in body.message, (data, body)


# --- 1,000 identities on a real testnet --------------------------------------------------------------


def make_fleet(net: Testnet, root: Path) -> None:
    create_fleet(root, N, fleet_config(net.topology_url))


def expected_messages() -> dict[str, bytes]:
    """Identity i sends to i+1 (mod N): what each identity must receive, once."""
    return {str((i + 1) % N): f"from {i} to {(i + 1) % N}".encode() for i in range(N)}


def test_a_thousand_identities_message_each_other_through_the_python_api(testnet, tmp_path):
    import loopix

    make_fleet(testnet, tmp_path / "fleet")

    async def scenario() -> dict[str, list[bytes]]:
        got: dict[str, list[bytes]] = {}
        async with loopix.Fleet.load(tmp_path / "fleet") as fleet:
            assert len(fleet) == N
            inbox = fleet.messages()
            one = fleet.messages_for("1")  # a per-identity subscription sees only its own
            for i in range(N):
                await fleet.send_message(i, f"from {i} to {(i + 1) % N}".encode(), fleet.address((i + 1) % N))
            async with asyncio.timeout(45):
                while sum(len(v) for v in got.values()) < N:
                    identity, message = await inbox.__anext__()
                    got.setdefault(identity, []).append(message)
                assert await anext(one) == b"from 0 to 1"
            with pytest.raises(ValueError, match="no identity 'nobody'"):
                await fleet.send_message("nobody", b"x", fleet.address(0))
            with pytest.raises(ValueError, match="no identity"):
                fleet.address(N)
            await asyncio.sleep(0.5)  # a duplicate would be waiting by now
            assert not inbox._items
            assert fleet.stats.messages_received == N
        return got

    got = uvloop.run(scenario())
    assert got == {k: [v] for k, v in expected_messages().items()}


class TcpFleetApp:
    """A blocking application on the fleet socket's TCP form (JSON requests, binary pushes)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.decoder = TcpFrameDecoder()
        self.frames: list[FleetFrame] = []

    def request(self, frame: FleetFrame, encoding: Encoding) -> None:
        self.sock.sendall(encode_tcp_frame(encode_fleet_request(frame, encoding)))

    def read_until(self, done) -> None:
        while not done():
            data = self.sock.recv(1 << 16)
            assert data, "the server closed the connection"
            self.frames.extend(decode_fleet_response(f) for f in self.decoder.feed(data))

    def finish(self) -> None:
        """Close our side and read everything the server wrote before it closed its side."""
        self.sock.shutdown(socket.SHUT_WR)
        while data := self.sock.recv(1 << 16):
            self.frames.extend(decode_fleet_response(f) for f in self.decoder.feed(data))
        self.sock.close()


def test_a_thousand_identities_message_each_other_through_the_fleet_socket(testnet, tmp_path):
    make_fleet(testnet, tmp_path / "fleet")
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopix", "socket", "--fleet", str(tmp_path / "fleet"), "--socket", "tcp",
         "--port", "0", "--status-interval", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "LOOPIX_HOME": str(tmp_path / "unused")})
    kids: set[int] = set()
    lines: list[str] = []
    try:
        port = None
        for line in proc.stdout:  # bounded: the client prints a few lines, then listens, or exits
            lines.append(line)
            if m := re.search(r"Listening on tcp://127\.0\.0\.1:(\d+)", line):
                port = int(m[1])
                break
        assert port is not None, "".join(lines)
        kids |= set(children_of(proc.pid))
        app = TcpFleetApp(port)
        # every identity's address, half asked in JSON, half in binary
        for i in range(N):
            app.request(FleetFrame(str(i), SelfAddressRequest()), Encoding.JSON if i % 2 else Encoding.BINARY)
        app.read_until(lambda: sum(isinstance(f.body, SelfAddress) for f in app.frames) == N)
        addresses = {f.identity: f.body.address for f in app.frames if isinstance(f.body, SelfAddress)}
        assert len(addresses) == N
        app.request(FleetFrame("nobody", SelfAddressRequest()), Encoding.JSON)
        for i in range(N):
            j = str((i + 1) % N)
            app.request(FleetFrame(str(i), Send(f"from {i} to {j}".encode(), addresses[j])), Encoding.BINARY)
        app.read_until(lambda: any(isinstance(f.body, ErrorResponse) for f in app.frames))
        errors = [f for f in app.frames if isinstance(f.body, ErrorResponse)]
        assert errors[0].identity == "nobody" and "no identity 'nobody'" in errors[0].body.message
        # leave before all have arrived: the rest are held for the next connection
        app.finish()
        second = TcpFleetApp(port)
        received = lambda: [f for f in app.frames + second.frames if isinstance(f.body, Received)]  # noqa: E731
        second.read_until(lambda: len(received()) >= N)
        second.finish()
        got: dict[str, list[bytes]] = {}
        for f in received():
            got.setdefault(f.identity, []).append(f.body.message)
        assert got == {k: [v] for k, v in expected_messages().items()}
        assert len(errors) == 1
    finally:
        proc.terminate()
        code = proc.wait(30)
        rest = proc.stdout.read()
        proc.stdout.close()
    assert code == 0, "".join(lines) + rest
    assert "Traceback" not in rest
    wait_until(lambda: not any(alive(k) for k in kids), "the fleet's worker and sender to exit")



def registered_at_a_provider(net: Testnet, key: bytes) -> bool:
    """Whether any provider of the testnet keeps a registration of `key` (read from its inbox file)."""
    for info in net.nodes.values():
        if info.kind == "provider":
            db = sqlite3.connect(f"file:{Path(info.key_dir) / 'inbox.sqlite'}?mode=ro", uri=True)
            try:
                if db.execute("SELECT 1 FROM clients WHERE key = ?", (key,)).fetchone():
                    return True
            finally:
                db.close()
    return False


def test_identities_join_and_leave_a_running_fleet(testnet, tmp_path, capsys):
    """`fleet add|remove` from the CLI (another connection to the keystore) and `Fleet.add` while
    running: the new identities send and receive, the removed one is gone, the rest go on."""
    import loopix
    from loopix.fleet.api import UnknownIdentityError

    root = tmp_path / "fleet"
    create_fleet(root, 10, fleet_config(testnet.topology_url))

    async def exchange(fleet, inbox, pairs: list[tuple[str, str]]) -> None:
        for a, b in pairs:
            await fleet.send_message(a, f"{a}>{b}".encode(), fleet.address(b))
        want = sorted((b, f"{a}>{b}".encode()) for a, b in pairs)
        got = []
        async with asyncio.timeout(30):
            while len(got) < len(want):
                got.append(await anext(inbox))
        assert sorted(got) == want

    async def scenario() -> None:
        async with loopix.Fleet.load(root) as fleet:
            inbox = fleet.messages()
            assert main(["fleet", "add", str(root), "--count", "3"]) == 0  # names 10, 11, 12
            await wait_until_async(lambda: len(fleet) == 13, "the running fleet to see 3 more identities")
            await exchange(fleet, inbox, [("10", "0"), ("0", "12"), ("11", "11")])
            assert await fleet.add(2) == ["13", "14"]
            gone = [ClientAddress.parse(fleet.address(n)).client_key for n in ("1", "13")]
            await wait_until_async(lambda: all(registered_at_a_provider(testnet, k) for k in gone),
                                   "identities 1 and 13 registered")
            assert main(["fleet", "remove", str(root), "1", "13"]) == 0
            await wait_until_async(lambda: "1" not in fleet.names and "13" not in fleet.names,
                                   "the running fleet to drop identities 1 and 13")
            # they left for good: unregistered, so their providers forgot them (UNREGISTER)
            await wait_until_async(lambda: not any(registered_at_a_provider(testnet, k) for k in gone),
                                   "the providers to forget identities 1 and 13")
            with pytest.raises(UnknownIdentityError):
                await fleet.send_message("1", b"x", fleet.address("0"))
            await exchange(fleet, inbox, [("14", "2"), ("2", "14"), ("9", "10")])
            # 10 + 3 + 2 joined, 2 left (the sender's once-a-second stats catch up)
            await wait_until_async(lambda: fleet._coord.stats.connected == 13, "13 identities connected")
            # per-identity counters, through the API and through `fleet stats` (its socket)
            s10, s14 = await fleet.identity_stats("10", 14)
            assert (s10.identity, s10.messages_sent, s10.messages_received) == ("10", 1, 1)
            assert (s14.messages_sent, s14.messages_received) == (1, 1)
            assert s10.real_sent >= 1 and s10.sent_payload >= s10.real_sent and s10.packets_received >= 1
            top = await fleet.top_identities(3)
            assert len(top) == 3 and top[0].sent_payload + top[0].sent_loop + top[0].sent_drop + \
                top[0].packets_received >= s10.sent_payload + s10.sent_loop + s10.sent_drop + s10.packets_received
            capsys.readouterr()
            assert await asyncio.to_thread(main, ["fleet", "stats", str(root), "10", "--top", "2"]) == 0
            out = capsys.readouterr().out
            assert "13 identities running" in out and re.search(r"^\s+10\s+\d+", out, re.M) and "top 2" in out
            assert await asyncio.to_thread(main, ["fleet", "stats", str(root), "1"]) == 1
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "no identity '1'" in err

    uvloop.run(scenario())


def test_run_fleet_process_serves_stats_and_bounded_metrics(testnet, tmp_path):
    """`run --fleet DIR --metrics-port 0` on a keystore: addresses, status line, `fleet stats` from
    another process, Prometheus totals with no per-identity label, `fleet add` picked up."""
    import urllib.request

    root = tmp_path / "fleet"
    create_fleet(root, 5, fleet_config(testnet.topology_url))
    env = {**os.environ, "LOOPIX_HOME": str(tmp_path / "unused")}
    proc = subprocess.Popen([sys.executable, "-m", "loopix", "run", "--fleet", str(root), "--metrics-port", "0",
                             "--status-interval", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    lines: list[str] = []

    def read_until(pattern: str) -> re.Match:
        for line in proc.stdout:  # bounded: status lines come every 0.5 s until the client exits
            lines.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError("".join(lines))

    try:
        port = int(read_until(r"Metrics on http://127\.0\.0\.1:(\d+)/metrics")[1])
        assert sum(ln.startswith(("0:", "1:", "2:", "3:", "4:")) for ln in lines) == 5
        read_until(r"identities 5 \(connected 5\)")
        stats = subprocess.run([sys.executable, "-m", "loopix", "fleet", "stats", str(root)], env=env,
                               capture_output=True, text=True, timeout=60)
        assert stats.returncode == 0 and "5 identities running, 5 connected" in stats.stdout, stats.stderr
        assert "top 5 by packets" in stats.stdout
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "loopix_fleet_identities 5.0" in text and 'loopix_fleet_sent_packets_total{stream="payload"}' in text
        labels = set(re.findall(r"^loopix_\w+\{(\w+)=", text, re.M))
        assert labels == {"stream"}, labels  # bounded: never an identity
        assert main(["fleet", "add", str(root), "--count", "2"]) == 0
        read_until(r"identities 7 \(connected 7\)")
    finally:
        proc.terminate()
        code = proc.wait(30)
        rest = proc.stdout.read()
        proc.stdout.close()
    assert code == 0 and "Traceback" not in rest, "".join(lines) + rest
    assert not (root / "fleet.sock").exists()
