"""Shared pieces of the bench suite: the seeded session, the op runner, counting trips.

Every figure is a *per-op* time: a benchmark round runs one coroutine that
performs ``ops_per_round`` operations on a persistent event loop, and
``bench/report.py`` divides the round's time by that number. Floors, our read
path and the peers all run through the same loop shape, so the fixed cost of
``run_until_complete`` is spread the same way over every figure.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import perf_counter
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from tests.support.data import truncate_tables
from tests.support.internals import merged_view_statement
from tests.support.sql import count_sql
from tests.support.valkey import CountingValkey

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigScopeType,
    create_schema,
    make_valkey_client,
)
from appconfig_cache.embedded import EmbeddedValkey, embedded_postgres
from appconfig_cache.models import fragments, policies, users

S = AppConfigScopeType

#: the documents of a WebUI bootstrap; every policy is a three-scope chain
POLICIES: dict[str, tuple[S, S, S]] = {
    "theme": (S.PUBLIC, S.DOMAIN, S.USER),
    "menu": (S.PUBLIC, S.DOMAIN, S.USER),
    "dashboard": (S.PUBLIC, S.DOMAIN_USER_DEFAULTS, S.USER),
    "shortcuts": (S.PUBLIC, S.DOMAIN, S.USER),
    "notifications": (S.PUBLIC, S.DOMAIN_USER_DEFAULTS, S.USER),
    "editor": (S.PUBLIC, S.DOMAIN, S.USER),
    "terminal": (S.PUBLIC, S.DOMAIN, S.USER),
    "layout": (S.PUBLIC, S.DOMAIN_USER_DEFAULTS, S.USER),
}
NAMES: list[str] = list(POLICIES)
#: the document the single-key benchmarks read
NAME = "theme"
DOMAINS = ("default", "research", "ops", "edu")

#: the same loop shape everywhere: N_FAST ops for in-memory work, N_RT for one network round
#: trip, N_SQL for a query (the per-round cost of run_until_complete is spread over them)
N_FAST = 2000
N_RT = 50
N_SQL = 20

N_HOT = 64  # users of the single-key benchmarks (all fit every tier)
N_WORK = 2000  # the Zipf population of the throughput workload; also "returning" users
N_FRESH = 1500  # never read before: each one is used once by a cold benchmark


def public_config(name: str) -> dict[str, Any]:
    """About 1 KB: the site-wide defaults of a document."""
    return {
        "version": 3,
        "title": f"{name} defaults",
        "colors": {
            "primary": "#1f6feb",
            "secondary": "#8b949e",
            "background": "#0d1117",
            "surface": "#161b22",
            "accent": ["#ff7b72", "#d2a8ff", "#79c0ff", "#56d364"],
        },
        "layout": {
            "sidebar": {"collapsed": False, "width": 280, "position": "left"},
            "header": {"height": 56, "sticky": True, "show_breadcrumbs": True},
            "grid": {"columns": 12, "gutter": 16, "breakpoints": [576, 768, 992, 1200, 1400]},
        },
        "features": {
            f"feature_{i}": {"enabled": i % 3 != 0, "rollout": i * 7 % 100} for i in range(12)
        },
        "locale": {"language": "en", "timezone": "UTC", "date_format": "YYYY-MM-DD"},
        "help_links": [f"https://docs.example.org/{name}/page-{i}" for i in range(6)],
    }


def domain_config(name: str, domain: str) -> dict[str, Any]:
    """About 400 B: a domain's overrides."""
    return {
        "title": f"{name} for {domain}",
        "colors": {"primary": "#2da44e", "accent": ["#bf3989", "#fb8500"]},
        "layout": {"sidebar": {"width": 300}, "grid": {"gutter": 12}},
        "features": {"feature_1": {"enabled": False}, "feature_4": {"rollout": 50}},
        "locale": {"timezone": "Asia/Seoul"},
        "quota_banner": {"visible": True, "text": f"{domain}: usage is reported daily"},
    }


