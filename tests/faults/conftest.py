"""Fixtures of the fault suite: the proxy, an injected clock, stacks of a counting client,
a cache source and a repository, a seeded population and a load driver that checks every
answer against the DB.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigData,
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    make_valkey_client,
)
from appconfig_cache.embedded import EmbeddedValkey
from tests.support.clock import FakeClock
from tests.support.data import add_policy, add_user
from tests.support.fragments import domain_fragment, my_fragment, public_fragment
from tests.support.outbox import make_reader  # noqa: F401  (a fixture)
from tests.support.valkey import CountingValkey

from .proxy import FaultProxy

T = TypeVar("T")

#: the client settings the brief asks for: a short socket timeout
SOCKET_TIMEOUT = 0.3


# -- the proxy ------------------------------------------------------------------------------


def valkey_target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


@pytest_asyncio.fixture(loop_scope="session")
async def valkey_proxy(valkey_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the test Valkey (flushed before the test)."""
    async with FaultProxy(valkey_target(valkey_url)) as proxy:
        yield proxy


def pg_target(database_url: str) -> tuple[str, int] | str:
    """Where PostgreSQL listens: its Unix socket (``?host=/dir``) or ``(host, port)``."""
    parts = urlsplit(database_url)
    query = parse_qs(parts.query)
    port = parts.port or 5432
    host = (query.get("host") or [parts.hostname or "127.0.0.1"])[0]
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}"
    return host, port


def pg_url_via(database_url: str, proxy: FaultProxy) -> str:
    """``database_url`` rewritten to go through ``proxy``.

    A proxy listening on a Unix socket must listen on ``<dir>/.s.PGSQL.5432``,
    the name libpq and asyncpg derive from ``?host=<dir>``.
    """
    parts = urlsplit(database_url)
    userinfo = parts.netloc.rpartition("@")[0]
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")]
    if proxy.listen_path is not None:
        directory, _, socket_name = proxy.listen_path.rpartition("/")
        if socket_name != ".s.PGSQL.5432":
            raise ValueError("a Unix-socket proxy for PostgreSQL listens on <dir>/.s.PGSQL.5432")
        query.append(("host", directory))
        host = ""
    else:
        host = f"{proxy.host}:{proxy.port}"
    netloc = f"{userinfo}@{host}" if userinfo else host
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


@pytest.fixture
def server(valkey_url: str, embedded_valkey_server: EmbeddedValkey) -> EmbeddedValkey:
    """The embedded Valkey a test may pause, kill or fill up (flushed before the test)."""
    return embedded_valkey_server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Faults(NamedTuple):
    """What every fault test uses: ``engine, make_stack, clock = faults``."""

    engine: AsyncEngine
    make_stack: StackFactory
    clock: FakeClock


@pytest.fixture
def faults(engine: AsyncEngine, make_stack: StackFactory, clock: FakeClock) -> Faults:
    return Faults(engine, make_stack, clock)


# -- a seeded population -------------------------------------------------------------------------


@dataclass
class Population:
    """Users in two domains and the names they all read; ``revision`` counts the writes."""

    users: list[uuid.UUID]
    names: list[str]
    domain_of: dict[uuid.UUID, str]
    revision: int = 0


async def seed_population(
    engine: AsyncEngine, *, users: int = 12, names: tuple[str, ...] = ("theme", "menu", "grid")
) -> Population:
    """Users in two domains, a policy per name, and public, domain and user fragments.

    Every user fragment carries its owner's id and its name, so a value served for
    the wrong key is caught.
    """
    oracle = AppConfigFragmentRepository(engine)
    domains = ("d-alpha", "d-beta")
    uids: list[uuid.UUID] = []
    domain_of: dict[uuid.UUID, str] = {}
    for i in range(users):
        uid = await add_user(engine, domain=domains[i % 2])
        uids.append(uid)
        domain_of[uid] = domains[i % 2]
    for name in names:
        await add_policy(engine, name)
    items = [public_fragment(name, {"layer": "public", "pub_rev": 0}) for name in names]
    items += [domain_fragment(d, n, {"layer": "domain", "dom": d}) for d in domains for n in names]
    result = await oracle.admin_bulk_create(items)
    assert not result.failures, result.failures
    for uid in uids:
        res = await oracle.bulk_create_my(
            uid, [my_fragment(n, own_config(uid, n, 0)) for n in names]
        )
        assert not res.failures, res.failures
    return Population(users=uids, names=list(names), domain_of=domain_of)


