"""Where a client's topology comes from: fetched, authenticated against the pinned directory key,
parsed and validated, or refused with one clear reason (the caller keeps its last good one).

`accept` is the pure part (bytes, headers and `now` in; a Topology or `TopologyRefused` out), so
every spoofing case is tested without a network.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import aiohttp

from loopix import directory_auth
from loopix.topology import Topology, TopologyError, parse_topology, validate_topology

__all__ = ["TopologyRefused", "TopologySource"]

log = logging.getLogger(__name__)


class TopologyRefused(Exception):
    """The directory could not be reached, or what it sent cannot be used; the message says why."""


class TopologySource:
    """One directory URL and, when pinned, its Ed25519 key. Without a key the topology is taken
    on trust, as the 2019 client did, and a warning says so once."""

    def __init__(
        self,
        url: str,
        directory_key: bytes | None = None,
        timeout_s: float = 5.0,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.url = url
        self.directory_key = directory_key
        self.timeout_s = timeout_s
        self._wall_ns = wall_ns
        self._last_signed_ns = 0
        self._warned = False
        self.refused = 0
        """Topologies refused so far (bad signature, stale, invalid)."""

    def accept(self, body: bytes, headers: Mapping[str, str], now_ns: int) -> Topology:
        if self.directory_key is not None:
            try:
                signed_ns = directory_auth.verify_topology(
                    self.directory_key,
                    body,
                    headers.get(directory_auth.TOPOLOGY_TIME_HEADER),
                    headers.get(directory_auth.TOPOLOGY_SIGNATURE_HEADER),
                    now_ns,
                    not_before_ns=self._last_signed_ns,
                )
            except directory_auth.AuthError as exc:
                self.refused += 1
                raise TopologyRefused(f"directory {self.url}: {exc}") from None
        elif not self._warned:
            self._warned = True
            log.warning(
                "directory %s is not pinned (no directory_key in the config): its topology is"
                " unauthenticated, anyone who can reach it can reroute this client",
                self.url,
            )
        try:
            topology = validate_topology(parse_topology(body))
        except TopologyError as exc:
            self.refused += 1
            raise TopologyRefused(f"directory {self.url} sent a bad topology: {exc}") from None
        if self.directory_key is not None:
            self._last_signed_ns = signed_ns
        return topology

    async def fetch(self) -> Topology:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as http,
                http.get(self.url) as resp,
            ):
                if resp.status != 200:
                    raise TopologyRefused(f"directory {self.url} answered HTTP {resp.status}")
                body = await resp.read()
                headers = dict(resp.headers)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            raise TopologyRefused(
                f"directory {self.url} unreachable: {e or type(e).__name__}"
            ) from None
        return self.accept(body, headers, self._wall_ns())
