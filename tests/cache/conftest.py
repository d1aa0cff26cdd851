"""Fixtures and helpers of the cache behaviour suite.

- ``tiers``: the same tests against three configurations, "db" (no cache source),
  "valkey" (``local_maxsize=0``) and "l1+valkey" (the default), each with a fake clock
  and a counting client (``tests.support.valkey.CountingValkey``);
- ``FourUsers``: a small data set (policies, users in two domains, fragments at every scope).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest
import pytest_asyncio
import valkey.asyncio as valkey_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
)
from tests.support.clock import FakeClock
from tests.support.data import add_users
from tests.support.fragments import fragment_input
from tests.support.internals import background_tasks, db_source_of
from tests.support.scopes import ALL_SCOPES, DOMAIN, DOMAIN_USER_DEFAULTS, PUBLIC, USER
from tests.support.valkey import CountingValkey

T = TypeVar("T")

LOCAL_TTL = 2.0
MODES = ["db", "valkey", "l1+valkey"]
CACHED_MODES = ["valkey", "l1+valkey"]


# -- known bugs -----------------------------------------------------------------------------


class KnownBug(AssertionError):
    """Raised where a test observes a bug it documents; xfail marks name it in ``raises=``."""


#: a hang guard for tests that park coroutines: a bug there deadlocks instead of failing
HANG_GUARD = 30.0


def hang_guard(test: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Fail (not hang) a test that parks coroutines when a bug deadlocks it."""

    @functools.wraps(test)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(HANG_GUARD):
                return await test(*args, **kwargs)
        except TimeoutError as exc:
            raise AssertionError(
                f"{test.__name__} hung for {HANG_GUARD:.0f} s: a deadlock, e.g. a read that "
                "joined a parked flight"
            ) from exc

    return guarded


def expect(condition: bool, message: str) -> None:
    """Assert a behaviour that a known bug breaks (a plain assert is for preconditions)."""
    if not condition:
        raise KnownBug(message)


def rebuilt(cache: AppConfigFragmentCacheSource) -> int:
    """Views a cache source rebuilt from a user part and a shared part (either way)."""
    stats = cache.stats
    return stats.recomposed + stats.l1_recomposed


# -- the configurations ---------------------------------------------------------------------


@dataclass
class Tiers:
    """One configuration of the suite: a repository and, unless "db", its cache source."""

    mode: str
    engine: AsyncEngine
    valkey: valkey_asyncio.Valkey  # the raw client, for inspecting keys
    clock: FakeClock
    client: CountingValkey | None
    cache: AppConfigFragmentCacheSource | None
    repo: AppConfigFragmentRepository
    policies: AppConfigPolicyRepository
    db: AppConfigFragmentRepository  # DB only: the truth to compare with
    extra: list[AppConfigFragmentCacheSource] = field(default_factory=list)

    @property
    def cached(self) -> bool:
        return self.cache is not None

    @property
    def l1(self) -> bool:
        return self.mode == "l1+valkey"

    def make_cache(
        self, *, clock: FakeClock | None = None, **kwargs: Any
    ) -> tuple[AppConfigFragmentCacheSource, CountingValkey, FakeClock]:
        """Another cache source over the same Valkey (another "process"), with its own clock."""
        clock = clock or FakeClock()
        client = CountingValkey(self.valkey)
        kwargs.setdefault("local_ttl", LOCAL_TTL)
        cache = AppConfigFragmentCacheSource(client, timer=clock, **kwargs)
        self.extra.append(cache)
        return cache, client, clock

    def make_repo(
        self, **kwargs: Any
    ) -> tuple[
        AppConfigFragmentRepository, AppConfigFragmentCacheSource, CountingValkey, FakeClock
    ]:
        cache, client, clock = self.make_cache(**kwargs)
        return AppConfigFragmentRepository(self.engine, cache_source=cache), cache, client, clock

    def db_loads(self) -> int:
        assert self.cache is not None
        return self.cache.stats.db_loads

    def hits(self) -> int:
        assert self.cache is not None
        stats = self.cache.stats
        return stats.l1_hits + stats.l2_hits


async def build_tiers(
    mode: str, engine: AsyncEngine, valkey: valkey_asyncio.Valkey, **kwargs: Any
) -> Tiers:
    clock = FakeClock()
    client: CountingValkey | None = None
    cache: AppConfigFragmentCacheSource | None = None
    if mode != "db":
        client = CountingValkey(valkey)
        kwargs.setdefault("local_ttl", LOCAL_TTL)
        if mode == "valkey":
            kwargs["local_maxsize"] = 0
        cache = AppConfigFragmentCacheSource(client, timer=clock, **kwargs)
    return Tiers(
        mode=mode,
        engine=engine,
        valkey=valkey,
        clock=clock,
        client=client,
        cache=cache,
        repo=AppConfigFragmentRepository(engine, cache_source=cache),
        policies=AppConfigPolicyRepository(engine, cache_source=cache),
        db=AppConfigFragmentRepository(engine),
    )


