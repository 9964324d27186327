"""The socket API codec without sockets: addresses, JSON and binary frames, TCP framing."""

from __future__ import annotations

import base64

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopix.wire.socket_api import (
    BINARY_SEND_HEADER,
    MAX_MESSAGE_SIZE,
    ClientAddress,
    ClientAddressError,
    Encoding,
    ErrorResponse,
    FramingError,
    Received,
    SelfAddress,
    SelfAddressRequest,
    Send,
    SocketApiError,
    TcpFrameDecoder,
    decode_binary_request,
    decode_binary_response,
    decode_json_request,
    decode_json_response,
    decode_request,
    decode_response,
    encode_binary_request,
    encode_binary_response,
    encode_json_request,
    encode_json_response,
    encode_push,
    encode_tcp_frame,
    max_frame_size,
)

ALICE = ClientAddress(bytes(range(32)), bytes(range(32, 64)))
ALICE_TEXT = (
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=@ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
)
keys = st.binary(min_size=32, max_size=32)
addresses = st.builds(ClientAddress, keys, keys)


def error_of(result) -> str:
    assert isinstance(result, ErrorResponse), result
    return result.message


# --- addresses ---------------------------------------------------------------------------------------


def test_address_text_form():
    assert str(ALICE) == ALICE_TEXT
    assert ClientAddress.parse(ALICE_TEXT) == ALICE
    assert ClientAddress.parse(ALICE_TEXT.replace("=", "")) == ALICE  # unpadded accepted
    assert bytes(ALICE) == bytes(range(64))
    assert ClientAddress.from_bytes(bytes(range(64))) == ALICE


@given(addresses)
def test_address_round_trips(address):
    assert ClientAddress.parse(str(address)) == address
    assert ClientAddress.from_bytes(bytes(address)) == address
    client, provider = str(address).split("@")
    assert len(client) == len(provider) == 44
    assert base64.urlsafe_b64decode(client) == address.client_key


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "one '@'"),
        (ALICE_TEXT.replace("@", ""), "one '@'"),
        (ALICE_TEXT + "@x", "one '@'"),
        ("@" + ALICE_TEXT.split("@")[1], "client key is empty"),
        (ALICE_TEXT.split("@")[0] + "@", "provider key is empty"),
        (ALICE_TEXT.replace("AAEC", "AA+C"), "invalid character '+'"),
        (ALICE_TEXT.replace("AAEC", "AA C"), "invalid character ' '"),
        ("AAAA@" + ALICE_TEXT.split("@")[1], "client key is 3 bytes, want 32"),
        (ALICE_TEXT.split("@")[0] + "@" + "A" * 48, "provider key is 36 bytes"),
        (ALICE_TEXT.split("@")[0] + "@A", "impossible length"),
        (ALICE_TEXT.replace("=@", "==@"), "padding"),
    ],
)
def test_address_errors(text, words):
    with pytest.raises(ClientAddressError, match="bad address") as info:
        ClientAddress.parse(text)
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)


def test_address_rejects_non_text_and_wrong_sizes():
    with pytest.raises(ClientAddressError, match="must be a string"):
        ClientAddress.parse(b"x@y")  # type: ignore[arg-type]
    with pytest.raises(ClientAddressError, match="client_key must be 32 bytes, got 31"):
        ClientAddress(bytes(31), bytes(32))
    with pytest.raises(ClientAddressError, match="provider_key must be bytes"):
        ClientAddress(bytes(32), "x" * 32)  # type: ignore[arg-type]
    with pytest.raises(ClientAddressError, match="64 bytes, got 63"):
        ClientAddress.from_bytes(bytes(63))


def test_address_error_shortens_long_input():
    with pytest.raises(ClientAddressError) as info:
        ClientAddress.parse("x" * 10_000)
    assert len(str(info.value)) < 300


# --- JSON ---------------------------------------------------------------------------------------------


