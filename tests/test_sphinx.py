"""The C core against the pure-Python reference, and both against the crate's known answers."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopix import sphinx
from loopix.sphinx import _sphinx_c, pure

KEYS = [sphinx.keypair() for _ in range(5)]
ROUTE = [sphinx.Hop(public_key=pk, address=bytes([0x40 + i]) * 32) for i, (_, pk) in enumerate(KEYS)]
DEST = bytes(range(32))
IDENT = bytes(range(100, 116))


def unwrap_all(impl, packet: bytes, n: int):
    """Process a packet through n hops; return every intermediate result."""
    results = []
    for i in range(n):
        res = impl.process_packet(KEYS[i][0], packet)
        results.append(res)
        if i < n - 1:
            assert isinstance(res, sphinx.Forward)
            packet = res.packet
    return results


@given(
    n=st.integers(1, 5),
    payload_size=st.sampled_from(sphinx.PAYLOAD_SIZES),
    data=st.data(),
    eph=st.binary(min_size=32, max_size=32),
)
def test_c_and_pure_build_identical_bytes(n, payload_size, data, eph):
    message = data.draw(st.binary(max_size=min(payload_size, 300)))
    delays = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n))
    args = dict(
        route=ROUTE[:n], destination=DEST, message=message, delays_ns=delays,
        identifier=IDENT, payload_size=payload_size, ephemeral_secret=eph,
    )
    c_pkt = sphinx.build_packet(**args)
    assert c_pkt == pure.build_packet(**args)
    assert len(c_pkt) == sphinx.packet_size(payload_size)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("payload_size", sphinx.PAYLOAD_SIZES)
def test_each_processes_the_others_packets(n, payload_size):
    message = b"m" * min(payload_size, 77)
    delays = [1000 * (i + 1) for i in range(n)]
    for builder, processor in [(sphinx, pure), (pure, sphinx)]:
        pkt = builder.build_packet(ROUTE[:n], DEST, message, delays, IDENT, payload_size)
        results = unwrap_all(processor, pkt, n)
        for i, res in enumerate(results[:-1]):
            assert res.next_address == ROUTE[i + 1].address
            assert res.delay_ns == delays[i]
        final = results[-1]
        assert isinstance(final, sphinx.Final)
        assert (final.destination, final.identifier, final.message) == (DEST, IDENT, message)


def test_results_identical_between_implementations():
    pkt = sphinx.build_packet(ROUTE, DEST, b"hello", [5, 6, 7, 8, 9], IDENT)
    assert unwrap_all(sphinx, pkt, 5) == unwrap_all(pure, pkt, 5)


def test_full_size_message_round_trips():
    msg = bytes(range(256)) * 8
    pkt = sphinx.build_packet(ROUTE[:3], DEST, msg, [0, 0, 0])
    assert unwrap_all(sphinx, pkt, 3)[-1].message == msg


def test_message_too_long_is_a_clear_error():
    for impl in (sphinx, pure):
        with pytest.raises(sphinx.ParameterError, match="does not fit payload_size 2048"):
            impl.build_packet(ROUTE[:3], DEST, bytes(2049), [0, 0, 0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(route=[]), "1..5 hops"),
        (dict(route=ROUTE + ROUTE[:1], delays_ns=[0] * 6), "1..5 hops"),
        (dict(delays_ns=[0]), "one delay per hop"),
        (dict(delays_ns=[0, 0, -1]), "unsigned 64-bit"),
        (dict(destination=b"short"), "destination must be 32 bytes"),
        (dict(identifier=b"x"), "identifier must be 16 bytes"),
        (dict(payload_size=1000), "payload_size must be one of"),
        (dict(ephemeral_secret=b"x"), "ephemeral_secret must be 32 bytes"),
        (dict(route=[sphinx.Hop(public_key=b"k", address=bytes(32))], delays_ns=[0]), "public key"),
    ],
)
def test_bad_build_arguments(kwargs, match):
    args = dict(route=ROUTE[:3], destination=DEST, message=b"x", delays_ns=[0, 0, 0])
    args.update(kwargs)
    for impl in (sphinx, pure):
        with pytest.raises(sphinx.ParameterError, match=match):
            impl.build_packet(**args)


def test_tampering_any_header_byte_is_a_mac_error():
    pkt = sphinx.build_packet(ROUTE[:3], DEST, b"secret", [1, 2, 3])
    for i in range(sphinx.HEADER_SIZE):
        bad = bytearray(pkt)
        bad[i] ^= 0x01
        # alpha changes give a different shared secret, gamma/beta changes fail the MAC directly
        with pytest.raises((sphinx.MacError, sphinx.InvalidKeyError)):
            sphinx.process_packet(KEYS[0][0], bytes(bad))


@given(st.data())
def test_tampering_body_is_caught_at_the_final_hop(data):
    n = 3
    pkt = sphinx.build_packet(ROUTE[:n], DEST, b"body", [0] * n)
    i = data.draw(st.integers(sphinx.HEADER_SIZE, len(pkt) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(pkt)
    bad[i] ^= 1 << bit
    packet = bytes(bad)
    for hop in range(n - 1):
        packet = sphinx.process_packet(KEYS[hop][0], packet).packet
    for impl in (sphinx, pure):
        with pytest.raises(sphinx.PayloadError):
            impl.process_packet(KEYS[n - 1][0], packet)


def test_wrong_key_is_a_mac_error():
    pkt = sphinx.build_packet(ROUTE[:2], DEST, b"x", [0, 0])
    for impl in (sphinx, pure):
        with pytest.raises(sphinx.MacError):
            impl.process_packet(KEYS[3][0], pkt)


def test_replay_tags_of_the_same_packet_are_equal_and_differ_between_packets():
    pkt = sphinx.build_packet(ROUTE[:2], DEST, b"x", [0, 0])
    a = sphinx.process_packet(KEYS[0][0], pkt)
    b = sphinx.process_packet(KEYS[0][0], pkt)
    c = pure.process_packet(KEYS[0][0], pkt)
    assert a.replay_tag == b.replay_tag == c.replay_tag
    other = sphinx.build_packet(ROUTE[:2], DEST, b"x", [0, 0])
    assert sphinx.process_packet(KEYS[0][0], other).replay_tag != a.replay_tag


@pytest.mark.parametrize("length", [0, 1, 347, 385, 387, 2412, 2414, 40000])
def test_wrong_lengths_are_rejected(length):
    for impl in (sphinx, pure):
        with pytest.raises(sphinx.PacketSizeError):
            impl.process_packet(KEYS[0][0], bytes(length))


@given(st.sampled_from(sorted(sphinx.PACKET_SIZES.values())), st.integers(0, 2**64 - 1))
def test_random_bytes_of_a_valid_size_never_crash(size, seed):
    # a seed, not st.randoms: drawing 33 KB through hypothesis trips its data_too_large check
    junk = random.Random(seed).randbytes(size)
    with pytest.raises(sphinx.SphinxError):
        sphinx.process_packet(KEYS[0][0], junk)


def test_low_order_alpha_is_a_key_error():
    pkt = bytearray(sphinx.build_packet(ROUTE[:1], DEST, b"x", [0]))
    pkt[:32] = bytes(32)  # the identity point: X25519 gives all zeros
    for impl in (sphinx, pure):
        with pytest.raises(sphinx.InvalidKeyError):
            impl.process_packet(KEYS[0][0], bytes(pkt))


def test_crate_known_answer_for_the_expanded_secret():
    """shared_secret.rs `results_in_same_values_as_old_implementation`: the seeded ChaCha20 RNG gives
    sk1, sk2; ss = X25519(sk2, X25519(sk1, 9))."""
    stream = pure.chacha20_xor(bytes([1] * 32), bytes(64))
    shared = pure.x25519(stream[32:], pure.crypto_scalarmult_base(stream[:32]))
    expected_aes = bytes([186, 234, 152, 113, 202, 124, 191, 228, 173, 89, 91, 8, 127, 251, 214, 200])
    expected_mac = bytes([28, 222, 17, 227, 46, 180, 170, 7, 34, 52, 177, 142, 150, 137, 142, 222])
    expected_blind = bytes.fromhex(
        "e340b8eb8c3ee8aceb2a3aa9f1fdf50288954a3006a59185be69dedaf8ac31bc"
    )
    for expanded in (pure.expand_secret(shared), c_expand(shared)):
        assert expanded[:16] == expected_aes
        assert expanded[16:32] == expected_mac
        assert expanded[32:35] == bytes([210, 209, 81])
        assert expanded[224:256] == expected_blind


def c_expand(shared: bytes) -> bytes:
    out = _sphinx_c.ffi.new("uint8_t[288]")
    _sphinx_c.lib.lx_expand_secret(shared, out)
    return bytes(out)


LIONESS_KEY = bytes.fromhex(
    "0f2c69732932c99e56fa50fbb2763ad77ee221fc5d9e6c08f89fc577a7467f1ee34003440ee2bfbf"
    "aac60912b0e547fbe9a6a9292db70bc718c6f2773ab198ac8f255378f7ea799e1d4b8596079173b6"
    "e443c416f13195f1976acc03d53a4b8581b609df3b7029d5b487051d5ae4189129c045edc8822e1f"
    "52e30251e4b322b3f6d6e8bb0ddb0578dcba41603abf5e51848c84d2082d293f30a645faf4df028e"
    "e2c40853ea33e40b55fca902371dc00dc1e0e77161bd097a59e8368bf99174d9"
)
LIONESS_IN = bytes.fromhex(
    "5ac4cb9674a8908915a2b1aaf2043271612531911a26186bd5c811951330753a0e3259f3fcf52f"
    "b86e666ab4d96243e57d73b976611f928d44ad137799016861576ca0a6b8a8a9e2ea02db71e71c"
    "9654e476ca845c44456eba62f11f004b222756e485185c446c30b7a05cf9acd53b3131227b428d"
    "a5c9601664d45ae5c2387956307961a0680894844190605dce0c86e597105884e151eb8a005eda"
    "08ff5891a6b40bae299cddad979063a9a356f3477feabb9cc7bd80a1e2d6a419fcd8af9e98f7b1"
    "93c71bd6056d7634b8c2b8f85920f314554104659e52d9266ddbc2ac40c1b875f6b00225f832cf"
    "310e139ad8cc2568608f0323534fa15a84280e776e7e1167a001f6e18c49f3cd02c19837da47ac"
    "091219ee2fdb4458836db20cbd362bb65add9b40f2817f666caf19787abc2013737eea8c7552d7"
    "55a29beba5da31956f75fe7628221fe8d0a75da5bee39af956a2246c5a339560dcf029eb76d191"
    "963354b70142df29ec69930977ce2f0e491513664ce83a8fa75f3e698530cf9dafbdb90b19745e"
    "9257d03d7320c6d306f529eda242cb3f6f452a943f6e1c04eb02cbb0368d79e49a2b42ac3ff7cd"
    "9a5686bfdb90a29322016bbcef5c733f451a9f4ea7c534116158eb611796d47b83ffe7cd6e6c11"
    "d56e2d26c7a386853212a2f92efeabc74e8fe69e3d374d7b033d0ec9862221435b14ad534217ad"
    "7da50bc236"
)
LIONESS_OUT = bytes.fromhex(
    "9eb45ca2ca4d0b6ff05a749511aad1357aa64caf9ce547c7388fe24fd1300fe856bb5c396869a"
    "cd21c45805e6a7c8a1b7f71cc5f0ea9dd0c4ecd4bba9a7a4853bc352bc9f6562e9907973f91fb"
    "cf7c710f5a89abc8eb4489b90e8111cbf85ffd595d603268ddceb40e39e747a4e7bd5c965585b"
    "6964e180bd6ccb9d0fad210c7f7dd6f90cf6db9bda70d41d3922cedec5ea147ef318de5f34e6f"
    "e5bd646859a9d4171b973b6b58c8d7f94bc9eb293c197f3408a51e3626196e3f6bca625cef90f"
    "a7a3e3713bdaebdda82f48db1a97c9ed5c48bc419dbc3d1f9ef43d1b17dd83c966bde9d9360b7"
    "cdac0871844c27921dcf3bb7edce9fb24661a41a8f92c8502925f062e9cd2f77c561e5825eae2"
    "11657652330bc64cd63b18d1014975f167f8b68d6e702dd3d3547971662238216cc5b07517cc9"
    "0aaa49a61ee423861cdc49c0e1f64e086007095a00f8adb0314fd85c88158001202edf2ed43c2"
    "01176d6141e469dd89430352a927ee22a41c62c8cfdfd5d592e76793e58a9c63b7fe6dad335d7"
    "acec90727675854d7708358115794e013bb4fdb504c44e21ce500f764fac211e8de20b81ca55f"
    "c778ace024d2a40045241e71b023ceb519c8c28285c333b9f90f5e2cde21ca6744e43f89d0054"
    "5dd34df072c7214f6cbd2123c4b0613614609961dd855d6d611c3018e4df3550b4e93f33f7c3e"
    "8b2c890ca0405c957aa277d"
)


def test_lioness_crate_vector():
    assert pure.lioness_encrypt(LIONESS_KEY, LIONESS_IN) == LIONESS_OUT
    assert pure.lioness_decrypt(LIONESS_KEY, LIONESS_OUT) == LIONESS_IN
    block = bytearray(LIONESS_IN)
    assert _sphinx_c.lib.lx_lioness_encrypt(LIONESS_KEY, _sphinx_c.ffi.from_buffer(block), len(block)) == 0
    assert bytes(block) == LIONESS_OUT
    assert _sphinx_c.lib.lx_lioness_decrypt(LIONESS_KEY, _sphinx_c.ffi.from_buffer(block), len(block)) == 0
    assert bytes(block) == LIONESS_IN


def test_chacha20_matches_the_zero_key_vector():
    """RFC 7539 §A.1 / DJB: key 0, nonce 0, block 0 begins 76b8e0ad."""
    assert pure.chacha20_xor(bytes(32), bytes(8)).hex() == "76b8e0ada0f13d90"


def test_batch_builder_matches_single_builds():
    n_packets = 7
    builder = sphinx.PacketBuilder(capacity=n_packets)
    expected = []
    for i in range(n_packets):
        hops = 1 + i % 5
        eph = bytes([i + 1]) * 32
        msg = bytes([i]) * (i * 100)
        builder.set_packet(i, ROUTE[:hops], DEST, msg, list(range(hops)), IDENT, ephemeral_secret=eph)
        expected.append(pure.build_packet(ROUTE[:hops], DEST, msg, list(range(hops)), IDENT, 2048, eph))
    stride = builder.packet_size + 5
    out = bytearray(stride * n_packets)
    assert builder.build(n_packets, out, stride) == n_packets
    for i in range(n_packets):
        assert bytes(out[i * stride : i * stride + builder.packet_size]) == expected[i]
        assert builder.status[i] == 0


def test_batch_reports_bad_packets_per_slot_and_checks_buffers():
    builder = sphinx.PacketBuilder(capacity=3)
    for i in range(3):
        builder.set_packet(i, ROUTE[:3], DEST, b"ok", [0, 0, 0])
    builder.specs[1].n_hops = 9  # corrupted spec: that slot fails, the others still build
    out = bytearray(builder.packet_size * 3)
    assert builder.build(3, out) == 2
    assert list(builder.status) == [0, sphinx._sphinx_c.lib.LX_ERR_PARAM, 0]
    assert not any(out[builder.packet_size : 2 * builder.packet_size])
    with pytest.raises(sphinx.ParameterError):
        builder.build(3, bytearray(builder.packet_size * 2))  # too small for three packets
    with pytest.raises(sphinx.ParameterError):
        builder.build(4, out)  # more than capacity
    builder.specs[0].message_offset = 10**12  # message outside the arena
    assert builder.build(1, out) == 0


def test_batch_processor():
    pkts = [sphinx.build_packet(ROUTE[:2], DEST, bytes([i]), [7, 0]) for i in range(4)]
    pkts[2] = bytes(len(pkts[2]))  # junk in the middle
    proc = sphinx.PacketProcessor(KEYS[0][0], capacity=4)
    size = len(pkts[0])
    out = bytearray(size * 4)
    assert proc.process(b"".join(pkts), 4, size, out) == 3
    for i in (0, 1, 3):
        res = proc.results[i]
        assert res.status == 0 and res.kind == 1 and res.delay_ns == 7
        nxt = sphinx.process_packet(KEYS[1][0], bytes(out[i * size : (i + 1) * size]))
        assert nxt.message == bytes([i])
    assert proc.results[2].status != 0
