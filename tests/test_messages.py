"""The end-to-end layer: sealing, fragmentation, padding, reassembly, loops and drops."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PublicKey, SealedBox

from loopix import sphinx
from loopix.client.messages import (
    FRAGMENT_HEADER,
    FRAGMENT_HEADER_SIZE,
    LOOP_MIN_PAYLOAD_SIZE,
    MIN_PAYLOAD_SIZE,
    FragmentHeader,
    Incomplete,
    LoopCodec,
    LoopInfo,
    MessageError,
    Reassembler,
    classify,
    drop_payload,
    fragment_capacity,
    fragment_count,
    fragment_message,
    parse_fragment_header,
)

SIZES = [p for p in sphinx.PAYLOAD_SIZES if p != 21]
ALICE_SK, ALICE_PK = sphinx.keypair()
BOB_SK, BOB_PK = sphinx.keypair()
MIB = 2**20


def deliver(fragments, reasm: Reassembler, now: float = 0.0) -> list[bytes]:
    """Feed fragments; return every non-None result (at most one expected)."""
    out = []
    for f in fragments:
        r = reasm.add(f, now)
        if r is not None:
            out.append(r)
    return out


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("payload_size", SIZES)
@pytest.mark.parametrize("kind", ["empty", "one", "capacity", "capacity+1", "1MiB"])
def test_round_trip_sizes(payload_size, kind):
    cap = fragment_capacity(payload_size)
    n = {"empty": 0, "one": 1, "capacity": cap, "capacity+1": cap + 1, "1MiB": MIB}[kind]
    message = os.urandom(n)
    frags = fragment_message(message, BOB_PK, payload_size)
    assert all(len(f) == payload_size for f in frags)
    assert len(frags) == fragment_count(n, payload_size)
    if kind in ("empty", "one", "capacity"):
        assert len(frags) == 1
    if kind == "capacity+1":
        assert len(frags) == 2
    random.Random(n).shuffle(frags)
    reasm = Reassembler(BOB_SK)
    assert deliver(frags, reasm) == [message]
    assert reasm.counters["completed"] == 1
    assert reasm.pending_bytes == 0 and len(reasm) == 0


def test_capacity_is_payload_minus_overheads():
    assert fragment_capacity(2048) == 2048 - 16 - 48 - 1 == 1983
    assert MIN_PAYLOAD_SIZE == 65
    assert fragment_count(0, 2048) == 1
    assert fragment_count(MIB, 2048) == -(-(MIB + 49) // 2032)


def test_21_byte_payload_is_a_clear_error():
    with pytest.raises(MessageError, match=r"payload_size 21 is too small.*at least 65"):
        fragment_message(b"hi", BOB_PK, 21)
    with pytest.raises(MessageError, match="too small"):
        fragment_capacity(21)
    with pytest.raises(MessageError, match=r"too small for a loop.*at least 76"):
        LoopCodec().encode(0, 0, 0, 21)
    assert len(drop_payload(21)) == 21  # drops have no structure: any size works


def test_smallest_payload_size_works():
    frags = fragment_message(b"", BOB_PK, MIN_PAYLOAD_SIZE)
    assert len(frags) == 1
    assert deliver(frags, Reassembler(BOB_SK)) == [b""]
    frags = fragment_message(b"abc", BOB_PK, MIN_PAYLOAD_SIZE)
    assert len(frags) == 2  # 49-byte chunks: the box overhead spreads over both
    assert deliver(frags[::-1], Reassembler(BOB_SK)) == [b"abc"]


@settings(deadline=None, max_examples=60)
@given(
    n=st.integers(0, 3 * 2032 + 10),
    payload_size=st.sampled_from([*SIZES, MIN_PAYLOAD_SIZE, 100, 777]),
    seed=st.integers(0, 2**32 - 1),
    dup_rate=st.floats(0, 1),
)
def test_out_of_order_and_duplicated(n, payload_size, seed, dup_rate):
    rng = random.Random(seed)
    message = rng.randbytes(n)
    frags = fragment_message(message, BOB_PK, payload_size)
    stream = list(frags) + [f for f in frags if rng.random() < dup_rate]
    rng.shuffle(stream)
    reasm = Reassembler(BOB_SK)
    results = []
    for i, f in enumerate(stream):
        r = reasm.add(f, float(i))
        if r is not None:
            results.append(r)
            # the message completes exactly when its last distinct fragment arrives
            assert {bytes(x) for x in stream[: i + 1]} == set(frags)
    assert results == [message]
    c = reasm.counters
    assert c["completed"] == 1
    assert c["duplicate"] == len(stream) - len(frags)
    assert c["malformed"] == c["undecryptable"] == 0
    assert len(reasm) == 0 and reasm.pending_bytes == 0


def test_interleaved_messages_and_memoryview_input():
    msgs = [os.urandom(k) for k in (5000, 0, 12345, 1983)]
    streams = [fragment_message(m, BOB_PK) for m in msgs]
    mixed = [f for s in streams for f in s]
    random.Random(1).shuffle(mixed)
    reasm = Reassembler(BOB_SK)
    got = deliver((memoryview(bytearray(f)) for f in mixed), reasm)
    assert sorted(got) == sorted(msgs)


def test_fragments_carry_only_ciphertext_after_the_header():
    """No visible padding: the last fragment's tail is not zeros (padding is inside the box)."""
    frags = fragment_message(b"x", BOB_PK)
    assert len(frags) == 1
    tail = frags[0][-1000:]
    assert tail.count(0) < 30  # random bytes: about 4 zeros expected
    mid, index, count = FRAGMENT_HEADER.unpack_from(frags[0])
    assert (index, count) == (0, 1) and len(mid) == 8


