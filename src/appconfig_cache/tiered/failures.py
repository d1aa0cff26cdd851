"""How the cache reports its own failures: one throttled log line, never an exception."""

from __future__ import annotations

import logging

from ..logs import LogThrottle, suppress_with_log
from .stats import CacheStats

_logger = logging.getLogger("appconfig_cache.cache")


class Failures:
    """Logs a cache failure (throttled) and counts rejected payloads."""

    def __init__(self, stats: CacheStats, throttle: LogThrottle) -> None:
        self._stats = stats
        self._throttle = throttle

    def log(self, message: str, exc: BaseException) -> None:
        with suppress_with_log(Exception, message, logger=_logger, throttle=self._throttle):
            raise exc

    def reject(self, message: str, exc: BaseException) -> None:
        """A payload from Valkey that is not ours, or not well formed: never served."""
        self._stats.envelopes_rejected += 1
        self.log(message, exc)
