"""The client follows the topology: a mixnode that leaves is no longer chosen, and a directory
that goes away leaves the client running on the last good topology.

Every wait is for a condition (loops sent, loops back, the coordinator's topology version and
refresh-failure counters), never a fixed sleep."""

from __future__ import annotations

import asyncio
import contextlib

import uvloop

from conftest import make_testnet_fixture, wait_until_async
from loopix.client.coordinator import Coordinator, Identity, RuntimeOptions
from loopix.client.schedule import Stream
from loopix.keys import generate_keypair

LOOP_RATE = 60.0
WINDOW_LOOPS = 120
"""Loops per measured window: about two seconds of the identity's loop stream."""

net = make_testnet_fixture(
    "net", layers=3, mixnodes_per_layer=2, providers=1, mean_hop_delay_ms=2.0, presence_interval=0.5
)


def loops_sent(coord: Coordinator) -> int:
    return coord.stats.sent[Stream.LOOP]


async def loops_in_window(coord: Coordinator) -> tuple[int, int]:
    """(loops sent in a window of at least WINDOW_LOOPS, loops back since its start), once at least
    95% of them are back or the deadline passed (the caller's assertion then says how many)."""
    s0, b0 = loops_sent(coord), coord.stats.loops_back
    await wait_until_async(lambda: loops_sent(coord) - s0 >= WINDOW_LOOPS, "a window of loops", 20)
    sent = loops_sent(coord) - s0
    with contextlib.suppress(AssertionError):
        await wait_until_async(lambda: coord.stats.loops_back - b0 >= 0.95 * sent, "loops back", 10)
    return sent, coord.stats.loops_back - b0


async def loops_sent_past(coord: Coordinator, count: int) -> None:
    """Wait until `count` more loops left: packets built ahead of time (the workers' lookahead,
    100 ms here) have then all gone out, so later loops were built on what the workers know now."""
    start = loops_sent(coord)
    await wait_until_async(
        lambda: loops_sent(coord) >= start + count, f"{count} more loops sent", 20
    )


def test_dead_mixnode_is_avoided_and_directory_loss_is_survived(net):
    async def scenario():
        ident = Identity(
            generate_keypair(), None, payload_rate=5.0, loop_rate=LOOP_RATE, drop_rate=0.0
        )
        coord = Coordinator(
            [ident],
            RuntimeOptions(
                directory_url=net.topology_url,
                workers=1,
                mean_hop_delay_ms=2.0,
                topology_refresh_s=0.5,
            ),
        )
        await coord.start()
        try:
            sent, back = await loops_in_window(coord)
            assert sent > 50 and back >= sent * 0.95, (sent, back)
            version = coord.topology_version
            await asyncio.to_thread(net.kill, "mix-2-1")
            await asyncio.to_thread(net.wait_absent, "mix-2-1", 15)
            dead = net.nodes["mix-2-1"].public_key
            await wait_until_async(
                lambda: (
                    coord.topology_version > version
                    and not any(m.pub_key == dead for m in coord.topology.mix_nodes)
                ),
                "the coordinator to hand the workers a topology without the dead node",
                10,
            )
            await loops_sent_past(coord, 30)
            sent, back = await loops_in_window(coord)
            assert sent > 50 and back >= sent * 0.95, (
                f"loops still routed through the dead node: {back}/{sent}"
            )
            # the directory goes away: refreshes fail, the last good topology stays in use
            failures = coord.topology_refresh_failures
            await asyncio.to_thread(net.kill, "directory")
            await wait_until_async(
                lambda: coord.topology_refresh_failures >= failures + 2,
                "several failed refreshes",
                10,
            )
            sent, back = await loops_in_window(coord)
            assert sent > 50 and back >= sent * 0.95, (sent, back)
            assert coord.fatal is None
        finally:
            await coord.stop()

    uvloop.run(scenario())
