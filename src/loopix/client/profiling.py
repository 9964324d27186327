"""`LOOPIX_PROFILE_DIR=DIR`: run the worker and sender processes under cProfile and dump their
stats into DIR at exit (`python -m pstats DIR/sender-PID.prof`). How the benchmark notes say where
the time goes."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_profiled(name: str, fn: Callable[[], T]) -> T:
    out = os.environ.get("LOOPIX_PROFILE_DIR")
    if not out:
        return fn()
    import cProfile

    profile = cProfile.Profile()
    try:
        return profile.runcall(fn)
    finally:
        profile.dump_stats(os.path.join(out, f"{name}-{os.getpid()}.prof"))
