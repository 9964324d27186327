"""The one random source for everything an adversary can observe: routes, per-hop delays, the Poisson
send schedule, drop-cover payloads, pull times (policy: docs/randomness.md).

`Csprng` wraps the C stream of csrc/csprng.c (fast-key-erasure ChaCha20 keyed from the OS) and draws
in bulk: one C call fills a block of uniforms or exponentials, and each Python draw takes the next
value of that block. It offers the few `random.Random` methods the callers use (`random`,
`expovariate`, `choice`, `randrange`) but is not a `random.Random`: `require_csprng` refuses one, so a
Mersenne Twister cannot reach a route, delay or schedule by accident.

A process keys its own stream: after a fork the child rekeys from the OS on its next refill, so parent
and child never share outputs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

from loopix.sphinx._sphinx_c import ffi, lib

BLOCK = 1024  # draws per C call


class Csprng:
    """A per-process ChaCha20 stream. `Csprng()` keys from the OS; `Csprng.seeded(s)` is deterministic
    and exists for tests and benchmarks that need a reproducible stream."""

    __slots__ = ("_block", "_deterministic", "_e", "_ebuf", "_pid", "_state", "_u", "_ubuf")

    def __init__(self, *, _seed: bytes | None = None, block: int = BLOCK):
        self._state = ffi.new("lx_rng *")
        self._deterministic = _seed is not None
        if _seed is not None:
            if len(_seed) != 32:
                raise ValueError("a seed is 32 bytes")
            lib.lx_rng_seed(self._state, _seed)
        else:
            lib.lx_rng_seed(self._state, ffi.NULL)
        self._pid = os.getpid()
        self._block = block
        self._ubuf = ffi.new("double[]", block)
        self._ebuf = ffi.new("double[]", block)
        self._u = iter(())
        self._e = iter(())

    @classmethod
    def seeded(cls, seed: int | bytes) -> Csprng:
        """A reproducible stream (tests, benchmarks): never for traffic."""
        raw = str(seed).encode() if isinstance(seed, int) else bytes(seed)
        return cls(_seed=hashlib.sha256(b"loopix csprng test seed " + raw).digest())

    def _check_fork(self) -> None:
        if not self._deterministic and os.getpid() != self._pid:
            lib.lx_rng_seed(self._state, ffi.NULL)
            self._pid = os.getpid()

    def c_state(self) -> Any:
        """The `lx_rng *` for C routines that draw from this stream themselves (csrc/plan.c)."""
        self._check_fork()
        return self._state

    # -- bulk --
    def uniforms(self, n: int) -> list[float]:
        """n floats uniform on [0, 1), 53 bits each."""
        self._check_fork()
        buf = ffi.new("double[]", n) if n > self._block else self._ubuf
        lib.lx_rng_doubles(self._state, buf, n)
        return ffi.unpack(buf, n)

    def exponentials(self, n: int) -> list[float]:
        """n draws of Exp(1)."""
        self._check_fork()
        buf = ffi.new("double[]", n) if n > self._block else self._ebuf
        lib.lx_rng_exponentials(self._state, buf, n)
        return ffi.unpack(buf, n)

    def below(self, bound: int, n: int) -> list[int]:
        """n integers uniform on [0, bound), unbiased (1 <= bound < 2**32)."""
        if not 1 <= bound < 1 << 32:
            raise ValueError("bound must be in [1, 2**32)")
        self._check_fork()
        buf = ffi.new("uint32_t[]", n)
        lib.lx_rng_below(self._state, bound, buf, n)
        return ffi.unpack(buf, n)

    def bytes(self, n: int) -> bytes:
        self._check_fork()
        out = bytearray(n)
        lib.lx_rng_bytes(self._state, ffi.from_buffer(out), n)
        return bytes(out)

    def fill(self, buffer: Any, offset: int, n: int) -> None:
        """Write n random bytes into a writable buffer (or a cffi char pointer) at offset."""
        self._check_fork()
        ptr = buffer if isinstance(buffer, ffi.CData) else ffi.from_buffer(buffer, require_writable=True)
        if offset < 0 or n < 0 or offset + n > len(ptr):
            raise ValueError("fill outside the buffer")
        lib.lx_rng_bytes(self._state, ptr + offset, n)

    # -- one draw at a time, from the current block --
    def random(self) -> float:
        """A float uniform on [0, 1)."""
        for u in self._u:
            return u
        self._u = iter(self.uniforms(self._block))
        return next(self._u)

    def exponential(self) -> float:
        """A draw of Exp(1)."""
        for e in self._e:
            return e
        self._e = iter(self.exponentials(self._block))
        return next(self._e)

    def expovariate(self, rate: float) -> float:
        """Exp(rate), as `random.Random.expovariate`."""
        return self.exponential() / rate

    def randrange(self, n: int) -> int:
        """An integer on [0, n). Through a 53-bit float: the bias is at most n / 2**53."""
        if n <= 0:
            raise ValueError("empty range")
        return min(int(self.random() * n), n - 1)

    def choice(self, seq: Sequence[Any]) -> Any:
        n = len(seq)
        if not n:
            raise IndexError("cannot choose from an empty sequence")
        return seq[min(int(self.random() * n), n - 1)]


def require_csprng(rng: Any, what: str) -> Csprng:
    """`rng` if it is a `Csprng`; TypeError otherwise (a `random.Random` must never draw `what`)."""
    if not isinstance(rng, Csprng):
        raise TypeError(f"{what} must come from loopix.csprng.Csprng, not {type(rng).__name__}")
    return rng


__all__ = ["BLOCK", "Csprng", "require_csprng"]
