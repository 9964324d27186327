"""The client's end-to-end layer: what travels inside one Sphinx packet. Pure functions, no I/O.

Every Sphinx message this module produces is exactly `payload_size` bytes, whatever it carries, so a
provider storing them sees one size only. The runtime passes the room left after the SURB-ack prefix
(wire/ack.py: `inner_size(2048)` = 1630), which the recipient's provider strips before storing. All of them start with the same 16-byte
fragment header and everything after the header is ciphertext or random bytes:

    fragment header   message id (8 random bytes) || fragment index (u32 BE) || fragment count (u32 BE)

* FRAGMENT of a real message. The message is sealed to the recipient's X25519 public key with
  libsodium's sealed box (pynacl `SealedBox`: anonymous sender, 48 bytes of overhead), then cut into
  `count` chunks of `payload_size - 16` bytes, each behind its own header.

  Padding rule: the padding goes *inside* the sealed box. The plaintext is
  `message || 0x80 || 0x00 * k`, with the smallest k >= 0 that makes the sealed box exactly
  `count * (payload_size - 16)` bytes long, where `count` is the smallest count with room for
  `len(message) + 1 + 48` bytes. The receiver joins the chunks, opens the box and strips the trailing
  zeros and the 0x80 marker (ISO/IEC 7816-4 padding), which gives back the exact length. So the last
  fragment is as long as the others and, like them, carries nothing but ciphertext after its header.
  One fragment holds a message of up to `fragment_capacity(payload_size)` bytes (1565 for the
  runtime's 1630, i.e. a 2048-byte Sphinx payload less its ack).

* LOOP payload: a client's own packet that comes back to it.
  `header(random id, index 0, count 1) || nonce (24) || SecretBox(identity u32 || seq u64 ||
  sent_ns u64) (20 + 16 MAC) || random padding`. The key is known only to the client
  (`LoopCodec`), the nonce is random and the padding is random bytes, so to a provider a loop is
  indistinguishable from a one-fragment message. The authenticated part sits at a fixed offset and
  is small, so recognising a returning loop costs one 36-byte secretbox open, not one over the whole
  payload. (pynacl's `crypto_secretbox_easy`, the XSalsa20-Poly1305 primitive behind `SecretBox`, is
  called directly to skip the `EncryptedMessage` wrapper on this per-packet path.)

Smallest payload sizes: 65 bytes for a fragment, 76 for a loop; Nym's 21-byte size is refused with
MessageError.

* DROP payload: `payload_size` random bytes (a provider discards it unread).

The receiving side (one process, no I/O here):

    info = loop_codec.decode(payload)          # LoopInfo for our own loops, else None
    if info is None:
        message = reassembler.add(payload, time.monotonic())   # bytes once complete, else None
    ...
    for inc in reassembler.expire(time.monotonic()): ...       # messages that will never complete
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from typing import Literal

import msgspec
from nacl.bindings import (
    crypto_secretbox_easy,
    crypto_secretbox_open_easy,
    randombytes_buf_deterministic,
)
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_PAYLOAD_SIZE",
    "FRAGMENT_HEADER",
    "FRAGMENT_HEADER_SIZE",
    "LOOP_MIN_PAYLOAD_SIZE",
    "MESSAGE_ID_SIZE",
    "MIN_PAYLOAD_SIZE",
    "PAD_MARKER",
    "SEAL_OVERHEAD",
    "FragmentHeader",
    "Incomplete",
    "LoopCodec",
    "LoopInfo",
    "MessageError",
    "Reassembler",
    "classify",
    "drop_payload",
    "fragment_capacity",
    "fragment_count",
    "fragment_message",
    "parse_fragment_header",
    "random_bytes",
]

# --- layout -------------------------------------------------------------------------------------

DEFAULT_PAYLOAD_SIZE = 2048
DEFAULT_MAX_MESSAGE_SIZE = 4 * 2**20

MESSAGE_ID_SIZE = 8
FRAGMENT_HEADER = struct.Struct(">8sII")  # message id || index (u32 BE) || count (u32 BE)
FRAGMENT_HEADER_SIZE = FRAGMENT_HEADER.size  # 16
MAX_FRAGMENT_COUNT = 2**32 - 1

SEAL_OVERHEAD = 48  # crypto_box_SEALBYTES: ephemeral public key (32) + Poly1305 MAC (16)
PAD_MARKER = 0x80  # the padded plaintext is message || 0x80 || 0x00...
# The smallest payload that holds one fragment of the empty message: header + sealed box of one byte.
MIN_PAYLOAD_SIZE = FRAGMENT_HEADER_SIZE + SEAL_OVERHEAD + 1  # 65

LOOP_INFO = struct.Struct(">IQQ")  # identity (u32) || seq (u64) || sent_ns (u64), big-endian
LOOP_NONCE_SIZE = 24
LOOP_MAC_SIZE = 16
LOOP_BOX_SIZE = LOOP_INFO.size + LOOP_MAC_SIZE  # 36
LOOP_NONCE_OFFSET = FRAGMENT_HEADER_SIZE  # 16
LOOP_BOX_OFFSET = LOOP_NONCE_OFFSET + LOOP_NONCE_SIZE  # 40
LOOP_MIN_PAYLOAD_SIZE = LOOP_BOX_OFFSET + LOOP_BOX_SIZE  # 76
_ONE_OF_ONE = struct.pack(">II", 0, 1)  # index 0, count 1: the header tail of every loop

_U32 = 2**32
_U64 = 2**64


class MessageError(ValueError):
    """A message or parameter this layer cannot encode (too large, bad key, payload too small)."""


class FragmentHeader(msgspec.Struct, frozen=True, gc=False):
    """The decoded 16-byte header in front of every Sphinx message this module produces."""

    message_id: bytes
    index: int
    count: int


class LoopInfo(msgspec.Struct, frozen=True, gc=False):
    """What a returning loop tells its sender: which identity sent it, its sequence number and its
    scheduled send time (ns, CLOCK_MONOTONIC of the sending machine)."""

    identity: int
    seq: int
    sent_ns: int


class Incomplete(msgspec.Struct, frozen=True, gc=False):
    """A message whose fragments stopped arriving: `received` of `count` fragments were seen."""

    message_id: bytes
    received: int
    count: int


# --- sizes ----------------------------------------------------------------------------------------


def _check_payload_size(payload_size: int, minimum: int, what: str) -> None:
    if not isinstance(payload_size, int) or isinstance(payload_size, bool):
        raise MessageError(f"payload_size must be an int, got {type(payload_size).__name__}")
    if payload_size < minimum:
        raise MessageError(
            f"payload_size {payload_size} is too small for {what}: it needs at least {minimum} bytes"
            f" (fragment header {FRAGMENT_HEADER_SIZE} + "
            + (
                f"sealed-box overhead {SEAL_OVERHEAD} + 1 padding byte)"
                if minimum == MIN_PAYLOAD_SIZE
                else f"nonce {LOOP_NONCE_SIZE} + boxed loop info {LOOP_BOX_SIZE})"
            )
        )


def fragment_capacity(payload_size: int = DEFAULT_PAYLOAD_SIZE) -> int:
    """The largest message that travels in a single fragment of `payload_size` bytes."""
    _check_payload_size(payload_size, MIN_PAYLOAD_SIZE, "a message fragment")
    return payload_size - MIN_PAYLOAD_SIZE


def fragment_count(message_size: int, payload_size: int = DEFAULT_PAYLOAD_SIZE) -> int:
    """How many Sphinx messages a message of `message_size` bytes takes."""
    _check_payload_size(payload_size, MIN_PAYLOAD_SIZE, "a message fragment")
    if message_size < 0:
        raise MessageError("message_size must be >= 0")
    chunk = payload_size - FRAGMENT_HEADER_SIZE
    return -(-(message_size + 1 + SEAL_OVERHEAD) // chunk)


def parse_fragment_header(payload) -> FragmentHeader | None:
    """The header of a Sphinx message, or None if it is too short or inconsistent."""
    if len(payload) <= FRAGMENT_HEADER_SIZE:
        return None
    mid, index, count = FRAGMENT_HEADER.unpack_from(payload)
    if index >= count:
        return None
    return FragmentHeader(mid, index, count)


# --- sending --------------------------------------------------------------------------------------


def fragment_message(
    message: bytes,
    recipient_public_key: bytes,
    payload_size: int = DEFAULT_PAYLOAD_SIZE,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> list[bytes]:
    """Seal `message` to `recipient_public_key` (X25519, 32 bytes) and cut it into Sphinx messages of
    exactly `payload_size` bytes each (see the module docstring for the layout and padding rule).

    Raises MessageError for a message longer than `max_message_size`, a bad key or a payload size
    too small to hold a fragment (Nym's 21-byte size is one).
    """
    _check_payload_size(payload_size, MIN_PAYLOAD_SIZE, "a message fragment")
    try:
        size = len(message)
    except TypeError:
        raise MessageError(f"message must be bytes, got {type(message).__name__}") from None
    if size > max_message_size:
        raise MessageError(
            f"message of {size} bytes is larger than the maximum of {max_message_size} bytes"
        )
    if not isinstance(recipient_public_key, bytes | bytearray) or len(recipient_public_key) != 32:
        raise MessageError("recipient public key must be 32 bytes (X25519)")
    chunk = payload_size - FRAGMENT_HEADER_SIZE
    count = -(-(size + 1 + SEAL_OVERHEAD) // chunk)
    if count > MAX_FRAGMENT_COUNT:
        raise MessageError(
            f"message needs {count} fragments; the header allows {MAX_FRAGMENT_COUNT}"
        )
    pad = count * chunk - SEAL_OVERHEAD - size - 1
    try:
        plaintext = b"".join((message, b"\x80", bytes(pad)))  # one copy of the message
        sealed = SealedBox(PublicKey(bytes(recipient_public_key))).encrypt(plaintext)
    except CryptoError as e:  # a low-order public key: libsodium refuses the all-zero secret
        raise MessageError(f"cannot encrypt to this recipient public key: {e}") from None
    except TypeError as e:
        raise MessageError(f"message must be bytes-like: {e}") from None
    mid = os.urandom(MESSAGE_ID_SIZE)
    pack = FRAGMENT_HEADER.pack
    view = memoryview(sealed)
    return [pack(mid, i, count) + view[i * chunk : (i + 1) * chunk] for i in range(count)]


def drop_payload(payload_size: int = DEFAULT_PAYLOAD_SIZE) -> bytes:
    """A drop cover message: `payload_size` random bytes, discarded by the provider that gets it."""
    if not isinstance(payload_size, int) or payload_size < 0:
        raise MessageError(f"payload_size must be a non-negative int, got {payload_size!r}")
    return random_bytes(payload_size)


def random_bytes(n: int) -> bytes:
    """`n` cryptographically random bytes: a fresh 32-byte seed from the OS expanded with libsodium's
    ChaCha20 (`randombytes_buf_deterministic`). Same quality as os.urandom(n) for our purpose (cover
    bytes that must look like ciphertext), but 3-5x cheaper for a payload's worth on the machines we
    measured, where getrandom runs at ~150 MB/s. A new seed per call: nothing shared across forks."""
    return randombytes_buf_deterministic(n, os.urandom(32))


# --- loops ----------------------------------------------------------------------------------------


class LoopCodec:
    """Encodes and recognises this client's loop payloads with a key only the client holds.

    The coordinator makes one key and hands it to the workers (which encode) and to the receiver
    (which decodes); `key` gives it back.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes | None = None):
        if key is None:
            key = os.urandom(32)
        if not isinstance(key, bytes | bytearray) or len(key) != 32:
            raise MessageError("loop key must be 32 bytes")
        self._key = bytes(key)

    @property
    def key(self) -> bytes:
        return self._key

    def encode(
        self, identity: int, seq: int, sent_ns: int, payload_size: int = DEFAULT_PAYLOAD_SIZE
    ) -> bytes:
        """A loop payload of exactly `payload_size` bytes carrying (identity, seq, sent_ns)."""
        pad = payload_size - LOOP_MIN_PAYLOAD_SIZE
        if pad < 0 or type(payload_size) is not int:
            _check_payload_size(payload_size, LOOP_MIN_PAYLOAD_SIZE, "a loop")
        if not (0 <= identity < _U32 and 0 <= seq < _U64 and 0 <= sent_ns < _U64):
            raise MessageError(
                "loop fields out of range: identity must fit u32, seq and sent_ns u64"
                f" (got {identity}, {seq}, {sent_ns})"
            )
        # The message id, the nonce and the padding in one draw (see `random_bytes`).
        rnd = random_bytes(MESSAGE_ID_SIZE + LOOP_NONCE_SIZE + pad)
        nonce = rnd[MESSAGE_ID_SIZE : MESSAGE_ID_SIZE + LOOP_NONCE_SIZE]
        box = crypto_secretbox_easy(LOOP_INFO.pack(identity, seq, sent_ns), nonce, self._key)
        view = memoryview(rnd)
        return b"".join(
            (
                view[:MESSAGE_ID_SIZE],
                _ONE_OF_ONE,
                nonce,
                box,
                view[MESSAGE_ID_SIZE + LOOP_NONCE_SIZE :],
            )
        )

    def decode(self, payload) -> LoopInfo | None:
        """The LoopInfo of one of our loops, or None for anything else (never raises on junk)."""
        try:
            if len(payload) < LOOP_MIN_PAYLOAD_SIZE or payload[8:16] != _ONE_OF_ONE:
                return None
            if not isinstance(payload, bytes):
                payload = bytes(payload[:LOOP_MIN_PAYLOAD_SIZE])
            info = crypto_secretbox_open_easy(
                payload[LOOP_BOX_OFFSET:LOOP_MIN_PAYLOAD_SIZE],
                payload[LOOP_NONCE_OFFSET:LOOP_BOX_OFFSET],
                self._key,
            )
            return LoopInfo(*LOOP_INFO.unpack(info))
        except Exception:
            return None