def own_config(uid: uuid.UUID, name: str, rev: int) -> dict[str, Any]:
    return {"owner": str(uid), "doc": name, "rev": rev}


def belongs_to(view: AppConfigData, uid: uuid.UUID, name: str) -> bool:
    """Does ``view`` describe ``(uid, name)``, by its key and by the data it carries?"""
    config = view.config or {}
    return (
        view.user_id == uid
        and view.name == name
        and config.get("owner") == str(uid)
        and config.get("doc") == name
    )


# -- the load driver ------------------------------------------------------------------------


@dataclass
class Load:
    """Drives reads and writes through the cached repository and checks each answer.

    A read round runs its reads concurrently, with no write in flight; once they
    return, each answer is compared with the DB-only repository read *after* it.
    """

    repo: AppConfigFragmentRepository
    oracle: AppConfigFragmentRepository
    population: Population
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    requests: int = 0
    failures: list[BaseException] = field(default_factory=list)
    stale: list[tuple[uuid.UUID, str, Any, Any]] = field(default_factory=list)
    worst: float = 0.0

    async def timed(self, make: Callable[[], Awaitable[T]]) -> T | None:
        self.requests += 1
        start = time.perf_counter()
        try:
            return await make()
        except Exception as exc:  # a failed request: the suite asserts there are none
            self.failures.append(exc)
            return None
        finally:
            self.worst = max(self.worst, time.perf_counter() - start)

    async def read_round(self, n: int = 24) -> list[tuple[uuid.UUID, str]]:
        """``n`` concurrent reads (one in four a batch read), then the oracle check."""
        users, names, rng = self.population.users, self.population.names, self.rng
        picks = [(rng.choice(users), rng.choice(names)) for _ in range(n)]

        async def one(uid: uuid.UUID, name: str) -> list[tuple[str, AppConfigData]] | None:
            if rng.random() < 0.25:
                views = await self.timed(lambda: self.repo.app_configs(uid, names))
                return None if views is None else list(zip(names, views, strict=True))
            view = await self.timed(lambda: self.repo.app_config(uid, name))
            return None if view is None else [(name, view)]

        answers = await asyncio.gather(*(one(uid, name) for uid, name in picks))
        for (uid, _), got in zip(picks, answers, strict=True):
            for name, view in got or ():
                want = await self.oracle.app_config(uid, name)
                if view != want or not belongs_to(view, uid, name):
                    self.stale.append((uid, name, view, want))
        return picks

    async def sweep(self) -> tuple[int, int]:
        """Read every ``(user, name)`` once, concurrently; check; return the L2 hits and misses.

        Background fills are drained first and after, so a second sweep over an
        unchanged population is served from Valkey.
        """
        cache = self.repo.cache_source
        assert cache is not None
        await cache.drain()
        before = (cache.stats.l2_hits, cache.stats.l2_misses)
        pairs = [(uid, name) for uid in self.population.users for name in self.population.names]
        repo = self.repo

        def read(uid: uuid.UUID, name: str) -> Callable[[], Awaitable[AppConfigData]]:
            return lambda: repo.app_config(uid, name)

        answers = await asyncio.gather(*(self.timed(read(uid, name)) for uid, name in pairs))
        for (uid, name), view in zip(pairs, answers, strict=True):
            if view is None:
                continue
            want = await self.oracle.app_config(uid, name)
            if view != want or not belongs_to(view, uid, name):
                self.stale.append((uid, name, view, want))
        await cache.drain()
        return cache.stats.l2_hits - before[0], cache.stats.l2_misses - before[1]

    async def write(self) -> None:
        """One write through the cached repository: a user's own fragment or a domain's."""
        population = self.population
        population.revision += 1
        uid = self.rng.choice(population.users)
        name = self.rng.choice(population.names)
        if self.rng.random() < 0.75:
            await self.timed(
                lambda: self.repo.bulk_update_my(
                    uid, [my_fragment(name, own_config(uid, name, population.revision))]
                )
            )
        else:
            domain = population.domain_of[uid]
            config = {"layer": "domain", "dom": domain, "dom_rev": population.revision}
            item = domain_fragment(domain, name, config)
            await self.timed(lambda: self.repo.admin_bulk_update([item]))

    def report(self, label: str) -> str:
        line = (
            f"[fault] {label}: requests={self.requests} failed={len(self.failures)} "
            f"stale={len(self.stale)} worst_latency={self.worst * 1000:.1f}ms"
        )
        print(line)
        return line

    def check(self) -> None:
        assert self.failures == [], self.failures[:3]
        assert self.stale == [], self.stale[:2]


