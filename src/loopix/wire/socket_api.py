"""The user-facing socket messages (websocket and TCP), sans-IO: bytes in, typed messages out.

Applications talk to a running client over a loopback socket. Text frames are JSON in the shape of
Nym's client API (`{"type": "send", ...}`); binary frames carry the same requests and responses
behind a one-byte tag, so arbitrary bytes travel without base64. TCP has no frame boundaries of its
own, so each TCP frame is prefixed by its length (u64 big-endian); a TCP frame whose first byte is
`{` is JSON, anything else is the binary encoding. `docs/socket-api.md` is the specification.

Decoding a request never raises: it returns the request or an `ErrorResponse` saying what was wrong,
which the server sends back while keeping the connection open. Only a TCP length prefix beyond the
limit is fatal (`FramingError`), because after it nothing tells where the next frame starts.
"""

from __future__ import annotations

import enum
from typing import Final

import msgspec

from loopix.sphinx.constants import KEY_SIZE
from loopix.wire.b64 import B64Error, b64url_decode, b64url_encode
from loopix.wire.frames import LengthPrefixedReader

__all__ = [
    "ADDRESS_SIZE",
    "BINARY_REPLY_HEADER",
    "BINARY_SEND_HEADER",
    "KEY_SIZE",
    "LENGTH_PREFIX_SIZE",
    "MAX_MESSAGE_SIZE",
    "SENDER_TAG_SIZE",
    "TAG_ERROR",
    "TAG_RECEIVED",
    "TAG_RECEIVED_WITH_TAG",
    "TAG_REPLY",
    "TAG_SELF_ADDRESS",
    "TAG_SELF_ADDRESS_REPLY",
    "TAG_SEND",
    "ClientAddress",
    "ClientAddressError",
    "Encoding",
    "ErrorResponse",
    "FramingError",
    "Received",
    "Reply",
    "Request",
    "Response",
    "SelfAddress",
    "SelfAddressRequest",
    "Send",
    "SocketApiError",
    "TcpFrameDecoder",
    "decode_binary_request",
    "decode_binary_response",
    "decode_json_request",
    "decode_json_response",
    "decode_request",
    "decode_response",
    "encode_binary_request",
    "encode_binary_response",
    "encode_json_request",
    "encode_json_response",
    "encode_push",
    "encode_tcp_frame",
    "max_frame_size",
]

ADDRESS_SIZE: Final = 2 * KEY_SIZE
"""A binary address: client key ‖ provider key, no separator."""
LENGTH_PREFIX_SIZE: Final = 8
"""u64 big-endian, for message lengths inside binary frames and for TCP frame lengths."""
MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024
"""Default cap on one message's bytes (the client reassembles messages of at least 1 MiB)."""

TAG_SEND: Final = 0x00
TAG_SELF_ADDRESS: Final = 0x01
TAG_REPLY: Final = 0x02
TAG_RECEIVED: Final = 0x80
TAG_RECEIVED_WITH_TAG: Final = 0x82
TAG_SELF_ADDRESS_REPLY: Final = 0x81
TAG_ERROR: Final = 0xFF
BINARY_SEND_HEADER: Final = 1 + ADDRESS_SIZE + LENGTH_PREFIX_SIZE
"""Bytes before the message in a binary send request (73)."""
SENDER_TAG_SIZE: Final = 16
BINARY_REPLY_HEADER: Final = 1 + SENDER_TAG_SIZE + LENGTH_PREFIX_SIZE
"""Bytes before the message in a binary reply request (25)."""
MAX_REPLY_SURBS: Final = 500

_JSON_START: Final = 0x7B  # "{"
_RESPONSE_TAGS: Final = {TAG_RECEIVED: "received", TAG_SELF_ADDRESS_REPLY: "selfAddress",
                         TAG_ERROR: "error", TAG_RECEIVED_WITH_TAG: "received"}


def max_frame_size(max_message_size: int = MAX_MESSAGE_SIZE) -> int:
    """The frame limit that still admits any message of `max_message_size` bytes.

    JSON may escape each byte of text as `\\u00XX` (six bytes), so a frame may be up to six times the
    message; 64 KiB more leaves room for the recipient, field names and whitespace.
    """
    return 6 * max_message_size + 64 * 1024


