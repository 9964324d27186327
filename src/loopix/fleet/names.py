"""Identity names <-> coordinator indexes for a running fleet, compact at 100,000 identities.

A keystore names its identities by sequence number ("0", "1", ...), handed out in increasing
order: those names are kept as numbers in arrays (about 20 bytes an identity, found by bisection)
instead of a string, a list slot, a dict entry and an int each (~150 bytes). Any other name (the
per-identity directory layout, hand-made rows) goes to two dicts. A name that leaves keeps its index
(indexes are never reused) but no longer resolves.
"""

from __future__ import annotations

import array
import bisect
import itertools

__all__ = ["NameIndex"]

_MAX_DIGITS = 18  # fits an int64


def _number(name: str) -> int:
    """The value of a canonical decimal name ("0", "17"; not "017", "+1" or "1_0"), else -1."""
    if 0 < len(name) <= _MAX_DIGITS and name.isascii() and name.isdigit() and (name == "0" or name[0] != "0"):
        return int(name)
    return -1


class NameIndex:
    def __init__(self) -> None:
        self._value = array.array("q")  # per index: the number its name is, or -1 (then in _other)
        self._present = bytearray()  # per index: still a member
        self._numbers = array.array("q")  # increasing numbers...
        self._number_index = array.array("I")  # ...and their indexes
        self._other: dict[int, str] = {}
        self._other_index: dict[str, int] = {}
        self._count = 0

    def __len__(self) -> int:
        """Members now (names that left are not counted)."""
        return self._count

    def append(self, name: str) -> int:
        """A new member; returns its index. ValueError for a name already present."""
        if self.get(name) is not None:
            raise ValueError(f"identity {name!r} is already in the fleet")
        i = len(self._value)
        value = _number(name)
        if value >= 0 and (not self._numbers or value > self._numbers[-1]):
            self._numbers.append(value)
            self._number_index.append(i)
        else:  # out of order (or not a number): the dicts
            value = -1
            self._other[i] = name
            self._other_index[name] = i
        self._value.append(value)
        self._present.append(1)
        self._count += 1
        return i

    def extend(self, names: list[str]) -> range:
        """New members, none of them present (the caller checked); returns their indexes. Names that
        go on the numbers in order are taken in bulk."""
        first = len(self._value)
        values = [_number(n) for n in names]
        last = self._numbers[-1] if self._numbers else -1
        if all(v > last for v in values[:1]) and all(a < b for a, b in itertools.pairwise(values)):
            self._numbers.extend(values)
            self._number_index.extend(range(first, first + len(values)))
            self._value.extend(values)
            self._present.extend(b"\x01" * len(values))
            self._count += len(values)
        else:
            for name in names:
                self.append(name)
        return range(first, len(self._value))

    def get(self, name: str) -> int | None:
        """The index of a member by name, or None."""
        i = self._other_index.get(name)
        if i is None:
            value = _number(name)
            if value < 0:
                return None
            k = bisect.bisect_left(self._numbers, value)
            if k == len(self._numbers) or self._numbers[k] != value:
                return None
            i = self._number_index[k]
        return i if self._present[i] else None

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def name(self, i: int) -> str:
        """The name of index `i` (also of one that left)."""
        value = self._value[i]
        return str(value) if value >= 0 else self._other[i]

    def remove(self, i: int) -> None:
        if self._present[i]:
            self._present[i] = 0
            self._count -= 1
            name = self._other.get(i)
            if name is not None and self._other_index.get(name) == i:
                del self._other_index[name]  # the name may come back (as a new index)

    def indexes(self) -> itertools.compress:
        """Indexes of the members now, in order."""
        return itertools.compress(range(len(self._present)), self._present)

    def names(self) -> list[str]:
        return [self.name(i) for i in self.indexes()]
