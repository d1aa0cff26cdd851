"""A writer process for ``test_outbox_faults.py``: ``python _outbox_writer.py``.

Configuration from the environment (``APPCONFIG_WRITER_*``). It warms up, prints
``ready``, then for each ``write <n>`` line on stdin updates the domain fragment
to ``{"v": n}`` and prints ``written <pending bumps>``. It never exits by itself:
the test kills it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from uuid import UUID

from sqlalchemy.ext.asyncio import create_async_engine

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentKey,
    AppConfigFragmentRepository,
    AppConfigScopeType,
    FragmentInput,
    make_valkey_client,
)


async def main() -> None:
    env = os.environ
    uid = UUID(env["APPCONFIG_WRITER_USER"])
    key = AppConfigFragmentKey(
        scope_type=AppConfigScopeType.DOMAIN, scope_id=env["APPCONFIG_WRITER_DOMAIN"], name="theme"
    )
    engine = create_async_engine(env["APPCONFIG_WRITER_DATABASE_URL"], pool_size=2)
    client = make_valkey_client(env["APPCONFIG_WRITER_VALKEY_URL"], socket_timeout=1.0)
    # Its own replayer stays out of the way: the test shows another process repairs.
    cache = AppConfigFragmentCacheSource(client, timeout=0.2, outbox_interval=3600.0)
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    await repo.app_config(uid, "theme")
    await cache.drain()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        n = int(line.split()[1])
        result = await repo.admin_bulk_update([FragmentInput(key=key, config={"v": n})])
        assert not result.failures, result.failures
        print(f"written {cache.stats.pending_bumps}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
