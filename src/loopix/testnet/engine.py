"""The node's forward path in C (csrc/node.h), as the asyncio node uses it.

`ForwardEngine` takes a link's bytes (`LinkFrames` keeps the one frame a read may cut), unwraps a
batch per call, refuses replays, holds packets for their delay and hands back what to write: ready
frames grouped by next hop, final packets' messages, drops by reason and the lateness of what went
out. Python touches no packet on the way; testnet/forward_reference.py says the same rules in
Python, and the tests hold the two to the same output.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from loopix.sphinx import _sphinx_c

__all__ = ["REPLAY_MAGIC", "ForwardEngine", "FrameError", "LinkFrames", "StepOutput"]

ffi, lib = _sphinx_c.ffi, _sphinx_c.lib

REPLAY_MAGIC = b"LXRF1"
REPLAY_TAG_SIZE = 32

_GROUP = struct.Struct("=32sIIQ")
_FINAL = struct.Struct("=32sQQ")
_LATE = struct.Struct("=QQ")
assert _GROUP.size == ffi.sizeof("lx_node_group")
assert _FINAL.size == ffi.sizeof("lx_node_final")
assert _LATE.size == ffi.sizeof("lx_node_late")


def _drop_reasons() -> tuple[str, ...]:
    """Index in lx_node_output.drops -> the name nodes count it under."""
    from loopix.sphinx import _REJECTED, _REJECTED_OTHER  # the unwrap's reasons, one home

    names = ["replay", "injected", "queue_full", "backlog_full"]
    names.append(_REJECTED_OTHER.reason)
    names += [_REJECTED.get(-code, _REJECTED_OTHER).reason for code in range(1, 8)]
    assert len(names) == lib.LX_NODE_DROP_SPHINX + 8
    return tuple(names)


DROP_REASONS = _drop_reasons()

_FRAME_ERRORS = {
    lib.LX_FRAME_OLD_VERSION: "invalid packet version {} (older than 7)",
    lib.LX_FRAME_NEW_VERSION: "unsupported packet version {} (newer than 8)",
    lib.LX_FRAME_OUTFOX_SIZE: "Outfox packet size tag {} (unsupported)",
    lib.LX_FRAME_BAD_SIZE: "invalid packet size tag {} (unsupported)",
    lib.LX_FRAME_OUTFOX_TYPE: "Outfox packet type {} (only Mix = 0 is supported)",
    lib.LX_FRAME_BAD_TYPE: "invalid packet type {} (only Mix = 0 is supported)",
    lib.LX_FRAME_BAD_ROTATION: "invalid key rotation {} (want 0, 1 or 2)",
}


class FrameError(msgspec.Struct, frozen=True):
    """A link's stream is corrupt: no later frame can be found (close the link)."""

    reason: str


class StepOutput(msgspec.Struct, gc=False):
    """What one step or release produced. `groups` are (next hop address, packet length, count,
    frames ready to write, a read-only view of memory the engine gave up); `late` are (lateness in µs, packets) runs; `failed` packets were lost
    to an allocation failure (counted as an internal error)."""

    processed: int
    forwarded: int
    capped: int
    drops: list[tuple[str, int]]
    groups: list[tuple[bytes, int, int, memoryview]]
    finals: list[tuple[bytes, bytes]]
    late: list[tuple[int, int]]
    failed: int = 0


