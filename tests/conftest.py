"""Shared test settings and helpers.

Hypothesis runs without per-example deadlines (the machine is noisy). Tests wait for conditions
with `wait_until` / `wait_until_async` (a deadline, never a fixed sleep) and get a testnet from
`make_testnet_fixture`. Test modules import the helpers with `from conftest import ...`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from loopix.testnet.launcher import Testnet

settings.register_profile(
    "loopix", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=40
)
settings.load_profile("loopix")

DEADLINE = 10.0
"""Seconds a condition gets before the test fails; generous, since the machine may be loaded."""

What = str | Callable[[], str]


def _timed_out(what: What, timeout: float) -> AssertionError:
    text = what() if callable(what) else what
    return AssertionError(f"timed out after {timeout:g}s waiting for {text}")


def wait_until(
    check: Callable[[], Any],
    what: What = "the condition",
    timeout: float = DEADLINE,
    interval: float = 0.05,
) -> Any:
    """Poll `check` until it returns something truthy, and return that; AssertionError naming
    `what` (a text, or a callable giving one with the values at the deadline) once `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout)
        time.sleep(interval)


async def wait_until_async(
    check: Callable[[], Any],
    what: What = "the condition",
    timeout: float = DEADLINE,
    interval: float = 0.05,
) -> Any:
    """`wait_until` for a running event loop: `check` may be a plain or an async callable."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout)
        await asyncio.sleep(interval)


def make_testnet_fixture(name: str, *, scope: str = "module", **options: Any):
    """A pytest fixture called `name` that runs `Testnet(**options)` for its scope and stops it
    (every process, port and file) afterwards. Assign it to the same name in the test module:

        net = make_testnet_fixture("net", layers=3, mixnodes_per_layer=1, providers=2)
    """

    @pytest.fixture(scope=scope, name=name)
    def _testnet():
        with Testnet(**options) as net:
            yield net

    return _testnet