class SocketApiError(ValueError):
    """Raised by the client-side decoders (`decode_*_response`) for a malformed frame."""


class ClientAddressError(ValueError):
    """Raised for text or bytes that are not a `<client key>@<provider key>` address."""


class Encoding(enum.Enum):
    """How a frame is written: JSON text or the tagged binary form."""

    JSON = "json"
    BINARY = "binary"


class ClientAddress(msgspec.Struct, frozen=True):
    """Where a message goes: the recipient's key and the key of the provider that holds its inbox.

    Written `<client key>@<provider key>`, each the padded URL-safe base64 of 32 bytes (unpadded is
    accepted too), the way the directory spells keys.
    """

    client_key: bytes
    provider_key: bytes

    def __post_init__(self) -> None:
        for name in ("client_key", "provider_key"):
            value = getattr(self, name)
            if not isinstance(value, bytes):
                raise ClientAddressError(f"{name} must be bytes, got {type(value).__name__}")
            if len(value) != KEY_SIZE:
                raise ClientAddressError(f"{name} must be {KEY_SIZE} bytes, got {len(value)}")

    @classmethod
    def parse(cls, text: str) -> ClientAddress:
        """Read `<client key>@<provider key>`; raise `ClientAddressError` saying what is wrong."""
        if not isinstance(text, str):
            raise ClientAddressError(f"an address must be a string, got {type(text).__name__}")
        shown = text if len(text) <= 100 else text[:97] + "..."
        parts = text.split("@")
        if len(parts) != 2:
            raise ClientAddressError(
                f"bad address {shown!r}: expected '<client key>@<provider key>' with one '@'"
            )
        keys = []
        for name, part in zip(("client key", "provider key"), parts, strict=True):
            if not part:
                raise ClientAddressError(f"bad address {shown!r}: the {name} is empty")
            try:
                key = b64url_decode(part)
            except B64Error as exc:
                raise ClientAddressError(f"bad address {shown!r}: {name}: {exc}") from None
            if len(key) != KEY_SIZE:
                raise ClientAddressError(
                    f"bad address {shown!r}: the {name} is {len(key)} bytes, want {KEY_SIZE}"
                )
            keys.append(key)
        return cls(keys[0], keys[1])

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> ClientAddress:
        """The 64-byte binary form: client key ‖ provider key."""
        data = bytes(data)
        if len(data) != ADDRESS_SIZE:
            raise ClientAddressError(f"a binary address is {ADDRESS_SIZE} bytes, got {len(data)}")
        return cls(data[:KEY_SIZE], data[KEY_SIZE:])

    def __bytes__(self) -> bytes:
        return self.client_key + self.provider_key

    def __str__(self) -> str:
        return f"{b64url_encode(self.client_key)}@{b64url_encode(self.provider_key)}"


# --- the messages, independent of encoding --------------------------------------------------------


class Send(msgspec.Struct, frozen=True):
    """Request: queue `message` for `recipient` (no reply unless it fails)."""

    message: bytes
    recipient: ClientAddress
    reply_surbs: int = 0  # reply blocks to attach (JSON `replySurbs`), 0..500


class Reply(msgspec.Struct, frozen=True):
    """Request: answer the anonymous sender behind `sender_tag` through its reply blocks."""

    message: bytes
    sender_tag: bytes


class SelfAddressRequest(msgspec.Struct, frozen=True):
    """Request: what is this client's address?"""


class SelfAddress(msgspec.Struct, frozen=True):
    """Reply to `SelfAddressRequest`."""

    address: ClientAddress


class Received(msgspec.Struct, frozen=True):
    """Pushed, unasked, for every message the client receives; `sender_tag` when it came with
    reply blocks (or is a reply to us)."""

    message: bytes
    sender_tag: bytes | None = None


class ErrorResponse(msgspec.Struct, frozen=True):
    """A request was refused; the connection stays open."""

    message: str