class ForwardEngine:
    """One node's C engine (see csrc/node.h): backlog, unwrap, replay set, delay heap, output."""

    def __init__(
        self,
        secret: bytes,
        *,
        batch: int,
        replay_capacity: int,
        max_queue: int,
        max_delay: float,
        drop_rate: float = 0.0,
        seed: bytes | None = None,
    ) -> None:
        if len(secret) != 32:
            raise ValueError("secret key must be 32 bytes")
        if replay_capacity < 1:
            raise ValueError("replay filter capacity must be positive")
        node = lib.lx_node_new(
            secret, batch, replay_capacity, max(0, max_queue), max(0, round(max_delay * 1e9)), drop_rate,
            ffi.NULL if seed is None else seed,
        )  # fmt: skip
        if node == ffi.NULL:
            raise ValueError("cannot make a forward engine with these settings (or out of memory)")
        self._node = ffi.gc(node, lib.lx_node_free)
        self._out = ffi.new("lx_node_output *")
        self._ingest = ffi.new("lx_node_ingest_result *")
        self._due = ffi.new("int64_t *")
        self.batch = batch

    # --- input ---

    def ingest(self, data: bytes | bytearray | memoryview, arrival: float) -> Any:
        """Frames from one link's bytes (starting at a frame boundary) into the backlog."""
        r = self._ingest
        lib.lx_node_ingest(self._node, ffi.from_buffer(data), len(data), round(arrival * 1e9), r)
        return r

    def push(self, packets: list[bytes], arrival: float) -> int:
        """Unframed packets into the backlog (in-process callers and tests); how many were taken."""
        taken = 0
        start = 0
        while start < len(packets):  # runs of one length, one call each
            size = len(packets[start])
            stop = start + 1
            while stop < len(packets) and len(packets[stop]) == size:
                stop += 1
            n = lib.lx_node_push(self._node, b"".join(packets[start:stop]), stop - start, size, round(arrival * 1e9))
            if n < 0:
                raise ValueError(f"no packet size is {size} bytes long")
            taken += n
            start = stop
        return taken

    @property
    def backlog(self) -> int:
        return lib.lx_node_backlog(self._node)

    @property
    def unwrap_seconds(self) -> float:
        """CPU time spent in the batch unwrap so far (the rest of a node's CPU is everything else)."""
        return lib.lx_node_unwrap_ns(self._node) * 1e-9

    @property
    def held(self) -> int:
        return lib.lx_node_held(self._node)

    def next_due(self) -> float | None:
        """When the first held packet is due (event-loop seconds), or None."""
        if lib.lx_node_next_due(self._node, self._due):
            return self._due[0] * 1e-9
        return None

    # --- work ---

    def step(self, now: float, max_packets: int | None = None) -> StepOutput:
        """Up to a batch of the backlog, decided at `now`."""
        n = self.batch if max_packets is None else max_packets
        rc = lib.lx_node_step(self._node, round(now * 1e9), n, self._out)
        return self._output(rc)

    def release(self, now: float, horizon: float = 0.0) -> StepOutput:
        """Held packets due by `now + horizon`."""
        rc = lib.lx_node_release(self._node, round(now * 1e9), round(horizon * 1e9), self._out)
        return self._output(rc)

    def _output(self, rc: int) -> StepOutput:
        out = self._out
        if rc != 0:
            return StepOutput(out.processed, 0, 0, [], [], [], [], failed=out.processed)
        drops = [(DROP_REASONS[i], n) for i, n in enumerate(ffi.unpack(out.drops, lib.LX_NODE_DROP_REASONS)) if n]
        groups: list[tuple[bytes, int, int, memoryview]] = []
        if out.n_groups:
            # the frames buffer becomes ours (freed when the last view of it goes): written to the
            # sockets as it is, no copy, and safe while a socket's buffer still holds a view of it
            owned = ffi.gc(lib.lx_node_take_frames(self._node), lib.lx_node_free_frames, out.frames_len)
            frames = memoryview(ffi.buffer(owned, out.frames_len))
            for address, length, count, offset in _GROUP.iter_unpack(
                ffi.buffer(out.groups, out.n_groups * _GROUP.size)
            ):
                groups.append((address, length, count, frames[offset : offset + count * (length + 3)]))
        finals: list[tuple[bytes, bytes]] = []
        if out.n_finals:
            records = list(_FINAL.iter_unpack(ffi.buffer(out.finals, out.n_finals * _FINAL.size)))
            _d, last, length = records[-1]  # messages lie back to back
            messages = ffi.buffer(out.messages, last + length)
            finals = [(destination, messages[offset : offset + n]) for destination, offset, n in records]
        late = list(_LATE.iter_unpack(ffi.buffer(out.late, out.n_late * _LATE.size))) if out.n_late else []
        return StepOutput(out.processed, out.forwarded, out.capped, drops, groups, finals, late)

    # --- the replay window ---

    def replay_seen(self, tag: bytes) -> bool:
        """Check and remember one tag, as a step does."""
        if len(tag) != REPLAY_TAG_SIZE:
            raise ValueError("a replay tag is 32 bytes")
        return bool(lib.lx_node_replay_seen(self._node, tag))

    @property
    def replay_count(self) -> int:
        return lib.lx_node_replay_count(self._node)

    def replay_dump(self, key: bytes) -> bytes:
        """The remembered tags, oldest first, bound to the node's public key `key` (see `replay_load`)."""
        size = lib.lx_node_replay_dump(self._node, ffi.NULL, 0)
        buf = bytearray(size)
        lib.lx_node_replay_dump(self._node, ffi.from_buffer(buf), size)
        return REPLAY_MAGIC + key + bytes(buf)

    def replay_load(self, data: bytes, key: bytes) -> int:
        """Remember the tags of a dump made under the same key; how many it held. A dump made under
        another key is ignored: after a key rotation old packets cannot be unwrapped anyway."""
        head = REPLAY_MAGIC + key
        if not data.startswith(head):
            return 0
        body = memoryview(data)[len(head) :]
        n = len(body) // REPLAY_TAG_SIZE
        for i in range(n):
            lib.lx_node_replay_seen(self._node, ffi.from_buffer(body[i * REPLAY_TAG_SIZE : (i + 1) * REPLAY_TAG_SIZE]))
        return n


