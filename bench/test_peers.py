"""Peers on the same Valkey server and the same payload: cashews and aiocache.

- plain ``get`` of the view (its JSON document as a dict) on each library's backends;
- a loader decorated with the library's cache decorator, whose miss calls the
  DB-only repository: the shape a user would write instead of this library.
"""

from __future__ import annotations

import pytest
from aiocache import Cache as AioCache
from aiocache import cached
from aiocache.serializers import PickleSerializer
from cashews import Cache as CashewsCache
from sqlalchemy.engine import make_url

from .support import NAME, World, measure, scaled

pytestmark = pytest.mark.benchmark(group="peers")

N_FAST = 2000
N_RT = 50
TTL = 600


def _views(world: World):
    repo = world.repo(None)
    return {uid: world.run(repo.app_config(uid, NAME)) for uid in world.hot_users}


def _redis_url(world: World) -> str:
    return world.valkey_url


def _cashews(world: World, url: str, **kwargs) -> CashewsCache:
    cache = CashewsCache()
    cache.setup(url, **kwargs)
    world.run(cache.init())
    return cache


def _close_cashews(world: World, cache: CashewsCache) -> None:
    world.run(cache.close())


def _run_get(benchmark, world: World, key: str, get, keys, ops: int, rounds: int) -> None:
    async def body():
        value = None
        for i in range(ops):
            value = await get(keys[i & 63])
        assert value is not None

    measure(benchmark, world, key, body, ops=ops, rounds=rounds)


# -- cashews --------------------------------------------------------------------------------


def test_cashews_mem_get(benchmark, world: World) -> None:
    views = _views(world)
    cache = _cashews(world, "mem://?size=4096")
    keys = [f"bench:{uid}:{NAME}" for uid in world.hot_users]
    for key, view in zip(keys, views.values(), strict=True):
        world.run(cache.set(key, view, expire=TTL))
    try:
        _run_get(
            benchmark,
            world,
            "cashews.mem_get",
            cache.get,
            keys,
            N_FAST,
            scaled(benchmark, 100, 1),
        )
    finally:
        _close_cashews(world, cache)


def test_cashews_redis_get(benchmark, clean_valkey: World) -> None:
    world = clean_valkey
    views = _views(world)
    cache = _cashews(world, _redis_url(world))
    keys = [f"bench:{uid}:{NAME}" for uid in world.hot_users]
    for key, view in zip(keys, views.values(), strict=True):
        world.run(cache.set(key, view.model_dump(mode="json"), expire=TTL))
    try:
        _run_get(
            benchmark,
            world,
            "cashews.redis_get",
            cache.get,
            keys,
            N_RT,
            scaled(benchmark, 60, 1),
        )
    finally:
        _close_cashews(world, cache)


def test_cashews_client_side_get(benchmark, clean_valkey: World) -> None:
    """cashews' two-tier mode: a local copy invalidated by Valkey client tracking (BCAST)."""
    world = clean_valkey
    views = _views(world)
    cache = _cashews(world, _redis_url(world), client_side=True)
    keys = [f"cashews:bench:{uid}:{NAME}" for uid in world.hot_users]
    for key, view in zip(keys, views.values(), strict=True):
        world.run(cache.set(key, view.model_dump(mode="json"), expire=TTL))
    for key in keys:  # the first get fills the local copy
        world.run(cache.get(key))
    try:
        _run_get(
            benchmark,
            world,
            "cashews.client_side_get",
            cache.get,
            keys,
            N_FAST,
            scaled(benchmark, 100, 1),
        )
    finally:
        _close_cashews(world, cache)


def _cashews_loader(benchmark, world: World, key: str, url: str, ops: int, rounds: int) -> None:
    cache = _cashews(world, url)
    repo = world.repo(None)
    calls = {"n": 0}

    @cache(ttl=TTL)
    async def load(user_id, name):
        calls["n"] += 1
        return await repo.app_config(user_id, name)

    users = world.hot_users
    for uid in users:
        world.run(load(uid, NAME))
    loads = calls["n"]

    async def body():
        view = None
        for i in range(ops):
            view = await load(users[i & 63], NAME)
        assert view is not None

    try:
        measure(benchmark, world, key, body, ops=ops, rounds=rounds)
    finally:
        _close_cashews(world, cache)
    assert calls["n"] == loads  # every timed call was a hit


def test_cashews_cache_decorator_mem(benchmark, world: World) -> None:
    _cashews_loader(
        benchmark, world, "cashews.cache_mem", "mem://?size=4096", N_FAST, scaled(benchmark, 60, 1)
    )


def test_cashews_cache_decorator_redis(benchmark, clean_valkey: World) -> None:
    world = clean_valkey
    _cashews_loader(
        benchmark, world, "cashews.cache_redis", _redis_url(world), N_RT, scaled(benchmark, 60, 1)
    )


# -- aiocache -------------------------------------------------------------------------------


def _aiocache_redis_kwargs(world: World) -> dict:
    url = make_url(world.valkey_url)
    return {
        "endpoint": url.host or "127.0.0.1",
        "port": url.port or 6379,
        "db": int(url.database or 0),
        "password": url.password,
    }


def test_aiocache_redis_get(benchmark, clean_valkey: World) -> None:
    world = clean_valkey
    views = _views(world)
    cache = AioCache(AioCache.REDIS, **_aiocache_redis_kwargs(world))
    keys = [f"bench:{uid}:{NAME}" for uid in world.hot_users]
    for key, view in zip(keys, views.values(), strict=True):
        world.run(cache.set(key, view.model_dump(mode="json"), ttl=TTL))
    try:
        _run_get(
            benchmark,
            world,
            "aiocache.redis_get",
            cache.get,
            keys,
            N_RT,
            scaled(benchmark, 60, 1),
        )
    finally:
        world.run(cache.close())


def _aiocache_loader(benchmark, world: World, key: str, ops: int, rounds: int, **kwargs) -> None:
    repo = world.repo(None)
    calls = {"n": 0}

    @cached(ttl=TTL, **kwargs)
    async def load(user_id, name):
        calls["n"] += 1
        return await repo.app_config(user_id, name)

    users = world.hot_users
    for uid in users:
        world.run(load(uid, NAME))
    loads = calls["n"]

    async def body():
        view = None
        for i in range(ops):
            view = await load(users[i & 63], NAME)
        assert view is not None

    try:
        measure(benchmark, world, key, body, ops=ops, rounds=rounds)
    finally:
        world.run(load.cache.close())
    assert calls["n"] == loads


def test_aiocache_cached_mem(benchmark, world: World) -> None:
    _aiocache_loader(benchmark, world, "aiocache.cached_mem", N_FAST, scaled(benchmark, 60, 1))


def test_aiocache_cached_redis(benchmark, clean_valkey: World) -> None:
    world = clean_valkey
    _aiocache_loader(
        benchmark,
        world,
        "aiocache.cached_redis",
        N_RT,
        scaled(benchmark, 60, 1),
        cache=AioCache.REDIS,
        serializer=PickleSerializer(),
        **_aiocache_redis_kwargs(world),
    )
