"""This installation's identity for the connect-time version check, and shared exit codes."""

from __future__ import annotations

import os

from .protocol import PROTOCOL, Hello, loopix_version

EXIT_NOT_STARTED = 2  # refused, too few workers, bad options: nothing was sent
VERSION_OVERRIDE_ENV = "LOOPIX_DISTRIBUTED_VERSION"  # tests: pose as another loopix version


def local_hello() -> Hello:
    return Hello(os.environ.get(VERSION_OVERRIDE_ENV) or loopix_version(), PROTOCOL)
