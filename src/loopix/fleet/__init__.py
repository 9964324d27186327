"""Fleets: many identities, stored in one keystore, run and addressed through one client."""

from __future__ import annotations

__all__ = ["Fleet"]


def __getattr__(name: str):
    # the runtime pulls in uvloop, aiohttp and the C core: load it only when asked for
    if name == "Fleet":
        from loopix.fleet.api import Fleet

        return Fleet
    raise AttributeError(f"module 'loopix.fleet' has no attribute {name!r}")
