"""The library on a real Valkey Cluster, through ``valkey.asyncio.cluster.ValkeyCluster``.

Every answer is compared with the DB-only repository. Cluster safety (I8) is shown
three ways: every command the cache source sends is audited for its hash slots by a
counting wrapper around the client, the cache's error counters stay at zero, and
nothing is logged at WARNING. The same wrapper counts round trips per operation, and
the same scenario on the standalone server must count the same.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine
from valkey.asyncio.cluster import ValkeyCluster
from valkey.crc import key_slot

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    AppConfigScopeType,
)
from tests.support.clock import FakeClock
from tests.support.data import add_policy, add_user, truncate_tables
from tests.support.fragments import (
    domain_defaults_fragment,
    domain_fragment,
    fragment_key,
    my_fragment,
    public_fragment,
    user_fragment,
)
from tests.support.scopes import ALL_SCOPES, DOMAIN, PUBLIC, USER
from tests.support.valkey import Call, Command, CountingValkey

pytestmark = pytest.mark.cluster

NAMES = ("theme", "menu", "layout", "banner")

DOMAINS = ("d1", "d2", "d3")
USERS_PER_NODE = 2


# -- auditing the client's round trips ------------------------------------------------


def _slot(key: Any) -> int:
    return key_slot(key.encode() if isinstance(key, str) else bytes(key))


def assert_single_slot(trips: Sequence[Call]) -> None:
    """I8: no command names keys of two hash slots (a pipeline may span slots)."""
    for trip in trips:
        for command in trip.commands:
            slots = {_slot(key) for key in command.keys}
            assert len(slots) <= 1, f"{command.name} spans slots {slots}: {command.keys}"


def assert_no_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing was logged at WARNING or above."""
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings, [r.getMessage() for r in warnings]


def nodes_touched(client: ValkeyCluster, trip: Call) -> int:
    """How many primaries one round trip fans out to (they are sent in parallel)."""
    ports = set()
    for command in trip.commands:
        for key in command.keys[:1]:
            node = client.get_node_from_key(key)
            assert node is not None
            ports.add(node.port)
    return max(len(ports), 1)


# -- test data --------------------------------------------------------------------------


@dataclass
class SpreadUsers:
    """Users spread over every primary, in three domains, with fragments at every scope."""

    users: list[uuid.UUID]
    domain_of: dict[uuid.UUID, str]
    db: AppConfigFragmentRepository  # DB only: the truth to compare with


def users_on_every_node(client: ValkeyCluster, per_node: int = USERS_PER_NODE) -> list[uuid.UUID]:
    """Fresh user ids whose keys (hash tag ``{uid}``) land ``per_node`` on every primary."""
    primaries = {node.port for node in client.get_primaries()}
    picked: dict[int, list[uuid.UUID]] = {port: [] for port in primaries}
    while any(len(uids) < per_node for uids in picked.values()):
        uid = uuid.uuid4()
        node = client.get_node_from_key(f"app_config:merged:{{{uid}}}:theme")
        assert node is not None
        if len(picked[node.port]) < per_node:
            picked[node.port].append(uid)
    # interleave the nodes, so consecutive users live on different primaries
    return [uid for group in zip(*picked.values(), strict=True) for uid in group]


