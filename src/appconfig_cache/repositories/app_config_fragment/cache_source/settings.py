"""The cache source's settings, checked once when it is made."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ....errors import CacheSettingsError
from ....tiered.broadcast import is_cluster
from ....tiered.remote import CircuitBreaker


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """What :class:`AppConfigFragmentCacheSource` takes as keyword arguments (its
    docstring says what each means). Out-of-range values raise
    :class:`~appconfig_cache.CacheSettingsError`."""

    ttl: int = 600
    local_ttl: float = 2.0
    local_maxsize: int = 8192
    timeout: float = 0.5
    probe_timeout: float = 2.0
    max_value_bytes: int = 512 * 1024
    breaker_window: int = 20
    breaker_threshold: int = 5
    breaker_min_calls: int = 5
    breaker_cooldown: float = 5.0
    log_interval: float = 10.0
    parse_memo_size: int = 1024
    wait_replicas: int = 0
    wait_timeout: float = 0.1
    broadcast: bool = False
    local_maxbytes: int = 160 * 1024 * 1024
    parse_memo_maxbytes: int = 16 * 1024 * 1024
    timer: Callable[[], float] = field(default=time.monotonic)
    # durable invalidation (I10)
    retry_interval: float = 0.5
    outbox_grace: float = 2.0
    outbox_interval: float = 1.0
    outbox_batch: int = 500

    def __post_init__(self) -> None:
        if not isinstance(self.ttl, int) or self.ttl < 1:
            raise CacheSettingsError(
                f"ttl must be a whole number of seconds >= 1, got {self.ttl!r}"
            )
        if self.local_ttl < 0 or self.local_maxsize < 0 or self.parse_memo_size < 0:
            raise CacheSettingsError("local_ttl, local_maxsize and parse_memo_size must be >= 0")
        if self.timeout <= 0 or self.probe_timeout <= 0 or self.max_value_bytes < 1:
            raise CacheSettingsError("timeout, probe_timeout and max_value_bytes must be > 0")
        if self.wait_replicas < 0 or self.wait_timeout <= 0:
            raise CacheSettingsError("wait_replicas must be >= 0 and wait_timeout > 0")
        if not (isinstance(self.local_maxbytes, int) and isinstance(self.parse_memo_maxbytes, int)):
            raise CacheSettingsError("local_maxbytes and parse_memo_maxbytes must be whole bytes")
        if self.local_maxbytes < 0 or self.parse_memo_maxbytes < 0:
            raise CacheSettingsError("local_maxbytes and parse_memo_maxbytes must be >= 0")
        if self.retry_interval <= 0 or self.outbox_interval <= 0 or self.outbox_grace < 0:
            raise CacheSettingsError(
                "retry_interval and outbox_interval must be > 0, outbox_grace >= 0"
            )
        if not isinstance(self.outbox_batch, int) or self.outbox_batch < 1:
            raise CacheSettingsError(f"outbox_batch must be >= 1, got {self.outbox_batch!r}")

    def check_client(self, client: Any) -> None:
        if self.wait_replicas and is_cluster(client):
            raise CacheSettingsError(
                "wait_replicas is not supported on ValkeyCluster: WAIT must run on the "
                "connection of every node that took a bump (see docs/deployment.rst)"
            )

    def breaker(self) -> CircuitBreaker:
        try:
            return CircuitBreaker(
                window=self.breaker_window,
                failure_threshold=self.breaker_threshold,
                min_calls=self.breaker_min_calls,
                cooldown=self.breaker_cooldown,
                timer=self.timer,
            )
        except ValueError as exc:
            raise CacheSettingsError(str(exc)) from None

    @property
    def wait_ms(self) -> int:
        return max(1, round(self.wait_timeout * 1000))
