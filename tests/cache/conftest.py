"""Fixtures and helpers of the cache behaviour suite.

- ``tiers``: the same tests against three configurations, "db" (no cache source),
  "valkey" (``local_maxsize=0``) and "l1+valkey" (the default), each with a fake clock;
- ``CountingValkey``: a thin proxy around the real client that counts round trips
  (each awaited command or pipeline ``execute`` is one) and can pause a call;
- ``SqlCounter``: counts the SQL statements the library sends;
- ``World``: a small data set (policies, users in two domains, fragments at every scope).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import pytest
import pytest_asyncio
import valkey.asyncio as valkey_asyncio
from sqlalchemy import event, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigData,
    AppConfigFragmentCacheSource,
    AppConfigFragmentKey,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    AppConfigScopeType,
    FragmentInput,
)
from appconfig_cache.models import users

PUBLIC = AppConfigScopeType.PUBLIC
DOMAIN = AppConfigScopeType.DOMAIN
DUD = AppConfigScopeType.DOMAIN_USER_DEFAULTS
USER = AppConfigScopeType.USER
ALL_SCOPES = [PUBLIC, DOMAIN, DUD, USER]

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


# -- the clock ------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


# -- Valkey round trips ---------------------------------------------------------------------

Gate = Callable[["Call"], Awaitable[None]]


@dataclass
class Call:
    """One round trip: ``kind`` is the method (``mget``, ``get``, ... or ``pipeline``)."""

    kind: str
    commands: list[tuple[str, tuple[Any, ...]]]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.commands]

    def has(self, command: str) -> bool:
        return command in self.names

    def keys(self, command: str) -> list[Any]:
        out: list[Any] = []
        for name, args in self.commands:
            if name == command:
                if command == "mget":
                    first = args[0]
                    out.extend(first if isinstance(first, list | tuple) else args)
                else:
                    out.append(args[0])
        return out


class _CountingPipeline:
    def __init__(self, owner: CountingValkey, real: Any) -> None:
        self._owner = owner
        self._real = real
        self._commands: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if name == "execute" or not callable(attr):
            return attr

        def queue(*args: Any, **kwargs: Any) -> _CountingPipeline:
            if name == "execute_command":  # e.g. execute_command("MGET", *keys)
                self._commands.append((str(args[0]).lower(), args[1:]))
            else:
                self._commands.append((name, args))
            attr(*args, **kwargs)
            return self

        return queue

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return await self._owner._round_trip(
            Call("pipeline", list(self._commands)), lambda: self._real.execute(*args, **kwargs)
        )


class CountingValkey:
    """Proxy of a ``valkey.asyncio.Valkey``: every awaited call is one counted round trip.

    ``before`` / ``after`` are optional async gates run around each round trip (``after``
    sees the reply already read from the socket but not yet handed to the caller).
    """

    _DIRECT = frozenset(
        {"mget", "get", "set", "incr", "ping", "delete", "exists", "ttl", "info", "execute_command"}
    )

    def __init__(self, real: valkey_asyncio.Valkey) -> None:
        self.real = real
        self.calls: list[Call] = []
        self.before: Gate | None = None
        self.after: Gate | None = None

    @property
    def round_trips(self) -> int:
        return len(self.calls)

    def reset(self) -> None:
        self.calls.clear()

    def commands(self, name: str) -> list[Any]:
        """Keys of every ``name`` command sent so far (``incr``, ``mget``, ``set`` ...)."""
        return [key for call in self.calls for key in call.keys(name)]

    async def _round_trip(self, call: Call, send: Callable[[], Awaitable[Any]]) -> Any:
        self.calls.append(call)
        if self.before is not None:
            await self.before(call)
        reply = await send()
        if self.after is not None:
            await self.after(call)
        return reply

    def pipeline(self, *args: Any, **kwargs: Any) -> _CountingPipeline:
        return _CountingPipeline(self, self.real.pipeline(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if name not in self._DIRECT:
            return attr

        async def direct(*args: Any, **kwargs: Any) -> Any:
            return await self._round_trip(Call(name, [(name, args)]), lambda: attr(*args, **kwargs))

        return direct


class PauseAt:
    """A gate that parks the first matching round trip until ``release()``."""

    def __init__(self, match: Callable[[Call], bool]) -> None:
        self.match = match
        self.reached = asyncio.Event()
        self._go = asyncio.Event()
        self.armed = True

    async def __call__(self, call: Call) -> None:
        if self.armed and self.match(call):
            self.armed = False
            self.reached.set()
            await self._go.wait()

    def release(self) -> None:
        self._go.set()


def rebuilt(cache: AppConfigFragmentCacheSource) -> int:
    """Views a cache source rebuilt from a user part and a shared part (either way)."""
    stats = cache.stats
    return stats.recomposed + stats.l1_recomposed


async def commandstats(client: Any) -> dict[str, int]:
    """``INFO commandstats`` as ``{command: calls}`` (lower-case command names), summed
    over every primary on a cluster."""
    if hasattr(client, "get_nodes"):  # ValkeyCluster: one reply per node
        replies = await client.info("commandstats", target_nodes=client.PRIMARIES)
        infos = list(replies.values())
    else:
        infos = [await client.info("commandstats")]
    out: dict[str, int] = {}
    for info in infos:
        for key, value in info.items():
            name = key.removeprefix("cmdstat_")
            out[name] = out.get(name, 0) + (int(value["calls"]) if isinstance(value, dict) else 0)
    return out


def incr_calls(delta: dict[str, int]) -> int:
    """INCR commands in a ``stats_delta`` (Valkey 8+ files INCR under ``incrby``)."""
    return delta.get("incr", 0) + delta.get("incrby", 0)


def stats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands run between two ``commandstats`` snapshots, INFO itself left out."""
    names = set(before) | set(after)
    delta = {n: after.get(n, 0) - before.get(n, 0) for n in names if n != "info"}
    return {n: d for n, d in delta.items() if d}


