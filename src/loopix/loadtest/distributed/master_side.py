"""The Locust master's loopix side: refuse workers of another version, hand out the shares when
the test starts, merge what the workers ship, poll the nodes' counters, write the loopix report,
set the exit code from the thresholds and stop Locust; a loopix tab in Locust's web UI. Runs under
gevent."""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.request

import gevent
import msgspec

from loopix.loadtest.thresholds import ThresholdError, ThresholdSet

from .merge import DistributedMerge, describe
from .protocol import (
    MSG_FRAMES,
    MSG_HELLO,
    MSG_REFUSED,
    MSG_SHARE,
    REPORT_KEY,
    Failed,
    Hello,
    ProtocolError,
    Share,
    decode_frame,
    split,
    versions_differ,
)
from .runtime import EXIT_NOT_STARTED, local_hello

log = logging.getLogger("loopix")
MAX_NODE_REPORTS_BYTES = 64 * 1024 * 1024
RESULT_SLACK_S = 120.0
LIVE_LINE_EVERY_S = 5  # a merged line on the master's output this often (in merged seconds)  # after the load and its drain, how long we wait for a worker's result


class MasterSide:
    def __init__(self, env) -> None:
        self.env = env
        self.runner = env.runner
        self.opts = env.parsed_options
        self.hello = local_hello()
        self.accepted: set[str] = set()
        self.refused: dict[str, str] = {}
        self.merge: DistributedMerge | None = None
        self.started = False
        self.conductor = None
        try:
            self.thresholds = ThresholdSet(self.opts.loopix_threshold)
        except ThresholdError as exc:
            print(f"loopix: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_NOT_STARTED)
        if not self.opts.loopix_directory:
            print("loopix: error: --loopix-directory (the network's topology URL) is required",
                  file=sys.stderr)
            sys.exit(EXIT_NOT_STARTED)
        self.base_url = self.opts.loopix_directory.split("/api/", 1)[0]
        self.runner.register_message(MSG_HELLO, self.on_hello)
        self.runner.register_message(MSG_FRAMES, self.on_frames)
        env.events.worker_report.add_listener(self.on_worker_report)
        env.events.test_start.add_listener(self.on_test_start)
        gevent.spawn(self.watch_expected)
        if env.web_ui is not None:
            self.add_routes(env.web_ui)

    # connect: versions
    def on_hello(self, environment, msg, **_) -> None:
        try:
            theirs = msgspec.convert(msg.data, Hello)
            reason = versions_differ(self.hello, theirs)
        except (msgspec.ValidationError, TypeError) as exc:
            reason = f"bad hello: {exc}"
        if reason is None:
            self.accepted.add(msg.node_id)
            return
        self.refused[msg.node_id] = reason
        print(f"loopix: refused worker {msg.node_id}: {reason}", file=sys.stderr, flush=True)
        self.runner.send_message(MSG_REFUSED, reason, client_id=msg.node_id)

    def watch_expected(self) -> None:
        """Fewer workers than --expect-workers after the timeout: one clear line (Locust gives up
        right after us, with exit code 1)."""
        want = self.opts.expect_workers
        gevent.sleep(max(0.0, self.opts.loopix_expect_timeout - 0.5))
        if not self.started:
            have = len(self.accepted - set(self.refused))
            refused = f", {len(self.refused)} refused" if self.refused else ""
            print(f"loopix: error: {have} of {want} workers connected within "
                  f"{self.opts.loopix_expect_timeout:g}s (--expect-workers {want}{refused}); not starting",
                  file=sys.stderr, flush=True)
            self.env.process_exit_code = EXIT_NOT_STARTED

    def on_test_start(self, environment, **_) -> None:
        if not self.started:
            self.started = True
            self.conductor = gevent.spawn(self.conduct)

    # frames from workers
    def on_frames(self, environment, msg, **_) -> None:
        self.take(msg.node_id, msg.data)

    def on_worker_report(self, client_id, data, **_) -> None:
        if REPORT_KEY in data:
            self.take(client_id, data[REPORT_KEY])

    def take(self, worker: str, frames) -> None:
        if self.merge is None:
            return
        try:
            for raw in frames:
                self.merge.on_frame(worker, decode_frame(raw))
        except (ProtocolError, TypeError) as exc:
            self.merge.on_frame(worker, Failed(f"bad data from the worker: {exc}"))

    def fetch_nodes(self) -> list[dict]:
        """The directory's node reports (what `loadtest` polls); [] when it does not answer well."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/api/metrics/mixes", timeout=5) as resp:
                body = resp.read(MAX_NODE_REPORTS_BYTES + 1)
            if len(body) > MAX_NODE_REPORTS_BYTES:
                return []
            data = json.loads(body)
        except (OSError, ValueError):
            return []
        reports = data if isinstance(data, list) else data.get("reports", []) if isinstance(data, dict) else []
        return [r for r in reports if isinstance(r, dict)] if isinstance(reports, list) else []

    def conduct(self) -> None:
        o = self.opts
        runner = self.runner
        deadline = time.monotonic() + 10  # hellos race Locust's own readiness by a few ms
        while time.monotonic() < deadline:
            ids = {c.id for c in runner.clients.values()}
            if ids <= self.accepted | set(self.refused):
                break
            gevent.sleep(0.1)
        active = {c.id for c in runner.clients.values() if c.state != "missing"}
        accepted = sorted(active & self.accepted, key=runner.get_worker_index)
        if len(accepted) < o.expect_workers:
            print(f"loopix: error: {len(accepted)} of {o.expect_workers} workers accepted "
                  f"(refused: {len(self.refused)}); not starting", file=sys.stderr, flush=True)
            self.finish_locust(EXIT_NOT_STARTED)
            return
        if o.loopix_identities < len(accepted):
            print(f"loopix: error: {o.loopix_identities} identities for {len(accepted)} workers: every "
                  f"worker needs at least one; not starting", file=sys.stderr, flush=True)
            self.finish_locust(EXIT_NOT_STARTED)
            return
        counts = split(o.loopix_identities, len(accepted))
        labels = {"identities": str(o.loopix_identities), "mode": f"distributed over {len(accepted)} Locust workers"}
        self.merge = DistributedMerge(list(zip(accepted, counts, strict=True)), o.loopix_duration, labels)
        self.merge.on_node_counters(self.fetch_nodes())  # the baseline, before any load
        for rank, (cid, n) in enumerate(zip(accepted, counts, strict=True)):
            share = Share(rank=rank, workers=len(accepted), identities=n, duration_s=o.loopix_duration,
                          directory_url=o.loopix_directory, payload_rate=o.loopix_payload_rate,
                          loop_rate=o.loopix_loop_rate, drop_rate=o.loopix_drop_rate,
                          mean_hop_delay_ms=o.loopix_mean_hop_delay_ms,
                          packet_workers=o.loopix_packet_workers, grace_s=o.loopix_grace,
                          event_budget=o.loopix_event_budget)
            runner.send_message(MSG_SHARE, msgspec.json.encode(share).decode(), client_id=cid)
        print(f"loopix: {o.loopix_identities} identities shared out over {len(accepted)} workers "
              f"({', '.join(map(str, counts))})", flush=True)
        give_up = time.monotonic() + o.loopix_duration + (o.loopix_grace or 30.0) + RESULT_SLACK_S
        while not self.merge.complete:
            gevent.sleep(1.0)
            for cid in accepted:
                client = runner.clients.get(cid)
                if client is None:
                    self.merge.on_lost(cid, "the worker quit")
                elif client.state == "missing":
                    self.merge.on_lost(cid, "the worker went missing (no heartbeat)")
            if time.monotonic() > give_up:
                for cid in accepted:
                    self.merge.on_lost(cid, "no result in time")
            self.merge.on_node_counters(self.fetch_nodes())
            for row in self.merge.advance():
                if round(row.elapsed_s) % LIVE_LINE_EVERY_S == 0:
                    print(f"loopix: {live_line(row, self.merge)}", flush=True)
        try:
            code = self.report()
        except Exception as exc:
            log.exception("loopix: the report failed")
            print(f"loopix: error: the report failed: {exc}", file=sys.stderr, flush=True)
            code = 1
        self.finish_locust(code)

    def report(self) -> int:
        assert self.merge is not None
        o = self.opts
        try:
            summary = self.merge.finish(self.fetch_nodes())
        except RuntimeError as exc:
            print(f"loopix: error: {exc}", file=sys.stderr, flush=True)
            return 1
        summary.thresholds = self.thresholds.check(summary)
        records = self.merge.records()
        for r in records:
            print(f"loopix: worker {r.rank}: {describe(r)}", flush=True)
        s = summary
        print(f"loopix: merged: sent payload {s.sent['payload']} loop {s.sent['loop']} drop {s.sent['drop']}; "
              f"loops back {s.loops.back}, lost {s.loops.lost} of {s.loops.settled} judged; "
              f"rtt p50 {s.rtt.p50_ms} ms p99 {s.rtt.p99_ms} ms", flush=True)
        if o.loopix_out:
            from pathlib import Path

            from loopix.loadtest.report import write_report

            assert self.merge.metrics is not None
            path = write_report(o.loopix_out, summary, self.merge.metrics.history,
                                self.merge.metrics.node_samples())
            (Path(o.loopix_out) / "workers.json").write_bytes(
                msgspec.json.format(msgspec.json.encode(records), indent=2))
            print(f"loopix: report written to {path}", flush=True)
        for t in summary.thresholds:
            if not t.passed:
                print(f"loopix: threshold violated: {t.message}", file=sys.stderr, flush=True)
        return self.thresholds.exit_code(summary)

    def finish_locust(self, code: int) -> None:
        """The run is over (report written): Locust exits with `code`, web UI or not."""
        self.env.process_exit_code = code
        self.runner.quit()
        if self.env.web_ui is not None:  # in web mode Locust's main waits on the UI
            self.env.web_ui.stop()

    def live_rows(self) -> list[dict]:
        """The loopix tab: the merged run so far (exact percentiles), then each worker's latest
        second (its rates and lateness) or its state."""
        live = self.merge.live() if self.merge is not None else {"workers": [], "merged": None}
        m = live["merged"] or {}
        rows = [{"who": "merged", "state": f"{live['ticks']} s merged", "identities": self.opts.loopix_identities,
                 **{k: _num(m.get(k)) for k in ("payload_per_s", "loop_per_s", "loops_back_per_s",
                                                "rtt_p50_cum_ms", "rtt_p99_cum_ms", "lateness_p99_ms",
                                                "loops_lost")}}]
        for w in live["workers"]:
            now = w["now"] or {}
            rows.append({"who": f"worker {w['rank']}", "state": f"{w['state']}, {w['ticks']} s",
                         "identities": w["identities"],
                         **{k: _num(now.get(k)) for k in ("payload_per_s", "loop_per_s", "loops_back_per_s",
                                                          "lateness_p99_ms", "rtt_p50_cum_ms", "rtt_p99_cum_ms")},
                         "loops_lost": _num(w["loops_lost"])})
        return rows

    def add_routes(self, web_ui) -> None:
        """A loopix tab in Locust's UI (its documented extension: extended_tabs/tables filled
        through /stats/requests), and /loopix.json."""
        from flask import request

        web_ui.template_args["extended_tabs"] = [{"title": "loopix", "key": "loopix"}]
        web_ui.template_args["extended_tables"] = [{"key": "loopix", "structure": [
            {"key": k, "title": t} for k, t in _COLUMNS]}]

        @web_ui.app.after_request
        def add_loopix_rows(response):
            if request.path != "/stats/requests" or response.json is None:
                return response
            data = {**response.json, "extended_stats": [{"key": "loopix", "data": self.live_rows()}]}
            response.set_data(json.dumps(data))
            return response

        @web_ui.app.route("/loopix.json")
        def loopix_json():
            return self.merge.live() if self.merge is not None else {"workers": [], "merged": None}


_COLUMNS = (("who", ""), ("state", "state"), ("identities", "identities"), ("payload_per_s", "payload/s"),
            ("loop_per_s", "loops/s"), ("loops_back_per_s", "loops back/s"), ("rtt_p50_cum_ms", "RTT p50 ms"),
            ("rtt_p99_cum_ms", "RTT p99 ms"), ("lateness_p99_ms", "lateness p99 ms"), ("loops_lost", "loops lost"))


def _num(v) -> str:
    return "–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def live_line(row, merge: DistributedMerge) -> str:
    """One line of the merged run so far, for a headless master's output."""
    def ms(v) -> str:
        return "–" if v is None else f"{v:.4g} ms"

    states = [r.state for r in merge.records()]
    running = sum(s in ("waiting", "running") for s in states)
    return (f"{row.elapsed_s:.0f} s merged ({running} of {len(states)} workers running): "
            f"payload {row.payload_per_s:.0f}/s, loops {row.loop_per_s:.0f}/s, back {row.loops_back_per_s:.0f}/s; "
            f"rtt p50 {ms(row.rtt_p50_cum_ms)}, p99 {ms(row.rtt_p99_cum_ms)}; "
            f"lateness p99 {ms(row.lateness_p99_ms)}; loops lost {row.loops_lost}")
