"""Distributed load tests on Locust: the master's merge is exact (unit), and a master with two
workers as separate processes on 127.0.0.1 against the embedded testnet agrees with the workers'
and the nodes' own counters, survives a worker killed midway, refuses a mismatched version and
gives up clearly when workers are missing."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import msgspec
import pytest

from _procs import alive, children_of
from loopix.loadtest.distributed.merge import DistributedMerge
from loopix.loadtest.distributed.protocol import (
    MAX_FRAME,
    Done,
    FrameReader,
    ProtocolError,
    Started,
    Tick,
    pack,
    sample_every,
    split,
)
from loopix.loadtest.metrics import LoadMetrics, decode_histogram, percentiles_of
from loopix.loadtest.thresholds import EXIT_THRESHOLD_VIOLATED

NS = 1_000_000_000


# --- unit: shares, frames, the merge --------------------------------------------------------------


def test_split_shares_every_identity():
    assert split(10, 3) == [4, 3, 3]
    assert split(2, 4) == [1, 1, 0, 0]
    assert sum(split(100_003, 7)) == 100_003
    with pytest.raises(ValueError):
        split(5, 0)
    assert sample_every(5000, 100) == 50
    assert sample_every(40, 100) == 1


def test_frame_reader_reassembles_and_rejects():
    frame = Started(123, 10.0, 3, 2.0, 7)
    data = pack(frame) * 2
    reader = FrameReader()
    got = []
    for i in range(len(data)):  # one byte at a time
        got += reader.feed(data[i:i + 1])
    assert got == [frame, frame] and reader.pending == 0
    with pytest.raises(ProtocolError):
        FrameReader().feed((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(ProtocolError):
        FrameReader().feed((3).to_bytes(4, "big") + b"\xc1\xc1\xc1")


def test_rtt_sample_is_drawn_from_the_interval_histogram():
    from loopix.loadtest.distributed.child import sample_values_ms
    from loopix.loadtest.metrics import new_histogram

    hist = new_histogram()
    for us in (1_000,) * 90 + (50_000,) * 10:
        hist.record_value(us)
    rng = random.Random(3)
    got = sample_values_ms(hist.encode().decode(), 2000, rng)
    assert len(got) == 2000 and set(got) <= {1.0, 50.015}  # bucket tops at 3 significant digits
    assert 0.05 < got.count(50.015) / len(got) < 0.15
    assert sample_values_ms("", 5, rng) == [] and sample_values_ms(hist.encode().decode(), 0, rng) == []


def test_events_are_one_per_sampled_loop():
    from loopix.loadtest.distributed.bridge import EventFirer, LoopLost

    fired = []
    m = LoadMetrics(0, 10.0, 3, grace_s=2.0)
    m.tick(NS)
    tick = Tick(msgspec.structs.replace(_part(), tick=1), m.last_row, 50, [31.5, 40.25], 3)
    assert EventFirer(lambda **kw: fired.append(kw)).on_tick(tick) == 5
    assert [e["response_time"] for e in fired[:2]] == [31.5, 40.25]
    assert all(e["exception"] is None for e in fired[:2])
    assert all(isinstance(e["exception"], LoopLost) for e in fired[2:])
    assert {e["name"] for e in fired} == {"loop RTT (1 in 50)"}


def _part():
    from loopix.loadtest.metrics import IntervalPart

    return IntervalPart()


def _synthetic_run(rng: random.Random, workers: int, seconds: int, die: dict[int, int] | None = None,
                   tick_ns: list[int] | None = None):
    """`workers` LoadMetrics fed random traffic, and one reference LoadMetrics fed all of it.
    Returns (reference, frames per worker). Worker w stops shipping after tick die[w]. Tick t
    happens at tick_ns[t - 1] (default: t seconds), for every worker and the reference."""
    die = die or {}
    ticks = tick_ns or [t * NS for t in range(1, seconds + 5)]
    grace = 2.0
    ref = LoadMetrics(0, 10.0, 3, grace_s=grace, start_wall_ns=0)
    ref.end_load(seconds * NS)
    ms = [LoadMetrics(0, 10.0, 3, grace_s=grace, start_wall_ns=0) for _ in range(workers)]
    frames: list[list] = [[Started(0, 10.0, 3, grace, 10)] for _ in range(workers)]
    parts: list[list] = [[] for _ in range(workers)]
    for w, m in enumerate(ms):
        m.end_load(seconds * NS)
        m.interval_listeners.append(parts[w].append)
    in_flight: list[list[tuple[int, int]]] = [[] for _ in range(workers)]  # (back at, sent at)
    for t, now in enumerate(ticks, start=1):
        before = ticks[t - 2] if t > 1 else 0
        for w, m in enumerate(ms):
            if t <= seconds:
                for _ in range(rng.randrange(20, 60)):
                    sent = before + rng.randrange(now - before)
                    for x in (m, ref):
                        x.record_sent("loop", 1, sent)
                    if rng.random() < 0.95:  # the rest are lost
                        rtt = int(rng.lognormvariate(17.5, 0.6))  # ~40 ms, heavy tail
                        in_flight[w].append((sent + rtt, sent))
                    lateness = int(rng.expovariate(1 / 50_000))
                    for x in (m, ref):
                        x.record_lateness(lateness)
                for x in (m, ref):
                    x.record_sent("payload", 2 * t, now)
            due = [f for f in in_flight[w] if f[0] <= now]
            in_flight[w] = [f for f in in_flight[w] if f[0] > now]
            for back, sent in due:
                for x in (m, ref):
                    x.record_loop_back(sent, back)
            m.tick(now)
            if t <= die.get(w, 10**9):
                frames[w].append(Tick(parts[w][-1], m.last_row, 1, [], 0))
        ref.tick(now)
    for w, m in enumerate(ms):
        if w not in die:
            frames[w].append(Done(m.summary(), 0))
    return ref, ms, frames


def _merge(frames, order_rng: random.Random, lost: tuple[str, ...] = ()) -> DistributedMerge:
    merge = DistributedMerge([(f"w{i}", 10) for i in range(len(frames))], duration_s=0)
    queues = [list(f) for f in frames]
    while any(queues):  # workers' frames interleave arbitrarily; each worker's stay in order
        w = order_rng.choice([i for i, q in enumerate(queues) if q])
        merge.on_frame(f"w{w}", queues[w].pop(0))
        merge.advance()
    for name in lost:
        merge.on_lost(name, "killed")
    return merge


def test_merge_equals_one_run_over_all_samples():
    rng = random.Random(7)
    ref, _, frames = _synthetic_run(rng, workers=3, seconds=12)
    merge = _merge(frames, rng)
    assert merge.complete
    got = merge.finish()
    want = ref.summary()
    assert got.sent == want.sent
    assert got.loops == want.loops and want.loops.lost > 0
    assert got.rtt == want.rtt and got.lateness == want.lateness
    assert decode_histogram(got.histograms["rtt"]).get_total_count() == want.rtt.count
    assert [r.loops_settled for r in merge.metrics.history] == [r.loops_settled for r in ref.history]
    assert [r.rtt_p99_ms for r in merge.metrics.history] == [r.rtt_p99_ms for r in ref.history]
    assert got.labels["workers"] == "3 of 3 finished"


def test_merge_follows_late_ticks():
    """On a loaded machine a runtime's ticks come late and uneven: the merge keeps to their real
    times (rates over real seconds, loss judged on them), still equal to one run over all samples."""
    rng = random.Random(5)
    gaps = [1.0, 1.0, 2.6, 0.2, 1.0, 3.1, 0.4, 1.0, 1.7, 1.0, 1.0, 1.0, 1.0, 1.0]
    ticks = [round(sum(gaps[:i + 1]) * NS) for i in range(len(gaps))]
    ref, _, frames = _synthetic_run(rng, workers=2, seconds=9, tick_ns=ticks)
    merge = _merge(frames, rng)
    got, want = merge.finish(), ref.summary()
    assert got.duration_s == want.duration_s and got.rates == want.rates
    assert got.loops == want.loops and got.rtt == want.rtt
    assert [r.elapsed_s for r in merge.metrics.history] == [r.elapsed_s for r in ref.history]
    assert [r.payload_per_s for r in merge.metrics.history] == [r.payload_per_s for r in ref.history]


def test_dead_worker_is_missing_not_loss():
    rng = random.Random(11)
    _, ms, frames = _synthetic_run(rng, workers=2, seconds=10, die={1: 6})
    merge = _merge(frames, rng, lost=("w1",))
    got = merge.finish()
    dead = merge.records()[1]
    assert dead.state == "missing" and dead.unjudged_loops > 0
    assert "missing" in got.labels["worker 1"] and got.labels["workers"] == "1 of 2 finished"
    # the live worker's loss is all there; the dead one's counts only as far as it judged
    alive_summary = ms[0].summary()
    dead_row = ms[1].history[5]  # its tick 6
    assert got.loops.lost == alive_summary.loops.lost + dead_row.loops_lost
    assert got.sent["loop"] == alive_summary.sent["loop"] + dead_row.loops_sent
    assert got.loops.settled == alive_summary.loops.settled + dead_row.loops_settled
    assert got.loops.sent - got.loops.settled >= dead.unjudged_loops  # sent, never judged


@pytest.mark.parametrize("args, says", [
    (["master", "--expect-workers", "0", "--directory", "http://127.0.0.1:9/x"], "--expect-workers"),
    (["master", "--expect-workers", "3", "--identities", "2", "--directory", "http://127.0.0.1:9/x"],
     "every worker needs at least one identity"),
    (["master", "--expect-workers", "1", "--directory", "http://127.0.0.1:9/x", "--threshold", "rtt<<1"],
     "bad threshold"),
    (["master", "--expect-workers", "1", "--directory", "http://127.0.0.1:9/x", "--duration", "forever"],
     "--duration"),
    (["worker", "--master-host", "127.0.0.1", "--port", "70000"], "--port"),
])
def test_bad_usage_is_one_line(args, says, capsys):
    from loopix.loadtest.distributed.command import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err


def test_locust_command_line_carries_the_load():
    from loopix.loadtest.distributed.command import (
        LOCUSTFILE,
        build_parser,
        locust_argv,
        main_from_loadtest,
    )

    args, extra = build_parser().parse_known_args(
        ["master", "--expect-workers", "3", "--directory", "http://127.0.0.1:9/api/presence/topology",
         "--identities", "30", "--threshold", "loss<1%", "--out", "r", "--csv", "locust"])
    argv = locust_argv(args, extra)
    assert argv[argv.index("-f") + 1] == str(LOCUSTFILE) and LOCUSTFILE.exists()
    pairs = dict(itertools.pairwise(argv))
    assert pairs["-u"] == "0" and pairs["--expect-workers"] == "3" and pairs["--loopix-identities"] == "30"
    assert pairs["--loopix-threshold"] == "loss<1%" and pairs["--loopix-out"] == "r"
    assert "--headless" in argv and argv[-2:] == ["--csv", "locust"]
    with pytest.raises(SystemExit):  # `loopix-client loadtest --worker ...` goes the same way
        main_from_loadtest(["--worker", "--master-host", "h", "--port", "0"])
    with pytest.raises(ValueError):
        main_from_loadtest(["--identities", "3"])


def test_bad_usage_prints_one_line():
    done = subprocess.run([sys.executable, "-m", "loopix.loadtest.distributed", "master", "--expect-workers",
                           "2", "--identities", "1", "--directory", "http://127.0.0.1:9/x"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "every worker needs at least one identity" in done.stderr


# --- end to end: Locust master and workers as processes -------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        for child in children_of(todo.pop()):
            out.add(child)
            todo.append(child)
    return out


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Cluster:
    """A master and workers of `python -m loopix.loadtest.distributed` on 127.0.0.1."""

    def __init__(self, tmp_path, port: int):
        self.tmp, self.port, self.procs = tmp_path, port, []

    def start(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "loopix.loadtest.distributed", *args],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        log.close()
        self.procs.append(proc)
        return proc

    def master(self, *args: str) -> subprocess.Popen:
        return self.start("master", "master", "--port", str(self.port), "--bind-host", "127.0.0.1", *args)

    def worker(self, name: str, env: dict | None = None) -> subprocess.Popen:
        return self.start(name, "worker", "--master-host", "127.0.0.1", "--port", str(self.port), env=env)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(30)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, _free_port())
    yield c
    c.close()


@pytest.fixture(scope="module")
def testnet():
    from loopix.testnet.launcher import Testnet

    with Testnet(layers=3, mixnodes_per_layer=2, providers=2, mean_hop_delay_ms=10.0,
                 presence_interval=1.0) as net:
        yield net


def _load_args(testnet, out, duration: str, *thresholds: str) -> list[str]:
    args = ["--expect-workers", "2", "--expect-timeout", "60s", "--directory", testnet.topology_url,
            "--identities", "40", "--duration", duration, "--loop-rate", "3", "--payload-rate", "1",
            "--drop-rate", "0.5", "--mean-hop-delay-ms", "10", "--grace", "2s", "--workers", "1",
            "--out", str(out)]
    for t in thresholds:
        args += ["--threshold", t]
    return args


def test_two_workers_agree_with_their_own_and_the_nodes_counters(testnet, cluster, tmp_path):
    out = tmp_path / "report"
    master = cluster.master(*_load_args(testnet, out, "5s", "loss<50%", "rtt_p99<30s"))
    workers = [cluster.worker("w1"), cluster.worker("w2")]
    assert master.wait(120) == 0, cluster.log("master")
    for w in workers:
        assert w.wait(30) == 0, cluster.log("w1") + cluster.log("w2")
    s = json.loads((out / "summary.json").read_text())
    records = json.loads((out / "workers.json").read_text())
    assert [r["state"] for r in records] == ["done", "done"]
    assert [r["identities"] for r in records] == [20, 20]
    # merged counts are the sum of the workers' own
    for stream in ("payload", "loop", "drop"):
        assert s["sent"][stream] == sum(r["sent"][stream] for r in records) > 0
    assert s["loops"]["back"] == sum(r["loops_back"] for r in records)
    assert s["loops"]["lost"] == sum(r["loops_lost"] for r in records)
    # ... and what the nodes counted: every packet entered through a provider and crossed each layer
    client_sent = sum(s["sent"].values())
    nodes = s["nodes"]
    providers = [n for n in nodes if n["kind"] == "provider"]
    assert sum(p["extra"].get("from_clients", 0) for p in providers) == client_sent
    for layer in (1, 2, 3):
        assert sum(n["received"] for n in nodes if n["layer"] == layer and n["kind"] == "mixnode") == client_sent
    # merged percentiles are those of one histogram of all samples, not an average
    union = decode_histogram(records[0]["histograms"]["rtt"])
    union.add(decode_histogram(records[1]["histograms"]["rtt"]))
    assert msgspec.to_builtins(percentiles_of(union)) == s["rtt"]
    assert s["labels"]["workers"] == "2 of 2 finished"
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "loop RTT" in cluster.log("master")  # Locust's own table saw the sampled events


def test_killed_worker_is_missing_and_thresholds_set_the_exit_code(testnet, cluster, tmp_path):
    out = tmp_path / "report"
    master = cluster.master(*_load_args(testnet, out, "8s", "rtt_p50<1ms"))
    cluster.worker("w1")
    victim = cluster.worker("w2")

    def reported_twice() -> bool:  # so the first report surely reached the master
        return cluster.log("w2").count("of the share to the master") >= 2

    _wait(reported_twice, 90, "the worker's second report")
    doomed = _descendants(victim.pid)
    assert doomed, "the worker runs its share in child processes"
    victim.send_signal(signal.SIGKILL)
    assert master.wait(120) == EXIT_THRESHOLD_VIOLATED, cluster.log("master")
    s = json.loads((out / "summary.json").read_text())
    records = {r["state"]: r for r in json.loads((out / "workers.json").read_text())}
    assert sorted(records) == ["done", "missing"]
    assert records["missing"]["ticks"] > 0, "killed midway: it had reported some seconds"
    assert s["labels"]["workers"] == "1 of 2 finished"
    assert any("missing" in v for k, v in s["labels"].items() if k.startswith("worker "))
    assert not s["thresholds"][0]["passed"]
    assert "threshold violated" in cluster.log("master")
    _wait(lambda: not any(alive(p) for p in doomed), 30, "the dead worker's child runtime to exit")


def test_mismatched_version_is_refused_and_missing_workers_give_up(testnet, cluster):
    master = cluster.master("--expect-workers", "2", "--expect-timeout", "10s",
                            "--directory", testnet.topology_url, "--duration", "5s")
    odd = cluster.worker("odd", env={"LOOPIX_DISTRIBUTED_VERSION": "0.0.0-other"})
    assert odd.wait(60) == 2  # refused: nothing was sent
    assert "version mismatch" in cluster.log("odd")
    assert master.wait(60) != 0
    log = cluster.log("master")
    assert "version mismatch" in log
    assert "0 of 2 workers connected within 10s (--expect-workers 2, 1 refused)" in log, log
