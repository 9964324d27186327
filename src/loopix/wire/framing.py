"""Node-to-node framing (Nym's NymCodec), sans-IO: bytes in, frames out, no sockets.

A frame is a 3-byte (version 7) or 4-byte (version 8) header followed by one Sphinx packet. There
is no length prefix: the size tag names one of a few fixed packet sizes, so every packet of a given
kind has the same length on the wire. A header we cannot read leaves no way to find the next frame,
so the decoder refuses all further input and the connection must be closed (Nym does the same).

Size tags map to packet sizes: `PACKET_SIZES[tag] = SPHINX_HEADER_SIZE + PAYLOAD_OVERHEAD_SIZE +
PAYLOAD_SIZES[tag]`, with the header and overhead taken from the packet format (loopix.sphinx).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final, NoReturn

import msgspec

from loopix.sphinx.constants import HEADER_SIZE, PAYLOAD_OVERHEAD
from loopix.wire.errors import ProtocolError

__all__ = [
    "PACKET_OVERHEAD",
    "PACKET_SIZES",
    "PAYLOAD_OVERHEAD_SIZE",
    "PAYLOAD_SIZES",
    "SPHINX_HEADER_SIZE",
    "VERSION_KEY_ROTATION",
    "VERSION_LEGACY",
    "Frame",
    "FrameDecoder",
    "FramingError",
    "KeyRotation",
    "PacketSize",
    "PacketType",
    "encode_frame",
    "frame_header",
    "header_length",
    "length_for_size_tag",
    "size_tag_for_length",
]

VERSION_LEGACY: Final = 7
"""3-byte header; what Nym nodes still emit by default."""
VERSION_KEY_ROTATION: Final = 8
"""4-byte header with a key-rotation byte."""

SPHINX_HEADER_SIZE: Final = HEADER_SIZE
"""32 (group element) + 16 (MAC) + 300 (routing info: 5 hops x (44 + 16))."""
PAYLOAD_OVERHEAD_SIZE: Final = PAYLOAD_OVERHEAD
"""Sphinx payload overhead (16-byte zero tag + 1 padding marker)."""
PACKET_OVERHEAD: Final = SPHINX_HEADER_SIZE + PAYLOAD_OVERHEAD_SIZE


class PacketSize(IntEnum):
    """The size tag in the frame header (Outfox tags 6 and 7 are not supported)."""

    REGULAR = 1
    ACK = 2
    EXTENDED32 = 3
    EXTENDED8 = 4
    EXTENDED16 = 5


class PacketType(IntEnum):
    MIX = 0
    OUTFOX = 2  # recognised only to reject it clearly


class KeyRotation(IntEnum):
    UNKNOWN = 0  # receiver uses its primary key
    ODD = 1
    EVEN = 2


PAYLOAD_SIZES: Final[dict[PacketSize, int]] = {
    PacketSize.REGULAR: 2048,
    PacketSize.ACK: 16 + 5,
    PacketSize.EXTENDED32: 32 * 1024,
    PacketSize.EXTENDED8: 8 * 1024,
    PacketSize.EXTENDED16: 16 * 1024,
}
PACKET_SIZES: Final[dict[PacketSize, int]] = {
    tag: PACKET_OVERHEAD + size for tag, size in PAYLOAD_SIZES.items()
}
_TAG_FOR_LENGTH: Final[dict[int, PacketSize]] = {n: tag for tag, n in PACKET_SIZES.items()}
# Indexed by the raw header byte: packet length, or 0 for an unknown tag.
_LEN_BY_TAG: Final[tuple[int, ...]] = tuple(PACKET_SIZES.get(t, 0) for t in range(256))
_OUTFOX_TAGS: Final = frozenset((6, 7))
_LEGACY_SIZE: Final[dict[bytes, int]] = {bytes((VERSION_LEGACY, t, 0)): n for t, n in PACKET_SIZES.items()}
"""A whole valid version-7 header (Mix packet type) -> its packet size: the decoder's fast path."""


class FramingError(ValueError):
    """Arguments that cannot be encoded as a frame (the local caller's mistake). A corrupt byte
    stream from the peer is not an exception: `FrameDecoder` returns a `ProtocolError` for it."""


