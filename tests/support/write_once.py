"""One write from another OS process: ``python -m tests.support.write_once DB VALKEY USER CONFIG``.

Updates the user's own ``theme`` fragment to the JSON ``CONFIG`` through a cache
source with the broadcast on (so the bump is published as any writer's would be),
prints ``done`` once the write call has returned, and exits.
"""

from __future__ import annotations

import asyncio
import json
import sys
from uuid import UUID

from sqlalchemy.ext.asyncio import create_async_engine

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    MyFragmentInput,
    make_valkey_client,
)


async def main(database_url: str, valkey_url: str, user: str, config: str) -> None:
    engine = create_async_engine(database_url)
    client = make_valkey_client(valkey_url)
    cache = AppConfigFragmentCacheSource(client, broadcast=True)
    try:
        repo = AppConfigFragmentRepository(engine, cache_source=cache)
        result = await repo.bulk_update_my(
            UUID(user), [MyFragmentInput(name="theme", config=json.loads(config))]
        )
        assert not result.failures, result.failures
        assert cache.stats.pending_bumps == 0, "the bump did not reach Valkey"
        print("done", flush=True)
    finally:
        await cache.aclose()
        await client.aclose()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
