"""`--trace FILE`: one fixed-size binary record per packet the sender put on the wire.

Record (little-endian, 24 bytes): scheduled_ns u64, actual_ns u64, identity u32, stream u8, real u8,
2 pad bytes. Times are CLOCK_MONOTONIC ns. `read_trace` returns them as a list of TraceRecord;
`loopix.client.trace FILE` prints a summary (lateness percentiles per stream).
"""

from __future__ import annotations

import struct
import sys

import msgspec

RECORD = struct.Struct("<QQIBBxx")
MAGIC = b"LPXTRACE1\n"


class TraceRecord(msgspec.Struct, frozen=True, array_like=True):
    scheduled_ns: int
    actual_ns: int
    identity: int
    stream: int
    real: bool

    @property
    def lateness_ns(self) -> int:
        return self.actual_ns - self.scheduled_ns


class TraceWriter:
    """Buffers records and writes them in large chunks (the sender must not block on a disk)."""

    def __init__(self, path: str, flush_bytes: int = 1 << 16):
        self.file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.file.write(MAGIC)
        self.buf = bytearray()
        self.flush_bytes = flush_bytes

    def add(self, scheduled_ns: int, actual_ns: int, identity: int, stream: int, real: bool) -> None:
        self.buf += RECORD.pack(scheduled_ns, actual_ns, identity, stream, real)
        if len(self.buf) >= self.flush_bytes:
            self.flush()

    def add_records(self, records: bytes) -> None:
        """Records already packed (the sender's pacer writes them in C)."""
        self.buf += records
        if len(self.buf) >= self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.file.write(self.buf)
            self.buf.clear()
        self.file.flush()

    def close(self) -> None:
        self.flush()
        self.file.close()


def read_trace(path: str) -> list[TraceRecord]:
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path}: not a loopix trace file")
    body = memoryview(data)[len(MAGIC) :]
    usable = len(body) - len(body) % RECORD.size
    return [TraceRecord(*fields) for fields in RECORD.iter_unpack(body[:usable])]


def main(argv: list[str] | None = None) -> int:
    from .schedule import STREAM_NAMES

    argv = sys.argv[1:] if argv is None else argv
    records = read_trace(argv[0])
    print(f"{len(records)} packets")
    for stream, name in STREAM_NAMES.items():
        late = sorted(r.lateness_ns for r in records if r.stream == stream)
        if late:
            q = [late[min(len(late) - 1, int(p * len(late)))] / 1e6 for p in (0.5, 0.99, 0.999)]
            print(f"{name:8} {len(late):8} packets  lateness ms p50 {q[0]:.3f} p99 {q[1]:.3f} p99.9 {q[2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
