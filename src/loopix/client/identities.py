"""The identities one client runs, kept flat so that a fleet of 100,000 costs bytes, not objects.

An `Identity` is what a caller hands over (a key pair, a pinned provider, three rates). The
coordinator keeps them in an `IdentityTable`: secret and public keys in two bytearrays of 32-byte
slots, the pinned provider and the rate class as 2-byte indexes into short lists. About 70 bytes an
identity, where an Identity with its KeyPair and two bytes objects takes about 300.
"""

from __future__ import annotations

import array
from collections.abc import Iterable, Iterator

import msgspec

from loopix.keys import KEY_SIZE, KeyPair

__all__ = ["Identity", "IdentityTable", "Rates"]

Rates = tuple[float, float, float]  # packets/s of the payload, loop and drop streams
_MAX_CLASSES = 0xFFFF  # distinct pinned providers / rate classes an array("H") can index (0 = none)


class Identity(msgspec.Struct):
    """One client identity run by this coordinator."""

    keys: KeyPair
    provider_key: bytes | None = None  # None: chosen from the topology
    payload_rate: float = 50.0
    loop_rate: float = 5.0
    drop_rate: float = 5.0


class IdentityTable:
    """Identities by index (0, 1, ...; indexes are never reused): their keys, pinned provider and
    rates. Append-only: an identity that leaves keeps its slot (the coordinator marks it removed)."""

    def __init__(self) -> None:
        self.secrets = bytearray()
        self.publics = bytearray()
        self._pinned = array.array("H")  # 0: not pinned, else 1 + index into _pinned_keys
        self._pinned_keys: list[bytes] = []
        self._pinned_index: dict[bytes, int] = {}
        self._rate_of = array.array("H")  # index into rate_classes
        self.rate_classes: list[Rates] = []
        self._class_index: dict[Rates, int] = {}

    @classmethod
    def of(cls, identities: Iterable[Identity] | IdentityTable) -> IdentityTable:
        if isinstance(identities, IdentityTable):
            return identities
        table = cls()
        for ident in identities:
            table.append(ident)
        return table

    def __len__(self) -> int:
        return len(self._rate_of)

    def append(self, identity: Identity) -> int:
        keys = identity.keys
        return self.extend(keys.secret, keys.public, (identity.payload_rate, identity.loop_rate, identity.drop_rate),
                           {0: identity.provider_key} if identity.provider_key is not None else None).start

    def extend(self, secrets: bytes, publics: bytes, rates: Rates, pinned: dict[int, bytes] | None = None) -> range:
        """Append `len(secrets) // 32` identities sharing `rates`; `pinned` maps a position in this
        batch to its provider key. Returns their indexes."""
        n = len(secrets) // KEY_SIZE
        if len(secrets) != n * KEY_SIZE or len(publics) != len(secrets):
            raise ValueError(f"keys must come in {KEY_SIZE}-byte slots, as many secret as public")
        first = len(self)
        rate_class = self._index(self._class_index, self.rate_classes, tuple(float(r) for r in rates))
        pins = array.array("H", bytes(2 * n))
        for k, key in (pinned or {}).items():
            if len(key) != KEY_SIZE:
                raise ValueError(f"a provider key must be {KEY_SIZE} bytes")
            pins[k] = 1 + self._index(self._pinned_index, self._pinned_keys, bytes(key))
        self.secrets += secrets
        self.publics += publics
        self._pinned.extend(pins)
        self._rate_of.extend(array.array("H", [rate_class]) * n)
        return range(first, first + n)

    def extend_table(self, other: IdentityTable) -> range:
        """Append every identity of `other`; returns their indexes here."""
        first = len(self)
        classes = [self._index(self._class_index, self.rate_classes, r) for r in other.rate_classes]
        pins = [0] + [1 + self._index(self._pinned_index, self._pinned_keys, k) for k in other._pinned_keys]
        self.secrets += other.secrets
        self.publics += other.publics
        self._rate_of.extend(array.array("H", [classes[c] for c in other._rate_of]))
        self._pinned.extend(array.array("H", [pins[p] for p in other._pinned]))
        return range(first, len(self))

    @staticmethod
    def _index(index: dict, values: list, value) -> int:
        i = index.get(value)
        if i is None:
            if len(values) >= _MAX_CLASSES:
                raise ValueError(f"more than {_MAX_CLASSES} distinct providers or rate classes")
            i = index[value] = len(values)
            values.append(value)
        return i

    def secret(self, i: int) -> bytes:
        return bytes(self.secrets[i * KEY_SIZE:(i + 1) * KEY_SIZE])

    def public(self, i: int) -> bytes:
        return bytes(self.publics[i * KEY_SIZE:(i + 1) * KEY_SIZE])

    def pinned(self, i: int) -> bytes | None:
        """The provider identity `i` is pinned to, or None (one is chosen from the topology)."""
        p = self._pinned[i]
        return self._pinned_keys[p - 1] if p else None

    def rate_class(self, i: int) -> int:
        return self._rate_of[i]

    def rates(self, i: int) -> Rates:
        return self.rate_classes[self._rate_of[i]]

    def total_rate(self) -> float:
        """Packets/s of every identity's streams together."""
        counts = [0] * len(self.rate_classes)
        for c in self._rate_of:
            counts[c] += 1
        return sum(n * sum(r) for n, r in zip(counts, self.rate_classes, strict=True))

    def __getitem__(self, i: int) -> Identity:
        """An Identity object for one index (made on request: callers that want one)."""
        if not -len(self) <= i < len(self):
            raise IndexError("identity index out of range")
        i %= len(self)
        return Identity(KeyPair(self.secret(i), self.public(i)), self.pinned(i), *self.rates(i))

    def __iter__(self) -> Iterator[Identity]:
        return (self[i] for i in range(len(self)))