def classify(payload, loop_codec: LoopCodec) -> Literal["loop", "fragment"]:
    """ "loop" if `payload` is one of our loops (it decodes), else "fragment" (for the Reassembler,
    which counts anything else as malformed or undecryptable). Receivers that want the loop's
    round-trip time call `loop_codec.decode` directly instead, to decode once."""
    return "loop" if loop_codec.decode(payload) is not None else "fragment"


# --- receiving ------------------------------------------------------------------------------------


class _Pending:
    __slots__ = ("chunk_len", "chunks", "count", "last_seen", "received")

    def __init__(self, count: int, chunk_len: int):
        self.count = count
        self.chunk_len = chunk_len
        self.chunks: list[bytes | None] = [None] * count
        self.received = 0
        self.last_seen = 0.0


COUNTER_NAMES = ("completed", "duplicate", "malformed", "undecryptable", "expired", "evicted")


class Reassembler:
    """Puts a recipient's messages back together from fragments arriving in any order.

    `add` never raises on what the network delivers: garbage, a fragment whose count or length
    disagrees with the first fragment of its message, a message that does not open with our key, a
    duplicate or a fragment of a message already finished are ignored and counted in `counters`
    (`completed`, `duplicate`, `malformed`, `undecryptable`, `expired`, `evicted`).

    Memory: the chunks held for incomplete messages never exceed `max_pending_bytes`; to make room the
    least recently active incomplete message is dropped (counted `evicted`, and reported by the next
    `expire` like a timed-out one). A message that could never fit is malformed. The ids of the last
    `remember_finished` finished messages are kept so their stragglers count as duplicates.

    `now` is any monotonic clock in seconds (time.monotonic()); a message expires `timeout_s` after its
    latest fragment arrived.
    """

    def __init__(
        self,
        secret_key: bytes,
        *,
        timeout_s: float = 60.0,
        max_pending_bytes: int = 64 * 2**20,
        remember_finished: int = 65536,
    ):
        if not isinstance(secret_key, bytes | bytearray) or len(secret_key) != 32:
            raise MessageError("secret key must be 32 bytes (X25519)")
        self._box = SealedBox(PrivateKey(bytes(secret_key)))
        self.timeout_s = float(timeout_s)
        self.max_pending_bytes = int(max_pending_bytes)
        self.remember_finished = int(remember_finished)
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.pending_bytes = 0
        # message id -> _Pending, least recently active first
        self._pending: OrderedDict[bytes, _Pending] = OrderedDict()
        self._finished: OrderedDict[bytes, None] = OrderedDict()
        self._evicted: list[Incomplete] = []

    def __len__(self) -> int:
        """Incomplete messages held."""
        return len(self._pending)

    def add(self, payload, now: float) -> bytes | None:
        """Take one Sphinx message; returns the decrypted message when this was its last fragment."""
        counters = self.counters
        try:
            n = len(payload)
            if n <= FRAGMENT_HEADER_SIZE:
                counters["malformed"] += 1
                return None
            mid, index, count = FRAGMENT_HEADER.unpack_from(payload)
        except (TypeError, struct.error):
            counters["malformed"] += 1
            return None
        chunk_len = n - FRAGMENT_HEADER_SIZE
        total = count * chunk_len
        if index >= count or total > self.max_pending_bytes or total < SEAL_OVERHEAD + 1:
            counters["malformed"] += 1
            return None
        if mid in self._finished:
            counters["duplicate"] += 1
            return None
        if count == 1:
            self._finish(mid)
            return self._open(bytes(payload[FRAGMENT_HEADER_SIZE:]), chunk_len)
        pending = self._pending
        p = pending.get(mid)
        if p is None:
            p = _Pending(count, chunk_len)
            pending[mid] = p
        else:
            if p.count != count or p.chunk_len != chunk_len:
                counters["malformed"] += 1
                return None
            if p.chunks[index] is not None:
                counters["duplicate"] += 1
                return None
            pending.move_to_end(mid)
        p.last_seen = now
        if p.received + 1 == count:  # the last one: no need to hold it
            chunks = p.chunks
            chunks[index] = payload[FRAGMENT_HEADER_SIZE:]
            self._forget(mid, p)
            self._finish(mid)
            return self._open(b"".join(chunks), chunk_len)
        self._make_room(chunk_len, mid)
        p.chunks[index] = bytes(payload[FRAGMENT_HEADER_SIZE:])
        p.received += 1
        self.pending_bytes += chunk_len
        return None

    def expire(self, now: float) -> list[Incomplete]:
        """Forget and return the messages with no fragment for `timeout_s` (and those evicted for
        memory since the last call): they will be reported incomplete, never delivered garbled."""
        out, self._evicted = self._evicted, []
        deadline = now - self.timeout_s
        pending = self._pending
        while pending:
            mid, p = next(iter(pending.items()))
            if p.last_seen > deadline:
                break
            self._forget(mid, p)
            self._finish(mid)
            self.counters["expired"] += 1
            out.append(Incomplete(mid, p.received, p.count))
        return out

    # -- internals --

    def _open(self, sealed: bytes, chunk_len: int) -> bytes | None:
        try:
            plain = self._box.decrypt(sealed)
        except CryptoError:
            self.counters["undecryptable"] += 1
            return None
        # message || 0x80 || zeros: the marker is the last non-zero byte
        end = plain.rfind(b"\x80")
        if end < 0 or plain.count(0, end + 1) != len(plain) - end - 1:
            self.counters["malformed"] += 1
            return None
        self.counters["completed"] += 1
        return plain[:end]

    def _forget(self, mid: bytes, p: _Pending) -> None:
        del self._pending[mid]
        self.pending_bytes -= p.received * p.chunk_len

    def _finish(self, mid: bytes) -> None:
        finished = self._finished
        finished[mid] = None
        if len(finished) > self.remember_finished:
            finished.popitem(last=False)

    def _make_room(self, need: int, keep: bytes) -> None:
        pending = self._pending
        while self.pending_bytes + need > self.max_pending_bytes and pending:
            mid, p = next(iter(pending.items()))
            if mid == keep:  # cannot happen (a message that fits alone always fits), but be safe
                break
            self._forget(mid, p)
            self._finish(mid)
            self.counters["evicted"] += 1
            if len(self._evicted) < 4096:
                self._evicted.append(Incomplete(mid, p.received, p.count))
