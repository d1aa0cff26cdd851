"""CPU saturation is not a Valkey failure.

64 concurrent requests share the event loop with CPU hogs (coroutines that
busy-loop a few milliseconds between awaits), so every await is late and the
Valkey time budget runs out although Valkey answers at once. The breaker must
forgive those timeouts (the health probe answers) and stay closed; with the
same settings and load, a paused Valkey must still open it.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import AppConfigData, AppConfigFragmentRepository
from appconfig_cache.embedded import EmbeddedValkey
from tests.support.clock import FakeClock
from tests.support.polling import wait_for

from .conftest import (
    Stack,
    StackFactory,
    belongs_to,
    seed_population,
)

pytestmark = pytest.mark.slow

CONCURRENCY = 64
HOGS = 4
BUSY = 0.004  # seconds of CPU per hog step
#: the same cache settings for the healthy and the paused run: a budget the hogs overrun
SETTINGS: dict[str, Any] = {"local_maxsize": 0, "timeout": 0.02, "probe_timeout": 1.0}


@asynccontextmanager
async def cpu_hogs(n: int = HOGS) -> AsyncIterator[list[int]]:
    """Coroutines on this loop that burn ``BUSY`` seconds of CPU between awaits."""
    stop = asyncio.Event()
    steps = [0] * n

    async def hog(i: int) -> None:
        while not stop.is_set():
            end = time.perf_counter() + BUSY
            while time.perf_counter() < end:
                pass
            steps[i] += 1
            await asyncio.sleep(0)

    tasks = [asyncio.get_running_loop().create_task(hog(i)) for i in range(n)]
    try:
        yield steps
    finally:
        stop.set()
        await asyncio.gather(*tasks)


class Saturation:
    """``CONCURRENCY`` workers reading through the cache, each answer checked."""

    def __init__(self, stack: Stack, expected: dict[tuple[uuid.UUID, str], AppConfigData]):
        self.stack = stack
        self.expected = expected
        self.keys = list(expected)
        self.requests = 0
        self.failures: list[BaseException] = []
        self.wrong: list[Any] = []
        self.worst = 0.0
        self.stop = asyncio.Event()

    async def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            uid, name = rng.choice(self.keys)
            start = time.perf_counter()
            try:
                view = await self.stack.repo.app_config(uid, name)
            except Exception as exc:
                self.failures.append(exc)
                continue
            finally:
                self.requests += 1
                self.worst = max(self.worst, time.perf_counter() - start)
            if view != self.expected[(uid, name)] or not belongs_to(view, uid, name):
                self.wrong.append((uid, name, view))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self.worker(i)) for i in range(CONCURRENCY)]
        try:
            yield
        finally:
            self.stop.set()
            await asyncio.gather(*tasks)

    def report(self, label: str) -> None:
        stats = self.stack.cache.stats
        print(
            f"[fault] {label}: requests={self.requests} failed={len(self.failures)} "
            f"wrong={len(self.wrong)} worst_latency={self.worst * 1000:.1f}ms "
            f"valkey_timeouts={stats.valkey_timeouts} forgiven={stats.timeouts_forgiven} "
            f"valkey_errors={stats.valkey_errors} breaker_opens={stats.breaker_opens}"
        )

    def check(self) -> None:
        assert self.failures == [], self.failures[:3]
        assert self.wrong == [], self.wrong[:2]


async def _setup(
    engine: AsyncEngine, url: str, make_stack: StackFactory
) -> tuple[Stack, Saturation]:
    population = await seed_population(engine, users=16)
    oracle = AppConfigFragmentRepository(engine)
    expected = {
        (u, n): await oracle.app_config(u, n) for u in population.users for n in population.names
    }
    stack = await make_stack(url, timer=FakeClock(), **SETTINGS)
    for _ in range(2):  # learn the domains, then fill Valkey
        for uid, name in expected:
            await stack.repo.app_config(uid, name)
        await stack.cache.drain()
    return stack, Saturation(stack, expected)


async def test_saturated_loop_with_healthy_valkey_keeps_the_breaker_closed(
    engine: AsyncEngine, valkey_url: str, make_stack: StackFactory
) -> None:
    stack, load = await _setup(engine, valkey_url, make_stack)
    cache = stack.cache
    async with cpu_hogs() as steps, load.running():
        # Run until the budget has tripped and been forgiven a good number of times.
        await wait_for(
            lambda: cache.stats.timeouts_forgiven >= 20 and load.requests >= 600,
            timeout=20.0,
            what="saturation to cause forgiven timeouts",
        )
    stats = cache.stats
    load.report(f"CPU saturation, healthy Valkey ({sum(steps)} hog steps)")
    load.check()
    assert stats.valkey_timeouts > 0  # the loop really was late
    assert stats.valkey_errors == 0
    assert stats.breaker_opens == 0 and stats.breaker_state == "closed"
    assert stats.l2_hits > 0


async def test_saturated_loop_with_paused_valkey_opens_the_breaker(
    engine: AsyncEngine,
    valkey_url: str,
    embedded_valkey_server: EmbeddedValkey,
    make_stack: StackFactory,
) -> None:
    server = embedded_valkey_server
    stack, load = await _setup(engine, server.url, make_stack)
    cache = stack.cache
    async with cpu_hogs() as steps, load.running():
        await wait_for(lambda: load.requests >= 150, what="load to run")
        server.pause()
        try:
            await wait_for(lambda: cache.stats.breaker_state == "open", what="the breaker to open")
            opened_at = load.requests
            await wait_for(lambda: load.requests >= opened_at + 200, what="load while open")
            calls = stack.calls.data_round_trips
            await wait_for(lambda: load.requests >= opened_at + 500, what="more load")
            assert stack.calls.data_round_trips == calls  # open: nobody waits on Valkey
        finally:
            server.resume()
    stats = cache.stats
    load.report(f"CPU saturation, paused Valkey ({sum(steps)} hog steps)")
    load.check()
    assert stats.breaker_opens == 1
    assert stats.valkey_errors > 0