def user_config(name: str, seed: int) -> dict[str, Any]:
    """About 300 B: what a user saved."""
    return {
        "colors": {"primary": f"#{seed * 2654435761 % 0xFFFFFF:06x}"},
        "layout": {"sidebar": {"collapsed": seed % 2 == 0}},
        "recent": [f"/{name}/item/{(seed + i) % 997}" for i in range(5)],
        "pinned": {"projects": [f"project-{(seed * 7 + i) % 101}" for i in range(3)]},
        "updated_by": "webui",
    }


def user_names(index: int) -> list[str]:
    """The documents a user has saved: always ``theme``, and about half of the rest."""
    return [n for i, n in enumerate(NAMES) if i == 0 or (index + i) % 2 == 0]


@dataclass
class BenchSession:
    """The servers, the engine, the client and the seeded population of one session."""

    loop: asyncio.AbstractEventLoop
    valkey_url: str
    database_url: str
    engine: AsyncEngine
    client: Any
    hot_users: list[UUID]
    work_users: list[UUID]
    fresh_pool: list[UUID]
    domain_of: dict[UUID, str]
    server_versions: dict[str, str] = field(default_factory=dict)
    _fresh_next: int = 0
    _caches: list[AppConfigFragmentCacheSource] = field(default_factory=list)

    @classmethod
    def seeded(
        cls,
        loop: asyncio.AbstractEventLoop,
        valkey_url: str,
        database_url: str,
        engine: AsyncEngine,
        client: Any,
        population: dict[str, Any],
        **extra: Any,
    ) -> BenchSession:
        """A session over the populations :func:`seed` returned."""
        return cls(
            loop=loop, valkey_url=valkey_url, database_url=database_url, engine=engine,
            client=client, hot_users=population["hot"], work_users=population["work"],
            fresh_pool=population["fresh"], domain_of=population["domain_of"], **extra,
        )  # fmt: skip

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def fresh_users(self, k: int) -> list[UUID]:
        """``k`` users no benchmark has read yet (cold in every tier)."""
        start, self._fresh_next = self._fresh_next, self._fresh_next + k
        if self._fresh_next > len(self.fresh_pool):
            raise RuntimeError("the pool of fresh users is exhausted: raise N_FRESH")
        return self.fresh_pool[start : self._fresh_next]

    def cache(self, **kwargs: Any) -> AppConfigFragmentCacheSource:
        """A new cache source on the shared client; closed after the test (conftest)."""
        cache = AppConfigFragmentCacheSource(self.client, **kwargs)
        self._caches.append(cache)
        return cache

    def repo(self, cache: AppConfigFragmentCacheSource | None) -> AppConfigFragmentRepository:
        return AppConfigFragmentRepository(self.engine, cache_source=cache)

    def flush_valkey(self) -> None:
        self.run(self.client.flushdb())

    async def aclose_caches(self) -> None:
        for cache in self._caches:
            await cache.aclose()
        self._caches.clear()


async def seed(engine: AsyncEngine, rng: random.Random) -> dict[str, Any]:
    """Policies, users in domains and fragments at every scope; returns the populations."""
    now = datetime.now(UTC)
    n_users = N_HOT + N_WORK + N_FRESH
    all_users = [UUID(int=rng.getrandbits(128), version=4) for _ in range(n_users)]
    domain_of = {uid: DOMAINS[i % len(DOMAINS)] for i, uid in enumerate(all_users)}
    frag_rows: list[dict[str, Any]] = []

    def fragment(scope: S, scope_id: str, name: str, config: dict[str, Any]) -> None:
        frag_rows.append(
            {
                "id": uuid.uuid4(),
                "scope_type": scope.value,
                "scope_id": scope_id,
                "name": name,
                "config": config,
                "created_at": now,
                "updated_at": now,
            }
        )

    for name, chain in POLICIES.items():
        fragment(S.PUBLIC, "public", name, public_config(name))
        for domain in DOMAINS:
            fragment(chain[1], domain, name, domain_config(name, domain))
    for i, uid in enumerate(all_users):
        for name in user_names(i):
            fragment(S.USER, str(uid), name, user_config(name, i))

    await truncate_tables(engine)
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(policies),
            [
                {
                    "id": uuid.uuid4(),
                    "config_name": name,
                    "scope_sources": [s.value for s in chain],
                    "created_at": now,
                    "updated_at": now,
                }
                for name, chain in POLICIES.items()
            ],
        )
        await conn.execute(
            sa.insert(users), [{"uuid": u, "domain_name": d} for u, d in domain_of.items()]
        )
        for start in range(0, len(frag_rows), 5000):
            await conn.execute(sa.insert(fragments), frag_rows[start : start + 5000])
        await conn.execute(sa.text("ANALYZE"))
    return {
        "hot": all_users[:N_HOT],
        "work": all_users[N_HOT : N_HOT + N_WORK],
        "fresh": all_users[N_HOT + N_WORK :],
        "domain_of": domain_of,
    }


