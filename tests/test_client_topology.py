"""The client follows the topology: a mixnode that leaves is no longer chosen, and a directory
that goes away leaves the client running on the last good topology."""

from __future__ import annotations

import asyncio
import time

import uvloop

from loopix.client.coordinator import Coordinator, Identity, RuntimeOptions
from loopix.client.schedule import Stream
from loopix.keys import generate_keypair
from loopix.testnet.launcher import Testnet


async def loops_in_window(coord: Coordinator, seconds: float, settle: float) -> tuple[int, int]:
    """(loops sent during the window, loops back by `settle` seconds after it)."""
    s0, b0 = coord.stats.sent[Stream.LOOP], coord.stats.loops_back
    await asyncio.sleep(seconds)
    s1 = coord.stats.sent[Stream.LOOP]
    await asyncio.sleep(settle)
    return s1 - s0, coord.stats.loops_back - b0


def test_dead_mixnode_is_avoided_and_directory_loss_is_survived():
    with Testnet(layers=3, mixnodes_per_layer=2, providers=1, mean_hop_delay_ms=2.0, presence_interval=0.5) as net:
        async def scenario():
            ident = Identity(generate_keypair(), None, payload_rate=5.0, loop_rate=60.0, drop_rate=0.0)
            coord = Coordinator([ident], RuntimeOptions(directory_url=net.topology_url, workers=1,
                                                        mean_hop_delay_ms=2.0, topology_refresh_s=0.5))
            await coord.start()
            try:
                sent, back = await loops_in_window(coord, 2.0, 1.5)
                assert sent > 50 and back >= sent * 0.95, (sent, back)
                await asyncio.to_thread(net.kill, "mix-2-1")
                await asyncio.to_thread(net.wait_absent, "mix-2-1", 15)
                deadline = time.monotonic() + 10
                dead = net.nodes["mix-2-1"].public_key
                while any(m.pub_key == dead for m in coord.topology.mix_nodes):
                    assert time.monotonic() < deadline, "the coordinator kept the dead node"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)  # the workers have the new topology; old packets drained
                sent, back = await loops_in_window(coord, 2.0, 1.5)
                assert sent > 50 and back >= sent * 0.95, f"loops still routed through the dead node: {back}/{sent}"
                # the directory goes away: refreshes fail, the last good topology stays in use
                await asyncio.to_thread(net.kill, "directory")
                await asyncio.sleep(1.5)  # several failed refreshes
                sent, back = await loops_in_window(coord, 2.0, 1.5)
                assert sent > 50 and back >= sent * 0.95, (sent, back)
                assert coord.fatal is None
            finally:
                await coord.stop()

        uvloop.run(scenario())