class FramingError(msgspec.Struct, frozen=True):
    """The TCP byte stream cannot be split into frames any more: send the error, then close."""

    message: str


Request = Send | SelfAddressRequest | Reply
Response = SelfAddress | Received | ErrorResponse


# --- JSON: tagged unions mirroring Nym's client API -----------------------------------------------
# The wire structs hold text where the typed messages hold bytes and ClientAddress; unknown fields
# are ignored so that requests written for Nym's client (which carry more fields) still work.


class _JSend(msgspec.Struct, tag="send", tag_field="type", omit_defaults=True):
    message: str
    recipient: str
    replySurbs: int = 0


class _JReply(msgspec.Struct, tag="reply", tag_field="type"):
    message: str
    senderTag: str


class _JSelfAddressRequest(msgspec.Struct, tag="selfAddress", tag_field="type"):
    pass


class _JSelfAddress(msgspec.Struct, tag="selfAddress", tag_field="type"):
    address: str


class _JReceived(msgspec.Struct, tag="received", tag_field="type", omit_defaults=True):
    message: str
    senderTag: str | None = None


class _JError(msgspec.Struct, tag="error", tag_field="type"):
    message: str


class _Envelope(msgspec.Struct):
    type: object = msgspec.UNSET


_REQUEST_DECODER = msgspec.json.Decoder(_JSend | _JSelfAddressRequest | _JReply)
_RESPONSE_DECODER = msgspec.json.Decoder(_JSelfAddress | _JReceived | _JError)
_ENVELOPE_DECODER = msgspec.json.Decoder(_Envelope)
_ENCODER = msgspec.json.Encoder()
_REQUEST_TYPES = "'send', 'reply' or 'selfAddress'"


def _explain_validation(data: str | bytes, exc: msgspec.ValidationError) -> str:
    """Turn msgspec's message about the tag into one that names the valid request types."""
    text = str(exc)
    if "`$.type`" not in text and "field `type`" not in text:
        return f"bad request: {text}"
    try:
        kind = _ENVELOPE_DECODER.decode(data).type
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):  # pragma: no cover
        return f"bad request: {text}"
    if kind is msgspec.UNSET:
        return f"bad request: missing \"type\" (expected {_REQUEST_TYPES})"
    if not isinstance(kind, str):
        return f"bad request: \"type\" must be a string (expected {_REQUEST_TYPES})"
    if kind in ("send", "selfAddress", "reply"):  # e.g. a repeated "type" key: msgspec's words are best
        return f"bad request: {text}"
    shown = kind if len(kind) <= 40 else kind[:37] + "..."
    return f"unknown request type {shown!r} (expected {_REQUEST_TYPES})"


def _too_big(size: int, limit: int) -> ErrorResponse:
    return ErrorResponse(f"message of {size} bytes exceeds the maximum of {limit} bytes")


def decode_json_request(
    data: str | bytes, *, max_message_size: int = MAX_MESSAGE_SIZE
) -> Request | ErrorResponse:
    """A JSON text frame → `Send`/`SelfAddressRequest`, or an `ErrorResponse` (never raises)."""
    try:
        wire = _REQUEST_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        return ErrorResponse(_explain_validation(data, exc))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return ErrorResponse(f"bad JSON: {exc}")
    except RecursionError:
        return ErrorResponse("bad JSON: nested too deeply")
    if isinstance(wire, _JSelfAddressRequest):
        return SelfAddressRequest()
    if isinstance(wire, _JReply):
        try:
            tag = b64url_decode(wire.senderTag)
        except B64Error:
            tag = b""
        if len(tag) != SENDER_TAG_SIZE:
            return ErrorResponse(f"bad senderTag: want {SENDER_TAG_SIZE} bytes in base64url")
    elif not 0 <= wire.replySurbs <= MAX_REPLY_SURBS:
        return ErrorResponse(f"bad replySurbs: must be 0..{MAX_REPLY_SURBS}, got {wire.replySurbs}")
    if len(wire.message) > max_message_size:  # cheap bound first: UTF-8 is >= 1 byte per char
        return _too_big(len(wire.message), max_message_size)
    try:
        message = wire.message.encode("utf-8")
    except UnicodeEncodeError:  # pragma: no cover - msgspec refuses lone surrogates while parsing
        return ErrorResponse("bad request: \"message\" is not valid Unicode text")
    if len(message) > max_message_size:
        return _too_big(len(message), max_message_size)
    if isinstance(wire, _JReply):
        return Reply(message, tag)
    try:
        recipient = ClientAddress.parse(wire.recipient)
    except ClientAddressError as exc:
        return ErrorResponse(f"bad recipient: {exc}")
    return Send(message, recipient, wire.replySurbs)