class _Corrupt(Exception):
    """Unwinds the decoder's parse loop at the first bad header byte (never leaves this module)."""


class Frame(msgspec.Struct, frozen=True, gc=False):
    """One decoded frame: the Sphinx packet and the header fields that matter to the receiver."""

    packet: bytes
    version: int = VERSION_LEGACY
    key_rotation: int = KeyRotation.UNKNOWN
    size_tag: int = PacketSize.REGULAR


def size_tag_for_length(length: int) -> PacketSize:
    """The size tag for a packet of `length` bytes; `FramingError` if no packet size matches."""
    try:
        return _TAG_FOR_LENGTH[length]
    except (KeyError, TypeError):
        sizes = ", ".join(str(n) for n in sorted(_TAG_FOR_LENGTH))
        raise FramingError(f"no packet size is {length} bytes long (valid: {sizes})") from None


def length_for_size_tag(tag: int) -> int:
    """The packet length a size tag announces; `FramingError` for an unknown or Outfox tag."""
    n = _LEN_BY_TAG[tag] if isinstance(tag, int) and 0 <= tag < 256 else 0
    if n:
        return n
    if tag in _OUTFOX_TAGS:
        raise FramingError(f"Outfox packet size tag {tag} is not supported")
    raise FramingError(f"unknown packet size tag {tag}")


def header_length(version: int) -> int:
    """3 for version 7, 4 for version 8."""
    if version == VERSION_LEGACY:
        return 3
    if version == VERSION_KEY_ROTATION:
        return 4
    raise FramingError(f"unsupported packet version {version} (want 7 or 8)")


def _make_header(tag: int, version: int, rotation: int) -> bytes:
    if version == VERSION_LEGACY:
        if rotation != KeyRotation.UNKNOWN:
            raise FramingError("version 7 frames cannot carry a key rotation; use version 8")
        return bytes((version, tag, PacketType.MIX))
    header_length(version)
    if rotation not in (0, 1, 2):
        raise FramingError(f"invalid key rotation {rotation} (want 0, 1 or 2)")
    return bytes((version, tag, PacketType.MIX, rotation))


_HEADERS: Final[dict[tuple[int, int, int], bytes]] = {
    (n, v, r): _make_header(tag, v, r)
    for tag, n in PACKET_SIZES.items()
    for v, rs in ((VERSION_LEGACY, (0,)), (VERSION_KEY_ROTATION, (0, 1, 2)))
    for r in rs
}


def frame_header(
    packet_length: int,
    version: int = VERSION_LEGACY,
    key_rotation: int = KeyRotation.UNKNOWN,
) -> bytes:
    """The header for a packet of `packet_length` bytes, for writers that send it separately."""
    header = _HEADERS.get((packet_length, version, key_rotation))
    if header is None:
        return _make_header(size_tag_for_length(packet_length), version, key_rotation)
    return header


def encode_frame(
    packet: bytes | bytearray | memoryview,
    version: int = VERSION_LEGACY,
    key_rotation: int = KeyRotation.UNKNOWN,
) -> bytes:
    """Header + packet. The size tag follows from `len(packet)`."""
    return frame_header(len(packet), version, key_rotation) + packet


