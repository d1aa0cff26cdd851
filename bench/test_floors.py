"""The floors: what each tier costs with nothing of ours around it."""

from __future__ import annotations

import asyncpg
import pytest
import sqlalchemy as sa
from cachetools import TTLCache

from appconfig_cache.tiered import keys as cache_keys

from .support import (
    N_FAST,
    N_RT,
    N_SQL,
    NAME,
    BenchSession,
    measure,
    merged_view_sql,
    scaled,
    warm_valkey,
)

pytestmark = pytest.mark.benchmark(group="floors")


def _filled_ttlcache(bench: BenchSession) -> tuple[TTLCache, list]:
    """A raw ``TTLCache`` holding the same view under every hot user's key, and the keys."""
    view = bench.run(bench.repo(None).app_config(bench.hot_users[0], NAME))
    cache: TTLCache = TTLCache(maxsize=4096, ttl=60.0)
    keys = [(uid, NAME) for uid in bench.hot_users]
    for key in keys:
        cache[key] = view
    return cache, keys


def test_ttlcache_hit(benchmark, bench: BenchSession) -> None:
    """A raw ``cachetools.TTLCache`` hit of the same view, in the coroutine loop."""
    cache, keys = _filled_ttlcache(bench)

    async def body():
        value = None
        for i in range(N_FAST):
            value = cache[keys[i & 63]]
        return value

    measure(benchmark, bench, "floor.ttlcache", body, ops=N_FAST, rounds=scaled(benchmark, 100, 1))


def test_ttlcache_hit_awaited(benchmark, bench: BenchSession) -> None:
    """The same hit behind one ``await`` of a coroutine function (what any async API adds)."""
    cache, keys = _filled_ttlcache(bench)

    async def lookup(key):
        return cache[key]

    async def body():
        value = None
        for i in range(N_FAST):
            value = await lookup(keys[i & 63])
        return value

    measure(
        benchmark,
        bench,
        "floor.ttlcache_awaited",
        body,
        ops=N_FAST,
        rounds=scaled(benchmark, 100, 1),
    )


def test_valkey_get(benchmark, clean_valkey: BenchSession) -> None:
    """A raw valkey-py asyncio ``GET`` of our envelope, on the client the cache uses."""
    bench = clean_valkey
    bench.run(warm_valkey(bench, bench.hot_users, [NAME]))
    client = bench.client
    keys = [cache_keys.merged_key(uid, NAME) for uid in bench.hot_users]
    payload = bench.run(client.get(keys[0]))
    assert payload is not None

    async def body():
        value = None
        for i in range(N_RT):
            value = await client.get(keys[i & 63])
        assert value is not None

    measure(
        benchmark,
        bench,
        "floor.valkey_get",
        body,
        ops=N_RT,
        rounds=scaled(benchmark, 60, 1),
        payload_bytes=len(payload),
    )


def test_sql_sqlalchemy(benchmark, bench: BenchSession) -> None:
    """The merged-view SQL through SQLAlchemy (autocommit, rows fetched, no model building)."""
    statement, _ = merged_view_sql()
    read_engine = bench.engine.execution_options(isolation_level="AUTOCOMMIT")
    users = bench.hot_users
    names = [NAME]

    async def body():
        rows = None
        for i in range(N_SQL):
            async with read_engine.connect() as conn:
                rows = (await conn.execute(statement, {"uid": users[i & 63], "names": names})).all()
        assert rows

    measure(
        benchmark, bench, "floor.sql_sqlalchemy", body, ops=N_SQL, rounds=scaled(benchmark, 40, 1)
    )


def test_sql_asyncpg_prepared(benchmark, bench: BenchSession) -> None:
    """The same SQL as an asyncpg prepared statement on one connection (no pool, no decoding)."""
    _, text = merged_view_sql()
    url = sa.engine.make_url(bench.database_url)

    async def connect():
        conn = await asyncpg.connect(
            user=url.username,
            password=url.password,
            host=url.query.get("host") or url.host,
            port=url.port,
            database=url.database,
        )
        return conn, await conn.prepare(text)

    conn, prepared = bench.run(connect())
    users = bench.hot_users
    names = [NAME]

    async def body():
        rows = None
        for i in range(N_SQL):
            rows = await prepared.fetch(users[i & 63], names)
        assert rows

    try:
        measure(
            benchmark,
            bench,
            "floor.sql_asyncpg",
            body,
            ops=N_SQL,
            rounds=scaled(benchmark, 40, 1),
        )
    finally:
        bench.run(conn.close())
