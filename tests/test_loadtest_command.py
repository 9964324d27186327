"""`loopix-client loadtest` as a user runs it: every bad option is one line before anything
starts, and Ctrl-C mid-run still leaves a complete report marked interrupted (exit 130)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from _procs import alive, children_of

PROG = "loopix-client loadtest: error:"


def loadtest(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loopix", "loadtest", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--identities", "0"], "at least 1"),
        (["--loop-rate", "-1"], ">= 0"),
        (["--payload-rate", "nan"], ">= 0"),
        (["--duration", "30"], "needs a unit"),
        (["--grace", "5"], "needs a unit"),
        (["--metrics-port", "70000"], "1..65535"),
        (["--threshold", "rtt_p99<2"], "needs a unit"),
        (["--workers", "-2"], "at least 0"),
        (["--sender-coalesce-us", "5000"], "0 to 1000"),
        (["--find-capacity", "--capacity-start", "0"], "greater than 0"),
        (["--find-capacity", "--capacity-step", "10"], "needs a unit"),
    ],
)
def test_bad_options_are_usage_errors(args, needle):
    done = loadtest(*args)
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stdout == ""  # nothing started


def test_out_refusals_happen_before_any_load(tmp_path):
    report = tmp_path / "old"
    report.mkdir()
    (report / "summary.json").write_text("{}")
    started = time.monotonic()
    done = loadtest("--out", str(report), "--duration", "1h")
    assert done.returncode == 1 and done.stderr.startswith(PROG) and "--force" in done.stderr
    assert done.stderr.count("\n") == 1 and done.stdout == ""  # no testnet, no identities
    assert (report / "summary.json").read_text() == "{}"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    done = loadtest("--out", str(a_file / "report"), "--duration", "1h")
    assert done.returncode == 1 and done.stderr.startswith(PROG) and done.stdout == ""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = loadtest("--metrics-port", str(busy.getsockname()[1]), "--duration", "1h")
    assert done.returncode == 1 and "--metrics-port" in done.stderr and done.stdout == ""
    assert time.monotonic() - started < 50  # three refusals, none of them ran an hour of load


def test_sigint_mid_run_writes_an_interrupted_report(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopix", "loadtest", "--identities", "5", "--duration", "10m", "--out", str(out),
         "--layers", "1", "--mixnodes-per-layer", "1", "--providers", "1", "--mean-hop-delay-ms", "5",
         "--grace", "2s", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 90
        for line in proc.stdout:  # one line a second once the load runs; bounded by the deadline
            lines.append(line)
            if line.startswith("[") and "s/600s" in line and float(line[1:].split("s/", 1)[0]) >= 3:
                break
            assert time.monotonic() < deadline, "".join(lines)
        kids = children_of(proc.pid)
        assert kids, "the run has its testnet and client processes"
        proc.send_signal(signal.SIGINT)
        _rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert summary["duration_s"] < 60 and summary["sent"]["loop"] > 0
    assert summary["verdict"]["status"] in ("ok", "degraded", "saturated")
    assert len((out / "history.csv").read_text().splitlines()) >= 4
    assert "INTERRUPTED" in (out / "report.html").read_text()
    assert not any(alive(pid) for pid in kids)


def test_force_allows_an_existing_report(tmp_path):
    from loopix.loadtest.command import CommandError, check_out_dir

    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(CommandError, match="--force"):
        check_out_dir(str(tmp_path), force=False)
    assert check_out_dir(str(tmp_path), force=True) == tmp_path
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]  # the write check left nothing behind