class FrameDecoder:
    """Incremental decoder for one connection's byte stream.

    `feed` returns the frames completed by the new bytes. Whole frames are cut straight out of the
    caller's chunk; only a frame that straddles two chunks is staged, in a bytearray that therefore
    never holds more than one partial frame. Each byte is copied once into its packet (and at
    most once more, if its frame straddled a chunk boundary), whatever the chunking.

    Corrupt input ends the list `feed` returns with a `ProtocolError` (after the good frames that
    came before it); the decoder is then dead and returns nothing more. Close the connection.
    """

    __slots__ = ("_buf", "_error", "_offset")

    def __init__(self) -> None:
        self._buf = bytearray()  # the start of one incomplete frame, or nothing
        self._offset = 0  # stream offset of _buf[0], for error messages
        self._error: str | None = None

    @property
    def dead(self) -> bool:
        """True once a corrupt header was seen; the connection should be closed."""
        return self._error is not None

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | ProtocolError]:
        """Add received bytes; return the frames they complete (possibly none), then a
        `ProtocolError` if the stream turned out corrupt."""
        if self._error is not None:
            return []
        frames: list[Frame | ProtocolError] = []
        try:
            with memoryview(data) as view:
                flat = view if view.format == "B" and view.ndim == 1 else view.cast("B")
                self._feed(flat, frames)
        except _Corrupt:
            frames.append(ProtocolError(self._error or "corrupt stream"))
        return frames

    def __call__(self, data: bytes | bytearray | memoryview) -> list[Frame | ProtocolError]:
        return self.feed(data)

    def _feed(self, view: memoryview, frames: list[Frame | ProtocolError]) -> None:
        used = 0
        buf = self._buf
        # First finish the frame left over from earlier chunks, taking no more than it needs.
        while buf and used < len(view):
            hlen = 3 if buf[0] == VERSION_LEGACY else 4
            # Staged bytes passed the header checks, so the version and size tag are valid.
            need = hlen - len(buf) if len(buf) < 2 else hlen + _LEN_BY_TAG[buf[1]] - len(buf)
            take = view[used : used + need]
            buf += take
            used += len(take)
            with memoryview(buf) as staged:
                done = self._parse(staged, 0, frames)
            if done:
                self._offset += done
                buf.clear()
        if buf:
            return
        # Then decode whole frames in place and stage only the incomplete tail.
        done = self._parse(view, used, frames)
        self._offset += done - used
        buf += view[done:]

    def eof(self) -> ProtocolError | None:
        """Call when the peer closed: a `ProtocolError` if it stopped in the middle of a frame."""
        if self._error is None and self._buf:
            try:
                self._fail(
                    f"connection closed in the middle of a frame ({len(self._buf)} bytes pending)"
                )
            except _Corrupt:
                return ProtocolError(self._error or "")
        return None

    def _fail(self, message: str, at: int = 0) -> NoReturn:
        self._error = f"{message} at stream offset {self._offset + at}"
        self._buf = bytearray()
        raise _Corrupt

    def _parse(self, buf: memoryview, pos: int, frames: list[Frame | ProtocolError]) -> int:
        end = len(buf)
        start = pos
        append = frames.append
        legacy = _LEGACY_SIZE
        while pos < end:
            version = buf[pos]
            # the common frame (version 7, a known size, a Mix packet) in one lookup of its header
            size = legacy.get(buf[pos : pos + 3].tobytes()) if version == VERSION_LEGACY else None
            if size is not None:
                stop = pos + 3 + size
                if stop > end:
                    break
                append(Frame(buf[pos + 3 : stop].tobytes(), VERSION_LEGACY, 0, buf[pos + 1]))
                pos = stop
                continue
            if version == VERSION_LEGACY:
                hlen = 3
            elif version == VERSION_KEY_ROTATION:
                hlen = 4
            elif version < VERSION_LEGACY:
                self._fail(f"invalid packet version {version} (older than 7)", pos - start)
            else:
                self._fail(f"unsupported packet version {version} (newer than 8)", pos - start)
            # Check each header byte as soon as it arrives, so garbage is refused early.
            avail = end - pos
            size = 0
            if avail > 1:
                tag = buf[pos + 1]
                size = _LEN_BY_TAG[tag]
                if not size:
                    kind = "Outfox packet size" if tag in _OUTFOX_TAGS else "invalid packet size"
                    self._fail(f"{kind} tag {tag} (unsupported)", pos + 1 - start)
            if avail > 2:
                ptype = buf[pos + 2]
                if ptype != PacketType.MIX:
                    kind = (
                        "Outfox packet type"
                        if ptype == PacketType.OUTFOX
                        else "invalid packet type"
                    )
                    self._fail(f"{kind} {ptype} (only Mix = 0 is supported)", pos + 2 - start)
            rotation = 0
            if hlen == 4 and avail > 3:
                rotation = buf[pos + 3]
                if rotation > 2:
                    self._fail(f"invalid key rotation {rotation} (want 0, 1 or 2)", pos + 3 - start)
            stop = pos + hlen + size
            if avail < hlen or stop > end:
                break
            append(Frame(bytes(buf[pos + hlen : stop]), version, rotation, buf[pos + 1]))
            pos = stop
        return pos
