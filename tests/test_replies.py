"""Anonymous replies: reply blocks through the real C node code, the reply framing and stores, and a
conversation on a real testnet where bob answers 25 times through 10 blocks plus the ones he asks
for, without ever holding alice's address."""

from __future__ import annotations

import asyncio
import os

import msgspec
import pytest
import uvloop

from conftest import make_testnet_fixture, wait_until_async
from loopix import sphinx
from loopix.client.api import Client
from loopix.client.coordinator import ClientError
from loopix.client.replies import (
    Envelope,
    ReplyKeys,
    ReplyReassembler,
    Surb,
    SurbStore,
    decode_envelope,
    encode_envelope,
    reply_fragments,
    seal_reply_fragment,
)
from loopix.sphinx.surb import ReplyBlock, make_reply_block, use_reply_block
from loopix.wire.ack import inner_size
from test_reliable_delivery import make_client

net = make_testnet_fixture("net", layers=3, mixnodes_per_layer=1, providers=2, mean_hop_delay_ms=5.0,
                           presence_interval=1.0)


def test_reply_block_goes_through_the_c_node_code():
    keys = [sphinx.keypair() for _ in range(4)]
    route = [sphinx.Hop(public_key=pk, address=os.urandom(32)) for _, pk in keys]
    dest = os.urandom(32)
    block = make_reply_block(route, dest, [1000, 2000, 3000, 0])
    assert dest not in block.to_bytes(), "the destination travels only under the hops' encryption"
    block = ReplyBlock.from_bytes(block.to_bytes())
    packet = use_reply_block(block, b"an answer", 2048)
    for i, (sk, _) in enumerate(keys):
        result = sphinx.process_packet(sk, packet)
        if i < 3:
            assert result.next_address == route[i + 1].address
            packet = result.packet
    assert result.destination == dest and result.message == b"an answer"
    with pytest.raises(sphinx.ParameterError):
        ReplyBlock.from_bytes(b"short")


def test_reply_fragments_sealed_per_block_and_reassembled():
    inner = inner_size(2048)
    message = os.urandom(5000)
    frags = reply_fragments(message, inner)
    keys, surbs = ReplyKeys(), []
    for _ in frags:
        s = Surb(b"", os.urandom(16), os.urandom(32))
        keys.add(s.surb_id, s.key, b"t" * 16, 0, 0.0)
        surbs.append(s)
    sealed = [seal_reply_fragment(s, f) for s, f in zip(surbs, frags, strict=True)]
    assert all(len(x) == inner for x in sealed)
    rr = ReplyReassembler()
    out = None
    for x in reversed(sealed):
        opened, _identity, _tag = keys.take(x, 1.0)
        out = rr.add(opened, 1.0) or out
    assert out == message
    assert keys.take(sealed[0], 1.0) is None, "a block's key is single use"
    assert decode_envelope(encode_envelope(Envelope(data=b"x", sender_tag=b"t" * 16))).data == b"x"
    assert decode_envelope(b"\xff junk") is None
    assert decode_envelope(encode_envelope(Envelope(sender_tag=b"short"))) is None


def test_surb_store_bounds_and_age():
    store = SurbStore(max_per_tag=3, max_tags=2, max_age_s=300)
    s = [Surb(bytes([i]), bytes(16), bytes(32)) for i in range(5)]
    store.add(0, b"a", s, 0.0)
    assert store.count(0, b"a", 1.0) == 3 and store.dropped == 2
    assert store.take(0, b"a", 1.0).block == bytes([2]), "oldest first"
    assert store.count(0, b"a", 301.0) == 0, "unused blocks expire"
    store.add(0, b"b", s[:1], 302.0)
    store.add(0, b"c", s[:1], 302.0)
    assert not store.known(0, b"a") and store.known(0, b"c")


def test_reply_conversation_without_the_senders_address(net, tmp_path):
    p1, p2 = (net.nodes[n].public_key for n in ("provider-1", "provider-2"))
    make_client(tmp_path, "alice", net, p1, payload_rate=100.0)
    make_client(tmp_path, "bob", net, p2, payload_rate=100.0)

    async def scenario():
        async with Client.load("alice", tmp_path) as alice, Client.load("bob", tmp_path) as bob:
            at_bob, at_alice = bob.subscribe(), alice.subscribe()
            await alice.send_message(b"write back", bob.address, reply_surbs=10)
            first = await asyncio.wait_for(at_bob.__anext__(), 30)
            assert first.data == b"write back" and first.sender_tag is not None
            with pytest.raises(ClientError):
                await bob.reply(os.urandom(16), b"to nobody")
            for i in range(25):
                await bob.reply(first.sender_tag, b"answer %d" % i)
            got = set()
            while len(got) < 25:
                m = await asyncio.wait_for(at_alice.__anext__(), 60)
                assert m.sender_tag == first.sender_tag
                got.add(m.data)
            assert got == {b"answer %d" % i for i in range(25)}
            await wait_until_async(lambda: bob.stats.fragments_unacked == 0, "bob's replies acked", 30)
            # nothing on bob's side holds alice's address: not her key, not her provider's
            coord = bob._coord
            held = msgspec.msgpack.encode([coord.surbs.contents(), list(coord.reply_frags.values()),
                                           list(coord.reply_waiting.items())])
            for secret in (alice.keys.public, p1, alice.address.encode()):
                assert secret not in held
            assert not coord.reply_keys.peers, "bob wrote to nobody: he has no correspondents"
            assert alice._coord.stats.replies_received == 25

    uvloop.run(scenario())
