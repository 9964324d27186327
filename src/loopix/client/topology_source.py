"""What a client makes of a directory's answer: authenticated against the pinned directory key,
parsed and validated, or refused with one clear reason (the caller keeps its last good one).

`accept` is the pure part (bytes, headers and `now` in; a Topology or `TopologyRefused` out), so
every spoofing case is tested without a network.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from loopix import directory_auth
from loopix.topology import Topology, TopologyError, parse_topology, validate_topology

__all__ = ["TopologyRefused", "TopologySource"]

log = logging.getLogger(__name__)


class TopologyRefused(Exception):
    """What the directory sent cannot be used; the message says why. `permanent`: it is not a
    topology at all (retrying will not help), as opposed to a bad signature or an unusable one."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class TopologySource:
    """One directory URL and, when pinned, its Ed25519 key. Without a key the topology is taken
    on trust, as the 2019 client did, and a warning says so once."""

    def __init__(
        self,
        url: str,
        directory_key: bytes | None = None,
    ) -> None:
        self.url = url
        self.directory_key = directory_key
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
                raise TopologyRefused(str(exc)) from None
        try:
            parsed = parse_topology(body)
        except TopologyError as exc:
            self.refused += 1
            raise TopologyRefused(str(exc), permanent=True) from None
        try:
            topology = validate_topology(parsed)
        except TopologyError as exc:
            self.refused += 1
            raise TopologyRefused(f"unusable topology: {exc}") from None
        if self.directory_key is not None:
            self._last_signed_ns = signed_ns
        elif not self._warned:  # once, and only for a topology we are about to use
            self._warned = True
            log.warning(
                "directory %s is not pinned (no directory_key in the config): its topology is"
                " unauthenticated, anyone who can reach it can reroute this client",
                self.url,
            )
        return topology
