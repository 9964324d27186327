"""Ctrl-C while Python modules load: held until they have loaded, then acted on.

A KeyboardInterrupt raised while a C extension initialises can leave it half made, and the
interpreter may then crash on the way out (seen: a segfault when Ctrl-C lands in msgspec's module
init). So the command line holds SIGINT while it imports, and acts on it right after: the user
still gets a prompt stop, and a quiet exit status 130. Standard library only, so importing this
module is itself near instant.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def held_sigint(exit_code: int | None = None) -> Iterator[None]:
    """Hold SIGINT in the block; if one came, raise KeyboardInterrupt (or SystemExit(exit_code))
    after it. Outside the main thread (where handlers cannot be set) it does nothing."""
    got: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if got:
        if exit_code is not None:
            raise SystemExit(exit_code)
        raise KeyboardInterrupt
