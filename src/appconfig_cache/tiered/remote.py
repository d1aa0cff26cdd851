"""Budgeted Valkey calls and the circuit breaker.

The breaker counts only what is Valkey's fault, over a sliding window of
calls with a minimum number of calls:

- connection refused or reset, protocol garbage: a failure, counted at once;
- a timeout: *suspect*. Under CPU saturation the event loop itself delays
  every await, so a timeout alone does not say Valkey is slow. One health
  probe (``PING`` with a longer deadline) runs in the background: if it
  answers, the timeouts are forgiven; if it does not, Valkey really hangs and
  the breaker opens at once;
- a full Valkey (``OOM``) or a wrong-type reply is not an availability
  problem: it is logged, never counted.

Open, the breaker skips Valkey for ``cooldown`` seconds; then one trial call
decides between closing again and another cool-down. A process with pending
bumps does not wait that long: its recovery task pings (:meth:`Remote.probe_now`)
and an answer closes the breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import valkey.exceptions as vex

from .stats import CacheStats

_logger = logging.getLogger("appconfig_cache.cache")

#: errors that say Valkey is unreachable or talking garbage
UNAVAILABLE: tuple[type[BaseException], ...] = (
    vex.ConnectionError,
    vex.InvalidResponse,
    vex.ClusterError,
    OSError,
)
#: errors that say a reply did not come in time
TIMEOUTS: tuple[type[BaseException], ...] = (vex.TimeoutError, TimeoutError)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Sliding-window breaker with a cool-down and a single half-open trial."""

    def __init__(
        self,
        *,
        window: int = 20,
        failure_threshold: int = 5,
        min_calls: int = 5,
        cooldown: float = 5.0,
        timer: Callable[[], float],
    ) -> None:
        if failure_threshold < 1 or window < failure_threshold or min_calls < 1:
            raise ValueError("breaker needs 1 <= failure_threshold <= window and min_calls >= 1")
        self.window = window
        self.failure_threshold = failure_threshold
        self.min_calls = min_calls
        self.cooldown = cooldown
        self.timer = timer
        self.state = BreakerState.CLOSED
        self.opens = 0
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._opened_at = 0.0
        self._trial_running = False

    def allow(self) -> bool:
        """May a call go to Valkey now? In half-open state only one trial may."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self.timer() - self._opened_at < self.cooldown:
                return False
            self.state = BreakerState.HALF_OPEN
            self._trial_running = False
        if self._trial_running:
            return False
        self._trial_running = True
        return True

    def success(self) -> None:
        if self.state is not BreakerState.CLOSED:
            self.state = BreakerState.CLOSED
            self._outcomes.clear()
            self._trial_running = False
            _logger.warning("valkey is back: circuit breaker closed")
        self._outcomes.append(True)

    def failure(self) -> None:
        if self.state is not BreakerState.CLOSED:
            self._open()
            return
        self._outcomes.append(False)
        failures = self._outcomes.count(False)
        if len(self._outcomes) >= self.min_calls and failures >= self.failure_threshold:
            self._open()

    def abandon(self) -> None:
        """The half-open trial call was cancelled: let the next call try instead."""
        if self.state is BreakerState.HALF_OPEN:
            self._trial_running = False

    def trip(self) -> None:
        """Open now: a hang was confirmed."""
        self._open()

    def _open(self) -> None:
        if self.state is not BreakerState.OPEN:
            self.opens += 1
            _logger.warning("valkey is failing: circuit breaker open for %.1fs", self.cooldown)
        self.state = BreakerState.OPEN
        self._opened_at = self.timer()
        self._trial_running = False
        self._outcomes.clear()


class Remote:
    """Runs Valkey calls under a time budget, feeds the breaker and counts errors."""

    def __init__(
        self,
        client: Any,
        breaker: CircuitBreaker,
        stats: CacheStats,
        *,
        timeout: float,
        probe_timeout: float,
    ) -> None:
        self.client = client
        self.breaker = breaker
        self.stats = stats
        self.timeout = timeout
        self.probe_timeout = probe_timeout
        self._probe: asyncio.Task[None] | None = None
        self._suspect_timeouts = 0
        #: called when Valkey looked unreachable (it may have restarted)
        self.on_unavailable: Callable[[], None] = lambda: None
        #: given the seconds of each answered round trip (None: nothing is timed)
        self.observe_round_trip: Callable[[float], None] | None = None

    def available(self) -> bool:
        return self.breaker.allow()

    async def call(self, make: Callable[[], Awaitable[Any]], *, extra_time: float = 0.0) -> Any:
        """Await ``make()`` within the budget (plus ``extra_time`` the server may block).

        Failures are classified, then re-raised.
        """
        observe = self.observe_round_trip
        started = time.perf_counter() if observe is not None else 0.0
        try:
            async with asyncio.timeout(self.timeout + extra_time):
                result = await make()
        except TIMEOUTS:
            self.stats.valkey_timeouts += 1
            self._suspect()
            raise
        except UNAVAILABLE:
            self.stats.valkey_errors += 1
            self.breaker.failure()
            self.on_unavailable()
            raise
        except Exception:
            # OOM, WRONGTYPE, an odd reply: Valkey answered, so it is up.
            self.stats.valkey_refusals += 1
            self.breaker.success()
            raise
        except BaseException:
            # Cancelled by our caller: no verdict on Valkey, but a half-open
            # trial must not stay "running" forever.
            self.breaker.abandon()
            raise
        self.breaker.success()
        if observe is not None:
            observe(time.perf_counter() - started)
        return result

    def _suspect(self) -> None:
        if self.breaker.state is not BreakerState.CLOSED:
            self.stats.valkey_errors += 1
            self.breaker.failure()  # the half-open trial timed out
            return
        self._suspect_timeouts += 1
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._run_probe())

    async def _run_probe(self) -> None:
        try:
            async with asyncio.timeout(self.probe_timeout):
                await self.client.ping()
        except asyncio.CancelledError:
            raise
        except Exception:
            confirmed, self._suspect_timeouts = self._suspect_timeouts, 0
            self.stats.valkey_errors += confirmed + 1
            self.breaker.trip()
            return
        forgiven, self._suspect_timeouts = self._suspect_timeouts, 0
        self.stats.timeouts_forgiven += forgiven

    async def probe_now(self) -> bool:
        """``PING`` within the probe deadline; an answer closes the breaker (Valkey is back)."""
        try:
            async with asyncio.timeout(self.probe_timeout):
                await self.client.ping()
        except asyncio.CancelledError:
            raise
        except Exception:
            return False
        self.breaker.success()
        return True

    async def aclose(self) -> None:
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