def encode_json_response(response: Response) -> bytes:
    """A response as JSON text (UTF-8 bytes); `Received` must hold valid UTF-8.

    Raises `UnicodeDecodeError` for a `Received` that is not text: use `encode_push`, which falls
    back to binary.
    """
    if isinstance(response, Received):
        tag = b64url_encode(response.sender_tag) if response.sender_tag else None
        wire: msgspec.Struct = _JReceived(response.message.decode("utf-8"), tag)
    elif isinstance(response, SelfAddress):
        wire = _JSelfAddress(str(response.address))
    elif isinstance(response, ErrorResponse):
        wire = _JError(response.message)
    else:
        raise TypeError(f"not a response: {type(response).__name__}")
    return _ENCODER.encode(wire)


def encode_json_request(request: Request) -> bytes:
    """Client side: a request as JSON text; `Send.message` must be valid UTF-8."""
    if isinstance(request, Send):
        wire: msgspec.Struct = _JSend(request.message.decode("utf-8"), str(request.recipient),
                                      request.reply_surbs)
    elif isinstance(request, Reply):
        wire = _JReply(request.message.decode("utf-8"), b64url_encode(request.sender_tag))
    elif isinstance(request, SelfAddressRequest):
        wire = _JSelfAddressRequest()
    else:
        raise TypeError(f"not a request: {type(request).__name__}")
    return _ENCODER.encode(wire)


def decode_json_response(data: str | bytes) -> Response:
    """Client side: a JSON text frame → response; raises `SocketApiError` if malformed."""
    try:
        wire = _RESPONSE_DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise SocketApiError(f"bad JSON response: {exc}") from None
    if isinstance(wire, _JReceived):
        tag = None
        if wire.senderTag is not None:
            try:
                tag = b64url_decode(wire.senderTag)
            except B64Error:
                raise SocketApiError("bad senderTag in a received response") from None
        return Received(wire.message.encode("utf-8"), tag)
    if isinstance(wire, _JError):
        return ErrorResponse(wire.message)
    try:
        return SelfAddress(ClientAddress.parse(wire.address))
    except ClientAddressError as exc:
        raise SocketApiError(f"bad selfAddress response: {exc}") from None


# --- binary: one tag byte, fixed 64-byte addresses, u64 BE lengths --------------------------------


def _u64(data: bytes | memoryview, at: int) -> int:
    return int.from_bytes(data[at : at + LENGTH_PREFIX_SIZE], "big")


def _tag_name(tag: int) -> str:
    return f"0x{tag:02x}"


