"""Anonymous replies: reply SURBs, sender tags, the reply framing and the SURB stores (pure, no I/O;
time comes in as `now`).

Every message a client sends is an `Envelope` (msgpack) sealed to the recipient (messages.py):

    Envelope(kind="data", data, sender_tag=b"", surbs=[])        a message, maybe with reply blocks
    Envelope(kind="surbs", sender_tag, surbs)                     more blocks for a conversation
    Envelope(kind="request", want=k)                              (in a reply) please send k more

`send_message(..., reply_surbs=N)` draws a random 16-byte sender tag (per recipient, reused) and
attaches N `Surb`s: a reply block (sphinx/surb.py) over a fresh route to the sender's own provider,
a 16-byte SURB id and a 32-byte key. The recipient learns the tag and the blocks, never the sender's
address. A reply fragment travels in one block and is, inside the Sphinx payload after the ack
prefix,

    SURB id (16) ‖ nonce (24) ‖ SecretBox(key, fragment header (16) ‖ chunk)

so the sender's provider, which unwraps the last layer, reads nothing; the sender finds the key by
the id (single use: the key is forgotten once used). Replies are fragmented like messages
(ISO 7816-4 padding) but not sealed: the per-block key does that job.

Lifetimes (docs/reliability.md): a replier keeps at most `MAX_SURBS_PER_TAG` blocks per tag and
`MAX_TAGS` tags, and drops a block unused for `SURB_MAX_AGE_S` (5 min, Nym's default); a sender keeps
its reply keys for `REPLY_KEY_MAX_AGE_S` (24 h). Blocks stop working when a node on their route
changes its key or leaves.
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque
from typing import Literal

import msgspec
from nacl.bindings import crypto_secretbox_easy, crypto_secretbox_open_easy
from nacl.exceptions import CryptoError

from .messages import (
    FRAGMENT_HEADER,
    FRAGMENT_HEADER_SIZE,
    MESSAGE_ID_SIZE,
    MessageError,
    Reassembler,
)

__all__ = [
    "MAX_SURBS_PER_TAG",
    "SURB_MAX_AGE_S",
    "Envelope",
    "ReplyKeys",
    "ReplyReassembler",
    "Surb",
    "SurbStore",
    "decode_envelope",
    "encode_envelope",
    "open_reply_fragment",
    "reply_chunk_size",
    "reply_fragments",
    "seal_reply_fragment",
]

TAG_SIZE = 16
SURB_ID_SIZE = 16
NONCE_SIZE = 24
MAC_SIZE = 16
REPLY_OVERHEAD = SURB_ID_SIZE + NONCE_SIZE + MAC_SIZE + FRAGMENT_HEADER_SIZE  # 72
MAX_SURBS_PER_TAG = 500
MAX_TAGS = 10_000
SURB_MAX_AGE_S = 300.0
REPLY_KEY_MAX_AGE_S = 24 * 3600.0
MAX_REPLY_SURBS = 500  # per message, and per request (Nym's maximum)


class Surb(msgspec.Struct, frozen=True, array_like=True):
    """One single-use reply block as the replier holds it."""

    block: bytes  # sphinx.surb.ReplyBlock.to_bytes()
    surb_id: bytes
    key: bytes


class Envelope(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True):
    kind: Literal["data", "surbs", "request"] = "data"
    data: bytes = b""
    sender_tag: bytes = b""
    surbs: list[Surb] = []
    want: int = 0


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Envelope)


def encode_envelope(env: Envelope) -> bytes:
    return _enc.encode(env)


def decode_envelope(data: bytes) -> Envelope | None:
    """The envelope, or None for anything malformed (a peer's bytes: never raises)."""
    try:
        env = _dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if env.sender_tag and len(env.sender_tag) != TAG_SIZE:
        return None
    if len(env.surbs) > MAX_REPLY_SURBS or not 0 <= env.want <= MAX_REPLY_SURBS:
        return None
    if any(len(s.surb_id) != SURB_ID_SIZE or len(s.key) != 32 for s in env.surbs):
        return None
    return env


# --- reply fragments ------------------------------------------------------------------------------


def reply_chunk_size(inner: int) -> int:
    """Message bytes one reply fragment carries in an inner payload of `inner` bytes."""
    chunk = inner - REPLY_OVERHEAD
    if chunk < 2:
        raise MessageError(f"payload of {inner} bytes is too small for a reply fragment")
    return chunk


def reply_fragments(message: bytes, inner: int) -> list[bytes]:
    """`message || 0x80 || 0...` cut into plaintext fragments (header ‖ chunk), each to be sealed
    with its own block's key by `seal_reply_fragment`."""
    chunk = reply_chunk_size(inner)
    count = -(-(len(message) + 1) // chunk)
    padded = message + b"\x80" + bytes(count * chunk - len(message) - 1)
    mid = os.urandom(MESSAGE_ID_SIZE)
    return [FRAGMENT_HEADER.pack(mid, i, count) + padded[i * chunk : (i + 1) * chunk] for i in range(count)]


def seal_reply_fragment(surb: Surb, fragment: bytes) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    return surb.surb_id + nonce + crypto_secretbox_easy(fragment, nonce, surb.key)


def open_reply_fragment(key: bytes, inner) -> bytes | None:
    try:
        box = bytes(inner[SURB_ID_SIZE + NONCE_SIZE :])
        return crypto_secretbox_open_easy(box, bytes(inner[SURB_ID_SIZE : SURB_ID_SIZE + NONCE_SIZE]), key)
    except (CryptoError, ValueError, TypeError):
        return None


class ReplyReassembler(Reassembler):
    """Reassembles reply fragments, which arrive already opened (no sealed box to open)."""

    def __init__(self, **kwargs):
        super().__init__(bytes(32), **kwargs)

    def _open(self, sealed: bytes, chunk_len: int) -> bytes | None:
        end = sealed.rfind(b"\x80")
        if end < 0 or sealed.count(0, end + 1) != len(sealed) - end - 1:
            self.counters["malformed"] += 1
            return None
        self.counters["completed"] += 1
        return sealed[:end]


# --- the two stores -------------------------------------------------------------------------------


class _Key(msgspec.Struct, array_like=True, gc=False):
    key: bytes
    tag: bytes
    identity: int
    created: float


class ReplyKeys:
    """The original sender's side: SURB id -> key (single use), and each tag's correspondent."""

    def __init__(self, max_age_s: float = REPLY_KEY_MAX_AGE_S, max_keys: int = 1_000_000):
        self.max_age_s = max_age_s
        self.max_keys = max_keys
        self._keys: OrderedDict[bytes, _Key] = OrderedDict()
        self.tags: dict[tuple[int, bytes, bytes], bytes] = {}  # (identity, key, provider) -> tag
        self.peers: dict[bytes, tuple[int, bytes, bytes]] = {}  # tag -> (identity, key, provider)

    def __len__(self) -> int:
        return len(self._keys)

    def tag_for(self, identity: int, recipient_key: bytes, recipient_provider: bytes) -> bytes:
        peer = (identity, recipient_key, recipient_provider)
        tag = self.tags.get(peer)
        if tag is None:
            tag = self.tags[peer] = os.urandom(TAG_SIZE)
            self.peers[tag] = peer
        return tag

    def add(self, surb_id: bytes, key: bytes, tag: bytes, identity: int, now: float) -> None:
        self._keys[surb_id] = _Key(key, tag, identity, now)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)

    def take(self, inner, now: float) -> tuple[bytes, int, bytes] | None:
        """(opened fragment, identity, tag) if `inner` is a reply through one of our blocks."""
        entry = self._keys.get(bytes(inner[:SURB_ID_SIZE]))
        if entry is None:
            return None
        fragment = open_reply_fragment(entry.key, inner)
        if fragment is None:
            return None
        del self._keys[bytes(inner[:SURB_ID_SIZE])]
        return fragment, entry.identity, entry.tag

    def expire(self, now: float) -> int:
        n = 0
        while self._keys:
            sid, entry = next(iter(self._keys.items()))
            if now - entry.created < self.max_age_s:
                break
            del self._keys[sid]
            n += 1
        return n


class SurbStore:
    """The replier's side: blocks per (identity, sender tag), oldest used first, bounded and aged.
    It holds tags and blocks only: nothing here names the sender."""

    def __init__(self, max_per_tag: int = MAX_SURBS_PER_TAG, max_tags: int = MAX_TAGS,
                 max_age_s: float = SURB_MAX_AGE_S):
        self.max_per_tag, self.max_tags, self.max_age_s = max_per_tag, max_tags, max_age_s
        self._store: OrderedDict[tuple[int, bytes], deque[tuple[float, Surb]]] = OrderedDict()
        self.dropped = 0  # over a bound or too old

    def add(self, identity: int, tag: bytes, surbs: list[Surb], now: float) -> None:
        key = (identity, tag)
        q = self._store.get(key)
        if q is None:
            q = self._store[key] = deque()
        self._store.move_to_end(key)
        for s in surbs:
            if len(q) >= self.max_per_tag:
                q.popleft()
                self.dropped += 1
            q.append((now, s))
        while len(self._store) > self.max_tags:
            _, old = self._store.popitem(last=False)
            self.dropped += len(old)

    def count(self, identity: int, tag: bytes, now: float) -> int:
        self._age(identity, tag, now)
        q = self._store.get((identity, tag))
        return len(q) if q else 0

    def take(self, identity: int, tag: bytes, now: float) -> Surb | None:
        self._age(identity, tag, now)
        q = self._store.get((identity, tag))
        if not q:
            return None
        return q.popleft()[1]

    def known(self, identity: int, tag: bytes) -> bool:
        return (identity, tag) in self._store

    def contents(self) -> list[tuple[int, bytes, list[Surb]]]:
        return [(i, t, [s for _, s in q]) for (i, t), q in self._store.items()]

    def _age(self, identity: int, tag: bytes, now: float) -> None:
        q = self._store.get((identity, tag))
        while q and now - q[0][0] > self.max_age_s:
            q.popleft()
            self.dropped += 1