# -- SQL statements -------------------------------------------------------------------------

_LIBRARY_SQL = re.compile(r"\b(app_config_policies|app_config_fragments|users)\b")


class SqlCounter:
    """Counts the statements that touch the library's tables (pool chatter left out)."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    @property
    def count(self) -> int:
        return len(self.statements)

    def reset(self) -> None:
        self.statements.clear()

    def _on_execute(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if _LIBRARY_SQL.search(statement):
            self.statements.append(statement)


@contextmanager
def count_sql(engine: AsyncEngine) -> Iterator[SqlCounter]:
    counter = SqlCounter()
    target = engine.sync_engine
    event.listen(target, "before_cursor_execute", counter._on_execute)
    try:
        yield counter
    finally:
        event.remove(target, "before_cursor_execute", counter._on_execute)


# -- data -----------------------------------------------------------------------------------


async def add_users(engine: AsyncEngine, members: dict[UUID, str]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(users), [{"uuid": uid, "domain_name": d} for uid, d in members.items()]
        )


def fkey(scope: AppConfigScopeType, scope_id: str, name: str) -> AppConfigFragmentKey:
    return AppConfigFragmentKey(scope_type=scope, scope_id=scope_id, name=name)


def finput(
    scope: AppConfigScopeType, scope_id: str, name: str, config: dict[str, Any]
) -> FragmentInput:
    return FragmentInput(key=fkey(scope, scope_id, name), config=config)


def scope_id_of(scope: AppConfigScopeType, uid: UUID, domain: str) -> str:
    if scope is PUBLIC:
        return "public"
    if scope is USER:
        return str(uid)
    return domain


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
            tasks = list(cache._parts.background._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await cache.aclose()
            stuck.append(cache)
    assert not stuck, "a cache source had loads that never finished (cancelled at teardown)"


@pytest_asyncio.fixture(params=MODES)
async def tiers(
    request: pytest.FixtureRequest, engine: AsyncEngine, valkey_client: valkey_asyncio.Valkey
) -> AsyncIterator[Tiers]:
    """The suite's three configurations: "db", "valkey" (no L1) and "l1+valkey"."""
    built = await build_tiers(request.param, engine, valkey_client)
    try:
        yield built
    finally:
        await close_tiers(built)


