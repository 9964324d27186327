"""URL-safe base64 for public keys, the way the nym directory and the 2019 client spell them.

Keys travel padded (44 characters for 32 bytes). We decode padded and unpadded input alike, but we
refuse anything outside the URL-safe alphabet instead of silently skipping it as the standard library
does, so a mangled key is reported rather than turned into a different key.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["B64Error", "b64url_decode", "b64url_encode"]

_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


class B64Error(ValueError):
    """Raised for text that is not URL-safe base64."""


def b64url_encode(data: bytes) -> str:
    """Padded URL-safe base64 (44 characters for a 32-byte key)."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64url_decode(text: str | bytes) -> bytes:
    """Decode padded or unpadded URL-safe base64; raise `B64Error` saying what is wrong."""
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise B64Error("base64url text contains non-ASCII bytes") from None
    if not isinstance(text, str):
        raise B64Error(f"expected base64url text, got {type(text).__name__}")
    body = text.rstrip("=")
    pad = len(text) - len(body)
    if not _ALPHABET.fullmatch(body):
        bad = next(c for c in body if not (c.isascii() and (c.isalnum() or c in "-_")))
        raise B64Error(f"invalid character {bad!r} in base64url text")
    if len(body) % 4 == 1:
        raise B64Error(f"base64url text has an impossible length ({len(body)} characters)")
    need = -len(body) % 4
    if pad and pad != need:
        raise B64Error(f"wrong base64url padding ({pad} '=' for {len(body)} characters)")
    try:
        return base64.urlsafe_b64decode(body + "=" * need)
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - guarded above
        raise B64Error(f"invalid base64url text: {exc}") from None
