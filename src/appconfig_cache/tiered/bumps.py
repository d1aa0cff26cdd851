"""Generation bumps: the Valkey half of every invalidation, and its replay.

A bump is one ``INCR`` per generation key, in one pipeline for all of an
invalidation's keys (with the broadcast's message and ``WAIT`` when those are
on). A bump that cannot reach Valkey stays *pending*: this process does not
trust Valkey again (no lookups, no fills) until the pending bumps have been
replayed, so it never serves a view its own write outdated (I2).

Pending bumps are also replayed by a *recovery* task, without waiting for a
read: every ``retry_interval`` seconds it asks Valkey (a ``PING`` if the
breaker is open, which closes it when answered) and replays, until nothing is
pending. An idle process thus repairs its bumps within about one interval of
Valkey answering again. A bump that Valkey took but could not replicate
(``WAIT``) is retried once per cool-down, as by reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

from . import keys
from .broadcast import Broadcast
from .commands import Commands
from .failures import Failures
from .readings import Readings
from .remote import BreakerState
from .stats import CacheStats
from .tasks import Background, Slot

_logger = logging.getLogger("appconfig_cache.cache")
_RANDOM = random.SystemRandom()


def gen_base() -> int:
    """A random base for a generation key that does not exist yet: after a restart
    or an eviction the counter starts somewhere no old envelope names."""
    return _RANDOM.getrandbits(62)


class NotReplicated(Exception):
    """WAIT returned before enough replicas acknowledged the bump."""


@dataclass(eq=False)
class Bumps:
    """Sends bumps, keeps the ones that failed, and replays them before Valkey is used."""

    commands: Commands
    readings: Readings
    background: Background
    stats: CacheStats
    failures: Failures
    _: KW_ONLY
    broadcast: Broadcast | None
    wait_replicas: int
    wait_ms: int
    timer: Callable[[], float]
    retry_interval: float = 0.5

    def __post_init__(self) -> None:
        self._remote = self.commands.remote
        self._pending: set[str] = set()  # generation keys whose bump did not reach Valkey
        self._replay = Slot(self.background, self._replay_once)
        self._next_replay_at = float("-inf")
        self._forced = False  # the recovery task's replay ignores the reads' cool-down
        self._not_replicated = False  # the last failure: Valkey answered, WAIT fell short
        # Not in ``background``: it lives as long as Valkey is away, and drain() must not.
        self._recovery: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """How many generation keys wait to be bumped in Valkey."""
        return len(self._pending)

    @property
    def settled(self) -> bool:
        """Nothing pending and the breaker closed (asks nothing, takes no trial slot)."""
        return not self._pending and self._remote.breaker.state is BreakerState.CLOSED

    async def bump(self, gen_keys: list[str]) -> bool:
        """INCR each generation now, with any pending ones; keep them pending on failure.

        Returns whether Valkey acknowledged the bumps of ``gen_keys``.
        """
        self._count(gen_keys)
        request = self.readings.next_request()
        if self._remote.available():
            await self._send(gen_keys, request, self.timer())
        else:
            self._defer(gen_keys, request)
        return self._pending.isdisjoint(gen_keys)

    def later(self, gen_keys: list[str]) -> None:
        """Count the invalidation, and leave its bumps pending for the next read to replay."""
        self._count(gen_keys)
        self._defer(gen_keys, self.readings.next_request())

    def _count(self, gen_keys: list[str]) -> None:
        stats = self.stats
        stats.invalidations += len(gen_keys)
        for key in gen_keys:
            parsed = keys.parse_gen_key(key)
            if parsed is not None:
                field = f"invalidations_{parsed.kind}"
                setattr(stats, field, getattr(stats, field) + 1)

    async def catch_up(self) -> bool:
        """Replay pending bumps (if any); return whether Valkey may be used now."""
        if not self._pending:
            return self._remote.available()
        return await asyncio.shield(self._replay.start())

    async def _replay_once(self) -> bool:
        # One attempt per cool-down: a Valkey that takes the bump but cannot
        # replicate it (WAIT) must not cost every read a round trip.
        now = self.timer()
        forced, self._forced = self._forced, False
        if (now < self._next_replay_at and not forced) or not self._remote.available():
            return False
        await self._send([], self.readings.next_request(), now)
        return not self._pending

    async def _send(self, gen_keys: list[str], request: int, now: float) -> None:
        todo = list(dict.fromkeys([*self._pending, *gen_keys]))
        if not todo:
            return
        broadcast = self.broadcast
        if broadcast is not None:
            broadcast.ensure_started()
        try:
            reply = await self.commands.bump(
                {key: gen_base() for key in todo},
                publish=None if broadcast is None else broadcast.publish_command(todo),
                wait_replicas=self.wait_replicas,
                wait_ms=self.wait_ms,
            )
            if reply.replicas is not None and reply.replicas < self.wait_replicas:
                raise NotReplicated(
                    f"{reply.replicas} of {self.wait_replicas} replicas acknowledged"
                )
        except BaseException as exc:  # replayed before Valkey is trusted again
            self._not_replicated = isinstance(exc, NotReplicated)
            self._defer(todo, request)
            # At most one replay attempt per cool-down (a WAIT that nobody answers
            # must not cost every following read another wait_timeout).
            self._next_replay_at = now + self._remote.breaker.cooldown
            if not isinstance(exc, Exception):
                raise  # cancelled after the DB commit: the bump stays pending
            self.failures.log("valkey invalidation failed; will replay", exc)
            return
        # Numbered after the reply: a GET sent while the INCR was in flight may be
        # answered after it, and must not put the old value back.
        request = self.readings.next_request()
        for key, value in zip(todo, reply.gens, strict=True):
            if not key.startswith(keys.USER_GEN_PREFIX):
                self.readings.put(key, value, now, request)
        self._pending.difference_update(todo)
        if _logger.isEnabledFor(logging.DEBUG):
            _logger.debug("bumped %s", todo)

    def _defer(self, gen_keys: list[str], request: int) -> None:
        for key in gen_keys:
            self._pending.add(key)
            self.readings.forget(key, request)
        if self._pending and (self._recovery is None or self._recovery.done()):
            with contextlib.suppress(RuntimeError):  # no event loop: reads replay instead
                self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Replay pending bumps as soon as Valkey answers, read or no read."""
        while self._pending:
            await asyncio.sleep(self.retry_interval)
            if self._not_replicated and self.timer() < self._next_replay_at:
                continue  # Valkey is up; its replicas are not: once per cool-down
            # Not available(): past the cool-down it would take the half-open trial
            # slot, which the replay's own available() then finds taken.
            breaker_closed = self._remote.breaker.state is BreakerState.CLOSED
            if not breaker_closed and not await self._remote.probe_now():
                continue
            try:
                running = self._replay.running
                if running is None:
                    self._forced = True
                    running = self._replay.start()
                await running
            except Exception as exc:  # _send logs Valkey's failures; this is a bug
                self.failures.log("bump replay failed", exc)

    async def aclose(self) -> None:
        """Stop the recovery task (pending bumps stay pending)."""
        task, self._recovery = self._recovery, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
