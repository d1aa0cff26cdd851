"""The replayer: every cache source polls the outbox and applies what is due.

One poll is one indexed ``EXISTS`` on a normally empty table; the background
loop skips it while its process cannot use Valkey (``ready()`` is False). When rows are
due (older than ``grace``, so a live writer has had the time to bump and
delete its own), they are claimed in batches with ``FOR UPDATE SKIP LOCKED``,
applied (``apply`` bumps their generations) and deleted, one transaction per
batch. A batch whose bumps did not land is rolled back: its rows stay. A
database failure is counted and logged; the next poll tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from sqlalchemy.exc import SQLAlchemyError

from ..tiered.stats import CacheStats
from .store import NotApplied, OutboxRow, OutboxStore

__all__ = ["Replayer"]

Apply = Callable[[list[OutboxRow]], Awaitable[bool]]


class Replayer:
    """Polls one outbox every ``interval`` seconds (once started) and replays due rows."""

    def __init__(
        self,
        store: OutboxStore,
        apply: Apply,
        stats: CacheStats,
        log: Callable[[str, BaseException], None],
        ready: Callable[[], bool],
        *,
        grace: float,
        interval: float,
        batch: int,
    ) -> None:
        self.store, self.stats = store, stats
        self.grace, self.interval, self.batch = grace, interval, batch
        self._apply, self._log, self._ready = apply, log, ready
        self._task: asyncio.Task[None] | None = None
        self._landed = 0  # rows of the open batch whose bumps landed

    def ensure_started(self) -> None:
        """Start polling in the background (in the running event loop) if not yet."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def poll(
        self, *, grace: float | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        """Replay every due row now, batch after batch; return how many were replayed.

        Never raises for a Valkey or a database failure: the rows stay for later.
        """
        grace = self.grace if grace is None else grace
        stats, total = self.stats, 0
        try:
            if not await self.store.any_due(grace):
                stats.outbox_backlog = 0
                return 0
            while True:
                self._landed = 0
                done = await self.store.replay_batch(self.batch, grace, self._apply_batch)
                total += done
                stats.outbox_replayed += done
                if progress is not None:
                    progress(total)
                if done < self.batch:
                    break
            stats.outbox_backlog = 0
        except NotApplied:
            pass  # Valkey did not take the bumps: counted in outbox_backlog
        except (SQLAlchemyError, OSError) as exc:
            stats.outbox_errors += 1
            # Bumped, but the delete did not commit: the rows will be bumped again.
            stats.outbox_double_bumps += self._landed
            self._log("outbox replay failed; will retry", exc)
        return total

    async def _apply_batch(self, rows: list[OutboxRow]) -> bool:
        self.stats.outbox_backlog = len(rows)
        landed = await self._apply(rows)
        if landed:
            self._landed = len(rows)
        return landed

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self._ready():
                # This process cannot bump now (pending bumps, breaker open): its own
                # recovery comes first, and another process may replay meanwhile.
                continue
            try:
                await self.poll()
            except Exception as exc:  # a bug must not stop the backstop
                self._log("outbox replayer failed", exc)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
