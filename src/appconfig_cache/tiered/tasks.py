"""Background work: one place that spawns, tracks and drains a cache source's tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Background:
    """The tasks one cache source started and has not seen finish."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait until every task (and every task those start) has finished.

        Only unfinished tasks are awaited: since Python 3.12, ``gather()`` of
        futures that are all done completes without yielding, so a loop that
        re-gathers finished tasks whose done-callbacks have not run yet never
        lets them run, and spins.
        """
        while unfinished := [task for task in self._tasks if not task.done()]:
            await asyncio.wait(unfinished)

    def __len__(self) -> int:
        return sum(not task.done() for task in self._tasks)


class Slot(Generic[T]):
    """At most one task of one kind at a time (a refresh, a flush, a replay)."""

    def __init__(self, background: Background, work: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._background = background
        self._work = work
        self._task: asyncio.Task[T] | None = None

    @property
    def running(self) -> asyncio.Task[T] | None:
        task = self._task
        return None if task is None or task.done() else task

    def start(self) -> asyncio.Task[T]:
        """The running task, or a new one. Raises RuntimeError outside an event loop."""
        task = self.running
        if task is None:
            asyncio.get_running_loop()  # before the coroutine exists: none is left unawaited
            self._task = task = self._background.spawn(self._work())
        return task
