"""Authenticated presence and a directory-signed topology (see docs/directory-auth.md).

Pure functions and small state objects, no I/O beyond the key files: nodes sign what they post
with an Ed25519 identity key, prove they hold the Sphinx (X25519) key they announce, and the
directory signs the topology it serves. Times are unix nanoseconds passed in by the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.signing

from loopix.fileio import write_private_file
from loopix.wire.b64 import B64Error, b64url_decode, b64url_encode

__all__ = [
    "IDENTITY_HEADER",
    "SIGNATURE_HEADER",
    "TOPOLOGY_SIGNATURE_HEADER",
    "TOPOLOGY_TIME_HEADER",
    "AuthError",
    "ReplayWindow",
    "exchange_public",
    "exchange_secret",
    "key_proof",
    "load_allowed",
    "load_or_create_identity",
    "sign_request",
    "sign_topology",
    "verify_key_proof",
    "verify_request",
    "verify_topology",
]

PRESENCE_DOMAIN = b"loopix-presence-v1\n"
TOPOLOGY_DOMAIN = b"loopix-topology-v1\n"
PROOF_DOMAIN = b"loopix-sphinx-key-proof-v1\n"
IDENTITY_HEADER = "X-Loopix-Identity"
SIGNATURE_HEADER = "X-Loopix-Signature"
TOPOLOGY_SIGNATURE_HEADER = "X-Loopix-Topology-Signature"
TOPOLOGY_TIME_HEADER = "X-Loopix-Topology-Time"
KEY_ENDPOINT = "/api/directory/key"
REPLAY_WINDOW_NS = 30 * 10**9
"""A signed post older (or further in the future) than this is refused."""
TOPOLOGY_MAX_AGE_NS = 300 * 10**9
"""A signed topology older than this is refused by clients (a replayed stale view)."""


class AuthError(ValueError):
    """A signature, proof or timestamp that does not check out; the message says which."""


def _decode32(text: str, what: str) -> bytes:
    try:
        raw = b64url_decode(text)
    except (B64Error, ValueError, TypeError) as exc:
        raise AuthError(f"{what} is not base64url: {exc}") from None
    if len(raw) != 32:
        raise AuthError(f"{what} must be 32 bytes, got {len(raw)}")
    return raw


def decode_public(text: str, what: str = "identity key") -> bytes:
    """A 32-byte Ed25519 public key from base64url text."""
    return _decode32(text, what)


# --- identity keys -------------------------------------------------------------------------------


def load_or_create_identity(path: str | os.PathLike[str]) -> nacl.signing.SigningKey:
    """An Ed25519 identity (its 32-byte seed, base64url, in a 0600 file), created if missing."""
    path = Path(path)
    if not path.exists():
        key = nacl.signing.SigningKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_file(path, (b64url_encode(bytes(key)) + "\n").encode())
        return key
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise AuthError(f"{path}: identity key readable by others (mode {mode:o}); chmod 600 it")
    return nacl.signing.SigningKey(_decode32(path.read_text().strip(), f"{path}: identity seed"))


def public_b64(key: nacl.signing.SigningKey) -> str:
    return b64url_encode(bytes(key.verify_key))


def load_allowed(path: str | os.PathLike[str]) -> frozenset[bytes]:
    """The operator's allow-list: one base64url Ed25519 identity key per line, `#` comments."""
    out = set()
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if text:
            out.add(_decode32(text, f"{path}:{n}: identity key"))
    return frozenset(out)


def write_allowed(path: str | os.PathLike[str], identities: Iterable[bytes]) -> None:
    lines = "".join(b64url_encode(k) + "\n" for k in identities)
    Path(path).write_text("# identity keys this directory admits (loopix directory --allow)\n" + lines)


# --- signed requests -----------------------------------------------------------------------------


def _request_message(path: str, body: bytes) -> bytes:
    return PRESENCE_DOMAIN + path.encode() + b"\n" + body


def sign_request(key: nacl.signing.SigningKey, path: str, body: bytes) -> str:
    """The signature header value for POSTing `body` to `path` (the path is signed: a presence
    cannot be replayed as a metrics report)."""
    return b64url_encode(key.sign(_request_message(path, body)).signature)