def test_fragments_share_one_random_id():
    frags = fragment_message(os.urandom(10_000), BOB_PK)
    headers = [parse_fragment_header(f) for f in frags]
    assert {h.message_id for h in headers} == {headers[0].message_id}
    assert [h.index for h in headers] == list(range(len(frags)))
    assert {h.count for h in headers} == {len(frags)}
    assert headers[0] == FragmentHeader(headers[0].message_id, 0, len(frags))
    other = parse_fragment_header(fragment_message(b"", BOB_PK)[0])
    assert other.message_id != headers[0].message_id
    assert parse_fragment_header(b"short") is None
    assert parse_fragment_header(FRAGMENT_HEADER.pack(bytes(8), 3, 3) + b"x") is None


def test_same_message_twice_gives_different_bytes():
    a = fragment_message(b"hello", BOB_PK)
    b = fragment_message(b"hello", BOB_PK)
    assert a[0] != b[0]
    reasm = Reassembler(BOB_SK)
    assert deliver(a + b, reasm) == [b"hello", b"hello"]


def test_through_a_sphinx_packet():
    """A fragment of payload_size bytes is exactly what one Sphinx packet carries."""
    node_sk, node_pk = sphinx.keypair()
    frag = fragment_message(b"through the mix", BOB_PK)[0]
    pkt = sphinx.build_packet(
        route=[sphinx.Hop(public_key=node_pk, address=bytes(32))],
        destination=bytes(32),
        message=frag,
        delays_ns=[0],
        payload_size=2048,
    )
    assert len(pkt) == sphinx.packet_size(2048)
    final = sphinx.process_packet(node_sk, pkt)
    assert final.message == frag
    assert Reassembler(BOB_SK).add(final.message, 0.0) == b"through the mix"


# --- loss, keys, garbage --------------------------------------------------------------------------


def test_missing_fragment_is_reported_incomplete_never_garbled():
    message = os.urandom(10_000)
    frags = fragment_message(message, BOB_PK)
    mid = parse_fragment_header(frags[0]).message_id
    lost = frags.pop(2)
    reasm = Reassembler(BOB_SK, timeout_s=30)
    assert deliver(frags, reasm, now=100.0) == []
    assert reasm.pending_bytes == len(frags) * (2048 - FRAGMENT_HEADER_SIZE)
    assert reasm.expire(129.9) == []  # not yet: the last fragment came at t=100
    assert reasm.expire(130.0) == [Incomplete(mid, len(frags), len(frags) + 1)]
    assert reasm.counters["expired"] == 1 and reasm.counters["completed"] == 0
    assert len(reasm) == 0 and reasm.pending_bytes == 0
    # the straggler after expiry does not start a new message, nor complete a garbled one
    assert reasm.add(lost, 131.0) is None
    assert reasm.counters["duplicate"] == 1
    assert reasm.expire(1000.0) == []


def test_expiry_follows_the_latest_fragment():
    a = fragment_message(os.urandom(5000), BOB_PK)
    b = fragment_message(os.urandom(5000), BOB_PK)
    reasm = Reassembler(BOB_SK, timeout_s=10)
    reasm.add(a[0], 0.0)
    reasm.add(b[0], 5.0)
    reasm.add(a[1], 8.0)  # a is active again
    expired = reasm.expire(15.0)
    assert [i.message_id for i in expired] == [parse_fragment_header(b[0]).message_id]
    assert [i.message_id for i in reasm.expire(18.0)] == [parse_fragment_header(a[0]).message_id]


def test_wrong_recipient_key_is_undecryptable():
    for n in (10, 10_000):
        frags = fragment_message(os.urandom(n), ALICE_PK)
        reasm = Reassembler(BOB_SK)
        assert deliver(frags, reasm) == []
        assert reasm.counters["undecryptable"] == 1
        assert reasm.counters["completed"] == 0
        assert len(reasm) == 0


