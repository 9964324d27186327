"""Messages of a distributed load test and how identities are shared out.

Two hops: the child runtime writes length-prefixed msgpack frames to its Locust worker (a pipe),
and the worker forwards them to the master inside Locust messages (as msgpack bytes). Every frame
is a tagged msgspec Struct; a frame that does not decode is a `ProtocolError`, never a crash.
"""

from __future__ import annotations

import struct
from importlib import metadata

import msgspec

from loopix.loadtest.metrics import HistoryRow, IntervalPart, Summary

PROTOCOL = 1  # bump when a message below changes shape
MAX_FRAME = 8 * 1024 * 1024  # a part carries a few encoded histograms: far below this
_LEN = struct.Struct(">I")

# Locust custom message types
MSG_HELLO = "loopix_hello"  # worker -> master at connect: versions
MSG_REFUSED = "loopix_refused"  # master -> worker: versions differ (the worker quits)
MSG_SHARE = "loopix_share"  # master -> worker: its share of the load
MSG_FRAMES = "loopix_frames"  # worker -> master: frames the child wrote, in order
REPORT_KEY = "loopix"  # key of the frames inside a worker's periodic Locust report


class ProtocolError(ValueError):
    """A frame or message we cannot decode; the message says what was wrong."""


def loopix_version() -> str:
    try:
        return metadata.version("loopix")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


class Hello(msgspec.Struct, frozen=True):
    """What a worker announces at connect; the master refuses any difference."""

    loopix: str
    protocol: int


def versions_differ(master: Hello, worker: Hello) -> str | None:
    """None when the two may work together, else the one-line reason."""
    if master.protocol != worker.protocol or master.loopix != worker.loopix:
        return (f"version mismatch: master runs loopix {master.loopix} (protocol {master.protocol}), "
                f"this worker loopix {worker.loopix} (protocol {worker.protocol}); install the same "
                f"loopix version on every machine")
    return None


class Share(msgspec.Struct, frozen=True, kw_only=True):
    """One worker's part of the load: the child runtime runs exactly this."""

    rank: int  # 0..workers-1 among the accepted workers, by Locust worker index
    workers: int
    identities: int
    duration_s: float
    directory_url: str
    payload_rate: float
    loop_rate: float
    drop_rate: float
    mean_hop_delay_ms: float
    packet_payload_size: int = 2048
    packet_workers: int = 0  # the runtime's packet-building processes (0: one per core)
    grace_s: float | None = None
    event_budget: float = 100.0  # Locust request events per second, at most (sampled)


def split(total: int, workers: int) -> list[int]:
    """Identities per worker: as equal as possible, the first ones get the remainder."""
    if workers < 1:
        raise ValueError("at least one worker")
    base, extra = divmod(total, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


def sample_every(loops_per_s: float, event_budget: float) -> int:
    """Fire one Locust event per this many loops so that a worker stays within its event budget."""
    if event_budget <= 0:
        raise ValueError("the event budget must be positive")
    return max(1, -(-int(loops_per_s) // max(1, int(event_budget))))


# --- child -> worker -> master frames -------------------------------------------------------------


class Started(msgspec.Struct, frozen=True, tag="started"):
    """The child's load started (first tick one second later)."""

    start_wall_ns: int
    mean_hop_delay_ms: float
    mix_layers: int
    grace_s: float
    identities: int


class Tick(msgspec.Struct, frozen=True, tag="tick"):
    """One second of the child's run: the mergeable part, the row (live view), and a uniform
    sample of that second's loop RTTs (ms) plus the loops newly judged lost, both thinned to
    one in `every` for Locust's request events."""

    part: IntervalPart
    row: HistoryRow
    every: int
    rtt_sample_ms: list[float]
    lost_sampled: int


class Done(msgspec.Struct, frozen=True, tag="done"):
    """The child finished: its own summary (the per-worker breakdown) and exit code."""

    summary: Summary
    exit_code: int


class Failed(msgspec.Struct, frozen=True, tag="failed"):
    """The child could not run or died; `reason` is one line."""

    reason: str


Frame = Started | Tick | Done | Failed
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)


def encode_frame(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode_frame(data: bytes) -> Frame:
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"bad frame: {exc}") from None


def pack(frame: Frame) -> bytes:
    """One frame with its length prefix, as written on the child's pipe."""
    body = encode_frame(frame)
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Sans-IO reassembly of length-prefixed frames from a byte stream; bounded by MAX_FRAME."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out = []
        while len(self._buf) >= _LEN.size:
            (n,) = _LEN.unpack_from(self._buf)
            if n > MAX_FRAME:
                raise ProtocolError(f"frame of {n} bytes exceeds {MAX_FRAME}")
            if len(self._buf) < _LEN.size + n:
                break
            body = bytes(self._buf[_LEN.size:_LEN.size + n])
            del self._buf[:_LEN.size + n]
            out.append(decode_frame(body))
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