def decode_binary_request(
    data: bytes | bytearray | memoryview, *, max_message_size: int = MAX_MESSAGE_SIZE
) -> Request | ErrorResponse:
    """A binary frame → `Send`/`SelfAddressRequest`, or an `ErrorResponse` (never raises)."""
    data = memoryview(data)
    if not data:
        return ErrorResponse("empty frame: expected a tag byte (0x00 send, 0x01 selfAddress, 0x02 reply)")
    tag = data[0]
    if tag == TAG_SEND:
        if len(data) < BINARY_SEND_HEADER:
            return ErrorResponse(
                f"truncated send request: {len(data)} bytes, the header alone is "
                f"{BINARY_SEND_HEADER} (tag, 64-byte address, u64 length)"
            )
        length = _u64(data, 1 + ADDRESS_SIZE)
        if length > max_message_size:
            return _too_big(length, max_message_size)
        body = len(data) - BINARY_SEND_HEADER
        if body < length:
            return ErrorResponse(
                f"truncated send request: the length says {length} message bytes, {body} follow"
            )
        if body > length:
            return ErrorResponse(
                f"malformed send request: {body - length} bytes after the {length}-byte message"
            )
        address = ClientAddress.from_bytes(data[1 : 1 + ADDRESS_SIZE])
        return Send(bytes(data[BINARY_SEND_HEADER:]), address)
    if tag == TAG_REPLY:
        if len(data) < BINARY_REPLY_HEADER:
            return ErrorResponse(f"truncated reply request: {len(data)} bytes, the header alone is "
                                 f"{BINARY_REPLY_HEADER} (tag, 16-byte sender tag, u64 length)")
        length = _u64(data, 1 + SENDER_TAG_SIZE)
        if length > max_message_size:
            return _too_big(length, max_message_size)
        if len(data) - BINARY_REPLY_HEADER != length:
            return ErrorResponse(f"malformed reply request: the length says {length} message bytes, "
                                 f"{len(data) - BINARY_REPLY_HEADER} follow")
        return Reply(bytes(data[BINARY_REPLY_HEADER:]), bytes(data[1 : 1 + SENDER_TAG_SIZE]))
    if tag == TAG_SELF_ADDRESS:
        if len(data) != 1:
            return ErrorResponse(
                f"malformed selfAddress request: {len(data) - 1} bytes after the tag, want none"
            )
        return SelfAddressRequest()
    if tag in _RESPONSE_TAGS:
        return ErrorResponse(
            f"tag {_tag_name(tag)} is the {_RESPONSE_TAGS[tag]!r} response, not a request "
            "(expected 0x00 send, 0x01 selfAddress or 0x02 reply)"
        )
    hint = " (JSON goes in text frames)" if tag == _JSON_START else ""
    if chr(tag) in " \t\r\n[":
        hint = " (a JSON frame must start with '{')"
    return ErrorResponse(
        f"unknown request tag {_tag_name(tag)}{hint} (expected 0x00 send, 0x01 selfAddress or 0x02 reply)"
    )


def encode_binary_response(response: Response) -> bytes:
    """A response in the binary encoding."""
    if isinstance(response, Received):
        msg = response.message
        if response.sender_tag:
            return (bytes((TAG_RECEIVED_WITH_TAG,)) + response.sender_tag
                    + len(msg).to_bytes(LENGTH_PREFIX_SIZE, "big") + msg)
        return bytes((TAG_RECEIVED,)) + len(msg).to_bytes(LENGTH_PREFIX_SIZE, "big") + msg
    if isinstance(response, SelfAddress):
        return bytes((TAG_SELF_ADDRESS_REPLY,)) + bytes(response.address)
    if isinstance(response, ErrorResponse):
        return bytes((TAG_ERROR,)) + response.message.encode("utf-8")
    raise TypeError(f"not a response: {type(response).__name__}")


def encode_binary_request(request: Request) -> bytes:
    """Client side: a request in the binary encoding."""
    if isinstance(request, Send):
        msg = request.message
        return (bytes((TAG_SEND,)) + bytes(request.recipient)
                + len(msg).to_bytes(LENGTH_PREFIX_SIZE, "big") + msg)
    if isinstance(request, SelfAddressRequest):
        return bytes((TAG_SELF_ADDRESS,))
    if isinstance(request, Reply):
        msg = request.message
        return (bytes((TAG_REPLY,)) + request.sender_tag
                + len(msg).to_bytes(LENGTH_PREFIX_SIZE, "big") + msg)
    raise TypeError(f"not a request: {type(request).__name__}")


