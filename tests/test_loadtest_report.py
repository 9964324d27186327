"""The report files, their round trip, the HTML re-render, the live view and the Prometheus feed."""

from __future__ import annotations

import base64
import csv
import io
import random
import re
import urllib.request

import msgspec
import pytest

from loopix.loadtest.live import LiveView, plain_line, print_summary, serve_prometheus
from loopix.loadtest.metrics import LoadMetrics, Summary
from loopix.loadtest.report import (
    HISTORY_FILE,
    NODES_FILE,
    REPORT_FILE,
    SUMMARY_FILE,
    ReportError,
    load_report_data,
    node_rates,
    render_report,
    write_report,
)
from loopix.loadtest.thresholds import ThresholdSet

S = 1_000_000_000
MS = 1_000_000
PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def synthetic_run(seconds: int = 12, *, messages: bool = True, nodes: bool = True) -> LoadMetrics:
    """A small run with every kind of input: three streams, loops from Erlang(3, 20 ms) + 4 ms with
    2 % loss, real messages, lateness samples, and directory reports from 3 layers and a provider."""
    rng = random.Random(5)
    m = LoadMetrics(0, 20.0, 3, grace_s=1, start_wall_ns=0, labels={"identities": "10"})
    returns: list[tuple[int, str, int]] = []
    msg = 0
    counters = {f"mix{layer}": 0 for layer in (1, 2, 3)} | {"prov": 0}
    if nodes:
        m.record_node_counters([_report(k, -0.5, 0) for k in counters])
    for sec in range(seconds):
        for i in range(200):
            t = sec * S + i * 5 * MS
            stream = ("payload", "loop", "drop")[i % 3]
            m.record_sent(stream, 1, t)
            m.record_lateness(int(rng.expovariate(1 / 80_000)))
            if stream == "loop":
                for k in counters:
                    counters[k] += 1
                if rng.random() > 0.02:
                    rtt = sum(rng.expovariate(1 / 20) for _ in range(3)) + 4
                    returns.append((t + int(rtt * MS), "loop", t))
            elif stream == "payload" and messages and i % 30 == 0:
                m.record_real_sent(1)
                msg += 1
                m.record_message_sent(msg, t)
                returns.append((t + int(rng.uniform(50, 250) * MS), "msg", msg))
        returns.sort()
        while returns and returns[0][0] < (sec + 1) * S:
            at, kind, ref = returns.pop(0)
            if kind == "loop":
                m.record_loop_back(ref, at)
            else:
                m.record_message_delivered(ref, at)
        if nodes:
            m.record_node_counters([_report(k, sec + 1, n) for k, n in counters.items()])
        m.tick((sec + 1) * S)
    m.end_load(seconds * S)
    m.tick((seconds + 2) * S)
    return m


def _report(key: str, t_s: float, n: int) -> dict:
    layer = {"mix1": 1, "mix2": 2, "mix3": 3}.get(key)
    r = {
        "pubKey": key,
        "timestamp": int(t_s * S),
        "host": f"127.0.0.1:{9000 + (layer or 0)}",
        "kind": "mixnode" if layer else "provider",
        "sent": {"a": n},
        "received": n,
        "dropped": {},
        "queue": 0,
    }
    if layer:
        r["layer"] = layer
    return r


@pytest.fixture(scope="module")
def run() -> tuple[LoadMetrics, Summary]:
    m = synthetic_run()
    s = m.summary()
    s.thresholds = ThresholdSet(["rtt_p99<1s", "loss<0.1%"]).check(s)
    return m, s


@pytest.fixture(scope="module")
def report_dir(run, tmp_path_factory):
    m, s = run
    out = tmp_path_factory.mktemp("report")
    path = write_report(out, s, m.history, m.node_samples())
    assert path == out / REPORT_FILE
    return out


def test_report_files_exist_and_parse_back(run, report_dir):
    m, s = run
    for name in (SUMMARY_FILE, HISTORY_FILE, NODES_FILE, REPORT_FILE):
        assert (report_dir / name).stat().st_size > 0
    summary, history, nodes = load_report_data(report_dir)
    assert summary == s
    assert history == m.history and len(history) == 13  # one row per tick
    assert nodes == m.node_samples()
    with (report_dir / HISTORY_FILE).open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(m.history)
    assert float(rows[3]["elapsed_s"]) == 4.0
    assert rows[0]["loss"] == ""  # None before the first judged second
    raw = msgspec.json.decode((report_dir / SUMMARY_FILE).read_bytes())
    assert raw["loops"]["sent"] == s.loops.sent and "rtt" in raw["histograms"]


