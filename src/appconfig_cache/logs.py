"""Logging that turns a cache failure into one throttled line: :func:`suppress_with_log`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["LogThrottle", "suppress_with_log"]


class LogThrottle:
    """Lets one warning per key through every ``interval`` seconds and counts the rest.

    Lives on the object that logs (no module state), so a Valkey outage that
    fails thousands of requests writes a handful of lines, each saying how
    many were folded into it.
    """

    __slots__ = ("_last", "_suppressed", "interval", "timer")

    def __init__(self, interval: float = 10.0, timer: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.timer = timer
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """Return how many were folded since the last line, or None to stay quiet."""
        now = self.timer()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if len(self._last) > 1024:  # keys are a few fixed strings; never grow unbounded
            self._last.clear()
        self._last[key] = now
        return self._suppressed.pop(key, 0)


@contextmanager
def suppress_with_log(
    exc_types: type[BaseException] | tuple[type[BaseException], ...],
    message: str,
    *,
    logger: logging.Logger,
    level: int = logging.WARNING,
    throttle: LogThrottle | None = None,
    on_error: Callable[[BaseException], None] | None = None,
) -> Iterator[None]:
    """Swallow ``exc_types`` raised in the block, log them, and call ``on_error``.

    This is how a cache failure becomes a miss instead of a failed request.
    ``asyncio.CancelledError`` is never swallowed unless asked for by name.
    """
    try:
        yield
    except exc_types as exc:
        if on_error is not None:
            on_error(exc)
        folded = throttle.allow(message) if throttle is not None else 0
        if folded is not None and logger.isEnabledFor(level):
            extra = f" ({folded} more since the last report)" if folded else ""
            logger.log(level, "%s: %s: %s%s", message, type(exc).__name__, exc, extra)