class LinkFrames:
    """One inbound link's framing state: the start of a frame a read cut off, until it completes.

    `feed` hands every complete frame to the engine and returns (frames, dropped as backlog full,
    error or None). After an error the link is dead: close it."""

    __slots__ = ("_engine", "_need", "_offset", "_partial", "dead")

    def __init__(self, engine: ForwardEngine) -> None:
        self._engine = engine
        self._partial = bytearray()
        self._need = 0
        self._offset = 0  # stream offset of the next unconsumed byte, for error messages
        self.dead = False

    @property
    def pending(self) -> int:
        return len(self._partial)

    def feed(self, data: bytes | bytearray | memoryview, arrival: float) -> tuple[int, int, FrameError | None]:
        if self.dead:
            return 0, 0, None
        frames = full = 0
        pos = 0
        size = len(data)
        partial = self._partial
        ingest = self._engine.ingest
        while partial and pos < size:  # finish the cut frame first, taking only what it needs
            take = data[pos : pos + self._need]
            pos += len(take)
            partial += take
            if len(take) < self._need:
                self._need -= len(take)
                return frames, full, None
            r = ingest(partial, arrival)
            if r.error:
                return frames, full, self._fail(r, partial)
            frames += r.frames
            full += r.backlog_full
            if r.frames:
                self._offset += len(partial)
                partial.clear()
            else:
                self._need = r.need
        if pos < size:
            with memoryview(data) as view:
                rest = view[pos:]
                r = ingest(rest, arrival)
                if r.error:
                    frames += r.frames
                    full += r.backlog_full
                    self._offset += r.consumed
                    return frames, full, self._fail(r, rest)
                frames += r.frames
                full += r.backlog_full
                self._offset += r.consumed
                partial += rest[r.consumed :]
                self._need = r.need
        return frames, full, None

    def _fail(self, r: Any, data: bytes | bytearray | memoryview) -> FrameError:
        self.dead = True
        self._partial = bytearray()
        message = _FRAME_ERRORS[r.error].format(r.error_value)
        return FrameError(f"{message} at stream offset {self._offset + r.error_at - r.consumed}")

    def eof(self) -> FrameError | None:
        """The peer closed: an error if it stopped in the middle of a frame."""
        if not self.dead and self._partial:
            self.dead = True
            return FrameError(
                f"connection closed in the middle of a frame ({len(self._partial)} bytes pending) "
                f"at stream offset {self._offset}"
            )
        return None
