"""The README's "Using it" section, run as written against a real testnet, so it cannot drift from
the code: every shell line of its command blocks in order (long-running ones for a moment, then
Ctrl-C, as a user would), then its Python snippet as a script.

The only liberty taken: if 127.0.0.1:9000 is taken on this machine, the testnet gets
`--base-port 0` and the fleet's `init` lines get its URL (the `init --id alice` line still finds it
by itself, through $LOOPIX_HOME/testnet/testnet.json).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from _procs import alive

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# A long-running command: the line it prints once it is up, and the exit statuses Ctrl-C may give.
LONG_RUNNING = {
    "testnet": ("testnet ready: directory http://127.0.0.1:", (130,)),
    "run --fleet": ("running ", (130,)),  # a fleet runs as a client does
    "run": ("Our address is: ", (130,)),
    "socket": ("Listening on ws://localhost:", (130,)),
}


def using_it_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Using it")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def code_blocks(section: str) -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in re.finditer(r"```(\w+)\n(.*?)```", section, re.DOTALL)]


def shell_commands(block: str) -> list[tuple[dict[str, str], list[str]]]:
    """(environment assignments, argv) per line; `. .venv/bin/activate` is our PATH already."""
    out = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0] == ".":
            continue
        env = {}
        while "=" in words[0] and not words[0].startswith("-"):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        out.append((env, words))
    return out


def kind_of(argv: list[str]) -> tuple[str, int | tuple[int, ...]] | None:
    if argv[:1] != ["loopix-client"]:
        raise AssertionError(f"the README runs something this test does not know: {argv}")
    if argv[1] == "run" and "--fleet" in argv:
        return LONG_RUNNING["run --fleet"]
    return LONG_RUNNING.get(argv[1])


class Running:
    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path):
        self.argv = argv
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if text in line:
                    return line
            assert self.proc.poll() is None, f"{self.argv} exited {self.proc.returncode}: {self.lines}"
            time.sleep(0.05)
        raise AssertionError(f"{self.argv}: no {text!r} within {timeout}s: {self.lines}")

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(30)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_readme_blocks_run_as_written(tmp_path):
    blocks = code_blocks(using_it_section())
    assert [lang for lang, _ in blocks] == ["sh", "sh", "python"], "update this test with the README"
    home, cwd = tmp_path / "home", tmp_path / "work"
    cwd.mkdir()
    env = {**os.environ, "LOOPIX_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1"}
    pinned_port_free = port_free(9000)
    testnet: Running | None = None
    directory = "http://127.0.0.1:9000/"
    try:
        for _lang, block in blocks[:2]:
            for extra_env, argv in shell_commands(block):
                argv = list(argv)
                run_env = {**env, **extra_env}
                long = kind_of(argv)
                if argv[1] == "testnet":
                    if not pinned_port_free:
                        argv += ["--base-port", "0"]
                    testnet = Running(argv, run_env, cwd)
                    line = testnet.wait_for(LONG_RUNNING["testnet"][0])
                    directory = line.rsplit(" ", 1)[1]
                    continue
                if argv[1] == "init" and extra_env and not pinned_port_free:
                    argv += ["--directory", directory]
                if long is not None:
                    ready, codes = long
                    proc = Running(argv, run_env, cwd)
                    try:
                        proc.wait_for(ready)
                        time.sleep(1.5)  # let it work a moment, as a user would watch it
                        code = proc.interrupt()
                    finally:
                        proc.kill()
                    assert code in codes, (argv, code, proc.lines)
                    assert not any("Traceback" in line for line in proc.lines), proc.lines
                    continue
                result = subprocess.run(argv, env=run_env, cwd=cwd, capture_output=True, text=True, timeout=240)
                allowed = (0, 99) if argv[1] == "loadtest" else (0,)  # 99: a threshold missed on a busy box
                assert result.returncode in allowed, (argv, result.stdout[-2000:], result.stderr[-2000:])
                assert "Traceback" not in result.stderr, result.stderr
                if argv[1] == "init" and not extra_env:
                    assert "Using the testnet running under" in result.stdout
        assert (cwd / "report" / "report.html").exists()

        _, snippet = blocks[2]
        script = tmp_path / "snippet.py"
        script.write_text(snippet)
        result = subprocess.run([sys.executable, str(script)], env=env, cwd=cwd, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        address, message = result.stdout.splitlines()
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}=@[A-Za-z0-9_-]{43}=", address)
        assert message == "b'hello'"
    finally:
        if testnet is not None:
            kids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == testnet.proc.pid]
            code = testnet.interrupt()
            assert code == 130, testnet.lines
            deadline = time.monotonic() + 10
            while any(alive(k) for k in kids) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not [k for k in kids if alive(k)]
    assert not (home / "testnet" / "testnet.json").exists()


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


@pytest.mark.parametrize("line", ["loopix-client run --id alice   # comment", "A=b loopix-client init --id x"])
def test_shell_line_parsing(line):
    ((env, argv),) = shell_commands(line)
    assert argv[0] == "loopix-client" and "#" not in " ".join(argv)
    assert env in ({}, {"A": "b"})
