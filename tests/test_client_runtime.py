"""The client runtime as a process tree (coordinator, workers, sender) against a discarding
provider: schedules, trace, shutdown, a killed worker."""

from __future__ import annotations

import os
import signal
import time

import pytest
import uvloop

from _procs import children_of
from conftest import wait_until_async
from loopix import sphinx
from loopix.client.coordinator import ClientError, Coordinator, Identity, RuntimeOptions
from loopix.client.schedule import Stream
from loopix.client.trace import read_trace
from loopix.keys import generate_keypair
from loopix.testnet.sink import SinkNet
from loopix.wire import provider as pp

FRAME = pp.SEND_OVERHEAD + sphinx.packet_size(2048)


def test_streams_trace_and_clean_shutdown(tmp_path):
    trace = tmp_path / "trace.bin"
    shm_before = set(os.listdir("/dev/shm"))

    async def scenario():
        async with SinkNet() as net:
            ids = [Identity(generate_keypair(), None, 40.0, 20.0, 20.0) for _ in range(3)]
            coord = Coordinator(ids, RuntimeOptions(directory_url=net.topology_url, workers=2,
                                                    mean_hop_delay_ms=5.0, trace_path=str(trace)))
            await coord.start()
            kids = {c.proc.pid for c in [*coord.senders, *coord.workers]}
            assert len(kids) == 3 and kids <= children_of(os.getpid())
            await wait_until_async(lambda: sum(coord.stats.sent) >= 300, "300 packets sent", 30)
            await coord.stop()
            assert not (kids & children_of(os.getpid()))
            records = read_trace(str(trace))  # complete: the sender closed it on exit
            # every traced packet reached the provider (its counter is reported once a second)
            await wait_until_async(lambda: net.sink_bytes() >= len(records) * FRAME, "the sink to count them", 10)
            assert net.sink_bytes() == len(records) * FRAME
            return coord.stats, records

    stats, records = uvloop.run(scenario())
    assert set(os.listdir("/dev/shm")) == shm_before
    assert len(records) >= 300
    by_stream = {s: [r for r in records if r.stream == s] for s in Stream}
    for stream in Stream:  # payload 40/s (all cover here), loop 20/s, drop 20/s per identity
        assert len(by_stream[stream]) > 0
    assert len(by_stream[Stream.PAYLOAD]) > len(by_stream[Stream.LOOP])
    assert all(r.actual_ns >= r.scheduled_ns for r in records), "a packet left before its time"
    assert not any(r.real for r in records)
    assert {r.identity for r in records} == {0, 1, 2}
    assert stats.sent[Stream.LOOP] > 0 and stats.connected == 3


def _identities(n: int, rate: float) -> list[Identity]:
    """n identities of `rate` packets/s each, payload:loop:drop 60:20:20 (drop cover)."""
    return [Identity(generate_keypair(), None, 0.6 * rate, 0.2 * rate, 0.2 * rate) for _ in range(n)]


def _traced_client(net: SinkNet, ids: list[Identity], trace) -> Coordinator:
    return Coordinator(ids, RuntimeOptions(directory_url=net.topology_url, workers=2, mean_hop_delay_ms=5.0,
                                           trace_path=str(trace)))


def test_no_cover_is_built_before_every_identity_is_registered(tmp_path):
    """The schedules start once the sender has registered everyone: nothing is due while an identity
    has no connection, so none is dropped as "unconnected" (before, ~150 at this size and rate). The
    trace's first packet is scheduled after start returned."""
    async def scenario(trace):
        async with SinkNet() as net:
            coord = _traced_client(net, _identities(200, 10.0), trace)
            await coord.start()
            started = time.monotonic_ns()
            await wait_until_async(lambda: sum(coord.stats.sent) >= 2000, "2,000 packets sent", 30)
            stats = coord.stats
            await coord.stop()
            return stats, started

    stats, started = uvloop.run(scenario(tmp_path / "trace.bin"))
    records = read_trace(str(tmp_path / "trace.bin"))
    assert stats.connected == 200 and stats.dropped_unconnected == 0
    assert min(r.scheduled_ns for r in records) >= started - 50_000_000  # the resume is sent just before