def test_a_loop_is_undecryptable_for_the_reassembler():
    reasm = Reassembler(BOB_SK)
    assert reasm.add(LoopCodec().encode(1, 2, 3), 0.0) is None
    assert reasm.counters["undecryptable"] == 1


def test_completed_message_fragment_is_a_duplicate():
    frags = fragment_message(os.urandom(5000), BOB_PK)
    reasm = Reassembler(BOB_SK)
    assert len(deliver(frags, reasm)) == 1
    assert deliver(frags, reasm) == []
    assert reasm.counters["duplicate"] == len(frags)
    one = fragment_message(b"one", BOB_PK)
    assert deliver(one + one, reasm) == [b"one"]
    assert reasm.counters["duplicate"] == len(frags) + 1


def test_inconsistent_count_or_length_is_malformed():
    frags = fragment_message(os.urandom(5000), BOB_PK)
    mid, _, count = FRAGMENT_HEADER.unpack_from(frags[0])
    reasm = Reassembler(BOB_SK)
    assert reasm.add(frags[0], 0.0) is None
    forged = FRAGMENT_HEADER.pack(mid, 1, count + 1) + frags[1][FRAGMENT_HEADER_SIZE:]
    assert reasm.add(forged, 0.0) is None
    assert reasm.add(frags[1][:-1], 0.0) is None  # a shorter chunk than the first fragment's
    assert reasm.counters["malformed"] == 2
    assert deliver(frags[1:], reasm) != []  # the genuine message still completes


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"x",
        bytes(16),
        bytes(17),  # count 0
        FRAGMENT_HEADER.pack(bytes(8), 5, 5) + bytes(100),  # index >= count
        FRAGMENT_HEADER.pack(bytes(8), 0, 1) + bytes(10),  # too short to be a sealed box
        FRAGMENT_HEADER.pack(bytes(8), 0, 2**32 - 1) + bytes(2032),  # larger than memory allows
        None,
        12345,
    ],
)
def test_junk_is_malformed_never_raises(junk):
    reasm = Reassembler(BOB_SK)
    assert reasm.add(junk, 0.0) is None
    assert reasm.counters["malformed"] == 1
    assert len(reasm) == 0


@settings(deadline=None, max_examples=200)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_random_bytes_never_raise_nor_deliver(payloads):
    reasm = Reassembler(BOB_SK, max_pending_bytes=4096)
    for p in payloads:
        assert reasm.add(p, 0.0) is None
    assert reasm.pending_bytes <= 4096
    reasm.expire(1e9)
    assert len(reasm) == 0


def test_bad_padding_inside_a_valid_box_is_malformed():
    box = SealedBox(PublicKey(BOB_PK))
    for plain in (b"no marker", b"abc\x80\x00\x01"):
        sealed = box.encrypt(plain)
        payload = FRAGMENT_HEADER.pack(os.urandom(8), 0, 1) + sealed
        reasm = Reassembler(BOB_SK)
        assert reasm.add(payload, 0.0) is None
        assert reasm.counters["malformed"] == 1
    ok = FRAGMENT_HEADER.pack(os.urandom(8), 0, 1) + box.encrypt(b"hi\x80\x80\x00\x00")
    assert Reassembler(BOB_SK).add(ok, 0.0) == b"hi\x80"  # the last 0x80 is the marker


def test_memory_bound_evicts_the_oldest_incomplete():
    chunk = 2048 - FRAGMENT_HEADER_SIZE
    old = fragment_message(os.urandom(5 * chunk), BOB_PK)  # 6 fragments
    new = fragment_message(os.urandom(5 * chunk), BOB_PK)
    reasm = Reassembler(BOB_SK, max_pending_bytes=8 * chunk)
    deliver(old[:4], reasm, now=1.0)
    assert reasm.pending_bytes == 4 * chunk
    got = deliver(new, reasm, now=2.0)
    assert len(got) == 1  # the new message completes; the old one made room
    assert reasm.counters["evicted"] == 1
    assert reasm.pending_bytes <= 8 * chunk
    assert reasm.expire(2.0) == [Incomplete(parse_fragment_header(old[0]).message_id, 4, 6)]
    # a message that can never fit is malformed, not held
    huge = fragment_message(os.urandom(20 * chunk), BOB_PK)
    assert reasm.add(huge[0], 3.0) is None
    assert reasm.counters["malformed"] == 1 and len(reasm) == 0


def test_finished_ids_are_bounded():
    reasm = Reassembler(BOB_SK, remember_finished=3)
    for _ in range(10):
        deliver(fragment_message(b"m", BOB_PK), reasm)
    assert len(reasm._finished) == 3
    assert reasm.counters["completed"] == 10


