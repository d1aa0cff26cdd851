"""A replayer process for ``test_outbox_faults.py``: ``python _outbox_replayer.py``.

Prints ``ready``, waits for ``go`` on stdin (so that both processes start
together), replays every outbox row it can claim (``grace=0``) and prints one
JSON line: how many rows it replayed and its outbox counters.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from sqlalchemy.ext.asyncio import create_async_engine

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    make_valkey_client,
)


async def main() -> None:
    env = os.environ
    engine = create_async_engine(env["APPCONFIG_REPLAYER_DATABASE_URL"], pool_size=2)
    client = make_valkey_client(env["APPCONFIG_REPLAYER_VALKEY_URL"], socket_timeout=2.0)
    cache = AppConfigFragmentCacheSource(client, timeout=2.0, outbox_interval=3600.0)
    AppConfigFragmentRepository(engine, cache_source=cache)  # hands the cache its outbox
    await client.ping()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    replayed = await cache.replay_outbox(grace=0)
    stats = cache.stats
    print(json.dumps({"replayed": replayed, "errors": stats.outbox_errors,
                      "pending": stats.pending_bumps}), flush=True)  # fmt: skip
    await cache.aclose()
    await client.aclose()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
