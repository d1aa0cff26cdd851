"""Single flight: concurrent misses of one key share one load (I9)."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

V = TypeVar("V")


class Flight(Generic[V]):
    """One in-flight load of one key.

    ``since`` orders it against other events, on its owner's counter: the local
    invalidation version for views, the request number for shared parts.
    """

    __slots__ = ("future", "since")

    def __init__(self, since: int, future: asyncio.Future[V]) -> None:
        self.since = since
        self.future = future


class Flights(Generic[V]):
    """The flights of one cache source, by key."""

    def __init__(self) -> None:
        self._by_key: dict[Hashable, Flight[V]] = {}

    def get(self, key: Hashable) -> Flight[V] | None:
        return self._by_key.get(key)

    def start(self, key: Hashable, since: int) -> Flight[V]:
        flight = Flight(since, asyncio.get_running_loop().create_future())
        self._by_key[key] = flight
        return flight

    def finish(self, key: Hashable, flight: Flight[V]) -> None:
        if self._by_key.get(key) is flight:
            del self._by_key[key]

    def __len__(self) -> int:
        return len(self._by_key)


class LeaderCancelled:
    """What :func:`wait_flight` returns when the task it waited for was cancelled."""


LEADER_CANCELLED: Final = LeaderCancelled()


async def wait_flight(future: asyncio.Future[V]) -> V | LeaderCancelled:
    """Wait for another task's load, or learn that it was cancelled (and this task was
    not): then :data:`LEADER_CANCELLED`, and the caller loads it itself.

    Shielded: a cancelled waiter does not cancel the load the others wait for.
    """
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not future.cancelled() or (task is not None and task.cancelling()):
            raise
    return LEADER_CANCELLED


def settle(future: asyncio.Future[V], exc: BaseException) -> None:
    """Fail ``future`` without the 'exception was never retrieved' noise if nobody waits."""
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
        return
    future.set_exception(exc)
    future.exception()  # marks it retrieved; waiters still get the exception