async def seed_spread_users(engine: AsyncEngine, users: list[uuid.UUID]) -> SpreadUsers:
    """Policies, users and fragments (through the DB-only repositories)."""
    await add_policy(engine, "theme", ALL_SCOPES)
    await add_policy(engine, "menu", (PUBLIC, USER))
    await add_policy(engine, "layout", (DOMAIN, USER))
    await add_policy(engine, "banner", ALL_SCOPES)  # no fragments until a test writes some
    domain_of = {}
    for index, uid in enumerate(users):
        domain_of[uid] = DOMAINS[index % len(DOMAINS)]
        await add_user(engine, uid, domain_of[uid])
    db_repo = AppConfigFragmentRepository(engine)
    items = [
        public_fragment("theme", {"color": "blue", "font": {"size": 12, "face": "sans"}}),
        public_fragment("menu", {"items": ["home", "help"]}),
    ]
    for domain in DOMAINS:
        items.append(domain_fragment(domain, "theme", {"font": {"size": 14}, "domain": domain}))
        items.append(domain_defaults_fragment(domain, "theme", {"dense": domain == "d2"}))
        items.append(domain_fragment(domain, "layout", {"columns": len(domain)}))
    for index, uid in enumerate(users[::2]):
        items.append(user_fragment(uid, "theme", {"color": f"c{index}"}))
    result = await db_repo.admin_bulk_create(items)
    assert not result.failures
    return SpreadUsers(users=users, domain_of=domain_of, db=db_repo)


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=[0, 4096], ids=["valkey-only", "l1+valkey"])
def local_maxsize(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@dataclass
class Caches:
    """Makes cache sources over one counting client; checks and closes them at the end."""

    client: CountingValkey
    local_maxsize: int
    clock: FakeClock
    caplog: pytest.LogCaptureFixture
    made: list[AppConfigFragmentCacheSource] = field(default_factory=list)

    def new(self) -> AppConfigFragmentCacheSource:
        # A generous budget: a timeout under CI load would turn a round trip into a
        # DB load and change what is counted. The breaker is not under test here.
        cache = AppConfigFragmentCacheSource(
            self.client, local_maxsize=self.local_maxsize, timeout=5.0, timer=self.clock
        )
        self.made.append(cache)
        return cache

    def new_repo(
        self, engine: AsyncEngine
    ) -> tuple[AppConfigFragmentCacheSource, AppConfigFragmentRepository]:
        """A new cache source and a repository over it (another "process")."""
        cache = self.new()
        return cache, AppConfigFragmentRepository(engine, cache_source=cache)

    async def close_and_check(self) -> None:
        for cache in self.made:
            await cache.aclose()
        for cache in self.made:
            stats = cache.stats
            assert stats.valkey_refusals == 0, stats  # CROSSSLOT would land here
            assert stats.valkey_errors == 0, stats
            assert stats.valkey_timeouts == 0, stats
            assert stats.envelopes_rejected == 0, stats
            assert stats.pending_bumps == 0, stats
        assert_no_warnings(self.caplog)
        assert_single_slot(self.client.calls)


@pytest_asyncio.fixture(loop_scope="session")
async def caches(
    cluster_client: ValkeyCluster,
    local_maxsize: int,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[Caches]:
    caplog.set_level(logging.WARNING, logger="appconfig_cache")
    made = Caches(CountingValkey(cluster_client), local_maxsize, clock, caplog)
    try:
        yield made
    finally:
        for cache in made.made:
            await cache.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def spread(engine: AsyncEngine, cluster_client: ValkeyCluster) -> SpreadUsers:
    return await seed_spread_users(engine, users_on_every_node(cluster_client))


async def assert_matches_db(repo: AppConfigFragmentRepository, spread: SpreadUsers) -> None:
    """Every (user, name) view, and the batch reads, equal the DB's (fragments included)."""
    for uid in spread.users:
        for name in NAMES:
            assert await repo.app_config(uid, name) == await spread.db.app_config(uid, name)
        assert await repo.app_configs(uid, list(NAMES)) == await spread.db.app_configs(
            uid, list(NAMES)
        )
        assert await repo.my_app_configs(uid) == await spread.db.my_app_configs(uid)


# -- the cluster itself -----------------------------------------------------------------


async def test_users_spread_over_every_primary(
    cluster_client: ValkeyCluster, spread: SpreadUsers
) -> None:
    primaries = {node.port for node in cluster_client.get_primaries()}
    assert len(primaries) == 3
    user_nodes = {
        cluster_client.get_node_from_key(f"app_config:merged:{{{uid}}}:theme").port  # type: ignore[union-attr]
        for uid in spread.users
    }
    assert user_nodes == primaries
    # the shared generation keys do not all sit on one node either
    shared = ["app_config:gen:public", *(f"app_config:gen:domain:{d}" for d in DOMAINS)]
    shared += [f"app_config:gen:name:{n}" for n in NAMES]
    assert len({cluster_client.get_node_from_key(k).port for k in shared}) > 1  # type: ignore[union-attr]


async def test_the_audit_catches_a_cross_slot_command(cluster_client: ValkeyCluster) -> None:
    """Control: the slot audit and the cluster really refuse a command across slots."""
    keys = ["app_config:gen:public", "app_config:gen:policies"]
    assert _slot(keys[0]) != _slot(keys[1])
    with pytest.raises(AssertionError, match="spans slots"):
        assert_single_slot([Call("call", (Command("mget", (keys,)),))])
    with pytest.raises(Exception, match=r"same key slot|CROSSSLOT"):
        await cluster_client.mget(keys)


# -- reads ------------------------------------------------------------------------------


async def test_a_cold_read_asks_valkey(
    engine: AsyncEngine, spread: SpreadUsers, caches: Caches
) -> None:
    """The smallest case: one read with no generation cached goes to Valkey, unrefused."""
    cache, repo = caches.new_repo(engine)
    uid = spread.users[0]
    assert await repo.app_config(uid, "theme") == await AppConfigFragmentRepository(
        engine
    ).app_config(uid, "theme")
    assert cache.stats.l2_skipped == 0, cache.stats
    assert cache.stats.l2_misses == 1, cache.stats
    await caches.close_and_check()


async def test_reads_fill_valkey_and_a_fresh_process_hits_l2(
    engine: AsyncEngine, spread: SpreadUsers, caches: Caches
) -> None:
    writer, repo = caches.new_repo(engine)
    # Twice: a process that does not know a user's domain yet only records it the
    # first time (I3), and fills the envelopes the second time.
    for _ in range(2):
        await assert_matches_db(repo, spread)
        await writer.drain()
        caches.clock.advance(writer.local_ttl + 0.5)
    assert writer.stats.fills > 0

    reader, other = caches.new_repo(engine)
    await assert_matches_db(other, spread)
    assert reader.stats.db_loads == 0  # every view, and the policy-name list, came from L2
    assert reader.stats.l2_misses == 0
    assert reader.stats.l2_hits >= len(spread.users) * len(NAMES)
    await caches.close_and_check()


async def test_seed_api_get_and_set_on_the_cluster(
    engine: AsyncEngine, spread: SpreadUsers, caches: Caches
) -> None:
    cache, repo = caches.new_repo(engine)
    for uid in spread.users:
        # A read first: a process stores a view only under a domain it has seen the DB say.
        await repo.app_config(uid, "menu")
    for uid in spread.users:
        await cache.set_merged_config(uid, "theme", await spread.db.app_config(uid, "theme"))
    await cache.drain()
    caches.clock.advance(cache.local_ttl + 0.5)
    fresh = caches.new()
    for uid in spread.users:
        assert await fresh.get_merged_config(uid, "theme") == await spread.db.app_config(
            uid, "theme"
        )
    assert fresh.stats.l2_hits == len(spread.users)
    await caches.close_and_check()


# -- writes and invalidation ------------------------------------------------------------


async def test_every_write_and_invalidation_is_seen(
    engine: AsyncEngine, spread: SpreadUsers, caches: Caches
) -> None:
    """I1/I2 in the writing process, I4 in another one, after every write verb."""
    writer_cache, other_cache = caches.new(), caches.new()
    writer = AppConfigFragmentRepository(engine, cache_source=writer_cache)
    other = AppConfigFragmentRepository(engine, cache_source=other_cache)
    policies = AppConfigPolicyRepository(engine, cache_source=writer_cache)
    users = spread.users
    d1_user = next(u for u in users if spread.domain_of[u] == "d1")

    async def check() -> None:
        await assert_matches_db(writer, spread)  # read-your-writes, at once
        await writer_cache.drain()
        await other_cache.drain()
        caches.clock.advance(other_cache.local_ttl + 0.5)
        await assert_matches_db(other, spread)  # another process, after local_ttl
        await other_cache.drain()

    async def create_my() -> None:
        for uid in users[:3]:
            result = await writer.bulk_create_my(uid, [my_fragment("menu", {"items": [str(uid)]})])
            assert not result.failures

    async def update_my() -> None:
        for uid in users[:3]:
            result = await writer.bulk_update_my(uid, [my_fragment("menu", {"items": ["x"]})])
            assert not result.failures

    async def admin_create_each_scope() -> None:
        result = await writer.admin_bulk_create(
            [
                public_fragment("banner", {"text": "hello", "style": {"bold": False}}),
                domain_fragment("d1", "banner", {"text": "d1 says hi"}),
                domain_defaults_fragment("d2", "banner", {"style": {"bold": True}}),
                user_fragment(users[1], "banner", {"hidden": True}),
                user_fragment(users[1], "layout", {"columns": 9}),
            ]
        )
        assert not result.failures

    async def admin_update_every_scope() -> None:
        result = await writer.admin_bulk_update(
            [
                public_fragment("theme", {"color": "green"}),
                domain_fragment("d1", "theme", {"font": {"size": 20}}),
                domain_defaults_fragment("d2", "theme", {"dense": False}),
                user_fragment(users[0], "theme", {"color": "red"}),
            ]
        )
        assert not result.failures

    async def admin_purge_every_scope() -> None:
        result = await writer.admin_bulk_purge(
            [
                fragment_key(PUBLIC, "public", "menu"),
                fragment_key(DOMAIN, "d2", "layout"),
                fragment_key(AppConfigScopeType.DOMAIN_USER_DEFAULTS, "d3", "theme"),
                fragment_key(USER, str(users[2]), "theme"),
            ]
        )
        assert not result.failures

    async def policy_changes() -> None:
        await policies.update("layout", [USER, DOMAIN])  # the chain order flips
        await policies.create("extra", [PUBLIC])
        created = await writer.admin_bulk_create([public_fragment("extra", {"on": True})])
        assert not created.failures
        purged = await writer.admin_bulk_purge([fragment_key(PUBLIC, "public", "extra")])
        assert not purged.failures
        await policies.purge("extra")

    async def seed_invalidations() -> None:
        # No DB change: the answers stay the same, but every scope kind is bumped.
        await writer_cache.invalidate_for_scope(PUBLIC, "public")
        await writer_cache.invalidate_for_scope(DOMAIN, "d1")
        await writer_cache.invalidate_for_scope(AppConfigScopeType.DOMAIN_USER_DEFAULTS, "d2")
        await writer_cache.invalidate_for_scope(USER, str(d1_user))
        await writer_cache.invalidate_for_policy("theme")

    await check()
    for step in (
        create_my,
        update_my,
        admin_create_each_scope,
        admin_update_every_scope,
        admin_purge_every_scope,
        policy_changes,
        seed_invalidations,
    ):
        await step()
        await check()
    assert writer_cache.stats.invalidations > 0
    assert other_cache.stats.l2_hits > 0  # the other process was served from Valkey too
    await caches.close_and_check()


# -- round trips: cluster == standalone -------------------------------------------------

Operation = Callable[[], Awaitable[Any]]


async def run_scenario(
    engine: AsyncEngine,
    client: CountingValkey,
    users: list[uuid.UUID],
    local_maxsize: int,
) -> dict[str, list[Call]]:
    """A fixed sequence of reads and writes; the round trips of each, by name."""
    clock = FakeClock()
    await truncate_tables(engine)
    spread = await seed_spread_users(engine, users)
    u, v = spread.users[0], spread.users[1]

    def make() -> AppConfigFragmentCacheSource:
        return AppConfigFragmentCacheSource(
            client, local_maxsize=local_maxsize, timeout=5.0, timer=clock
        )

    cache, second = make(), make()
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    repo2 = AppConfigFragmentRepository(engine, cache_source=second)
    policies = AppConfigPolicyRepository(engine, cache_source=cache)
    later = cache.local_ttl + 0.5

    steps: list[tuple[str, Operation]] = [
        ("cold read", lambda: repo.app_config(u, "theme")),
        ("cold read, domain known", lambda: _after(clock, later, repo.app_config(u, "theme"))),
        ("read again", lambda: repo.app_config(u, "theme")),
        ("other process, L2 hit", lambda: repo2.app_config(u, "theme")),
        ("batch cold", lambda: _after(clock, later, repo.app_configs(v, list(NAMES)))),
        ("batch filled", lambda: _after(clock, later, repo.app_configs(v, list(NAMES)))),
        ("other process, batch", lambda: repo2.app_configs(v, list(NAMES))),
        ("my_app_configs", lambda: _after(clock, later, repo.my_app_configs(u))),
        ("other process, my_app_configs", lambda: repo2.my_app_configs(u)),
        ("bulk_create_my", lambda: repo.bulk_create_my(u, [my_fragment("menu", {"a": 1})])),
        ("bulk_update_my", lambda: repo.bulk_update_my(u, [my_fragment("menu", {"a": 2})])),
        (
            "admin_bulk_update, every scope",
            lambda: repo.admin_bulk_update(
                [
                    public_fragment("theme", {"color": "green"}),
                    domain_fragment("d1", "theme", {"font": {"size": 20}}),
                    domain_defaults_fragment("d2", "theme", {"dense": False}),
                    user_fragment(u, "theme", {"color": "red"}),
                ]
            ),
        ),
        ("read after writes", lambda: repo.app_configs(u, list(NAMES))),
        (
            "other process after writes",
            lambda: _after(clock, later, repo2.app_configs(u, list(NAMES))),
        ),
        ("admin_bulk_purge", lambda: repo.admin_bulk_purge([fragment_key(USER, str(u), "menu")])),
        ("policy update", lambda: policies.update("layout", [USER, DOMAIN])),
        ("my_app_configs after policy change", lambda: repo.my_app_configs(v)),
        ("invalidate_for_scope public", lambda: cache.invalidate_for_scope(PUBLIC, "public")),
        ("read after public bump", lambda: repo.app_config(v, "theme")),
    ]
    trips: dict[str, list[Call]] = {}
    client.take()
    try:
        for label, operation in steps:
            await operation()
            await cache.drain()
            await second.drain()
            trips[label] = client.take()
    finally:
        await cache.aclose()
        await second.aclose()
    for source in (cache, second):
        assert source.stats.valkey_errors == source.stats.valkey_refusals == 0, source.stats
        assert source.stats.valkey_timeouts == 0, source.stats
    return trips


async def _after(clock: FakeClock, seconds: float, operation: Awaitable[Any]) -> Any:
    clock.advance(seconds)
    return await operation


async def test_round_trips_equal_standalone(
    engine: AsyncEngine,
    cluster_client: ValkeyCluster,
    valkey_client: Any,
    local_maxsize: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each operation makes the same round trips, command for command, on both servers."""
    caplog.set_level(logging.WARNING, logger="appconfig_cache")
    users = users_on_every_node(cluster_client, per_node=1)
    on_cluster = CountingValkey(cluster_client)
    on_standalone = CountingValkey(valkey_client)
    cluster_trips = await run_scenario(engine, on_cluster, users, local_maxsize)
    standalone_trips = await run_scenario(engine, on_standalone, users, local_maxsize)

    def shapes(trips: dict[str, list[Call]]) -> dict[str, list[Any]]:
        """Round trips with the server-epoch read folded in: a standalone server answers
        ``INFO`` inside the pipeline, a cluster in a call to every primary made in
        parallel with it (the same wait, one more connection)."""
        out: dict[str, list[Any]] = {}
        for label, ts in trips.items():
            shaped = []
            for trip in ts:
                kind, names = trip.shape
                if kind == "call" and names == ("info",):
                    shaped.append("+epoch")  # parallel to the pipeline just before it
                elif "info" in names:
                    shaped += [(kind, tuple(n for n in names if n != "info")), "+epoch"]
                else:
                    shaped.append(trip.shape)
            out[label] = shaped
        return out

    assert shapes(cluster_trips) == shapes(standalone_trips)
    for trips in cluster_trips.values():
        assert_single_slot(trips)
    # A warm read is one round trip (none from L1); a process's first read of a user
    # needs a second one for the generation of the domain it learns from Valkey.
    sequential = {
        label: [t for t in ts if t.shape != ("call", ("info",))]
        for label, ts in cluster_trips.items()
    }  # the epoch read runs in parallel
    assert len(sequential["read again"]) <= 1, cluster_trips["read again"]
    for label in ("other process, L2 hit", "other process, batch"):
        assert len(sequential[label]) <= 2, (label, cluster_trips[label])
    assert sum(map(len, cluster_trips.values())) > 0
    fan_out = {
        label: [nodes_touched(cluster_client, trip) for trip in trips]
        for label, trips in cluster_trips.items()
    }
    print("round trips per step (nodes per trip on the cluster):")
    for label, trips in cluster_trips.items():
        print(f"  {label}: {len(trips)} {fan_out[label]} {[t.shape for t in trips]}")
    assert_no_warnings(caplog)
