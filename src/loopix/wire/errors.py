"""The two kinds of protocol error in wire/, decided once (see the package docstring).

`ProtocolError` is a value: what a decoder or state machine returns when the peer's bytes break the
protocol, always with the same field, `reason`. `ProtocolStateError` is an exception: the local
caller asked for something the state does not allow, which is a bug to fix, not input to handle.
"""

from __future__ import annotations

import msgspec

__all__ = ["ProtocolError", "ProtocolStateError"]


class ProtocolError(msgspec.Struct, frozen=True, gc=False):
    """The peer broke the protocol; the machine is closed. Answer with the protocol's error
    message, if it has one, and close the connection."""

    reason: str


class ProtocolStateError(RuntimeError):
    """A `send_*` call that the protocol state does not allow (a bug in the caller)."""