# --- limits and keys -------------------------------------------------------------------------------


def test_too_large_message():
    with pytest.raises(MessageError, match="larger than the maximum of 4194304"):
        fragment_message(bytes(4 * MIB + 1), BOB_PK)
    assert len(fragment_message(bytes(4 * MIB), BOB_PK, 32768)) == fragment_count(4 * MIB, 32768)
    with pytest.raises(MessageError, match="larger than the maximum of 100"):
        fragment_message(bytes(101), BOB_PK, max_message_size=100)
    assert len(fragment_message(bytes(100), BOB_PK, max_message_size=100)) == 1
    assert issubclass(MessageError, ValueError)


def test_bad_keys():
    with pytest.raises(MessageError, match="32 bytes"):
        fragment_message(b"x", b"short")
    with pytest.raises(MessageError, match="cannot encrypt"):
        fragment_message(b"x", bytes(32))  # low-order point
    with pytest.raises(MessageError):
        fragment_message("text", BOB_PK)
    with pytest.raises(MessageError):
        Reassembler(b"short")
    with pytest.raises(MessageError):
        LoopCodec(b"short")


# --- loops and drops -------------------------------------------------------------------------------


@settings(deadline=None)
@given(
    identity=st.integers(0, 2**32 - 1),
    seq=st.integers(0, 2**64 - 1),
    sent_ns=st.integers(0, 2**64 - 1),
    payload_size=st.sampled_from([*SIZES, LOOP_MIN_PAYLOAD_SIZE, 100]),
)
def test_loop_round_trip(identity, seq, sent_ns, payload_size):
    codec = LoopCodec()
    p = codec.encode(identity, seq, sent_ns, payload_size)
    assert len(p) == payload_size
    info = LoopInfo(identity, seq, sent_ns)
    assert codec.decode(p) == info
    assert codec.decode(bytearray(p)) == info
    assert codec.decode(memoryview(p)) == info
    assert LoopCodec(codec.key).decode(p) == info  # a worker and the receiver share the key
    assert classify(p, codec) == "loop"


def test_loop_of_another_client_or_junk_is_none():
    mine, theirs = LoopCodec(), LoopCodec()
    p = theirs.encode(1, 2, 3)
    assert mine.decode(p) is None
    assert classify(p, mine) == "fragment"
    for junk in (
        b"",
        os.urandom(2048),
        bytes(2048),
        p[:75],
        None,
        3.5,
        "str",
        *fragment_message(b"hi", BOB_PK),
    ):
        assert mine.decode(junk) is None
    tampered = bytearray(mine.encode(1, 2, 3))
    tampered[50] ^= 1
    assert mine.decode(bytes(tampered)) is None
    # the padding is not authenticated: a flipped padding bit is still our loop
    padded = bytearray(mine.encode(1, 2, 3))
    padded[-1] ^= 1
    assert mine.decode(bytes(padded)) == LoopInfo(1, 2, 3)


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=2100))
def test_loop_decode_never_raises(junk):
    assert LoopCodec().decode(junk) is None


def test_loop_looks_like_a_one_fragment_message():
    codec = LoopCodec()
    a, b = codec.encode(7, 1, 99), codec.encode(7, 1, 99)
    assert a != b  # random id, nonce and padding
    ha, hf = parse_fragment_header(a), parse_fragment_header(fragment_message(b"x", BOB_PK)[0])
    assert (ha.index, ha.count) == (hf.index, hf.count) == (0, 1)
    assert ha.message_id != parse_fragment_header(b).message_id
    assert a[LOOP_MIN_PAYLOAD_SIZE:].count(0) < 40  # random padding, not zeros


def test_loop_field_ranges():
    codec = LoopCodec()
    for args in ((-1, 0, 0), (2**32, 0, 0), (0, 2**64, 0), (0, 0, -5)):
        with pytest.raises(MessageError, match="out of range"):
            codec.encode(*args)
    assert len(LoopCodec(None).key) == 32


@pytest.mark.parametrize("payload_size", SIZES)
def test_every_payload_has_the_same_length(payload_size):
    codec = LoopCodec()
    payloads = [
        *fragment_message(os.urandom(3 * payload_size + 7), BOB_PK, payload_size),
        *fragment_message(b"", BOB_PK, payload_size),
        codec.encode(1, 2, 3, payload_size),
        drop_payload(payload_size),
    ]
    assert {len(p) for p in payloads} == {payload_size}
    assert drop_payload(payload_size) != drop_payload(payload_size)


def test_drop_payload_bad_size():
    with pytest.raises(MessageError):
        drop_payload(-1)
