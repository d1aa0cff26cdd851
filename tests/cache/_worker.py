"""One OS process of ``test_processes.py``: ``python _worker.py writer|reader``.

Configuration comes from the environment (``APPCONFIG_WORKER_*``). The worker warms
up, prints ``ready``, waits for ``go`` on stdin, runs for the given duration and
prints one JSON line with what it did. Times are ``time.monotonic()``, which is the
same clock in every process of the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any
from uuid import UUID

from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentKey,
    AppConfigFragmentRepository,
    AppConfigScopeType,
    FragmentInput,
    make_valkey_client,
)


async def main(role: str) -> dict[str, Any]:
    env = os.environ
    uid = UUID(env["APPCONFIG_WORKER_USER"])
    domain = env["APPCONFIG_WORKER_DOMAIN"]
    local_ttl = float(env["APPCONFIG_WORKER_LOCAL_TTL"])
    duration = float(env["APPCONFIG_WORKER_DURATION"])
    interval = float(env["APPCONFIG_WORKER_WRITE_INTERVAL"])
    engine = create_async_engine(env["APPCONFIG_WORKER_DATABASE_URL"], pool_size=2)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # The outbox replayer's polls (app_config_outbox) are not loads.
        if "app_config" in statement and "app_config_outbox" not in statement:
            statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    client = make_valkey_client(
        env["APPCONFIG_WORKER_VALKEY_URL"], socket_timeout=2.0, socket_connect_timeout=2.0
    )
    broadcast = env.get("APPCONFIG_WORKER_BROADCAST") == "1"
    cache = AppConfigFragmentCacheSource(
        client, local_ttl=local_ttl, timeout=2.0, broadcast=broadcast
    )
    await cache.start()  # with the broadcast on: subscribed before the run starts
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    await repo.app_config(uid, "theme")  # connections open, the domain is known
    await cache.drain()
    statements.clear()
    loads_before = cache.stats.db_loads

    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    start = time.monotonic()
    out: dict[str, Any] = {"role": role, "pid": os.getpid()}
    if role == "writer":
        writes = []
        version = 1
        key = AppConfigFragmentKey(
            scope_type=AppConfigScopeType.DOMAIN, scope_id=domain, name="theme"
        )
        while time.monotonic() - start < duration:
            t0 = time.monotonic()
            result = await repo.admin_bulk_update([FragmentInput(key=key, config={"v": version})])
            t1 = time.monotonic()
            assert not result.failures, result.failures
            writes.append([version, t0, t1])
            version += 1
            await asyncio.sleep(interval)  # pacing, not synchronisation
        out["writes"] = writes
    else:
        reads = []
        tail = local_ttl + 0.5  # keep reading after the last write: the final value must show
        while time.monotonic() - start < duration + tail:
            t0 = time.monotonic()
            view = await repo.app_config(uid, "theme")
            t1 = time.monotonic()
            reads.append([t0, t1, (view.config or {}).get("v", 0)])
            await asyncio.sleep(0.002)  # pacing: a few hundred reads a second
        out["reads"] = reads
    await cache.drain()
    out["db_loads"] = cache.stats.db_loads - loads_before
    out["sql"] = len(statements)
    out["stats"] = cache.stats.as_dict()
    out["elapsed"] = time.monotonic() - start
    await cache.aclose()
    await client.aclose()
    await engine.dispose()
    return out


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1]))
    print(json.dumps(result), flush=True)
