"""Writing files that hold secrets or settings: atomically and 0600 from the first byte."""

from __future__ import annotations

import os
from pathlib import Path


def write_private_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write via a 0600 temp file beside `path`, fsync, and rename, so no reader ever sees the
    file partial or more open than 0600."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # exact mode whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
