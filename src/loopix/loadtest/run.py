"""`loopix-client loadtest`: N identities in one client process tree, driven open loop for a fixed
time against the embedded testnet (started and stopped here) or any compatible directory, with
live figures, k6-style thresholds and a report.

The timeline: start (testnet, coordinator, every identity registered) → load for `duration_s` →
pause the schedules (the rings drain) → wait one grace period for the last loops and messages →
final node counters → stop → summary, thresholds, report.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import struct
import sys
import time
from collections.abc import Callable

import aiohttp
import msgspec

from loopix.client.coordinator import ClientError, Coordinator, RuntimeOptions
from loopix.client.schedule import Stream
from loopix.wire.b64 import b64url_encode

from . import metadata
from .fleet import ephemeral_identities
from .live import LiveView, serve_prometheus
from .metrics import AckStats, LoadMetrics, Summary
from .resources import ResourceSampler
from .thresholds import ThresholdSet

_MESSAGE_HEAD = struct.Struct(">QQ")  # message id, send time (monotonic ns)
NODE_REPORT_INTERVAL_S = 1.0  # testnet nodes post their counters this often
QUIET_TICKS = 3  # seconds without a send before the final reports (stats and nodes: 1 s cadence)
QUIESCE_LIMIT_S = 30.0  # after the grace period, the longest we wait for queued messages


class LoadTestOptions(msgspec.Struct, kw_only=True):
    identities: int = 100
    duration_s: float = 60.0
    directory_url: str | None = None  # None: start an embedded testnet
    payload_rate: float = 2.0  # per identity, packets/s
    loop_rate: float = 1.0
    drop_rate: float = 1.0
    messages_rate: float = 0.0  # real messages per second, over all identities
    message_size: int = 1024
    mean_hop_delay_ms: float = 20.0
    packet_payload_size: int = 2048
    workers: int = 0
    senders: int = 0  # 0: chosen from the workers (client/coordinator.py sender_count)
    sender_coalesce_us: int = 300  # the senders' coalescing window (lateness it may add by design)
    thresholds: list[str] = []
    out_dir: str | None = None
    metrics_port: int | None = None
    grace_s: float | None = None
    layers: int = 3
    mixnodes_per_layer: int = 2
    providers: int = 2
    live: bool | None = None  # None: a live view on a terminal, plain lines otherwise
    command_line: list[str] | None = None  # for the report (default: sys.argv)
    warmup_s: float = 0.0  # load before measuring starts (excluded from every figure)


class LoadTestResult(msgspec.Struct):
    summary: Summary
    exit_code: int


async def fetch_node_counters(http: aiohttp.ClientSession, base_url: str) -> list[dict]:
    try:
        async with http.get(f"{base_url}/api/metrics/mixes") as resp:
            if resp.status != 200:
                return []
            data = await resp.json()
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return []
    return data if isinstance(data, list) else data.get("reports", [])


class MetricsFeed:
    """Turns the runtime's once-a-second reports into LoadMetrics calls."""

    def __init__(self, metrics: LoadMetrics, stats=None):
        self.metrics = metrics
        self.last_sent = [0, 0, 0]  # the runtime starts paused: nothing was sent before the load
        self.last_real = 0
        self.last_unsent = {r: [0, 0, 0] for r in ("link_down", "no_route", "build_error")}
        if stats is not None:  # whatever happened before the load is not the load's
            self.last_unsent = {"link_down": list(stats.unsent_link_down),
                                "no_route": list(stats.not_built_no_route),
                                "build_error": list(stats.not_built_error)}

    def on_stats(self, stats, msg) -> None:
        m = self.metrics
        now = time.monotonic_ns()
        if msg.sent_by_second:
            # by scheduled second: exactly the packets due from the start on (not the warm-up's)
            for second, counts in msg.sent_by_second.items():
                if second * 1_000_000_000 >= m.start_ns:
                    for stream in (Stream.PAYLOAD, Stream.DROP):
                        if counts[stream]:
                            m.record_sent(int(stream), counts[stream], second * 1_000_000_000)
                    if counts[3]:
                        m.record_real_sent(counts[3])
        else:  # a sender without per-second counts: deltas of its totals
            for stream in (Stream.PAYLOAD, Stream.DROP):
                delta = msg.sent[stream] - self.last_sent[stream]
                if delta:
                    m.record_sent(int(stream), delta, now)
            if msg.real_sent > self.last_real:
                m.record_real_sent(msg.real_sent - self.last_real)
        for second, n in msg.loops_sent_by_second.items():
            if second * 1_000_000_000 >= m.start_ns:
                m.record_sent(int(Stream.LOOP), n, second * 1_000_000_000)
        self.last_sent, self.last_real = list(msg.sent), msg.real_sent
        for sent_ns, rtt_ns in zip(msg.loop_back_sent_ns, msg.loop_back_rtt_ns, strict=True):
            if sent_ns >= m.start_ns:
                m.record_loop_back(sent_ns, sent_ns + rtt_ns)
        for us in msg.lateness_us:
            m.record_lateness(int(us * 1000))
        m.record_acks(AckStats(stats.fragments_sent, stats.fragments_acked, stats.fragments_retransmitted,
                               stats.fragments_unacked, stats.ack_rtt_ms_p50 or None, stats.ack_rtt_ms_p99 or None))
        counts = {"link_down": stats.unsent_link_down, "no_route": stats.not_built_no_route,
                  "build_error": stats.not_built_error}
        for reason, now_counts in counts.items():
            last = self.last_unsent[reason]
            for stream, n in enumerate(now_counts[:3]):
                if n > last[stream]:
                    m.record_unsent(reason, stream, n - last[stream], now)
            self.last_unsent[reason] = list(now_counts[:3])

    def on_message(self, identity: int, data: bytes) -> None:
        if len(data) >= _MESSAGE_HEAD.size:
            msg_id, _sent = _MESSAGE_HEAD.unpack_from(data)
            self.metrics.record_message_delivered(msg_id, time.monotonic_ns())


