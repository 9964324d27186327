"""This installation's identity for the connect-time version check."""

from __future__ import annotations

import os

from .protocol import PROTOCOL, Hello, loopix_version

VERSION_OVERRIDE_ENV = "LOOPIX_DISTRIBUTED_VERSION"  # tests: pose as another loopix version


def local_hello() -> Hello:
    return Hello(os.environ.get(VERSION_OVERRIDE_ENV) or loopix_version(), PROTOCOL)