def test_json_requests_in_nym_shape():
    send = f'{{"type":"send","message":"hello","recipient":"{ALICE_TEXT}"}}'
    assert decode_json_request(send) == Send(b"hello", ALICE)
    assert decode_json_request(send.encode()) == Send(b"hello", ALICE)
    assert decode_json_request('{"type":"selfAddress"}') == SelfAddressRequest()
    # fields Nym's client adds are ignored, and field order does not matter
    nym = (f'{{"recipient":"{ALICE_TEXT}","withReplySurb":false,"message":"h\\u00e9",'
           f'"type":"send","connectionId":7}}')
    assert decode_json_request(nym) == Send("hé".encode(), ALICE)
    assert decode_json_request(' \n{"type" : "selfAddress"}\n') == SelfAddressRequest()


def test_json_responses_exact_bytes():
    assert encode_json_response(SelfAddress(ALICE)) == (
        b'{"type":"selfAddress","address":"' + ALICE_TEXT.encode() + b'"}'
    )
    assert encode_json_response(Received(b"hi \xc3\xa9")) == b'{"type":"received","message":"hi \xc3\xa9"}'
    assert encode_json_response(ErrorResponse("nope")) == b'{"type":"error","message":"nope"}'
    assert encode_json_request(SelfAddressRequest()) == b'{"type":"selfAddress"}'
    assert encode_json_request(Send(b"x", ALICE)) == (
        b'{"type":"send","message":"x","recipient":"' + ALICE_TEXT.encode() + b'"}'
    )


def test_json_response_refuses_binary_message():
    with pytest.raises(UnicodeDecodeError):
        encode_json_response(Received(b"\xff"))
    with pytest.raises(TypeError):
        encode_json_response(SelfAddressRequest())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_json_request(Received(b""))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        ("", "bad JSON"),
        ("{", "bad JSON"),
        ('{"type":"selfAddress"} trailing', "bad JSON"),
        (b'{"type":"send","message":"\xff","recipient":"x"}', "bad JSON"),
        (rb'{"type":"send","message":"\ud800","recipient":"x"}', "bad JSON"),
        ("[]", "Expected `object`, got `array`"),
        ('"send"', "Expected `object`, got `str`"),
        ("{}", 'missing "type"'),
        ('{"message":"x"}', 'missing "type"'),
        ('{"type":7}', '"type" must be a string'),
        ('{"type":null}', '"type" must be a string'),
        ('{"type":"fetch"}', "unknown request type 'fetch' (expected 'send', 'reply' or 'selfAddress')"),
        ('{"type":"received","message":"x"}', "unknown request type 'received'"),
        ('{"type":"' + "z" * 500 + '"}', "..."),
        ('{"type":"selfAddress","type":"send"}', "bad request"),
        ('{"type":"send","recipient":"x"}', "missing required field `message`"),
        ('{"type":"send","message":"x"}', "missing required field `recipient`"),
        ('{"type":"send","message":1,"recipient":"x"}', "Expected `str`, got `int` - at `$.message`"),
        ('{"type":"send","message":"x","recipient":[]}', "at `$.recipient`"),
        ('{"type":"send","message":"x","recipient":"bob"}', "bad recipient: bad address 'bob'"),
        ('{"type":"send","message":"x","recipient":"a@b"}', "bad recipient"),
    ],
)
def test_json_request_errors(frame, words):
    message = error_of(decode_json_request(frame))
    assert words in message
    assert len(message) < 400


def test_json_oversized_message():
    recipient = f'"recipient":"{ALICE_TEXT}"'
    assert decode_json_request(f'{{"type":"send","message":"{"a" * 10}",{recipient}}}',
                               max_message_size=10) == Send(b"a" * 10, ALICE)
    assert "11 bytes exceeds the maximum of 10" in error_of(
        decode_json_request(f'{{"type":"send","message":"{"a" * 11}",{recipient}}}',
                            max_message_size=10))
    # the limit counts UTF-8 bytes, not characters: 4 characters, 12 bytes
    assert "12 bytes exceeds" in error_of(
        decode_json_request(f'{{"type":"send","message":"€€€€",{recipient}}}', max_message_size=10))


