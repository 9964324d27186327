"""Sphinx X25519 key pairs and the PEM files the 2019 Go client wrote.

The PEM body is the raw 32-byte key (no ASN.1), under the types below, so key files stay
interchangeable with the original `loopix-client`. The codec is ours and strict: a key file
that is not exactly what we expect is refused with a message naming the file, because a
silently misread key means a client nobody can reach.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from nacl.bindings import crypto_scalarmult_base

from loopix.fileio import write_private_file
from loopix.sphinx.constants import KEY_SIZE

__all__ = [
    "KEY_SIZE",
    "PEM_PRIVATE",
    "PEM_PUBLIC",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "KeyFileError",
    "KeyPair",
    "generate_keypair",
    "key_from_b64url",
    "key_to_b64url",
    "load_keypair",
    "pem_decode",
    "pem_encode",
    "public_from_secret",
    "read_private_key",
    "read_public_key",
    "save_keypair",
    "write_private_key",
    "write_public_key",
]

PEM_PRIVATE = "SPHINX CURVE25519 PRIVATE KEY"
PEM_PUBLIC = "SPHINX CURVE25519 PUBLIC KEY"
PRIVATE_KEY_FILE = "private_key.pem"
PUBLIC_KEY_FILE = "public_key.pem"

_PEM_LINE = 64
_MAX_FILE = 64 * 1024  # a key file is ~100 bytes; refuse to slurp anything huge
_TYPE_RE = re.compile(r"[A-Z0-9]+(?: [A-Z0-9]+)*")
_BEGIN_RE = re.compile(r"-----BEGIN (.*)-----")
_END_RE = re.compile(r"-----END (.*)-----")


class KeyFileError(Exception):
    """A key file is missing, malformed, of the wrong type, or too widely readable."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An X25519 key pair; `repr` hides the secret so it never lands in a log."""

    secret: bytes = field(repr=False)
    public: bytes

    def __post_init__(self) -> None:
        for name in ("secret", "public"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != KEY_SIZE:
                raise ValueError(f"KeyPair.{name} must be {KEY_SIZE} bytes")

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyPair:
        """Rebuild a pair from its secret alone (the public key is derived)."""
        return cls(secret=bytes(secret), public=public_from_secret(secret))


def public_from_secret(secret: bytes) -> bytes:
    """The X25519 base-point multiple of `secret` (clamped as X25519 always does)."""
    if len(secret) != KEY_SIZE:
        raise ValueError(f"a secret key must be {KEY_SIZE} bytes")
    return crypto_scalarmult_base(bytes(secret))


def generate_keypair() -> KeyPair:
    """A fresh key pair from the OS CSPRNG."""
    return KeyPair.from_secret(os.urandom(KEY_SIZE))


# --- base64url, as the directory and the config carry keys --------------------------------


def key_to_b64url(key: bytes) -> str:
    """Padded URL-safe base64 (44 chars for a key), the form Go's `base64.URLEncoding` gives."""
    return base64.urlsafe_b64encode(key).decode("ascii")


def key_from_b64url(text: str) -> bytes:
    """Decode a 32-byte key from URL-safe base64, padded or not; ValueError otherwise."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
        raise ValueError("not URL-safe base64")
    body = text.rstrip("=")
    try:
        key = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not URL-safe base64") from None
    if len(key) != KEY_SIZE or key_to_b64url(key).rstrip("=") != body:
        raise ValueError(f"must decode to {KEY_SIZE} bytes")
    return key


# --- PEM ----------------------------------------------------------------------------------


def pem_encode(pem_type: str, body: bytes) -> str:
    """One PEM block: BEGIN line, base64 body in 64-char lines, END line, final newline."""
    if not _TYPE_RE.fullmatch(pem_type):
        raise ValueError(f"invalid PEM type {pem_type!r}")
    b64 = base64.b64encode(body).decode("ascii")
    lines = [b64[i : i + _PEM_LINE] for i in range(0, len(b64), _PEM_LINE)]
    return "\n".join([f"-----BEGIN {pem_type}-----", *lines, f"-----END {pem_type}-----", ""])


def pem_decode(
    text: str, pem_type: str, *, source: str = "<pem>", size: int | None = None
) -> bytes:
    """The body of the single PEM block in `text`, which must be of `pem_type`.

    Accepts any line width and CRLF; rejects headers, stray text, and bad base64.
    `source` names the file in errors; `size`, if given, is the exact body length.
    """
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 2:
        raise KeyFileError(f"{source}: not a PEM file (no BEGIN/END lines)")
    begin, end = _BEGIN_RE.fullmatch(lines[0]), _END_RE.fullmatch(lines[-1])
    if begin is None or end is None:
        raise KeyFileError(f"{source}: not a PEM file (no BEGIN/END lines)")
    if begin[1] != end[1]:
        raise KeyFileError(f"{source}: PEM BEGIN type {begin[1]!r} does not match END {end[1]!r}")
    if begin[1] != pem_type:
        raise KeyFileError(f"{source}: expected PEM type {pem_type!r}, found {begin[1]!r}")
    b64 = "".join(lines[1:-1])
    try:
        body = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{source}: PEM body is not valid base64") from None
    if size is not None and len(body) != size:
        raise KeyFileError(f"{source}: key must be {size} bytes, found {len(body)}")
    return body


# --- files --------------------------------------------------------------------------------


def _read_text(path: Path, *, private: bool) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode  # of what we opened, not of what the path names now
        if not stat.S_ISREG(mode):
            raise KeyFileError(f"{path}: not a regular file")
        if private and mode & 0o077:
            raise KeyFileError(
                f"{path}: permissions {stat.S_IMODE(mode):04o} are too open; a private key "
                "must not be accessible by group or others (run: chmod 600 on it)"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(_MAX_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE:
        raise KeyFileError(f"{path}: too large to be a key file")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a PEM file (non-ASCII content)") from None


def read_private_key(path: str | os.PathLike[str]) -> bytes:
    """The 32-byte secret in a `SPHINX CURVE25519 PRIVATE KEY` file that only its owner can read."""
    path = Path(path)
    return pem_decode(_read_text(path, private=True), PEM_PRIVATE, source=str(path), size=KEY_SIZE)


def read_public_key(path: str | os.PathLike[str]) -> bytes:
    """The 32-byte key in a `SPHINX CURVE25519 PUBLIC KEY` file."""
    path = Path(path)
    return pem_decode(_read_text(path, private=False), PEM_PUBLIC, source=str(path), size=KEY_SIZE)


def write_private_key(path: str | os.PathLike[str], secret: bytes) -> None:
    """Write a private key file, mode 0600 from its first byte."""
    if len(secret) != KEY_SIZE:
        raise ValueError(f"a secret key must be {KEY_SIZE} bytes")
    write_private_file(Path(path), pem_encode(PEM_PRIVATE, secret).encode("ascii"))


def write_public_key(path: str | os.PathLike[str], public: bytes) -> None:
    """Write a public key file (0600 too, as the Go client did)."""
    if len(public) != KEY_SIZE:
        raise ValueError(f"a public key must be {KEY_SIZE} bytes")
    write_private_file(Path(path), pem_encode(PEM_PUBLIC, public).encode("ascii"))


def save_keypair(
    keypair: KeyPair,
    directory: str | os.PathLike[str],
    *,
    private_name: str = PRIVATE_KEY_FILE,
    public_name: str = PUBLIC_KEY_FILE,
) -> tuple[Path, Path]:
    """Write both key files into an existing `directory`; returns (private path, public path)."""
    directory = Path(directory)
    private_path, public_path = directory / private_name, directory / public_name
    write_private_key(private_path, keypair.secret)
    write_public_key(public_path, keypair.public)
    return private_path, public_path


def load_keypair(
    directory: str | os.PathLike[str],
    *,
    private_name: str = PRIVATE_KEY_FILE,
    public_name: str = PUBLIC_KEY_FILE,
) -> KeyPair:
    """Read both key files and check that the public key belongs to the secret."""
    directory = Path(directory)
    secret = read_private_key(directory / private_name)
    public = read_public_key(directory / public_name)
    if public_from_secret(secret) != public:
        raise KeyFileError(
            f"{directory / public_name}: public key does not match the private key in "
            f"{directory / private_name}"
        )
    return KeyPair(secret=secret, public=public)