# -- running ops ----------------------------------------------------------------------------


def scaled(benchmark: Any, real: int, smoke: int) -> int:
    """``real`` for a timed run; ``smoke`` with ``--benchmark-disable`` (body runs once)."""
    return smoke if benchmark.disabled else real


def measure(
    benchmark: Any,
    bench: BenchSession,
    key: str,
    body: Callable[[], Awaitable[Any]],
    *,
    ops: int,
    rounds: int,
    warmup_rounds: int = 1,
    setup: Callable[[], None] | None = None,
    **info: Any,
) -> None:
    """Time ``body`` (a coroutine function doing ``ops`` operations) on the session loop.

    ``setup`` runs before every round, untimed (it prepares cold state).
    """
    benchmark.extra_info["key"] = key
    benchmark.extra_info["ops_per_round"] = ops
    benchmark.extra_info.update(info)
    loop = bench.loop

    def target() -> None:
        loop.run_until_complete(body())

    benchmark.pedantic(
        target,
        setup=setup,
        rounds=rounds,
        warmup_rounds=warmup_rounds,
    )


def hot_reads(
    bench: BenchSession, read: Callable[[UUID, str], Awaitable[Any]], n: int
) -> Callable[[], Awaitable[Any]]:
    """Read each hot user's ``NAME`` once through ``read`` (untimed: it fills the tiers
    and learns the users' domains and generations), and return a :func:`measure` body
    that makes ``n`` such reads, round the hot users."""
    users = bench.hot_users
    for uid in users:
        bench.run(read(uid, NAME))

    async def body() -> Any:
        view = None
        for i in range(n):
            view = await read(users[i & 63], NAME)
        return view

    return body


# -- state helpers ----------------------------------------------------------------------------


async def warm_valkey(bench: BenchSession, user_ids: list[UUID], names: list[str]) -> None:
    """Put the envelopes of ``user_ids`` x ``names`` into Valkey, as the read path does.

    A process that does not know a user's domain skips the envelope fill once,
    so an L2-only cache source reads twice; the third read must be a Valkey hit.
    """
    cache = AppConfigFragmentCacheSource(bench.client, local_maxsize=0)
    repo = bench.repo(cache)
    try:
        for _ in range(2):
            for uid in user_ids:
                await repo.app_configs(uid, names)
            await drain(cache)  # fills run in the background
        before = cache.stats.db_loads
        for uid in user_ids:
            await repo.app_configs(uid, names)
        if cache.stats.db_loads != before:
            raise RuntimeError("warming Valkey failed: a third read still went to the DB")
    finally:
        await cache.aclose()


async def drain(cache: AppConfigFragmentCacheSource | None) -> None:
    """Wait for the cache source's background work (Valkey fills)."""
    if cache is not None:
        await cache.drain()


async def count_trips(
    bench: BenchSession,
    op: Callable[[AppConfigFragmentRepository], Awaitable[Any]],
    *,
    prepare: Callable[[AppConfigFragmentRepository], Awaitable[Any]] | None = None,
    **cache_kwargs: Any,
) -> dict[str, Any]:
    """Valkey round trips and SQL statements of one ``op``, on a counting client.

    ``prepare`` brings a fresh cache source into the state the benchmark measures.
    """
    counting = CountingValkey(bench.client)
    cache = AppConfigFragmentCacheSource(counting, **cache_kwargs)
    repo = bench.repo(cache)
    try:
        if prepare is not None:
            await prepare(repo)
        return await trips_of(bench, counting, lambda: op(repo), cache)
    finally:
        await cache.aclose()