def test_json_responses_decode():
    for response in (SelfAddress(ALICE), Received("né".encode()), ErrorResponse("x")):
        assert decode_json_response(encode_json_response(response)) == response
    for bad in ("{", '{"type":"send"}', '{"type":"selfAddress","address":"x"}'):
        with pytest.raises(SocketApiError):
            decode_json_response(bad)


# --- binary -------------------------------------------------------------------------------------------


def test_binary_layout():
    send = encode_binary_request(Send(b"hi", ALICE))
    assert send == b"\x00" + bytes(range(64)) + (2).to_bytes(8, "big") + b"hi"
    assert len(send) == BINARY_SEND_HEADER + 2
    assert encode_binary_request(SelfAddressRequest()) == b"\x01"
    assert encode_binary_response(Received(b"\x00\xff")) == bytes.fromhex("80 0000000000000002 00ff")
    assert encode_binary_response(SelfAddress(ALICE)) == b"\x81" + bytes(range(64))
    assert encode_binary_response(ErrorResponse("é")) == b"\xff\xc3\xa9"
    with pytest.raises(TypeError):
        encode_binary_response(Send(b"", ALICE))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_binary_request(ErrorResponse(""))  # type: ignore[arg-type]


@given(st.binary(max_size=3000), addresses)
def test_binary_round_trip(message, recipient):
    request = Send(message, recipient)
    assert decode_binary_request(encode_binary_request(request)) == request
    assert decode_request(encode_binary_request(request)) == (Encoding.BINARY, request)
    for response in (Received(message), SelfAddress(recipient)):
        assert decode_binary_response(encode_binary_response(response)) == response
        assert decode_response(encode_binary_response(response)) == response


@given(st.text(max_size=500), addresses)
def test_json_round_trip(text, recipient):
    request = Send(text.encode(), recipient)
    frame = encode_json_request(request)
    assert decode_json_request(frame) == request
    assert decode_request(frame) == (Encoding.JSON, request)
    assert decode_json_response(encode_json_response(Received(text.encode()))) == Received(text.encode())
    assert decode_response(encode_json_response(ErrorResponse(text))) == ErrorResponse(text)


