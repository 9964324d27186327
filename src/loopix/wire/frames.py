"""One reader for every `length ‖ frame` byte stream: the provider protocol (u32 prefix), the
client's control channel (u32) and the socket API's TCP transport (u64).

It is sans-IO and bounded: a prefix above `max_frame` (or below `min_frame`) ends the stream with an
error text, since nothing after a bad prefix can be trusted to start a frame, and the buffer never
holds more than one frame in progress plus what one read brought.
"""

from __future__ import annotations

import struct

__all__ = ["LengthPrefixedReader"]


_PREFIX = {n: struct.Struct(f">{code}") for n, code in ((2, "H"), (4, "I"), (8, "Q"))}


class LengthPrefixedReader:
    """Cuts big-endian length-prefixed frames out of a byte stream, within [min_frame, max_frame].

    `feed` returns the complete frames (without their prefix) and, once the stream is unusable,
    the reason; after that the reader holds nothing and returns no more frames.
    """

    __slots__ = ("_buf", "_pos", "_prefix", "failed", "max_frame", "min_frame", "prefix_size")

    def __init__(self, prefix_size: int, max_frame: int, min_frame: int = 0) -> None:
        if prefix_size not in _PREFIX:
            raise ValueError(f"prefix_size must be 2, 4 or 8 bytes, got {prefix_size}")
        self._prefix = _PREFIX[prefix_size]
        if not 0 <= min_frame <= max_frame:
            raise ValueError("need 0 <= min_frame <= max_frame")
        self.prefix_size = prefix_size
        self.max_frame = max_frame
        self.min_frame = min_frame
        self.failed = False
        self._buf = bytearray()
        self._pos = 0

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete (non-zero at EOF means a cut-off frame)."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[list[bytes], str | None]:
        """The frames `data` completes, and the reason the stream broke (or None)."""
        if self.failed:
            return [], None
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        size, pos, end, error = self.prefix_size, self._pos, len(buf), None
        unpack = self._prefix.unpack_from
        while end - pos >= size:
            (length,) = unpack(buf, pos)
            if length > self.max_frame:
                error = f"frame of {length} bytes exceeds the maximum of {self.max_frame} bytes"
                break
            if length < self.min_frame:
                error = f"frame of {length} bytes is shorter than the minimum of {self.min_frame}"
                break
            if end - pos < size + length:
                break
            frames.append(bytes(buf[pos + size : pos + size + length]))
            pos += size + length
        if error is not None:
            self.failed = True
            buf.clear()
            pos = 0
        elif pos == end:
            buf.clear()
            pos = 0
        elif pos > 65536 or pos * 2 >= end:
            del buf[:pos]
            pos = 0
        self._pos = pos
        return frames, error
