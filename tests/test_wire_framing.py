"""Node-to-node framing: sizes, round trips, arbitrary chunking, and corrupt streams."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopix.wire.errors import ProtocolError
from loopix.wire.framing import (
    PACKET_SIZES,
    PAYLOAD_SIZES,
    Frame,
    FrameDecoder,
    FramingError,
    PacketSize,
    encode_frame,
    frame_header,
    header_length,
    length_for_size_tag,
    size_tag_for_length,
)

SIZES = sorted(PACKET_SIZES.values())


def packet(length: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(length)


def test_packet_sizes():
    assert {t: PACKET_SIZES[t] for t in PacketSize} == {
        PacketSize.REGULAR: 2413,
        PacketSize.ACK: 386,
        PacketSize.EXTENDED32: 33133,
        PacketSize.EXTENDED8: 8557,
        PacketSize.EXTENDED16: 16749,
    }
    assert {t: PACKET_SIZES[t] - PAYLOAD_SIZES[t] for t in PacketSize} == dict.fromkeys(
        PacketSize, 348 + 17
    )
    for tag, n in PACKET_SIZES.items():
        assert size_tag_for_length(n) == tag
        assert length_for_size_tag(int(tag)) == n


@pytest.mark.parametrize("bad", [0, 385, 387, 2412, 2048, 33134])
def test_unknown_length(bad):
    with pytest.raises(FramingError, match="no packet size"):
        size_tag_for_length(bad)
    with pytest.raises(FramingError):
        encode_frame(bytes(bad))


@pytest.mark.parametrize(
    ("tag", "message"),
    [(0, "unknown"), (6, "Outfox"), (7, "Outfox"), (8, "unknown"), (255, "unknown")],
)
def test_unknown_size_tag(tag, message):
    with pytest.raises(FramingError, match=message):
        length_for_size_tag(tag)


def test_header_bytes():
    assert encode_frame(bytes(386))[:3] == bytes([7, 2, 0])
    assert encode_frame(bytes(2413), version=8, key_rotation=2)[:4] == bytes([8, 1, 0, 2])
    assert frame_header(33133, 8) == bytes([8, 3, 0, 0])
    assert frame_header(8557) == bytes([7, 4, 0])
    assert frame_header(16749) == bytes([7, 5, 0])
    assert header_length(7) == 3 and header_length(8) == 4
    assert encode_frame(memoryview(bytes(386))) == bytes([7, 2, 0]) + bytes(386)
    assert encode_frame(bytearray(386)) == bytes([7, 2, 0]) + bytes(386)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": 6}, "version"),
        ({"version": 9}, "version"),
        ({"version": 7, "key_rotation": 1}, "version 7"),
        ({"version": 8, "key_rotation": 3}, "rotation"),
    ],
)
def test_encode_errors(kwargs, message):
    with pytest.raises(FramingError, match=message):
        encode_frame(bytes(386), **kwargs)


frame_specs = st.lists(
    st.tuples(
        st.sampled_from(SIZES),
        st.sampled_from([(7, 0), (8, 0), (8, 1), (8, 2)]),
        st.integers(0, 2**32),
    ),
    min_size=1,
    max_size=6,
)


def build(specs):
    frames = [
        Frame(packet(n, seed), v, r, int(size_tag_for_length(n))) for n, (v, r), seed in specs
    ]
    stream = b"".join(encode_frame(f.packet, f.version, f.key_rotation) for f in frames)
    return frames, stream


@settings(deadline=None, max_examples=60)
@given(frame_specs)
def test_round_trip_one_chunk(specs):
    frames, stream = build(specs)
    decoder = FrameDecoder()
    assert decoder.feed(stream) == frames
    assert decoder.pending == 0
    decoder.eof()


@settings(deadline=None, max_examples=60)
@given(
    frame_specs,
    st.lists(st.integers(1, 40000), max_size=20),
    st.sampled_from([bytes, bytearray, memoryview]),
)
def test_round_trip_random_chunks(specs, cuts, kind):
    frames, stream = build(specs)
    decoder = FrameDecoder()
    got, pos = [], 0
    for cut in [*cuts, len(stream)]:
        chunk = stream[pos : pos + cut]
        pos += len(chunk)
        got += decoder.feed(kind(chunk))
        assert decoder.pending <= max(SIZES) + 4
    assert got == frames
    assert decoder.pending == 0


def test_split_at_every_byte():
    frames, stream = build(
        [(386, (7, 0), 1), (386, (8, 2), 2), (2413, (8, 1), 3), (386, (7, 0), 4)]
    )
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert got == frames, cut
        assert decoder.pending == 0


def test_byte_by_byte():
    frames, stream = build([(386, (8, 1), 5), (2413, (7, 0), 6), (386, (7, 0), 7)])
    decoder = FrameDecoder()
    got = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
        assert decoder.pending == (
            len(stream[: i + 1]) - sum(len(f.packet) + (3 if f.version == 7 else 4) for f in got)
        )
    assert got == frames


def test_packets_do_not_alias_input():
    data = bytearray(encode_frame(packet(386, 9)))
    decoder = FrameDecoder()
    (frame,) = decoder.feed(data)
    data[10] ^= 0xFF
    assert frame.packet == packet(386, 9)
    assert isinstance(frame.packet, bytes)


def test_partial_frame_then_eof():
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(bytes(386))[:100]) == []
    assert decoder.pending == 100
    error = decoder.eof()
    assert isinstance(error, ProtocolError) and "middle of a frame" in error.reason
    assert decoder.dead


CORRUPT = [  # the last byte of each header is the bad one
    (b"\x06", "invalid packet version 6"),
    (b"\x00", "invalid packet version 0"),
    (b"\x09", "unsupported packet version 9"),
    (b"\xff", "unsupported packet version 255"),
    (b"\x07\x00", "invalid packet size tag 0"),
    (b"\x07\x06", "Outfox packet size tag 6"),
    (b"\x08\x07", "Outfox packet size tag 7"),
    (b"\x07\x08", "invalid packet size tag 8"),
    (b"\x07\x01\x01", "invalid packet type 1"),
    (b"\x07\x01\x02", "Outfox packet type 2"),
    (b"\x08\x01\x00\x03", "invalid key rotation 3"),
]


@pytest.mark.parametrize(("header", "message"), CORRUPT)
def test_corrupt_header_kills_decoder(header, message):
    good = encode_frame(packet(386, 1))
    decoder = FrameDecoder()
    # The error is returned as soon as the bad byte arrives, before any body, after the good frames.
    *frames, error = decoder.feed(good + header)
    assert frames == [Frame(packet(386, 1), 7, 0, 2)]
    assert isinstance(error, ProtocolError) and message in error.reason
    assert f"offset {len(good) + len(header) - 1}" in error.reason
    assert decoder.dead
    assert decoder.feed(good) == []


@pytest.mark.parametrize(("header", "message"), CORRUPT)
def test_corrupt_header_split(header, message):
    """A bad header byte that arrives after a staged partial frame is caught as well."""
    good = encode_frame(packet(2413, 2), version=8, key_rotation=1)
    stream = good + header + bytes(50)
    for cut in (1, 2, 3, len(good) - 1, len(good), len(good) + 1):
        decoder = FrameDecoder()
        out = []
        for i in range(0, len(stream), cut):
            out += decoder.feed(stream[i : i + cut])
        assert out[:-1] == [Frame(packet(2413, 2), 8, 1, 1)]
        assert isinstance(out[-1], ProtocolError) and message in out[-1].reason
        assert decoder.dead


@settings(deadline=None, max_examples=100)
@given(st.binary(min_size=1, max_size=64))
def test_garbage_never_crashes(data):
    decoder = FrameDecoder()
    frames = decoder.feed(data)
    if decoder.dead:
        assert len(frames) == 1 and isinstance(frames[0], ProtocolError)
    else:
        assert frames == []
        assert decoder.pending == len(data)


def test_large_stream_in_small_chunks_is_linear():
    """Chunking must not cause re-copying: the staging buffer never exceeds one frame."""
    frames, stream = build([(33133, (8, 0), i) for i in range(8)])
    decoder = FrameDecoder()
    got = []
    for i in range(0, len(stream), 1000):
        got += decoder.feed(stream[i : i + 1000])
        assert decoder.pending < 33137
    assert got == frames