async def trips_of(
    bench: BenchSession,
    counting: CountingValkey,
    op: Callable[[], Awaitable[Any]],
    cache: AppConfigFragmentCacheSource | None = None,
) -> dict[str, Any]:
    """Valkey round trips (on ``counting``) and SQL statements of ``op()``.

    The cache source's background work is drained before and after: a background fill
    is a round trip of this op too.
    """
    await drain(cache)
    counting.reset()
    with count_sql(bench.engine) as sql:
        await op()
        await drain(cache)
    return {
        "valkey_round_trips": counting.round_trips,
        "sql_statements": sql.count,
        "valkey_calls": [call.label for call in counting.calls],
    }


def cold_batches(
    bench: BenchSession, cache: AppConfigFragmentCacheSource, users: list[UUID], size: int
) -> tuple[list[UUID], Callable[[], None]]:
    """``(batch, setup)``: each ``setup()`` (untimed, before a round) refills ``batch`` with
    the next ``size`` of ``users`` (cycling) and invalidates their user scope in ``cache``,
    after the background work of the round before has finished."""
    cycle = itertools.cycle(range(0, len(users), size))
    batch: list[UUID] = []

    def setup() -> None:
        start = next(cycle)
        batch[:] = users[start : start + size]

        async def invalidate() -> None:
            await cache.drain()
            for uid in batch:
                await cache.invalidate_for_scope(AppConfigScopeType.USER, str(uid))

        bench.run(invalidate())

    return batch, setup


def timed_reads(
    get: Callable[[UUID, str], Awaitable[Any]],
    users: list[UUID],
    latencies: list[float],
    cache: AppConfigFragmentCacheSource | None = None,
) -> Callable[[], Awaitable[None]]:
    """A round body: read ``NAME`` for each of ``users`` (the list may be refilled between
    rounds), each read's latency appended to ``latencies``; then ``cache`` drained (the
    Valkey fills run in the background: they are counted in)."""

    async def body() -> None:
        for uid in users:
            started = perf_counter()
            await get(uid, NAME)
            latencies.append(perf_counter() - started)
        await drain(cache)

    return body


def record_latency(benchmark: Any, samples: list[float]) -> None:
    """Store the median and p95 of per-request latencies (seconds) in ``extra_info``.

    A per-op time is CPU-inclusive (background fills run inside the round); the
    request latency is what one caller waits for.
    """
    if samples:
        ordered = sorted(samples)
        benchmark.extra_info["latency_median"] = ordered[len(ordered) // 2]
        benchmark.extra_info["latency_p95"] = ordered[int(len(ordered) * 0.95)]


def merged_view_sql() -> tuple[Any, str]:
    """The repository's merged-view statement, and the same text for asyncpg (``$1``, ``$2``)."""
    statement = merged_view_statement()
    text = statement.element.text.replace(":uid", "$1").replace(":names", "$2")
    return statement, text


@asynccontextmanager
async def profiling_session() -> AsyncIterator[BenchSession]:
    """For the ``bench/profile_*.py`` scripts: an embedded Valkey and PostgreSQL, the
    schema and the bench population seeded (its outbox rows cleared: no cache holds
    their views); everything is closed and stopped on the way out."""
    server = EmbeddedValkey()
    server.start()
    try:
        async with embedded_postgres() as url:
            engine = create_async_engine(url, pool_size=4)
            client = make_valkey_client(server.url, max_connections=8)
            try:
                await create_schema(engine)
                population = await seed(engine, random.Random(1052))
                async with engine.begin() as conn:
                    await conn.execute(sa.text("DELETE FROM app_config_outbox"))
                loop = asyncio.get_running_loop()
                yield BenchSession.seeded(loop, server.url, url, engine, client, population)
            finally:
                await client.aclose()
                await engine.dispose()
    finally:
        server.stop()