def _send_frame(length_field: int, body: bytes) -> bytes:
    return b"\x00" + bytes(ALICE) + length_field.to_bytes(8, "big") + body


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (b"", "empty frame"),
        (b"\x00", "truncated send request: 1 bytes, the header alone is 73"),
        (b"\x00" + bytes(71), "truncated send request: 72 bytes"),
        (_send_frame(5, b"abc"), "the length says 5 message bytes, 3 follow"),
        (_send_frame(2, b"abc"), "1 bytes after the 2-byte message"),
        (_send_frame(2**64 - 1, b""), f"exceeds the maximum of {MAX_MESSAGE_SIZE} bytes"),
        (_send_frame(MAX_MESSAGE_SIZE + 1, b"x"), f"message of {MAX_MESSAGE_SIZE + 1} bytes"),
        (b"\x01\x00", "1 bytes after the tag"),
        (b"\x80", "'received' response, not a request"),
        (b"\x81", "'selfAddress' response"),
        (b"\xff", "'error' response"),
        (b"\x03", "unknown request tag 0x03"),
        (b"\x02" + bytes(3), "truncated reply request"),
        (b"\x7f", "unknown request tag 0x7f"),
        (b'{"type":"selfAddress"}', "JSON goes in text frames"),
        (b' {"type":"selfAddress"}', "a JSON frame must start with '{'"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_binary_request_errors(frame, words):
    """Every way a binary request can be wrong gets its own message (ids: the expected words)."""
    assert words in error_of(decode_binary_request(frame))


def test_binary_size_limit_is_configurable():
    assert decode_binary_request(_send_frame(3, b"abc"), max_message_size=3) == Send(b"abc", ALICE)
    assert "4 bytes exceeds the maximum of 3" in error_of(
        decode_binary_request(_send_frame(4, b"abcd"), max_message_size=3))
    assert decode_binary_request(bytearray(b"\x01")) == SelfAddressRequest()
    assert decode_binary_request(memoryview(_send_frame(1, b"z"))) == Send(b"z", ALICE)


@pytest.mark.parametrize(
    "frame",
    [b"", b"\x80", b"\x80" + (5).to_bytes(8, "big") + b"abc", b"\x81" + bytes(63), b"\xff\xff",
     b"\x00", b"\x42"],
)
def test_binary_response_errors(frame):
    with pytest.raises(SocketApiError):
        decode_binary_response(frame)


# --- choosing the encoding ----------------------------------------------------------------------------


def test_tcp_frames_pick_their_encoding_by_first_byte():
    assert decode_request(b'{"type":"selfAddress"}') == (Encoding.JSON, SelfAddressRequest())
    assert decode_request(b"\x01") == (Encoding.BINARY, SelfAddressRequest())
    encoding, result = decode_request(b"{oops")
    assert encoding is Encoding.JSON and "bad JSON" in error_of(result)
    encoding, result = decode_request(b"")
    assert encoding is Encoding.BINARY and "empty frame" in error_of(result)
    encoding, result = decode_request(b"[1]")
    assert "a JSON frame must start with '{'" in error_of(result)


def test_push_follows_the_connection_encoding():
    assert encode_push(b"hi", Encoding.JSON) == (Encoding.JSON, b'{"type":"received","message":"hi"}')
    assert encode_push(b"\xff", Encoding.JSON) == (Encoding.BINARY, b"\x80" + (1).to_bytes(8, "big") + b"\xff")
    assert encode_push(b"hi", Encoding.BINARY) == (Encoding.BINARY, b"\x80" + (2).to_bytes(8, "big") + b"hi")


@given(st.binary(max_size=200), st.sampled_from(Encoding))
def test_push_never_loses_bytes(message, encoding):
    _, frame = encode_push(message, encoding)
    assert decode_response(frame) == Received(message)


@given(st.binary(max_size=300))
def test_decode_request_never_raises(frame):
    encoding, result = decode_request(frame)
    assert isinstance(result, Send | SelfAddressRequest | ErrorResponse)
    assert encoding is (Encoding.JSON if frame[:1] == b"{" else Encoding.BINARY)


@given(st.binary(max_size=200).map(lambda b: b"\x00" + b), st.integers(0, 100))
def test_binary_send_never_raises(frame, limit):
    result = decode_binary_request(frame, max_message_size=limit)
    if isinstance(result, Send):
        assert len(result.message) <= limit
        assert encode_binary_request(result) == frame


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)


@given(
    st.one_of(
        st.text(max_size=100),
        json_values.map(lambda v: msgspec.json.encode(v).decode()),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["send", "selfAddress", "x"]) | json_values},
            optional={"message": st.text(max_size=20) | json_values,
                      "recipient": st.just(ALICE_TEXT) | st.text(max_size=100) | json_values},
        ).map(lambda v: msgspec.json.encode(v).decode()),
    )
)
def test_decode_json_never_raises(text):
    result = decode_json_request(text, max_message_size=10)
    assert isinstance(result, Send | SelfAddressRequest | ErrorResponse)
    if isinstance(result, ErrorResponse):
        assert result.message


# --- TCP framing --------------------------------------------------------------------------------------


def test_tcp_decoder_whole_and_empty_frames():
    frames = [b"\x01", b"", b'{"type":"selfAddress"}', bytes(300)]
    stream = b"".join(encode_tcp_frame(f) for f in frames)
    decoder = TcpFrameDecoder()
    assert decoder.feed(stream) == frames
    assert decoder.buffered == 0
    assert decoder.feed(b"") == []


