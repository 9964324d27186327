"""The fleet socket (`loopix-client socket --fleet DIR`): the socket servers of `loopix.sockets`
speaking the fleet form (`loopix.wire.fleet_socket_api`), where requests name the sending identity
and pushed messages the receiving one.

Messages that arrive while no application is connected are held for the next connection, bounded
by a count and a byte total over the whole fleet, exactly as `loopix.mailbox` does for one
identity: the mailbox is reused, its messages being bytes that carry their identity.
"""

from __future__ import annotations

import logging
from typing import Any

from loopix.mailbox import DEFAULT_HOLD_BYTES, DEFAULT_HOLD_MESSAGES, Mailbox
from loopix.sockets import DEFAULT_PORT, SocketServer, _Connection, serve_tcp, serve_websocket
from loopix.wire.fleet_socket_api import (
    FleetFrame,
    decode_fleet_request,
    encode_fleet_push,
    encode_fleet_response,
)
from loopix.wire.socket_api import ClientAddress, Encoding, ErrorResponse, SelfAddress, Send

from .api import Fleet

__all__ = ["FleetMailbox", "serve_fleet_tcp", "serve_fleet_websocket"]

log = logging.getLogger("loopix.sockets")


class AddressedMessage(bytes):
    """A received message's bytes, and the identity it was sent to (what the mailbox holds)."""

    identity: str


class _Source:
    """The fleet as the mailbox's message source: one stream of every identity's messages."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet

    def subscribe(self) -> Any:
        return self._stream(self.fleet.messages())

    @staticmethod
    async def _stream(messages):
        try:
            async for identity, data in messages:
                item = AddressedMessage(data)
                item.identity = identity
                yield item
        finally:
            messages.close()


class FleetMailbox(Mailbox):
    """Holds every identity's messages for the next connection (one bound for the fleet)."""

    def __init__(self, fleet: Fleet, max_messages: int = DEFAULT_HOLD_MESSAGES,
                 max_bytes: int = DEFAULT_HOLD_BYTES) -> None:
        super().__init__(_Source(fleet), max_messages, max_bytes)
        self.fleet = fleet

    @property
    def address(self) -> str:
        raise ValueError("a fleet has one address per identity: ask with the identity's name")


class FleetConnection(_Connection):
    """One application's connection to the fleet socket."""

    def decode_text(self, frame: str) -> FleetFrame:
        self.encoding, request = decode_fleet_request(frame, Encoding.JSON, max_message_size=self.max_message_size)
        return request

    def decode_binary(self, frame: bytes) -> FleetFrame:
        self.encoding, request = decode_fleet_request(frame, Encoding.BINARY, max_message_size=self.max_message_size)
        return request

    def decode_tcp(self, frame: bytes) -> FleetFrame:
        self.encoding, request = decode_fleet_request(frame, max_message_size=self.max_message_size)
        return request

    async def answer(self, request: FleetFrame) -> FleetFrame | None:
        body, identity = request.body, request.identity
        if isinstance(body, ErrorResponse):
            return request
        fleet: Fleet = self.client.fleet
        try:
            if isinstance(body, Send):
                done = {} if self.on_done is None else {"on_done": self.on_done}
                await fleet.send_message(identity, body.message, body.recipient, **done)
                return None
            return FleetFrame(identity, SelfAddress(ClientAddress.parse(fleet.address(identity))))
        except ValueError as exc:  # unknown identity, bad recipient, too large: the application's
            log.warning("fleet request refused: %s", exc)
            return FleetFrame(identity, ErrorResponse(str(exc)))
        except Exception as exc:  # e.g. the fleet is stopping
            log.error("could not carry out a fleet request: %s", exc or type(exc).__name__)
            return FleetFrame(identity, ErrorResponse(f"could not carry out the request: {exc}"))

    def encode(self, response: FleetFrame | ErrorResponse) -> tuple[Encoding, bytes]:
        if not isinstance(response, FleetFrame):  # a framing error, before any identity
            response = FleetFrame(None, response)
        return self.encoding, encode_fleet_response(response, self.encoding)

    def push(self, item: AddressedMessage) -> tuple[Encoding, bytes]:
        return encode_fleet_push(item.identity, bytes(item), self.encoding)


async def serve_fleet_websocket(mailbox: FleetMailbox, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                                **kwargs) -> SocketServer:
    """`ws://host:port/mix` in the fleet form."""
    return await serve_websocket(mailbox, host, port, connection=FleetConnection, **kwargs)


async def serve_fleet_tcp(mailbox: FleetMailbox, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                          **kwargs) -> SocketServer:
    """The fleet form on TCP (u64 BE length-prefixed frames)."""
    return await serve_tcp(mailbox, host, port, connection=FleetConnection, **kwargs)