# -- stacks: client + cache source + repository -------------------------------------------


@dataclass
class Stack:
    client: Any
    calls: CountingValkey
    cache: AppConfigFragmentCacheSource
    repo: AppConfigFragmentRepository

    @property
    def pool(self) -> Any:
        return self.client.connection_pool


StackFactory = Callable[..., Awaitable[Stack]]


@pytest_asyncio.fixture(loop_scope="session")
async def make_stack(engine: AsyncEngine) -> AsyncIterator[StackFactory]:
    """``await make_stack(url, timer=clock, **cache_settings)``; all closed after the test."""
    made: list[Stack] = []

    async def make(
        url: str, *, socket_timeout: float = SOCKET_TIMEOUT, max_connections: int = 64, **kw: Any
    ) -> Stack:
        client = make_valkey_client(
            url, socket_timeout=socket_timeout, max_connections=max_connections
        )
        calls = CountingValkey(client)
        cache = AppConfigFragmentCacheSource(calls, **kw)
        stack = Stack(client, calls, cache, AppConfigFragmentRepository(engine, cache_source=cache))
        made.append(stack)
        return stack

    yield make
    for stack in made:
        await stack.cache.aclose()
        await stack.client.aclose()


# -- recovering, and a second process --------------------------------------------------------

#: the breaker cool-down of the fault tests
COOLDOWN = 5.0


async def recover(load: Load, cache: AppConfigFragmentCacheSource, clock: FakeClock) -> int:
    """Valkey is back: move the clock past each cool-down until a full sweep is all L2 hits.

    Returns how many times the breaker opened again on the way (stale pooled
    connections each fail once: see ``test_reset_idle_connections_...``).
    """
    opens = cache.stats.breaker_opens
    keys = len(load.population.users) * len(load.population.names)
    for _ in range(20):
        clock.advance(COOLDOWN + 0.1)
        await load.read_round()
        stats = cache.stats
        if stats.breaker_state != "closed" or stats.pending_bumps:
            continue
        await load.sweep()
        if (await load.sweep()) == (keys, 0):
            return cache.stats.breaker_opens - opens
    raise AssertionError(f"the cache did not recover: {cache.stats}")


class Reader:
    def __init__(self, client: Any, cache: AppConfigFragmentCacheSource, engine: AsyncEngine):
        self.client, self.cache = client, cache
        self.repo = AppConfigFragmentRepository(engine, cache_source=cache)

    async def aclose(self) -> None:
        await self.cache.aclose()
        await self.client.aclose()


async def fresh_reader(engine: AsyncEngine, url: str, **kw: Any) -> Reader:
    """Another process: its own client, L1 and generation cache."""
    from appconfig_cache import make_valkey_client

    client = make_valkey_client(url, socket_timeout=0.3)
    return Reader(client, AppConfigFragmentCacheSource(client, timer=FakeClock(), **kw), engine)
