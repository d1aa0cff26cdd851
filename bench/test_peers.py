"""Peers on the same Valkey server and the same payload: cashews and aiocache.

- plain ``get`` of the view (its JSON document as a dict) on each library's backends;
- a loader decorated with the library's cache decorator, whose miss calls the
  DB-only repository: the shape a user would write instead of this library.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from aiocache import Cache as AioCache
from aiocache import cached
from aiocache.serializers import PickleSerializer
from cashews import Cache as CashewsCache
from sqlalchemy.engine import make_url

from .support import (
    N_FAST,
    N_RT,
    NAME,
    BenchSession,
    measure,
    scaled,
)

pytestmark = pytest.mark.benchmark(group="peers")

TTL = 600


def _views(bench: BenchSession):
    repo = bench.repo(None)
    return {uid: bench.run(repo.app_config(uid, NAME)) for uid in bench.hot_users}


def _redis_url(bench: BenchSession) -> str:
    return bench.valkey_url


def _cashews(bench: BenchSession, url: str, **kwargs) -> CashewsCache:
    cache = CashewsCache()
    cache.setup(url, **kwargs)
    bench.run(cache.init())
    return cache


@contextmanager
def _cashews_holding_views(
    bench: BenchSession, url: str, prefix: str = "bench", *, as_json: bool = True, **kwargs
) -> Iterator[tuple[CashewsCache, list[str]]]:
    """A cashews cache on ``url`` holding every hot user's view (its JSON document unless
    ``as_json`` is false), and the keys, in hot-user order; closed after the block."""
    views = _views(bench)
    cache = _cashews(bench, url, **kwargs)
    keys = [f"{prefix}:{uid}:{NAME}" for uid in bench.hot_users]
    for key, view in zip(keys, views.values(), strict=True):
        bench.run(cache.set(key, view.model_dump(mode="json") if as_json else view, expire=TTL))
    try:
        yield cache, keys
    finally:
        _close_cashews(bench, cache)


def _close_cashews(bench: BenchSession, cache: CashewsCache) -> None:
    bench.run(cache.close())


def _run_get(benchmark, bench: BenchSession, key: str, get, keys, ops: int, rounds: int) -> None:
    async def body():
        value = None
        for i in range(ops):
            value = await get(keys[i & 63])
        assert value is not None

    measure(benchmark, bench, key, body, ops=ops, rounds=rounds)


# -- cashews --------------------------------------------------------------------------------


def test_cashews_mem_get(benchmark, bench: BenchSession) -> None:
    with _cashews_holding_views(bench, "mem://?size=4096", as_json=False) as (cache, keys):
        _run_get(
            benchmark, bench, "cashews.mem_get", cache.get, keys, N_FAST, scaled(benchmark, 100, 1)
        )


def test_cashews_redis_get(benchmark, clean_valkey: BenchSession) -> None:
    bench = clean_valkey
    with _cashews_holding_views(bench, _redis_url(bench)) as (cache, keys):
        _run_get(
            benchmark, bench, "cashews.redis_get", cache.get, keys, N_RT, scaled(benchmark, 60, 1)
        )


def test_cashews_client_side_get(benchmark, clean_valkey: BenchSession) -> None:
    """cashews' two-tier mode: a local copy invalidated by Valkey client tracking (BCAST)."""
    bench = clean_valkey
    with _cashews_holding_views(
        bench, _redis_url(bench), client_side=True, prefix="cashews:bench"
    ) as (cache, keys):
        for key in keys:  # the first get fills the local copy
            bench.run(cache.get(key))
        _run_get(
            benchmark,
            bench,
            "cashews.client_side_get",
            cache.get,
            keys,
            N_FAST,
            scaled(benchmark, 100, 1),
        )


def _time_loader(benchmark, bench: BenchSession, key: str, decorate, close, ops: int, rounds: int):
    """Time a loader wrapped by ``decorate`` (a library's cache decorator) whose miss reads
    the DB-only repository; ``close(loader)`` closes its cache; every timed call is a hit."""
    repo = bench.repo(None)
    calls = {"n": 0}

    @decorate
    async def load(user_id, name):
        calls["n"] += 1
        return await repo.app_config(user_id, name)

    users = bench.hot_users
    for uid in users:
        bench.run(load(uid, NAME))
    loads = calls["n"]

    async def body():
        view = None
        for i in range(ops):
            view = await load(users[i & 63], NAME)
        assert view is not None

    try:
        measure(benchmark, bench, key, body, ops=ops, rounds=rounds)
    finally:
        close(load)
    assert calls["n"] == loads  # every timed call was a hit


def _cashews_loader(benchmark, bench: BenchSession, key: str, url: str, ops: int, rounds: int):
    cache = _cashews(bench, url)
    close = lambda _load: _close_cashews(bench, cache)  # noqa: E731
    _time_loader(benchmark, bench, key, cache(ttl=TTL), close, ops, rounds)


def test_cashews_cache_decorator_mem(benchmark, bench: BenchSession) -> None:
    _cashews_loader(
        benchmark, bench, "cashews.cache_mem", "mem://?size=4096", N_FAST, scaled(benchmark, 60, 1)
    )


def test_cashews_cache_decorator_redis(benchmark, clean_valkey: BenchSession) -> None:
    bench = clean_valkey
    _cashews_loader(
        benchmark, bench, "cashews.cache_redis", _redis_url(bench), N_RT, scaled(benchmark, 60, 1)
    )


# -- aiocache -------------------------------------------------------------------------------


def _aiocache_redis_kwargs(bench: BenchSession) -> dict:
    url = make_url(bench.valkey_url)
    return {
        "endpoint": url.host or "127.0.0.1",
        "port": url.port or 6379,
        "db": int(url.database or 0),
        "password": url.password,
    }


def test_aiocache_redis_get(benchmark, clean_valkey: BenchSession) -> None:
    bench = clean_valkey
    views = _views(bench)
    cache = AioCache(AioCache.REDIS, **_aiocache_redis_kwargs(bench))
    keys = [f"bench:{uid}:{NAME}" for uid in bench.hot_users]
    for key, view in zip(keys, views.values(), strict=True):
        bench.run(cache.set(key, view.model_dump(mode="json"), ttl=TTL))
    try:
        _run_get(
            benchmark,
            bench,
            "aiocache.redis_get",
            cache.get,
            keys,
            N_RT,
            scaled(benchmark, 60, 1),
        )
    finally:
        bench.run(cache.close())


def _aiocache_loader(benchmark, bench: BenchSession, key: str, ops: int, rounds: int, **kwargs):
    close = lambda load: bench.run(load.cache.close())  # noqa: E731
    _time_loader(benchmark, bench, key, cached(ttl=TTL, **kwargs), close, ops, rounds)


def test_aiocache_cached_mem(benchmark, bench: BenchSession) -> None:
    _aiocache_loader(benchmark, bench, "aiocache.cached_mem", N_FAST, scaled(benchmark, 60, 1))


def test_aiocache_cached_redis(benchmark, clean_valkey: BenchSession) -> None:
    bench = clean_valkey
    _aiocache_loader(
        benchmark,
        bench,
        "aiocache.cached_redis",
        N_RT,
        scaled(benchmark, 60, 1),
        cache=AioCache.REDIS,
        serializer=PickleSerializer(),
        **_aiocache_redis_kwargs(bench),
    )