async def send_messages(coord: Coordinator, metrics: LoadMetrics, rate: float, size: int, stop: asyncio.Event) -> None:
    """Real messages between random pairs of our identities, open loop at `rate` per second."""
    rng = random.Random()
    n = len(coord.identities)
    if rate <= 0 or n < 2:
        return
    filler = os.urandom(max(0, size - _MESSAGE_HEAD.size))
    next_id = 1
    next_t = time.monotonic()
    while not stop.is_set():
        next_t += rng.expovariate(rate)
        delay = next_t - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
        src = rng.randrange(n)
        dst = (src + 1 + rng.randrange(n - 1)) % n
        now = time.monotonic_ns()
        data = _MESSAGE_HEAD.pack(next_id, now) + filler
        try:
            coord.send_message(src, data, *coord.address_of(dst))
        except ClientError as e:
            print(f"loadtest: message not sent: {e}", file=sys.stderr)
            metrics.record_message_not_sent()
            continue
        metrics.record_message_sent(next_id, now)
        next_id += 1


def run_processes(coord: Coordinator, testnet=None) -> dict[str, tuple[str, int]]:
    """{name: (role, pid)} of every process of the run, as of now (workers restart)."""
    procs = {"coordinator": ("coordinator", os.getpid())}
    for k, s in enumerate(coord.senders):
        procs["sender" if k == 0 else f"sender-{k}"] = ("sender", s.proc.pid)
    for i, w in enumerate(coord.workers):
        if w is not None:
            procs[f"worker-{i}"] = ("worker", w.proc.pid)
    if testnet is not None:
        for name, proc in testnet._procs.items():
            info = testnet.nodes.get(name)
            procs[name] = (info.kind if info is not None else "directory", proc.pid)
    return procs


class Interrupted(Exception):
    """Ctrl-C or SIGTERM before the load started: there is nothing to report."""


EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def _signals_set(stop: asyncio.Event):
    """SIGINT and SIGTERM set `stop` instead of killing the run (main thread only)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def run_loadtest(opts: LoadTestOptions, *, directory_url: str | None = None,
                       stop: asyncio.Event | None = None, testnet=None,
                       on_metrics: Callable[[LoadMetrics], None] | None = None) -> LoadTestResult:
    """Run one load test against `directory_url` (or opts.directory_url, or a fresh testnet).
    Setting `stop` (SIGINT and SIGTERM do) ends the run early with an interrupted report.
    `testnet`: a running embedded Testnet behind `directory_url`, whose processes the run samples.
    `on_metrics` sees the run's LoadMetrics as the load starts (a distributed worker's child
    subscribes to its intervals there)."""
    thresholds = ThresholdSet(opts.thresholds)  # bad expressions fail before anything starts
    owner = stop is None  # a caller that passes `stop` handles the signals itself
    stop = stop or asyncio.Event()
    with _signals_set(stop) if owner else contextlib.nullcontext():
        if testnet is not None:
            url = directory_url or testnet.topology_url
            if stop.is_set():
                raise Interrupted("before the load started; no report")
            return await _run(opts, url, url.split("/api/", 1)[0], thresholds, testnet, stop, on_metrics,
                              getattr(testnet, "directory_public_key", None) or None)
        return await _run_with_testnet(opts, directory_url, thresholds, stop, on_metrics)


async def _run_with_testnet(opts: LoadTestOptions, directory_url: str | None, thresholds: ThresholdSet,
                            stop: asyncio.Event,
                            on_metrics: Callable[[LoadMetrics], None] | None) -> LoadTestResult:
    testnet = None
    url = directory_url or opts.directory_url
    if url is None:
        from loopix.testnet.launcher import Testnet

        testnet = Testnet(layers=opts.layers, mixnodes_per_layer=opts.mixnodes_per_layer,
                          providers=opts.providers, mean_hop_delay_ms=opts.mean_hop_delay_ms,
                          presence_interval=1.0)
        print(f"loadtest: starting a testnet ({opts.layers} layers x {opts.mixnodes_per_layer} mixnodes, "
              f"{opts.providers} providers)", flush=True)
        try:
            await asyncio.to_thread(testnet.start)
        except BaseException:
            await asyncio.to_thread(testnet.stop)
            raise
        url = testnet.topology_url
    base_url = url.split("/api/", 1)[0]
    directory_key = testnet.directory_public_key if testnet is not None else None
    try:
        if stop.is_set():
            raise Interrupted("before the load started; no report")
        return await _run(opts, url, base_url, thresholds, testnet, stop, on_metrics, directory_key)
    finally:
        if testnet is not None:
            await asyncio.to_thread(testnet.stop)


async def _run(opts: LoadTestOptions, url: str, base_url: str, thresholds: ThresholdSet,
               testnet, stop: asyncio.Event,
               on_metrics: Callable[[LoadMetrics], None] | None = None,
               directory_key: bytes | None = None) -> LoadTestResult:
    t0 = time.monotonic()
    ids = ephemeral_identities(opts.identities, opts.payload_rate, opts.loop_rate, opts.drop_rate)
    coord = Coordinator(ids, RuntimeOptions(
        directory_url=url, payload_size=opts.packet_payload_size, mean_hop_delay_ms=opts.mean_hop_delay_ms,
        workers=opts.workers, senders=opts.senders, sender_coalesce_us=opts.sender_coalesce_us,
        start_timeout_s=max(30.0, opts.identities / 200),
        start_paused=True,
        directory_key=directory_key))
    await coord.start()
    try:
        if stop.is_set():
            raise Interrupted("before the load started; no report")
        summary, metrics = await _measure(opts, coord, base_url, url, thresholds, testnet, stop, t0, on_metrics)
    finally:
        await coord.stop()
    return _finish(opts, summary, metrics, thresholds)


async def _measure(opts: LoadTestOptions, coord: Coordinator, base_url: str, url: str, thresholds: ThresholdSet,
                   testnet, stop: asyncio.Event, t0: float,
                   on_metrics: Callable[[LoadMetrics], None] | None) -> tuple[Summary, LoadMetrics]:
    print(f"loadtest: {opts.identities} identities registered in {time.monotonic() - t0:.1f}s; "
          f"load for {opts.duration_s:g}s", flush=True)
    # The network is quiet (the runtime started paused); let every node report that, then start the
    # load on a whole second: the sender buckets loops by scheduled second, so the first bucket must
    # not straddle the start. Client and node counts then cover exactly the same packets.
    await asyncio.sleep(NODE_REPORT_INTERVAL_S + 0.2)
    if opts.warmup_s > 0:
        # the load runs, unmeasured, until queues and RTT have settled; measuring starts after
        coord.resume()
        print(f"loadtest: warm-up {opts.warmup_s:g}s (not measured)", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), opts.warmup_s)
        if stop.is_set():
            raise Interrupted("during the warm-up; no report")
    start_ns = -(-time.monotonic_ns() // 1_000_000_000) * 1_000_000_000
    metrics = LoadMetrics(start_ns, opts.mean_hop_delay_ms, coord.topology.num_layers,
                          grace_s=opts.grace_s, labels={"identities": str(opts.identities)})
    metrics.metadata = metadata.collect(
        identities=opts.identities,
        rates={"payload": opts.payload_rate, "loop": opts.loop_rate, "drop": opts.drop_rate},
        messages_per_s=opts.messages_rate, mean_hop_delay_ms=opts.mean_hop_delay_ms,
        packet_payload_size=opts.packet_payload_size, workers=opts.workers,
        sender_coalesce_us=opts.sender_coalesce_us,
        source="embedded" if testnet is not None else url,
        mixnodes_per_layer=[len(nodes) for nodes in coord.topology.layers().values()],
        providers=len(coord.topology.providers), argv=opts.command_line)
    metrics.topology = {b64url_encode(n.pub_key) for n in (*coord.topology.mix_nodes, *coord.topology.providers)}
    feed = MetricsFeed(metrics, coord.stats)
    sampler = ResourceSampler()
    # baselines (CPU is a rate); before start_ns, hence a negative time
    sampler.sample((time.monotonic_ns() - start_ns) / 1e9, run_processes(coord, testnet))
    if on_metrics is not None:
        on_metrics(metrics)
    prometheus = serve_prometheus(metrics, opts.metrics_port) if opts.metrics_port else None
    stop_messages = asyncio.Event()
    sender = None
    live = LiveView(opts.duration_s, plain=None if opts.live is None else not opts.live)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            metrics.record_node_counters(await fetch_node_counters(http, base_url))
            await asyncio.sleep((start_ns - time.monotonic_ns()) / 1e9)
            if opts.warmup_s > 0:  # count from here: what the warm-up sent is not the run's
                feed.last_sent, feed.last_real = list(coord.stats.sent), coord.stats.real_sent
                feed.last_unsent = MetricsFeed(metrics, coord.stats).last_unsent
            coord.stats_listeners.append(feed.on_stats)
            coord.message_listeners.append(feed.on_message)
            coord.resume()
            end_load = metrics.start_ns + int(opts.duration_s * 1e9)
            # the workers build up to a lookahead ahead: told now, they build no cover due after the
            # end, so the rates are the packets due in [start, end) over exactly the duration
            coord.pause(from_ns=end_load)
            sender = asyncio.create_task(
                send_messages(coord, metrics, opts.messages_rate, opts.message_size, stop_messages))
            with live:
                # after the grace period, one more node report so their counters include the drain
                end_all = end_load + int((metrics.grace_s + NODE_REPORT_INTERVAL_S + 0.5) * 1e9)
                paused = False
                last_totals, quiet_ticks = None, 0
                hard_stop = end_all + int(QUIESCE_LIMIT_S * 1e9)
                next_tick = time.monotonic_ns() + 1_000_000_000
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), max(0.0, (next_tick - time.monotonic_ns()) / 1e9))
                    now = time.monotonic_ns()
                    next_tick += 1_000_000_000
                    interrupted = stop.is_set()
                    if not paused and (now >= end_load or interrupted):
                        coord.pause()
                        stop_messages.set()
                        metrics.end_load(min(now, end_load))
                        paused = True
                    metrics.record_node_counters(await fetch_node_counters(http, base_url))
                    metrics.record_resources(sampler.sample((now - metrics.start_ns) / 1e9,
                                                            run_processes(coord, testnet)))
                    row = metrics.tick(now)
                    live.update(row)
                    if interrupted:
                        metrics.interrupted = True
                        print("loadtest: interrupted; reporting what was measured so far", file=sys.stderr,
                              flush=True)
                        break
                    if coord.fatal:
                        print(f"loadtest: {coord.fatal}", file=sys.stderr)
                        break
                    # End once nothing has been sent for a few ticks (queued real messages drain on
                    # their payload slots after the pause) so that the last client and node reports
                    # both cover every packet.
                    totals = (tuple(coord.stats.sent), coord.stats.real_sent)
                    drained = paused and totals == last_totals and not any(coord.outstanding)
                    quiet_ticks = quiet_ticks + 1 if drained else 0
                    last_totals = totals
                    if (now >= end_all and quiet_ticks >= QUIET_TICKS) or now >= hard_stop:
                        break
                summary = metrics.summary()
                summary.thresholds = thresholds.check(summary)
                live.finish(summary)
    finally:
        stop_messages.set()
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        if prometheus is not None:
            prometheus[0].shutdown()
    return summary, metrics


def _finish(opts: LoadTestOptions, summary: Summary, metrics: LoadMetrics, thresholds: ThresholdSet) -> LoadTestResult:
    """Write the report (if asked) and choose the exit code."""
    code = thresholds.exit_code(summary)
    if opts.out_dir:
        from .report import write_report  # matplotlib: only when a report is asked for

        try:
            path = write_report(opts.out_dir, summary, metrics.history, metrics.node_samples(),
                                metrics.resource_samples)
            print(f"loadtest: report written to {path}")
        except Exception as exc:  # never lose a long run to a traceback: say what is on disk
            print(f"loadtest: error: the report could not be completed in {opts.out_dir}: {exc}", file=sys.stderr)
            code = code or 1
    for result in summary.thresholds:
        if not result.passed:
            print(f"loadtest: threshold violated: {result.message}", file=sys.stderr)
    if summary.interrupted:
        code = EXIT_INTERRUPTED
    return LoadTestResult(summary, code)
