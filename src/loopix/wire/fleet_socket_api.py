"""The fleet form of the socket messages, sans-IO: every frame names an identity of the fleet.

It is the single-identity form (`loopix.wire.socket_api`, docs/socket-api.md) with the identity
beside it, so an application that speaks one speaks the other:

- JSON: the same object plus `"identity": "<name>"` (requests: the sender or the identity asked
  about; pushed `received`: the recipient; replies: the identity the request named).
- Binary: `u8 n ‖ identity (n bytes, UTF-8) ‖ single-identity frame`. n is 1 to 64 in requests;
  an error that cannot name an identity (the request named none) has n = 0. n is never 0x7B
  (`{`), so a TCP frame's first byte still tells JSON from binary.
"""

from __future__ import annotations

from typing import Final

import msgspec

from loopix.wire.socket_api import (
    MAX_MESSAGE_SIZE,
    Encoding,
    ErrorResponse,
    Request,
    Response,
    SocketApiError,
    decode_binary_request,
    decode_binary_response,
    decode_json_request,
    decode_json_response,
    encode_binary_request,
    encode_binary_response,
    encode_json_request,
    encode_json_response,
    encode_push,
)

__all__ = [
    "MAX_IDENTITY_BYTES",
    "FleetFrame",
    "decode_fleet_request",
    "decode_fleet_response",
    "encode_fleet_push",
    "encode_fleet_request",
    "encode_fleet_response",
]

MAX_IDENTITY_BYTES: Final = 64
_JSON_START: Final = 0x7B
_NO_IDENTITY = (
    'a fleet request names its identity: add "identity": "<name>" (JSON) or prefix the binary '
    "frame with its length and name"
)


class FleetFrame(msgspec.Struct, frozen=True):
    """A single-identity message and the identity it is for (None: an error naming none)."""

    identity: str | None
    body: Request | Response | ErrorResponse


class _IdentityField(msgspec.Struct):
    identity: str | None = None


_IDENTITY_DECODER = msgspec.json.Decoder(_IdentityField)


def _json_identity(data: bytes | str) -> str | ErrorResponse | None:
    try:
        return _IDENTITY_DECODER.decode(data).identity
    except msgspec.ValidationError as exc:
        return ErrorResponse(f'bad request: "identity" must be a string ({exc})')
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return ErrorResponse(f"bad JSON: {exc}")


def decode_fleet_request(
    frame: str | bytes | bytearray | memoryview, encoding: Encoding | None = None, *,
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> tuple[Encoding, FleetFrame]:
    """A fleet request frame (a str is JSON; bytes are JSON if they start with `{`, else binary,
    unless `encoding` says). Never raises: a bad frame is a `FleetFrame` holding an error."""
    if isinstance(frame, str) or encoding is Encoding.JSON or (
            encoding is None and len(frame) and frame[0] == _JSON_START):
        data = frame if isinstance(frame, str) else bytes(frame)
        identity = _json_identity(data)
        if isinstance(identity, ErrorResponse):
            return Encoding.JSON, FleetFrame(None, identity)
        body = decode_json_request(data, max_message_size=max_message_size)
        if identity is None and not isinstance(body, ErrorResponse):
            body = ErrorResponse(_NO_IDENTITY)
        return Encoding.JSON, FleetFrame(identity, body)
    data = memoryview(frame)
    if not data or data[0] == 0:
        return Encoding.BINARY, FleetFrame(None, ErrorResponse(_NO_IDENTITY))
    n = data[0]
    if n > MAX_IDENTITY_BYTES or len(data) < 1 + n:
        why = (f"an identity is at most {MAX_IDENTITY_BYTES} bytes, the frame says {n}"
               if n > MAX_IDENTITY_BYTES else f"truncated fleet frame: the identity is {n} bytes, "
               f"{len(data) - 1} follow")
        return Encoding.BINARY, FleetFrame(None, ErrorResponse(why))
    try:
        identity = bytes(data[1:1 + n]).decode("utf-8")
    except UnicodeDecodeError:
        return Encoding.BINARY, FleetFrame(None, ErrorResponse("the identity is not UTF-8 text"))
    body = decode_binary_request(data[1 + n:], max_message_size=max_message_size)
    return Encoding.BINARY, FleetFrame(identity, body)


def _binary_prefix(identity: str | None) -> bytes:
    name = (identity or "").encode("utf-8")[:MAX_IDENTITY_BYTES]
    return bytes((len(name),)) + name


def _with_identity_json(identity: str | None, single: bytes) -> bytes:
    if identity is None:
        return single
    return b'{"identity":' + msgspec.json.encode(identity) + b"," + single[1:]


def encode_fleet_response(frame: FleetFrame, encoding: Encoding) -> bytes:
    """A reply (selfAddress, error) or a pushed `received` in `encoding`."""
    if encoding is Encoding.JSON:
        return _with_identity_json(frame.identity, encode_json_response(frame.body))
    return _binary_prefix(frame.identity) + encode_binary_response(frame.body)


def encode_fleet_push(identity: str, message: bytes, encoding: Encoding) -> tuple[Encoding, bytes]:
    """A received message for `identity`, JSON only if asked for and the message is text."""
    used, single = encode_push(message, encoding)
    if used is Encoding.JSON:
        return used, _with_identity_json(identity, single)
    return used, _binary_prefix(identity) + single


def encode_fleet_request(frame: FleetFrame, encoding: Encoding) -> bytes:
    """Application side: a request naming its identity."""
    if encoding is Encoding.JSON:
        return _with_identity_json(frame.identity, encode_json_request(frame.body))
    return _binary_prefix(frame.identity) + encode_binary_request(frame.body)


def decode_fleet_response(frame: str | bytes | bytearray | memoryview) -> FleetFrame:
    """Application side: a fleet response frame; raises `SocketApiError` if malformed."""
    if isinstance(frame, str) or (len(frame) and frame[0] == _JSON_START):
        data = frame if isinstance(frame, str) else bytes(frame)
        identity = _json_identity(data)
        if isinstance(identity, ErrorResponse):
            raise SocketApiError(identity.message)
        return FleetFrame(identity, decode_json_response(data))
    data = bytes(frame)
    if not data or len(data) < 1 + data[0]:
        raise SocketApiError("truncated fleet response frame")
    n = data[0]
    try:
        identity = data[1:1 + n].decode("utf-8") if n else None
    except UnicodeDecodeError:
        raise SocketApiError("the identity is not UTF-8 text") from None
    return FleetFrame(identity, decode_binary_response(data[1 + n:]))