async def close_tiers(tiers: Tiers) -> None:
    stuck = []
    for cache in [tiers.cache, *tiers.extra]:
        if cache is None:
            continue
        try:
            async with asyncio.timeout(HANG_GUARD / 3):
                await cache.aclose()
        except TimeoutError:
            # a load parked by a failed test never resumes: cancel it so the session goes on
            tasks = background_tasks(cache)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await cache.aclose()
            stuck.append(cache)
    assert not stuck, "a cache source had loads that never finished (cancelled at teardown)"


@asynccontextmanager
async def open_tiers(
    mode: str, engine: AsyncEngine, valkey: valkey_asyncio.Valkey
) -> AsyncIterator[Tiers]:
    """The configuration ``mode``, closed (and checked for stuck loads) at the end."""
    built = await build_tiers(mode, engine, valkey)
    try:
        yield built
    finally:
        await close_tiers(built)


def _configurations(modes: list[str], doc: str) -> Any:
    """A fixture parametrized over ``modes``: each test runs once in each configuration."""

    @pytest_asyncio.fixture(params=modes)
    async def fixture(
        request: pytest.FixtureRequest, engine: AsyncEngine, valkey_client: valkey_asyncio.Valkey
    ) -> AsyncIterator[Tiers]:
        async with open_tiers(request.param, engine, valkey_client) as built:
            yield built

    fixture.__doc__ = doc
    return fixture


tiers = _configurations(
    MODES, """The suite's three configurations: "db", "valkey" (no L1) and "l1+valkey"."""
)
cached = _configurations(CACHED_MODES, "The two configurations that have a cache source.")


@pytest_asyncio.fixture
async def l1(engine: AsyncEngine, valkey_client: valkey_asyncio.Valkey) -> AsyncIterator[Tiers]:
    """Only the default configuration, for tests that do not depend on the tiers."""
    async with open_tiers("l1+valkey", engine, valkey_client) as built:
        yield built


# -- a small world --------------------------------------------------------------------------


@dataclass
class FourUsers:
    """Policies ``theme`` (all four scopes) and ``menu`` (public, user), users in two domains.

    ``u1`` and ``u2`` are in ``d1``, ``u3`` in ``d2``, ``u4`` has no users row.
    """

    u1: UUID
    u2: UUID
    u3: UUID
    u4: UUID
    domains: dict[UUID, str]
    names: tuple[str, ...] = ("theme", "menu")

    @property
    def users(self) -> list[UUID]:
        return [self.u1, self.u2, self.u3, self.u4]


async def seed_four_users(t: Tiers, *, fragments: bool = True) -> FourUsers:
    u1, u2, u3, u4 = uuid4(), uuid4(), uuid4(), uuid4()
    domains = {u1: "d1", u2: "d1", u3: "d2"}
    await add_users(t.engine, domains)
    # Built with a DB-only policy repository: setting up must not touch the cache under test.
    setup = AppConfigPolicyRepository(t.engine)
    await setup.create("theme", ALL_SCOPES)
    await setup.create("menu", [PUBLIC, USER])
    if fragments:
        result = await t.db.admin_bulk_create(
            [
                fragment_input(PUBLIC, "public", "theme", {"color": "grey", "font": {"size": 10}}),
                fragment_input(DOMAIN, "d1", "theme", {"color": "blue"}),
                fragment_input(DOMAIN_USER_DEFAULTS, "d1", "theme", {"font": {"family": "serif"}}),
                fragment_input(DOMAIN, "d2", "theme", {"color": "green"}),
                fragment_input(USER, str(u1), "theme", {"font": {"size": 12}}),
                fragment_input(PUBLIC, "public", "menu", {"items": ["a", "b"]}),
                fragment_input(USER, str(u2), "menu", {"items": ["c"]}),
            ]
        )
        assert not result.failures, result.failures
    return FourUsers(u1=u1, u2=u2, u3=u3, u4=u4, domains=domains)


Seeded = tuple[Tiers, FourUsers]


@pytest_asyncio.fixture
async def seeded(cached: Tiers) -> Seeded:
    """A configuration with a cache source (``cached``) over the four users' data set."""
    return cached, await seed_four_users(cached)