def test_report_html_embeds_the_figures(run, report_dir):
    _, s = run
    page = (report_dir / REPORT_FILE).read_text()
    images = PNG.findall(page)
    # throughput, RTT over time, RTT distribution, lateness, message latency, per-node load
    assert len(images) == 6
    for b64 in images:
        assert base64.b64decode(b64).startswith(b"\x89PNG\r\n\x1a\n")
    for anchor in ("throughput", "rtt_time", "rtt_dist", "lateness", "messages", "nodes"):
        assert f'id="{anchor}"' in page
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "loss&lt;0.1%" in page and "FAIL" in page  # the thresholds table
    assert "identities" in page  # the run's labels
    assert f"{s.loops.sent:,}" in page


def test_render_report_reproduces_the_html(report_dir):
    before = (report_dir / REPORT_FILE).read_bytes()
    (report_dir / REPORT_FILE).unlink()
    assert render_report(report_dir) == report_dir / REPORT_FILE
    assert (report_dir / REPORT_FILE).read_bytes() == before


def test_a_run_without_messages_nodes_or_loops_still_renders(tmp_path):
    m = LoadMetrics(0, 50.0, grace_s=1, start_wall_ns=0)
    m.record_sent("payload", 10, 0)
    m.tick(S)
    write_report(tmp_path, m.summary(), m.history)
    page = (tmp_path / REPORT_FILE).read_text()
    assert len(PNG.findall(page)) == 1  # throughput only
    assert (
        "No data for: RTT and loss over time, RTT distribution, Scheduler lateness, Message latency, Per-node load"
        in page
    )
    _, history, nodes = load_report_data(tmp_path)
    assert nodes == [] and len(history) == 1


def test_report_errors_name_the_file(tmp_path):
    with pytest.raises(ReportError, match=SUMMARY_FILE):
        render_report(tmp_path)
    (tmp_path / SUMMARY_FILE).write_text("{not json")
    with pytest.raises(ReportError, match=SUMMARY_FILE):
        render_report(tmp_path)


def test_node_rates_by_layer(run):
    m, _ = run
    groups = node_rates(m.node_samples())
    assert list(groups) == ["mix layer 1", "mix layer 2", "mix layer 3", "providers"]
    ts, rates = groups["mix layer 1"]["127.0.0.1:9001"]
    assert ts[0] == 1.0 and len(rates) == 12
    assert rates[1] == pytest.approx(67)  # 200 packets a second, every third a loop


# --- live view ------------------------------------------------------------------------------------


def test_live_view_without_a_tty_prints_one_line_per_second(run):
    m, s = run
    out = io.StringIO()
    view = LiveView(12, file=out)
    assert view.plain
    with view:
        for row in m.history[:5]:
            view.update(row, s)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("[   1.0s/12s left 11s]")
    assert "rtt p50" in lines[2] and "loss" in lines[2] and "nodes 4" in lines[2]
    view.finish(s)
    table = out.getvalue()
    assert "loss (every reason)" in table and "FAIL" in table and "Erlang(k=3" in table


def test_live_view_rich_mode_renders(run):
    m, s = run
    out = io.StringIO()
    with LiveView(12, file=out, plain=False) as view:
        view.update(m.history[4], s)
    text = out.getvalue()
    assert "7 s left" in text and "RTT so far" in text and "loops back" in text


def test_plain_line_and_summary_table_without_data():
    m = LoadMetrics(0, 50.0, start_wall_ns=0)
    row = m.tick(S)
    assert "rtt p50 – p99 – ms" in plain_line(row, 10)
    out = io.StringIO()
    from rich.console import Console

    print_summary(m.summary(), Console(file=out, width=120))
    assert "loss (every reason)" in out.getvalue()


def test_prometheus_endpoint(run):
    m, _ = run
    server, _ = serve_prometheus(m, 0)
    try:
        port = server.server_address[1]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    last = m.last_row
    assert f'loopix_loadtest_packets_sent_total{{stream="loop"}} {float(last.loops_sent)}' in body
    assert f"loopix_loadtest_loops_back_total {float(last.loops_back)}" in body
    assert 'loopix_loadtest_rtt_seconds{quantile="0.99"}' not in body or last.rtt_p99_ms is not None
    assert "loopix_loadtest_loss_ratio" in body
