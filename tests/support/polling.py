"""Waiting for a condition that another task or process makes true, bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float = 10.0,
    step: Callable[[], Awaitable[Any]] | None = None,
    what: str = "condition",
) -> None:
    """Poll ``condition`` (running ``step`` between polls) until it holds; bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if step is not None:
            await step()
        else:
            await asyncio.sleep(0.01)
