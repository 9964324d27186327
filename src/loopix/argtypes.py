"""Option values for every command line: checks that raise ValueError with one clear message, the
wrapper that hands the message to argparse, and the parser that prints a mistake as one line.

One home, so that `loopix-client`, its `loadtest`, the distributed roles and the node word the same
mistake the same way (docs: README, "Exit codes")."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn, TypeVar

from loopix.units import parse_duration

EXIT_USAGE = 2

T = TypeVar("T")


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit status 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def argtype(convert: Callable[[str], T]) -> Callable[[str], T]:
    """Wrap a ValueError-raising check as an argparse `type=`, keeping its message."""

    def parse(text: str) -> T:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def whole_number(text: str, what: str = "value") -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise ValueError(f"{what} must be a whole number, got {text!r}") from None


def count(minimum: int, maximum: int | None = None, what: str = "value") -> Callable[[str], int]:
    """A whole number from `minimum` (to `maximum`, if given)."""

    def check(text: str) -> int:
        n = whole_number(text, what)
        if maximum is not None and not minimum <= n <= maximum:
            raise ValueError(f"must be {minimum} to {maximum}, got {n}")
        if n < minimum:
            raise ValueError(f"must be at least {minimum}, got {n}")
        return n

    check.__name__ = what
    return check


def port(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    n = whole_number(text, "port")
    if not 0 <= n <= 65535:
        raise ValueError(f"port must be 0 (any free port) to 65535, got {n}")
    return n


def fixed_port(text: str) -> int:
    """A TCP port others connect to: 1 to 65535."""
    n = whole_number(text, "port")
    if not 1 <= n <= 65535:
        raise ValueError(f"port must be 1..65535, got {n}")
    return n


def number(text: str, what: str = "value") -> float:
    """A finite number."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {text!r}")
    return value


def rate(text: str) -> float:
    """Packets (or messages) per second: finite and not negative."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"a rate is a number per second, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a rate must be a finite number >= 0, got {text!r}")
    return value


def positive_number(text: str) -> float:
    value = number(text)
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = number(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {text}")
    return value


def duration(text: str) -> float:
    """Seconds from "30s", "2m", "500ms": a unit is required (loopix.units)."""
    return parse_duration(text)


__all__ = [
    "EXIT_USAGE",
    "OneLineParser",
    "argtype",
    "count",
    "duration",
    "fixed_port",
    "fraction",
    "number",
    "port",
    "positive_number",
    "rate",
    "whole_number",
]
