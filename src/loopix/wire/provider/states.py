"""The provider protocol's states and transitions, as tables (the shape of h11's _state.py).

Each role's table maps a state to the triggers it allows and the state each leads to. A trigger is
a message type, whichever direction it travels (every type has one sender), or one of the two
triggers that are not a message: the magic, and a REGISTER carrying FLAG_FLEET. `allowed` is the
one lookup (None for a trigger the table does not list); `transition` raises `TransitionError`
instead. A machine uses `transition` for the sends its own caller asks for (a refusal is a bug
there) and `allowed` for the peer's messages (a refusal becomes a `ProtocolError` event).

    provider:   AWAIT_MAGIC -magic-> HELLO -CHALLENGE-> CHALLENGED -REGISTER-> REGISTERED
                                                                   -REGISTER(fleet)-> FLEET
    client:     NEW -magic-> HELLO_SENT -CHALLENGE-> CHALLENGED -REGISTER-> REGISTERING
                -REGISTERED-> REGISTERED
    fleet:      NEW -magic-> HELLO_SENT -CHALLENGE-> CHALLENGED -REGISTER(fleet)-> FLEET

ERROR (either direction) leads from any state to CLOSED; CLOSED allows nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import TypeVar

from loopix.wire.errors import ProtocolStateError

from .codec import MsgType

__all__ = [
    "CLIENT_TRANSITIONS",
    "FLEET_CLIENT_TRANSITIONS",
    "MAGIC_SEEN",
    "PROVIDER_TRANSITIONS",
    "REGISTER_FLEET",
    "ClientState",
    "ProviderState",
    "TransitionError",
    "allowed",
    "transition",
]


class Trigger(Enum):
    """The transitions that are not a plain message type."""

    MAGIC_SEEN = "magic"
    REGISTER_FLEET = "REGISTER(fleet)"


MAGIC_SEEN = Trigger.MAGIC_SEEN
REGISTER_FLEET = Trigger.REGISTER_FLEET


class ProviderState(Enum):
    __hash__ = object.__hash__  # members are singletons; the tables are looked up per message

    AWAIT_MAGIC = "await magic"
    HELLO = "hello"
    CHALLENGED = "challenged"
    REGISTERED = "registered"
    FLEET = "fleet"
    CLOSED = "closed"


class ClientState(Enum):
    __hash__ = object.__hash__  # members are singletons; the tables are looked up per message

    NEW = "new"
    HELLO_SENT = "hello sent"
    CHALLENGED = "challenged"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FLEET = "fleet"
    CLOSED = "closed"


class TransitionError(ProtocolStateError):
    """`trigger` is not allowed in `state`."""

    def __init__(self, state: Enum, trigger: MsgType | Trigger) -> None:
        self.state = state
        self.trigger = trigger
        name = trigger.name if isinstance(trigger, MsgType) else trigger.value
        super().__init__(f"{name} is not allowed in state {state.value}")


S = TypeVar("S", ProviderState, ClientState)


def _with_error(
    table: dict[S, dict[MsgType | Trigger, S]], closed: S
) -> dict[S, dict[MsgType | Trigger, S]]:
    for allowed in table.values():
        allowed[MsgType.ERROR] = closed
    table[closed] = {MsgType.ERROR: closed}
    return table


_P = ProviderState
PROVIDER_TRANSITIONS: Mapping[ProviderState, Mapping[MsgType | Trigger, ProviderState]] = (
    _with_error(
        {
            _P.AWAIT_MAGIC: {MAGIC_SEEN: _P.HELLO},
            _P.HELLO: {MsgType.CHALLENGE: _P.CHALLENGED},
            _P.CHALLENGED: {MsgType.REGISTER: _P.REGISTERED, REGISTER_FLEET: _P.FLEET},
            _P.REGISTERED: {
                # from the client
                MsgType.SEND: _P.REGISTERED,
                MsgType.ACK: _P.REGISTERED,
                MsgType.PULL: _P.REGISTERED,
                # to the client
                MsgType.REGISTERED: _P.REGISTERED,
                MsgType.DELIVER: _P.REGISTERED,
                MsgType.PULLED: _P.REGISTERED,
            },
            _P.FLEET: {
                MsgType.SEND: _P.FLEET,
                MsgType.ACK: _P.FLEET,
                MsgType.PULL_FOR: _P.FLEET,
                REGISTER_FLEET: _P.FLEET,
                MsgType.UNREGISTER: _P.FLEET,
                MsgType.UNREGISTERED: _P.FLEET,
                MsgType.REGISTERED_KEY: _P.FLEET,
                MsgType.REFUSED_KEY: _P.FLEET,
                MsgType.DELIVER_TO: _P.FLEET,
                MsgType.PULLED_FOR: _P.FLEET,
            },
        },
        _P.CLOSED,
    )
)

_C = ClientState
_CLIENT_HELLO: dict[ClientState, dict[MsgType | Trigger, ClientState]] = {
    _C.NEW: {MAGIC_SEEN: _C.HELLO_SENT},
    _C.HELLO_SENT: {MsgType.CHALLENGE: _C.CHALLENGED},
}
CLIENT_TRANSITIONS: Mapping[ClientState, Mapping[MsgType | Trigger, ClientState]] = _with_error(
    {
        **{state: dict(allowed) for state, allowed in _CLIENT_HELLO.items()},
        _C.CHALLENGED: {MsgType.REGISTER: _C.REGISTERING},
        # the client may pipeline SEND, ACK and PULL behind its REGISTER
        _C.REGISTERING: {
            MsgType.REGISTERED: _C.REGISTERED,
            MsgType.SEND: _C.REGISTERING,
            MsgType.ACK: _C.REGISTERING,
            MsgType.PULL: _C.REGISTERING,
        },
        _C.REGISTERED: {
            MsgType.SEND: _C.REGISTERED,
            MsgType.ACK: _C.REGISTERED,
            MsgType.PULL: _C.REGISTERED,
            MsgType.DELIVER: _C.REGISTERED,
            MsgType.PULLED: _C.REGISTERED,
        },
    },
    _C.CLOSED,
)
FLEET_CLIENT_TRANSITIONS: Mapping[ClientState, Mapping[MsgType | Trigger, ClientState]] = (
    _with_error(
        {
            **{state: dict(allowed) for state, allowed in _CLIENT_HELLO.items()},
            _C.CHALLENGED: {REGISTER_FLEET: _C.FLEET},
            _C.FLEET: {
                REGISTER_FLEET: _C.FLEET,
                MsgType.UNREGISTER: _C.FLEET,
                MsgType.UNREGISTERED: _C.FLEET,
                MsgType.SEND: _C.FLEET,
                MsgType.ACK: _C.FLEET,
                MsgType.PULL_FOR: _C.FLEET,
                MsgType.REGISTERED_KEY: _C.FLEET,
                MsgType.REFUSED_KEY: _C.FLEET,
                MsgType.DELIVER_TO: _C.FLEET,
                MsgType.PULLED_FOR: _C.FLEET,
            },
        },
        _C.CLOSED,
    )
)


def allowed(
    table: Mapping[S, Mapping[MsgType | Trigger, S]], state: S, trigger: MsgType | Trigger
) -> S | None:
    """The one lookup: the state `trigger` leads to from `state`, or None if the table forbids it."""
    return table[state].get(trigger)


def transition(
    table: Mapping[S, Mapping[MsgType | Trigger, S]], state: S, trigger: MsgType | Trigger
) -> S:
    """The state `trigger` leads to from `state`; `TransitionError` if the table does not allow it."""
    after = allowed(table, state, trigger)
    if after is None:
        raise TransitionError(state, trigger)
    return after