def _verify(public: bytes, message: bytes, signature: str) -> None:
    try:
        sig = b64url_decode(signature)
    except (B64Error, ValueError, TypeError):
        raise AuthError("signature is not base64url") from None
    if len(sig) != 64:
        raise AuthError("signature must be 64 bytes")
    try:
        nacl.signing.VerifyKey(public).verify(message, sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        raise AuthError("bad signature") from None


def verify_request(public: bytes, path: str, body: bytes, signature: str) -> None:
    _verify(public, _request_message(path, body), signature)


class ReplayWindow:
    """Per identity, timestamps must be within `window_ns` of now and strictly increasing, so a
    captured post is refused both inside the window (not newer) and after it (too old). Memory is
    one entry per identity that got through, i.e. bounded by the operator's allow-list."""

    def __init__(self, window_ns: int = REPLAY_WINDOW_NS) -> None:
        self.window_ns = window_ns
        self._last: dict[bytes, int] = {}

    def check(self, identity: bytes, timestamp_ns: int, now_ns: int) -> str | None:
        """Why this post is a replay or out of window, or None (and it is remembered)."""
        if abs(now_ns - timestamp_ns) > self.window_ns:
            return f"timestamp {timestamp_ns} is outside the {self.window_ns / 1e9:.0f}s window"
        last = self._last.get(identity)
        if last is not None and timestamp_ns <= last:
            return "replayed or reordered post (timestamp not newer than the last one)"
        self._last[identity] = timestamp_ns
        return None


# --- proof of possession of the Sphinx key --------------------------------------------------------


def exchange_public(directory_public: bytes) -> bytes:
    """The directory's X25519 key, derived from its Ed25519 key (nodes need only the latter)."""
    return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(directory_public)


def exchange_secret(key: nacl.signing.SigningKey) -> bytes:
    return nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(key._signing_key)


def proof_key(sphinx_secret: bytes, directory_public: bytes) -> bytes:
    """What a node derives once: X25519(its Sphinx secret, the directory's exchange key)."""
    return nacl.bindings.crypto_scalarmult(sphinx_secret, exchange_public(directory_public))


def key_proof(shared: bytes, identity: bytes, sphinx_public: bytes, timestamp_ns: int) -> str:
    """HMAC over (identity, Sphinx key, time) keyed by the X25519 secret only the holder of the
    Sphinx secret and the directory can compute: binds that Sphinx key to this identity."""
    msg = PROOF_DOMAIN + identity + sphinx_public + timestamp_ns.to_bytes(8, "big", signed=True)
    return b64url_encode(hmac.new(shared, msg, hashlib.sha256).digest())


def verify_key_proof(
    directory_exchange_secret: bytes,
    sphinx_public: bytes,
    identity: bytes,
    timestamp_ns: int,
    proof: str,
) -> None:
    try:
        shared = nacl.bindings.crypto_scalarmult(directory_exchange_secret, sphinx_public)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.CryptoError, ValueError):
        raise AuthError("announced Sphinx key is not a usable X25519 key") from None
    if not -(1 << 63) <= timestamp_ns < (1 << 63):
        raise AuthError("timestamp out of range")
    want = key_proof(shared, identity, sphinx_public, timestamp_ns)
    if not isinstance(proof, str) or not hmac.compare_digest(want.encode(), proof.encode()):
        raise AuthError("no proof of possession of the announced Sphinx key")


# --- the signed topology -------------------------------------------------------------------------


def _topology_message(body: bytes, time_ns: int) -> bytes:
    return TOPOLOGY_DOMAIN + str(time_ns).encode() + b"\n" + body


def sign_topology(key: nacl.signing.SigningKey, body: bytes, time_ns: int) -> str:
    return b64url_encode(key.sign(_topology_message(body, time_ns)).signature)


def verify_topology(
    directory_public: bytes,
    body: bytes,
    time_header: str | None,
    signature: str | None,
    now_ns: int,
    not_before_ns: int = 0,
    max_age_ns: int = TOPOLOGY_MAX_AGE_NS,
) -> int:
    """Check a topology against the pinned directory key; returns its signing time."""
    if not signature or not time_header:
        raise AuthError("the topology is not signed (the pinned directory key requires it)")
    try:
        time_ns = int(time_header)
    except ValueError:
        raise AuthError("topology time header is not an integer") from None
    _verify(directory_public, _topology_message(body, time_ns), signature)
    if now_ns - time_ns > max_age_ns or time_ns - now_ns > REPLAY_WINDOW_NS:
        raise AuthError("signed topology is stale or from the future")
    if time_ns < not_before_ns:
        raise AuthError("signed topology is older than one already accepted")
    return time_ns
