"""Durations with units, parsed the same way everywhere (CLI options, thresholds, configs).

A duration always names its unit: `30` could mean seconds on one flag and milliseconds in a
threshold, so a bare number is refused with a hint. Options whose name carries the unit
(`--mean-hop-delay-ms`) take plain numbers and do not use this module.
"""

from __future__ import annotations

import math
import re

# seconds per unit; "us" and "µs" are both accepted for microseconds
DURATION_UNITS: dict[str, float] = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

_DURATION = re.compile(r"^\s*(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<unit>[a-zµ]*)\s*$")


class UnitError(ValueError):
    """A value whose number or unit cannot be read; the message is one line for the user."""


def split_duration(text: str) -> tuple[float, str]:
    """(number, unit) of a duration such as "2.5s"; the unit must be one of DURATION_UNITS."""
    m = _DURATION.match(text)
    if m is None:
        raise UnitError(f"bad duration {text!r} (use a number and a unit, e.g. 30s, 500ms, 2m)")
    number, unit = float(m["number"]), m["unit"]
    if not unit:
        raise UnitError(f"duration {text!r} needs a unit: {number:g}s, {number:g}ms, {number:g}m ...")
    if unit not in DURATION_UNITS:
        raise UnitError(f"bad unit {unit!r} in duration {text!r} (units: us ms s m h)")
    if not math.isfinite(number):
        raise UnitError(f"duration {text!r} is not finite")
    return number, unit


def parse_duration(text: str, *, positive: bool = True) -> float:
    """Seconds in `text` ("30s", "500ms", "2m", "1.5h", "250us"); a bare number is an error."""
    number, unit = split_duration(text)
    seconds = number * DURATION_UNITS[unit]
    if positive and seconds <= 0:
        raise UnitError(f"duration must be greater than zero, got {text!r}")
    if not positive and seconds < 0:
        raise UnitError(f"duration must not be negative, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact-enough spelling that parse_duration reads back."""
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        if seconds >= scale and abs(seconds / scale - round(seconds / scale, 3)) < 1e-9:
            return f"{round(seconds / scale, 3):g}{unit}"
    return f"{seconds * 1e6:g}us"
