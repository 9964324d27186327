"""loopix: a fast client for Loopix-style mix networks, speaking Nym's Sphinx packet format.

    import loopix
    async with loopix.Client.load("alice") as client: ...
"""

__version__ = "0.1.0"
__all__ = ["Client", "ClientError", "Fleet"]


def __getattr__(name: str):
    # the client runtime pulls in uvloop, aiohttp and the C core: load it only when asked for
    if name in ("Client", "ClientError"):
        from loopix.client import api, coordinator

        return api.Client if name == "Client" else coordinator.ClientError
    if name == "Fleet":
        from loopix.fleet.api import Fleet

        return Fleet
    raise AttributeError(f"module 'loopix' has no attribute {name!r}")