def test_tcp_decoder_every_split_point():
    frames = [b"\x01", b"", b"hello", bytes(range(256)) * 3]
    stream = b"".join(encode_tcp_frame(f) for f in frames)
    for cut in range(len(stream) + 1):
        decoder = TcpFrameDecoder()
        out = decoder.feed(stream[:cut])
        assert decoder.buffered == cut - sum(8 + len(f) for f in out)
        out += decoder.feed(stream[cut:])
        assert out == frames, cut
        assert decoder.buffered == 0


def test_tcp_decoder_byte_by_byte():
    frames = [b"ab", b"", b"\x01"]
    decoder = TcpFrameDecoder()
    out: list = []
    for byte in b"".join(encode_tcp_frame(f) for f in frames):
        out += decoder.feed(bytes([byte]))
    assert out == frames


def test_tcp_decoder_oversized_prefix_is_fatal():
    decoder = TcpFrameDecoder(max_frame_size=10)
    good = encode_tcp_frame(b"x" * 10)
    out = decoder.feed(good + (11).to_bytes(8, "big") + b"y" * 11 + encode_tcp_frame(b"z"))
    assert out[0] == b"x" * 10
    assert isinstance(out[1], FramingError)
    assert "frame of 11 bytes exceeds the maximum of 10" in out[1].message
    assert len(out) == 2
    assert decoder.failed
    assert decoder.feed(encode_tcp_frame(b"z")) == []


def test_tcp_decoder_oversized_prefix_split():
    decoder = TcpFrameDecoder(max_frame_size=100)
    prefix = b"GET / HTTP/1.1\r\n"  # someone speaking HTTP to the TCP port
    assert decoder.feed(prefix[:7]) == []
    out = decoder.feed(prefix[7:])
    assert len(out) == 1 and isinstance(out[0], FramingError)


def test_default_frame_limit_admits_the_largest_message():
    assert TcpFrameDecoder().max_frame_size == max_frame_size(MAX_MESSAGE_SIZE)
    escaped = msgspec.json.encode({"type": "send", "message": "\x00" * 1000,
                                   "recipient": ALICE_TEXT})
    assert len(escaped) <= max_frame_size(1000)
    assert decode_json_request(escaped, max_message_size=1000) == Send(bytes(1000), ALICE)


@given(st.lists(st.binary(max_size=50), max_size=8), st.data())
def test_tcp_decoder_any_chunking(frames, data):
    stream = b"".join(encode_tcp_frame(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = TcpFrameDecoder(max_frame_size=50)
    out: list = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = cut
    assert out == frames


def test_reply_fields_json_and_binary():
    from loopix.wire.socket_api import (
        Reply,
        decode_response,
        encode_binary_response,
        encode_json_response,
    )

    tag = bytes(range(16))
    addr = ClientAddress(bytes(32), bytes(range(32)))
    req = decode_json_request(encode_json_request(Send(b"hi", addr, reply_surbs=10)))
    assert req == Send(b"hi", addr, 10)
    assert decode_json_request(encode_json_request(Reply(b"back", tag))) == Reply(b"back", tag)
    assert decode_binary_request(encode_binary_request(Reply(b"\xff", tag))) == Reply(b"\xff", tag)
    for bad, words in (('{"type":"reply","message":"x","senderTag":"AAAA"}', "bad senderTag"),
                       ('{"type":"send","message":"x","recipient":"a@b","replySurbs":501}', "bad replySurbs")):
        err = decode_json_request(bad)
        assert isinstance(err, ErrorResponse) and words in err.message
    for frame in (encode_json_response(Received(b"t", tag)), encode_binary_response(Received(b"\xff", tag))):
        assert decode_response(frame).sender_tag == tag
    assert b"senderTag" not in encode_json_response(Received(b"t"))
