"""Careless input to `loopix-client`, as real subprocesses: each gets one line on stderr naming the
command, the documented exit status, and nothing started (no key announced, no process left)."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

import pytest

from loopix import cli
from loopix import config as cfg
from test_cli_init import assert_one_line_error, run


@pytest.fixture
def home(tmp_path: Path) -> Path:
    cli.init_client("alice", home=tmp_path)
    return tmp_path


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def assert_usage(result, *words: str) -> str:
    line = assert_one_line_error(result, 2)
    assert line.startswith("loopix-client "), line
    for w in words:
        assert w in line, line
    return line


@pytest.mark.parametrize("port", ["70000", "-1", "65536", "http", "1.5"])
def test_socket_port_out_of_range(home, port):
    line = assert_usage(run(home, "socket", "--id", "alice", "--port", port), "--port")
    assert line.startswith("loopix-client socket: error:")


def test_socket_port_in_use_is_refused_before_keys_are_announced(home, busy_port):
    result = run(home, "socket", "--id", "alice", "--port", str(busy_port))
    line = assert_one_line_error(result, 1)  # also: stdout empty, so no "Our Public Key is"
    assert line == f"loopix-client socket: error: port {busy_port} on 127.0.0.1: already in use (choose another, or 0 for any)"


@pytest.mark.parametrize(("command", "workers"), [("run", "0"), ("run", "-1"), ("run", "many"), ("socket", "5000")])
def test_workers_at_least_one(home, command, workers):
    assert_usage(run(home, command, "--id", "alice", "--workers", workers), "--workers")


@pytest.mark.parametrize(("command", "interval"), [
    *(("run", i) for i in ["0", "0s", "-1", "-5s", "10ms", "nan", "inf", "5x", "soon"]), ("socket", "0"),
])
def test_status_interval_positive(home, command, interval):
    assert_usage(run(home, command, "--id", "alice", "--status-interval", interval), "--status-interval")


def test_status_interval_values():
    assert cli.status_interval("5s") == 5.0
    assert cli.status_interval("500ms") == 0.5
    assert cli.status_interval("1m") == 60.0
    assert cli.status_interval("3") == 3.0  # a bare number is seconds, as the flag always took


def test_hold_sizes():
    assert cli.byte_size("64MiB") == 64 * 2**20
    assert cli.byte_size("1k") == 1000
    assert cli.byte_size("4096") == 4096
    for bad in ("0", "-1", "lots", "5 parsecs"):
        with pytest.raises(ValueError):
            cli.byte_size(bad)


@pytest.mark.parametrize("option", [["--hold-messages", "0"], ["--hold-bytes", "0"], ["--hold-bytes", "1 furlong"]])
def test_socket_hold_options(home, option):
    assert_usage(run(home, "socket", "--id", "alice", *option), option[0])


def test_trace_path_must_be_writable(home, tmp_path):
    line = assert_one_line_error(run(home, "run", "--id", "alice", "--trace", str(tmp_path / "no" / "t.bin")), 1)
    assert "cannot write" in line and "no directory" in line
    line = assert_one_line_error(run(home, "run", "--id", "alice", "--trace", str(tmp_path)), 1)
    assert "is a directory" in line


def test_run_needs_an_id_or_a_fleet(home):
    assert "--id" in assert_usage(run(home, "run"))
    assert_usage(run(home, "run", "--id", "alice", "--fleet", str(home)), "not both")


def test_unknown_client(home):
    line = assert_one_line_error(run(home, "run", "--id", "ghost"), 1)
    assert line.startswith("loopix-client run: error: no client 'ghost'") and "init --id ghost" in line


class _Pages(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/page"):
            body, kind, status = b"<!doctype html><title>hi</title>", "text/html", 200
        elif self.path.startswith("/json"):
            body, kind, status = b'{"hello": "world"}', "application/json", 200
        else:
            body, kind, status = b"not here", "text/plain", 404
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def web_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(("path", "words"), [
    ("/page", "web page, not a topology"),
    ("/missing", "HTTP 404"),
    ("/json", "not a usable topology"),
])
def test_not_a_directory_is_a_permanent_error_with_a_hint(home, web_server, path, words):
    """No 20 s of retries: the first answer settles it (and no key is announced)."""
    result = run(home, "run", "--id", "alice", "--directory", web_server + path)
    line = assert_one_line_error(result, 1)
    assert words in line and "is this the directory's URL?" in line


def test_init_accepts_the_directory_base_url(tmp_path):
    assert run(tmp_path, "init", "--id", "a", "--directory", "http://127.0.0.1:9123/").returncode == 0
    assert run(tmp_path, "init", "--id", "b", "--directory", "http://127.0.0.1:9123").returncode == 0
    for name in ("a", "b"):
        conf = cfg.load(cfg.config_path(name, tmp_path))
        assert conf.client.directory_server_topology == "http://127.0.0.1:9123/api/presence/topology"


def test_init_and_testnet_share_one_default_port():
    from loopix.testnet.launcher import DEFAULT_BASE_PORT

    assert f"http://127.0.0.1:{DEFAULT_BASE_PORT}/api/presence/topology" == cfg.DEFAULT_DIRECTORY


@pytest.mark.parametrize("args", [
    ["--layers", "0"], ["--providers", "-1"], ["--mixnodes-per-layer", "x"], ["--base-port", "70000"],
    ["--presence-interval", "0"], ["--presence-interval", "0ms"], ["--mean-hop-delay-ms", "-3"], ["--expiry", "nan"],
])
def test_testnet_bad_options(tmp_path, args):
    assert_usage(run(tmp_path, "testnet", *args), args[0])
    assert not (tmp_path / "testnet").exists()


def test_testnet_port_in_use(tmp_path, busy_port):
    line = assert_one_line_error(run(tmp_path, "testnet", "--base-port", str(busy_port)), 1)
    assert line.startswith(f"loopix-client testnet: error: port {busy_port} on 127.0.0.1 is not free")
    assert not (tmp_path / "testnet").exists()


def test_help_command_and_version(tmp_path):
    for topic in ("init", "run", "socket", "testnet", "loadtest", "report"):
        result = run(tmp_path, "help", topic)
        assert result.returncode == 0 and result.stderr == ""
        assert result.stdout == run(tmp_path, topic, "--help").stdout
    assert "exit status: 0 ok, 1 error, 2 bad usage" in run(tmp_path, "help", "run").stdout
    assert_usage(run(tmp_path, "help", "nope"), "no command 'nope'")
    result = run(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout.startswith("loopix-client ")


@pytest.mark.parametrize("command", ["init", "run", "socket", "testnet"])
def test_every_option_has_help_with_its_default(command):
    parser = cli._subcommands(cli.build_parser())[command]
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings}: no help"
        if action.default not in (None, False) and action.option_strings:
            assert "default" in action.help, f"{command} {action.option_strings}: default not stated"
