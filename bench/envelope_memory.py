"""What Valkey holds per active user: the memory behind the choice of ``ttl``.

Usage (from the repository root; starts embedded Valkey and PostgreSQL)::

    python -m bench.envelope_memory [--users 500]

Seeds the bench population (``bench/support.py``), runs the WebUI bootstrap
(``my_app_configs``) of ``--users`` users through one cache source, and reports
``MEMORY USAGE`` per envelope and per user, with ``INFO memory``'s growth. An
envelope lives ``ttl`` seconds after its last fill, so Valkey holds about
(users active within ``ttl``) x (bytes per user).
"""

from __future__ import annotations

import argparse
import asyncio
import random

from sqlalchemy.ext.asyncio import create_async_engine

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    create_schema,
    make_valkey_client,
)
from appconfig_cache.embedded import EmbeddedValkey, embedded_postgres

from .support import seed


async def main(n_users: int) -> None:
    with EmbeddedValkey() as valkey:
        async with embedded_postgres() as db_url:
            engine = create_async_engine(db_url)
            await create_schema(engine)
            population = await seed(engine, random.Random(1052))
            users = (population["hot"] + population["work"] + population["fresh"])[:n_users]
            client = make_valkey_client(valkey.url)
            before = (await client.info("memory"))["used_memory"]
            cache = AppConfigFragmentCacheSource(client, local_maxsize=0, outbox_interval=3600.0)
            repo = AppConfigFragmentRepository(engine, cache)
            for _ in range(2):  # the first bootstrap learns each user's domain, the next fills
                for uid in users:
                    await repo.my_app_configs(uid)
                await cache.drain()
            after = (await client.info("memory"))["used_memory"]
            sizes = {"merged": [], "other": []}
            async for key in client.scan_iter(match="app_config:*", count=1000):
                kind = "merged" if key.startswith(b"app_config:merged:") else "other"
                sizes[kind].append(await client.memory_usage(key))
            merged = sizes["merged"]
            print(
                f"{len(users)} users bootstrapped: {len(merged)} envelopes "
                f"({len(merged) / len(users):.1f} per user), MEMORY USAGE mean "
                f"{sum(merged) / len(merged):.0f} B, max {max(merged)} B; "
                f"{sum(merged) / len(users) / 1024:.1f} KiB per user in envelopes, "
                f"{(sum(merged) + sum(sizes['other'])) / len(users) / 1024:.1f} KiB with the "
                f"generation and user_domain keys; used_memory grew "
                f"{(after - before) / len(users) / 1024:.1f} KiB per user"
            )
            await cache.aclose()
            await client.aclose()
            await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=500)
    asyncio.run(main(parser.parse_args().users))
