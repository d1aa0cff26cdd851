"""``drain()`` and ``aclose()`` return once the background work has finished.

Issue 16: on Python 3.12 and later, ``drain()`` spun at full CPU when a background
task had finished but its done-callbacks (which remove it from the cache source's
task set) had not run yet. Since 3.12, ``asyncio.gather`` of futures that are all
done completes without yielding, so the loop never let those callbacks run.

A spin never yields to the event loop, so no asyncio timeout can stop it: each
scenario runs in a child process (this file run as a script) that ``faulthandler``
stops, with a stack dump, if it has not finished in time.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    AppConfigScopeType,
    MyFragmentInput,
    make_valkey_client,
)

#: the child dumps its stacks and exits after this long (a healthy run takes about a second)
CHILD_DEADLINE = 60
#: the parent's backstop, should the child not even get as far as its watchdog
PARENT_TIMEOUT = 180


async def _background_done(before: set[asyncio.Task[object]]) -> None:
    """Poll, one loop iteration at a time, until the tasks started since ``before`` are done.

    The first poll that sees them done runs before their done-callbacks: exactly the
    moment at which ``drain()`` used to spin.
    """
    me = asyncio.current_task()
    started = asyncio.all_tasks() - before - {me}
    assert started, "the read started no background work: the scenario tests nothing"
    while not all(task.done() for task in started):
        await asyncio.sleep(0)


async def _scenario(close: str, valkey_url: str, database_url: str) -> None:
    engine = create_async_engine(database_url)
    client = make_valkey_client(valkey_url)
    cache = AppConfigFragmentCacheSource(client)
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    try:
        await AppConfigPolicyRepository(engine, cache_source=cache).create(
            "theme", [AppConfigScopeType.PUBLIC, AppConfigScopeType.USER]
        )
        user_id = uuid.uuid4()
        await repo.bulk_create_my(user_id, [MyFragmentInput(name="theme", config={"a": 1})])
        for _ in range(3):
            await cache.drain()
            before = asyncio.all_tasks()
            await cache.invalidate_for_scope(AppConfigScopeType.USER, str(user_id))
            # a miss: the view comes from PostgreSQL and a background task fills Valkey
            await repo.app_config(user_id, "theme")
            await _background_done(before)
            if close == "drain":
                await cache.drain()
            else:
                await cache.aclose()
                return
    finally:
        await client.aclose()
        await engine.dispose()


@pytest.mark.parametrize("close", ["drain", "aclose"])
def test_shutdown_right_after_background_work_returns(
    close: str, valkey_url: str, database_url: str, engine: AsyncEngine
) -> None:
    # ``engine`` creates the schema and empties the tables; the child has its own engine.
    child = subprocess.run(
        [sys.executable, __file__, close, valkey_url, database_url],
        capture_output=True,
        text=True,
        timeout=PARENT_TIMEOUT,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    assert child.returncode == 0, (
        f"{close}() did not return within {CHILD_DEADLINE} s (a spin or a hang); "
        f"the child's output:\n{child.stdout}\n{child.stderr}"
    )


if __name__ == "__main__":
    faulthandler.dump_traceback_later(CHILD_DEADLINE, exit=True)
    asyncio.run(_scenario(*sys.argv[1:4]))