def test_identities_that_join_get_streams_once_registered(tmp_path):
    """Identities added to a running client have no streams until the sender has registered them,
    so none of their cover is dropped as "unconnected" (before: hundreds, while 3,000 registered);
    then they send like the others."""
    async def scenario(trace):
        async with SinkNet() as net:
            coord = _traced_client(net, _identities(100, 10.0), trace)
            await coord.start()
            joined = coord.add_identities(_identities(3000, 1.0))
            added = time.monotonic_ns()
            await wait_until_async(lambda: coord.stats.connected == 3100, "3,100 identities connected", 60)
            sent = sum(coord.stats.sent)
            await wait_until_async(lambda: sum(coord.stats.sent) >= sent + 4000, "4,000 more packets sent", 30)
            stats = coord.stats
            await coord.stop()
            return stats, joined, added

    stats, joined, added = uvloop.run(scenario(tmp_path / "trace.bin"))
    records = read_trace(str(tmp_path / "trace.bin"))
    theirs = [r for r in records if r.identity in joined]
    assert stats.dropped_unconnected == 0
    assert len(theirs) >= 1000 and len({r.identity for r in theirs}) >= 500  # once started, they send
    assert min(r.scheduled_ns for r in theirs) >= added


def test_killed_worker_is_replaced_and_shutdown_stays_clean():
    async def scenario():
        async with SinkNet() as net:
            ids = [Identity(generate_keypair(), None, 100.0, 0.0, 0.0)]
            coord = Coordinator(ids, RuntimeOptions(directory_url=net.topology_url, workers=2, mean_hop_delay_ms=1.0))
            await coord.start()
            victim = coord.workers[0].proc
            os.kill(victim.pid, signal.SIGKILL)
            await wait_until_async(
                lambda: coord.stats.worker_restarts == 1 and coord.workers[0].proc is not victim,
                "the worker to be restarted", 20)
            sent = sum(coord.stats.sent)
            await wait_until_async(lambda: sum(coord.stats.sent) > sent + 50, "traffic after the restart", 20)
            kids = {c.proc.pid for c in [*coord.senders, *coord.workers]}
            await coord.stop()
            assert not (kids & children_of(os.getpid()))

    uvloop.run(scenario())


def test_unreachable_directory_is_a_clear_error():
    async def scenario():
        coord = Coordinator([Identity(generate_keypair())],
                            RuntimeOptions(directory_url="http://127.0.0.1:9/api/presence/topology",
                                           start_timeout_s=1.0))
        with pytest.raises(ClientError, match="unreachable"):
            await coord.start()
        assert not children_of(os.getpid()) & {c.proc.pid for c in coord.workers if c}

    uvloop.run(scenario())


def test_unknown_provider_is_refused():
    async def scenario():
        async with SinkNet() as net:
            ident = Identity(generate_keypair(), provider_key=bytes(32))
            coord = Coordinator([ident], RuntimeOptions(directory_url=net.topology_url))
            with pytest.raises(ClientError, match="not in the topology"):
                await coord.start()

    uvloop.run(scenario())


def test_two_senders_share_the_identities_and_their_stats_add_up(tmp_path):
    trace = tmp_path / "trace.bin"

    async def scenario():
        async with SinkNet() as net:
            ids = [Identity(generate_keypair(), None, 40.0, 20.0, 20.0) for _ in range(4)]
            coord = Coordinator(ids, RuntimeOptions(directory_url=net.topology_url, workers=2, senders=2,
                                                    mean_hop_delay_ms=5.0, trace_path=str(trace)))
            await coord.start()
            assert coord.n_senders == 2 and len(coord.senders) == 2
            kids = {c.proc.pid for c in [*coord.senders, *coord.workers]}
            assert len(kids) == 4 and kids <= children_of(os.getpid())
            await wait_until_async(lambda: sum(coord.stats.sent) >= 400, "400 packets sent", 30)
            assert coord.stats.connected == 4
            reply = await coord.identity_stats([0, 1, 2, 3], top=2)
            assert [r.identity for r in reply.identities] == [0, 1, 2, 3] and len(reply.top) == 2
            assert all(sum(r.sent) > 0 for r in reply.identities)
            await coord.stop()
            assert not (kids & children_of(os.getpid()))
            records = read_trace(str(trace))  # one file: the second sender's records appended at stop
            assert not (tmp_path / "trace.bin.1").exists()
            await wait_until_async(lambda: net.sink_bytes() >= len(records) * FRAME, "the sink to count them", 10)
            assert net.sink_bytes() == len(records) * FRAME
            return coord.stats, records

    stats, records = uvloop.run(scenario())
    assert {r.identity for r in records} == {0, 1, 2, 3}
    assert all(r.actual_ns >= r.scheduled_ns for r in records)
    assert sum(stats.sent) <= len(records)  # the last interval's packets are in the trace, not yet in the stats


def test_sender_count_divides_the_workers_and_needs_partitioned_identities():
    from loopix.client.coordinator import sender_count

    assert sender_count(4, 8, partitioned=False) == 1
    assert sender_count(0, 8, partitioned=True) == 1 and sender_count(0, 64, partitioned=True) == 8
    assert sender_count(3, 8, partitioned=True) == 2  # a divisor: sender k owns identities i % n == k
    assert sender_count(16, 4, partitioned=True) == 4  # at most one per worker