async def assert_transparent(t: Tiers, w: FourUsers, names: tuple[str, ...] | None = None) -> None:
    """I1: every (user, name) read through the repository equals the DB-only read."""
    names = names or w.names
    for uid in w.users:
        truth = await t.db.app_configs(uid, list(names))
        for name, expected in zip(names, truth, strict=True):
            got = await t.repo.app_config(uid, name)
            assert got == expected, (t.mode, uid, name)


# -- priming and probing the tiers ----------------------------------------------------------


async def prime(t: Tiers, pairs: list[tuple[UUID, str]]) -> None:
    """Read each pair until it is cached in every tier the configuration has.

    The first read of a user in a process does not know the user's domain yet and
    fills only ``user_domain``; the second fills the envelope.
    """
    for uid, name in pairs:
        await t.repo.app_config(uid, name)
        if t.cache is not None:
            await t.cache.drain()
            t.clock.advance(LOCAL_TTL)  # L1 and the generation cache expire: go to Valkey
            await t.repo.app_config(uid, name)
            await t.cache.drain()
    if t.cache is not None:
        for uid, name in pairs:  # every pair is a hit now, and L1 holds it again
            before = t.db_loads()
            await t.repo.app_config(uid, name)
            assert t.db_loads() == before, (uid, name)
        await t.cache.drain()


async def reads_hit(t: Tiers, pairs: list[tuple[UUID, str]]) -> dict[tuple[UUID, str], bool]:
    """Read each pair once; True where a cached view was served as it was.

    False where the read went to the DB or recomposed the view (a shared part
    read before, by another user of the domain, costs no query of its own).
    """
    assert t.cache is not None
    out = {}
    for uid, name in pairs:
        before = t.db_loads(), rebuilt(t.cache)
        got = await t.repo.app_config(uid, name)
        assert got == await t.db.app_config(uid, name), (t.mode, uid, name)
        out[(uid, name)] = (t.db_loads(), rebuilt(t.cache)) == before
    await t.cache.drain()
    return out


def every_pair(w: FourUsers) -> list[tuple[UUID, str]]:
    return [(uid, name) for uid in w.users for name in w.names]


async def prime_every_pair(t: Tiers, w: FourUsers) -> list[tuple[UUID, str]]:
    """Every (user, name) pair of ``w``; with a cache, primed in every tier and the counting
    client started again from zero."""
    pairs = every_pair(w)
    if t.cached:
        await prime(t, pairs)
        assert t.client is not None
        t.client.reset()
    return pairs


# -- parking a load ---------------------------------------------------------------------------


class PausedLoader:
    """Wraps the DB source's ``load_views``: the first ``pause`` calls stop after their DB read."""

    def __init__(self, repo: Any, pause: int = 1) -> None:
        self.db = db_source_of(repo)
        self.real = self.db.load_views
        self.pause = pause
        self.calls: list[list[str]] = []
        self.read_done = asyncio.Event()
        self.resume = asyncio.Event()
        self.db.load_views = self

    async def __call__(self, user_id: UUID, names: Any) -> Any:
        self.calls.append(list(names))
        result = await self.real(user_id, names)
        if len(self.calls) <= self.pause:
            self.read_done.set()
            await self.resume.wait()
        return result

    def restore(self) -> None:
        self.db.load_views = self.real


async def park_read(t: Tiers, read: Awaitable[T]) -> tuple[PausedLoader, asyncio.Task[T]]:
    """Start ``read``; return once its DB load has read and parked (``loader.resume`` goes on)."""
    loader = PausedLoader(t.repo)
    task = asyncio.create_task(read)  # type: ignore[arg-type]
    await loader.read_done.wait()
    return loader, task


# -- the same suite on a Valkey Cluster ----------------------------------------------------------

SUITE_ON_CLUSTER_ENV = "APPCONFIG_CACHE_SUITE_ON_CLUSTER"

#: for the few tests that count the standalone shape of a round trip: on a cluster the
#: server epoch is read from every primary in a call parallel to the pipeline, which the
#: counting wrapper sees as one more trip (tests/cluster/test_cluster_cache.py counts it)
standalone_shape_only = pytest.mark.skipif(
    bool(os.environ.get(SUITE_ON_CLUSTER_ENV)),
    reason="counts the standalone pipeline shape; the cluster's is in tests/cluster",
)

if os.environ.get(SUITE_ON_CLUSTER_ENV):

    @pytest_asyncio.fixture(loop_scope="session")
    async def valkey_client(cluster_client: Any) -> AsyncIterator[Any]:
        """py311-cluster: every cache source and every inspection of this suite goes
        through ``ValkeyCluster`` on the embedded 3-primary cluster (flushed per test)."""
        yield cluster_client