@pytest_asyncio.fixture
async def l1(engine: AsyncEngine, valkey_client: valkey_asyncio.Valkey) -> AsyncIterator[Tiers]:
    """Only the default configuration, for tests that do not depend on the tiers."""
    built = await build_tiers("l1+valkey", engine, valkey_client)
    try:
        yield built
    finally:
        await close_tiers(built)


@pytest_asyncio.fixture(params=CACHED_MODES)
async def cached(
    request: pytest.FixtureRequest, engine: AsyncEngine, valkey_client: valkey_asyncio.Valkey
) -> AsyncIterator[Tiers]:
    """The two configurations that have a cache source."""
    built = await build_tiers(request.param, engine, valkey_client)
    try:
        yield built
    finally:
        await close_tiers(built)


# -- a small world --------------------------------------------------------------------------


@dataclass
class World:
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


async def make_world(t: Tiers, *, fragments: bool = True) -> World:
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
                finput(PUBLIC, "public", "theme", {"color": "grey", "font": {"size": 10}}),
                finput(DOMAIN, "d1", "theme", {"color": "blue"}),
                finput(DUD, "d1", "theme", {"font": {"family": "serif"}}),
                finput(DOMAIN, "d2", "theme", {"color": "green"}),
                finput(USER, str(u1), "theme", {"font": {"size": 12}}),
                finput(PUBLIC, "public", "menu", {"items": ["a", "b"]}),
                finput(USER, str(u2), "menu", {"items": ["c"]}),
            ]
        )
        assert not result.failures, result.failures
    return World(u1=u1, u2=u2, u3=u3, u4=u4, domains=domains)


async def assert_transparent(t: Tiers, w: World, names: tuple[str, ...] | None = None) -> None:
    """I1: every (user, name) read through the repository equals the DB-only read."""
    names = names or w.names
    for uid in w.users:
        truth = await t.db.app_configs(uid, list(names))
        for name, expected in zip(names, truth, strict=True):
            got = await t.repo.app_config(uid, name)
            assert got == expected, (t.mode, uid, name)


# -- inspecting Valkey ----------------------------------------------------------------------


def split_envelope(raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(header, view)`` of an envelope: a header line then the view, or one document."""
    head, newline, body = raw.partition(b"\n")
    if newline:
        return json.loads(head), json.loads(body)
    doc = json.loads(raw)
    return doc, doc.pop("data")


def join_envelope(like: bytes, header: dict[str, Any], view: dict[str, Any]) -> bytes:
    """An envelope in the same layout as ``like``, from a header and a view."""
    if b"\n" in like:
        compact = {"separators": (",", ":")}
        return json.dumps(header, **compact).encode() + b"\n" + json.dumps(view, **compact).encode()
    return json.dumps({**header, "data": view}).encode()


async def servable_envelope(
    valkey: valkey_asyncio.Valkey, uid: UUID, name: str, domain: str
) -> AppConfigData | None:
    """The view in Valkey's envelope if its generations match Valkey's current ones, else None.

    This is what any process with a fresh generation cache would serve.
    """
    raw = await valkey.get(f"app_config:merged:{{{uid}}}:{name}")
    if raw is None:
        return None
    header, view = split_envelope(raw)
    gen_keys = [
        "app_config:gen:public",
        f"app_config:gen:name:{name}",
        f"app_config:gen:domain:{domain}",
        f"app_config:gen:user:{{{uid}}}",
    ]
    gens = [await valkey.get(key) for key in gen_keys]  # four slots on a cluster
    current = [None if g is None else int(g) for g in gens]
    if domain == "":
        current[2] = 0
    if header["g"] != current or header["u"] != str(uid) or header["n"] != name:
        return None
    if "e" in header and header["e"] != _server_epoch(await _server_info(valkey)):
        return None
    return AppConfigData.model_validate(view)


async def _server_info(valkey: Any) -> Any:
    if hasattr(valkey, "get_nodes"):  # ValkeyCluster: the epoch covers every primary
        return await valkey.info("server", target_nodes=valkey.PRIMARIES)
    return await valkey.info("server")


def _server_epoch(info: Any) -> Any:
    from appconfig_cache.tiered.commands import server_epoch_of

    return server_epoch_of(info)


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