def decode_binary_response(data: bytes | bytearray | memoryview) -> Response:
    """Client side: a binary frame → response; raises `SocketApiError` if malformed."""
    data = bytes(data)
    if not data:
        raise SocketApiError("empty response frame")
    tag, rest = data[0], data[1:]
    sender_tag = None
    if tag == TAG_RECEIVED_WITH_TAG:
        if len(rest) < SENDER_TAG_SIZE:
            raise SocketApiError(f"truncated received response: {len(data)} bytes")
        sender_tag, rest, tag = rest[:SENDER_TAG_SIZE], rest[SENDER_TAG_SIZE:], TAG_RECEIVED
    if tag == TAG_RECEIVED:
        if len(rest) < LENGTH_PREFIX_SIZE:
            raise SocketApiError(f"truncated received response: {len(data)} bytes")
        length = _u64(rest, 0)
        if len(rest) - LENGTH_PREFIX_SIZE != length:
            raise SocketApiError(
                f"received response: the length says {length} bytes, "
                f"{len(rest) - LENGTH_PREFIX_SIZE} follow"
            )
        return Received(rest[LENGTH_PREFIX_SIZE:], sender_tag)
    if tag == TAG_SELF_ADDRESS_REPLY:
        try:
            return SelfAddress(ClientAddress.from_bytes(rest))
        except ClientAddressError as exc:
            raise SocketApiError(f"bad selfAddress response: {exc}") from None
    if tag == TAG_ERROR:
        try:
            return ErrorResponse(rest.decode("utf-8"))
        except UnicodeDecodeError:
            raise SocketApiError("error response is not UTF-8") from None
    raise SocketApiError(f"unknown response tag {_tag_name(tag)}")


# --- choosing the encoding --------------------------------------------------------------------------


def decode_request(
    frame: bytes | bytearray | memoryview, *, max_message_size: int = MAX_MESSAGE_SIZE
) -> tuple[Encoding, Request | ErrorResponse]:
    """A TCP frame: JSON if its first byte is `{`, else binary. Never raises.

    The encoding comes back too, so the server answers in the form it was asked in.
    """
    if len(frame) and frame[0] == _JSON_START:
        return Encoding.JSON, decode_json_request(bytes(frame), max_message_size=max_message_size)
    return Encoding.BINARY, decode_binary_request(frame, max_message_size=max_message_size)


def decode_response(frame: bytes | bytearray | memoryview) -> Response:
    """Client side: a TCP frame → response (JSON if it starts with `{`, else binary)."""
    if len(frame) and frame[0] == _JSON_START:
        return decode_json_response(bytes(frame))
    return decode_binary_response(frame)


def encode_push(message: bytes, encoding: Encoding, sender_tag: bytes | None = None) -> tuple[Encoding, bytes]:
    """A received message for a connection that last spoke `encoding`.

    JSON is used only when asked for and the message is UTF-8 text; anything else goes binary, so
    no message is ever mangled to fit a text frame.
    """
    if encoding is Encoding.JSON:
        try:
            return Encoding.JSON, encode_json_response(Received(message, sender_tag))
        except UnicodeDecodeError:
            pass
    return Encoding.BINARY, encode_binary_response(Received(message, sender_tag))


# --- TCP framing ------------------------------------------------------------------------------------


def encode_tcp_frame(frame: bytes) -> bytes:
    """`u64 BE length ‖ frame`."""
    return len(frame).to_bytes(LENGTH_PREFIX_SIZE, "big") + frame


class TcpFrameDecoder:
    """Splits a TCP byte stream into frames, however the bytes arrive.

    A length prefix beyond `max_frame_size` yields one `FramingError` and the decoder then ignores
    all input: the prefix may be garbage (say, an HTTP request sent to the wrong port), so nothing
    after it can be trusted to start a frame. The caller sends the error and closes.
    """

    def __init__(self, max_frame_size: int = max_frame_size()) -> None:
        self.max_frame_size = max_frame_size
        self._reader = LengthPrefixedReader(LENGTH_PREFIX_SIZE, max_frame_size)

    @property
    def failed(self) -> bool:
        return self._reader.failed

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | FramingError]:
        """Add bytes; return the frames now complete (then possibly one `FramingError`)."""
        frames, error = self._reader.feed(data)
        out: list[bytes | FramingError] = list(frames)
        if error is not None:
            out.append(FramingError(
                f"{error}; closing the connection (the stream cannot be resynchronised)"
            ))
        return out

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (a non-zero value at EOF means a cut-off frame)."""
        return self._reader.buffered
