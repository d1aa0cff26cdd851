"""Issue 8: ``app_configs`` and ``my_app_configs`` across the three configurations."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa

from appconfig_cache import (
    AppConfigData,
    AppConfigPolicyRepository,
    AppConfigValidationError,
    InvalidConfigNameError,
    InvalidUserIdError,
    MyFragmentInput,
    TooManyItemsError,
)
from appconfig_cache.models import policies as policies_table
from appconfig_cache.repositories.app_config_fragment.repository import MAX_BATCH_NAMES
from tests.support.fragments import fragment_input, fragment_key
from tests.support.scopes import ALL_SCOPES, DOMAIN, PUBLIC, USER
from tests.support.sql import count_sql
from tests.support.valkey import commandstats, commandstats_delta

from .conftest import (
    LOCAL_TTL,
    FourUsers,
    PausedLoader,
    Seeded,
    Tiers,
    hang_guard,
    park_read,
    seed_four_users,
    standalone_shape_only,
)

DOCS = [f"doc{i}" for i in range(8)]


async def eight_documents(t: Tiers, w: FourUsers) -> None:
    """Eight policies, each with a fragment u1 sees, plus "theme" and "menu" of the world."""
    setup = AppConfigPolicyRepository(t.engine)
    for name in DOCS:
        await setup.create(name, ALL_SCOPES)
    items = [fragment_input(PUBLIC, "public", name, {"i": i}) for i, name in enumerate(DOCS[:4])]
    items += [fragment_input(DOMAIN, "d1", name, {"i": i}) for i, name in enumerate(DOCS[4:6], 4)]
    items += [fragment_input(USER, str(w.u1), name, {"i": i}) for i, name in enumerate(DOCS[6:], 6)]
    result = await t.db.admin_bulk_create(items)
    assert not result.failures


# -- equal to the per-name reads, in input order, duplicates answered -------------------------


@pytest.mark.parametrize(
    "names",
    [
        ["theme", "menu"],
        ["menu", "theme"],
        ["theme", "theme", "menu", "theme"],
        ["nopolicy", "theme", "nopolicy"],
        ["menu"],
        [],
    ],
    ids=["in-order", "reversed", "duplicates", "no-policy", "one", "empty"],
)
async def test_batch_equals_the_per_name_reads(tiers: Tiers, names: list[str]) -> None:
    t = tiers
    w = await seed_four_users(t)
    for _round in range(3):  # cold, then from whatever the tiers now hold
        for uid in w.users:
            got = await t.repo.app_configs(uid, names)
            assert [v.name for v in got] == names
            assert all(v.user_id == uid for v in got)
            assert got == [await t.db.app_config(uid, n) for n in names]
            assert got == [await t.repo.app_config(uid, n) for n in names]
            assert got == await t.db.app_configs(uid, names)
        if t.cache is not None:
            await t.cache.drain()
        t.clock.advance(LOCAL_TTL / 2)


async def test_duplicates_are_loaded_once(tiers: Tiers) -> None:
    t = tiers
    w = await seed_four_users(t)
    loader = PausedLoader(t.repo, pause=0)
    views = await t.repo.app_configs(w.u1, ["theme", "menu", "theme", "menu", "theme"])
    assert [v.name for v in views] == ["theme", "menu", "theme", "menu", "theme"]
    assert views[0] is views[2] is views[4]
    assert loader.calls == [["theme", "menu"]]
    if t.cache is not None:
        assert t.cache.stats.db_loads == 1
        await t.cache.drain()


async def test_batch_accepts_any_sequence(tiers: Tiers) -> None:
    t = tiers
    w = await seed_four_users(t)
    expected = [await t.db.app_config(w.u1, n) for n in ("theme", "menu")]
    assert await t.repo.app_configs(w.u1, ("theme", "menu")) == expected
    assert await t.repo.app_configs(str(w.u1), ["theme", "menu"]) == expected  # type: ignore[arg-type]
    if t.cache is not None:
        await t.cache.drain()


# -- partial L1 and partial L2 hits ---------------------------------------------------------


async def test_partial_l1_and_partial_l2_hits(seeded: Seeded) -> None:
    t, w = seeded
    await eight_documents(t, w)
    # Valkey gets envelopes of doc0..doc5 from another instance
    filler, filler_cache, _fc, _filler_clock = t.make_repo()
    await filler.app_config(w.u1, "theme")  # learns the domain
    await filler_cache.drain()
    await filler.app_configs(w.u1, DOCS[:6])
    await filler_cache.drain()
    # this instance: doc0, doc1 in L1 (when it has one); its generations are warm
    await t.repo.app_configs(w.u2, DOCS)  # same domain: the generation cache warms up
    await t.repo.app_configs(w.u1, DOCS[:2])
    assert t.cache is not None and t.client is not None
    await t.cache.drain()
    before = t.cache.stats.as_dict()
    loader = PausedLoader(t.repo, pause=0)
    t.client.reset()
    with count_sql(t.engine, library_only=True) as sql:
        views = await t.repo.app_configs(w.u1, DOCS)
        await t.cache.drain()
    after = t.cache.stats.as_dict()
    delta = {k: after[k] - before[k] for k in before if isinstance(before[k], int)}
    assert views == await t.db.app_configs(w.u1, DOCS)
    l1_hits = 2 if t.l1 else 0
    assert delta["l1_hits"] == l1_hits
    assert delta["l2_hits"] == 6 - l1_hits
    assert delta["l2_misses"] == 2
    assert delta["db_loads"] == 1
    assert loader.calls == [["doc6", "doc7"]]
    assert sql.count == 1
    shape = [call.names for call in t.client.calls]
    print(f"\n[{t.mode}] 2 from L1, {6 - l1_hits} from L2, 2 from the DB: {shape}")
    assert shape == [["mget"], ["set", "set"]]  # 1 lookup of the L1 misses, 1 fill
    looked_up = t.client.calls[0].keys("mget")
    expected_names = DOCS[l1_hits:]
    assert looked_up[: len(expected_names)] == [
        f"app_config:merged:{{{w.u1}}}:{n}" for n in expected_names
    ]


# -- my_app_configs: the bootstrap -----------------------------------------------------------


async def _bootstrap(t: Tiers, uid: UUID) -> tuple[list[AppConfigData], int, int]:
    if t.client is not None:
        t.client.reset()
    with count_sql(t.engine, library_only=True) as sql:
        views = await t.repo.my_app_configs(uid)
        if t.cache is not None:
            await t.cache.drain()
    return views, (t.client.round_trips if t.client is not None else 0), sql.count


async def test_bootstrap_returns_every_document_the_user_has(tiers: Tiers) -> None:
    t = tiers
    w = await seed_four_users(t)
    await eight_documents(t, w)
    await AppConfigPolicyRepository(t.engine).create("blank", ALL_SCOPES)
    for _ in range(3):
        for uid in w.users:
            views = await t.repo.my_app_configs(uid)
            every = await t.db.app_configs(uid, sorted([*DOCS, "theme", "menu", "blank"]))
            assert views == [v for v in every if v.fragments]
        t.clock.advance(LOCAL_TTL)
    names = [v.name for v in await t.repo.my_app_configs(w.u1)]
    assert names == sorted([*DOCS, "theme", "menu"])
    assert [v.name for v in await t.repo.my_app_configs(w.u3)] == [
        "doc0",
        "doc1",
        "doc2",
        "doc3",
        "menu",
        "theme",
    ]


@standalone_shape_only
async def test_bootstrap_counts(tiers: Tiers) -> None:
    """Exactly 8 policies, 8 documents."""
    t = tiers
    w = await seed_four_users(t, fragments=False)
    setup = AppConfigPolicyRepository(t.engine)
    await setup.purge("theme")
    await setup.purge("menu")
    await eight_documents(t, w)
    views, rt, sql = await _bootstrap(t, w.u1)
    print(f"\n[{t.mode}] cold bootstrap of {len(views)} documents: {rt} round trips, {sql} SQL")
    assert [v.name for v in views] == DOCS
    assert sql == 2  # the policy names, then every view in one statement
    if t.cache is None:
        views, rt, sql = await _bootstrap(t, w.u1)
        assert (rt, sql) == (0, 2)  # no cache: always the same two statements
        return
    # local_ttl later the process knows u1's domain; the list came back from Valkey (the
    # cold bootstrap filled it under the generation its lookup created): this bootstrap
    # fills the envelopes
    t.clock.advance(LOCAL_TTL)
    again, rt, sql = await _bootstrap(t, w.u1)
    assert again == views and sql == 1
    # local_ttl later still: L1, the list and the generations are due, Valkey is warm.
    # The views of the expired list's names are read first; that round trip reads the
    # policies generation too (the lookup's pipeline; with L1, the refresh's that renews
    # the expired entries), which confirms the list: one round trip
    t.clock.advance(LOCAL_TTL)
    again, rt, sql = await _bootstrap(t, w.u1)
    shape = [c.names for c in t.client.calls]  # type: ignore[union-attr]
    print(f"[{t.mode}] bootstrap after local_ttl, Valkey warm: {rt} rt, {sql} SQL {shape}")
    assert again == views and sql == 0
    assert rt == 1 and shape[0][0] == ("get" if t.l1 else "mget")
    assert "app_config:gen:policies" in t.client.commands("get" if t.l1 else "set")  # type: ignore[union-attr]
    assert t.cache.stats.bootstrap_list_changed == 0
    # and right after it: all warm
    warm, rt, sql = await _bootstrap(t, w.u1)
    print(f"[{t.mode}] warm bootstrap: {rt} round trips, {sql} SQL")
    assert warm == views
    assert sql == 0
    assert rt == (0 if t.l1 else 1)  # L1 answers everything / one MGET
    if not t.l1:
        assert [c.names for c in t.client.calls] == [["mget"]]  # type: ignore[union-attr]
    # another instance, Valkey warm: names, lookup, then the domain generation
    repo, cache, client, _clock = t.make_repo(local_maxsize=4096 if t.l1 else 0)
    with count_sql(t.engine, library_only=True) as sql_counter:
        assert await repo.my_app_configs(w.u1) == views
        await cache.drain()
    print(
        f"[{t.mode}] bootstrap by a fresh instance, Valkey warm: {client.round_trips} round "
        f"trips, {sql_counter.count} SQL"
    )
    # the list (with INFO), the lookup with the due generations, the domain's generation
    assert sql_counter.count == 0 and client.round_trips == 3
    # views cold but the policy-name list warm: one SQL statement
    await t.cache.invalidate_for_scope(PUBLIC, "public")
    cold, rt, sql = await _bootstrap(t, w.u1)
    print(f"[{t.mode}] bootstrap, names warm, views cold: {rt} round trips, {sql} SQL")
    assert cold == views and sql == 1
    assert rt == 2  # one MGET, one fill


async def test_bootstrap_sees_policy_changes_at_once(tiers: Tiers) -> None:
    """I2 for the cached list of policy names: create and purge through this process."""
    t = tiers
    w = await seed_four_users(t)
    for _ in range(2):
        await t.repo.my_app_configs(w.u1)
        if t.cache is not None:
            await t.cache.drain()
    await t.policies.create("fresh", [USER])
    await t.repo.bulk_create_my(w.u1, [MyFragmentInput(name="fresh", config={"x": 1})])
    assert "fresh" in [v.name for v in await t.repo.my_app_configs(w.u1)]
    await t.repo.admin_bulk_purge([fragment_key(USER, str(w.u1), "fresh")])
    assert "fresh" not in [v.name for v in await t.repo.my_app_configs(w.u1)]
    await t.policies.purge("fresh")
    assert "fresh" not in [v.name for v in await t.repo.my_app_configs(w.u1)]
    # a policy created by another process shows up within local_ttl here
    if t.cache is not None:
        other, other_cache, _client, _clock = t.make_repo()
        other_policies = AppConfigPolicyRepository(t.engine, cache_source=other_cache)
    else:
        other, other_policies = t.db, AppConfigPolicyRepository(t.engine)
    await other_policies.create("elsewhere", [PUBLIC])
    await other.admin_bulk_create([fragment_input(PUBLIC, "public", "elsewhere", {"x": 1})])
    t.clock.advance(LOCAL_TTL)
    assert "elsewhere" in [v.name for v in await t.repo.my_app_configs(w.u1)]
    if t.cache is not None:
        await t.cache.drain()


@standalone_shape_only
async def test_bootstrap_after_local_ttl_when_the_list_changed(seeded: Seeded) -> None:
    """The views of the expired list's names are read first; the policies generation read
    in that round trip shows the list changed: the list is read again, then the views of
    the names it gained. Names it lost are dropped."""
    t, w = seeded
    assert t.cache is not None and t.client is not None
    for _ in range(2):
        await t.repo.my_app_configs(w.u1)
        await t.cache.drain()
    other, other_cache, _client, _clock = t.make_repo()
    other_policies = AppConfigPolicyRepository(t.engine, cache_source=other_cache)
    await other_policies.create("elsewhere", [PUBLIC])
    await other.admin_bulk_create([fragment_input(PUBLIC, "public", "elsewhere", {"x": 1})])
    await other_policies.update("menu", [DOMAIN])  # u1's menu fragment no longer counts
    t.clock.advance(LOCAL_TTL)
    views, rt, sql = await _bootstrap(t, w.u1)
    shape = [c.names for c in t.client.calls]
    print(f"\n[{t.mode}] bootstrap after local_ttl, list changed: {rt} rt, {sql} SQL {shape}")
    assert views == await t.db.my_app_configs(w.u1)
    assert "elsewhere" in [v.name for v in views]
    assert t.cache.stats.bootstrap_list_changed == 1
    # unchanged since: the next bootstrap after local_ttl confirms the new list in its views'
    # round trip
    t.clock.advance(LOCAL_TTL)
    again, rt, sql = await _bootstrap(t, w.u1)
    assert again == views and rt == 1 and t.cache.stats.bootstrap_list_changed == 1


async def test_bootstrap_with_many_policies(tiers: Tiers) -> None:
    """Every document, also past MAX_BATCH_NAMES policies."""
    t = tiers
    w = await seed_four_users(t)
    count = MAX_BATCH_NAMES + 4
    names = [f"z{i:04d}" for i in range(count)]
    async with t.engine.begin() as conn:
        await conn.execute(
            sa.insert(policies_table),
            [{"config_name": n, "scope_sources": ["public"]} for n in names],
        )
    await t.db.admin_bulk_create(
        [fragment_input(PUBLIC, "public", n, {"n": n}) for n in names[-3:]]
    )
    got = [v.name for v in await t.repo.my_app_configs(w.u1)]
    assert {"theme", "menu"} <= set(got)
    if t.cache is not None:
        await t.cache.drain()
    assert set(names[-3:]) <= set(got), "documents past MAX_BATCH_NAMES policies dropped"
    assert got == [v.name for v in await t.db.my_app_configs(w.u1)]


# -- validation before any I/O ------------------------------------------------------------------


BAD_BATCHES: list[Any] = [
    ["theme", "bad name"],
    ["bad:name"],
    ["theme", "x" * 10_000],
    ["theme", "{u}"],
    ["theme", 7],
    ["theme", None],
]


@pytest.mark.parametrize("names", BAD_BATCHES, ids=lambda n: repr(n)[:24])
async def test_invalid_names_fail_the_whole_call_before_io(tiers: Tiers, names: Any) -> None:
    t = tiers
    w = await seed_four_users(t)
    if t.client is not None:
        t.client.reset()
    before = await commandstats(t.valkey)
    with count_sql(t.engine, library_only=True) as sql:
        with pytest.raises(InvalidConfigNameError):
            await t.repo.app_configs(w.u1, names)
        with pytest.raises(AppConfigValidationError):
            await t.repo.app_configs(w.u1, "theme")  # type: ignore[arg-type]
        with pytest.raises(InvalidUserIdError):
            await t.repo.app_configs("nobody", ["theme"])  # type: ignore[arg-type]
    assert sql.count == 0
    assert commandstats_delta(before, await commandstats(t.valkey)) == {}
    if t.client is not None:
        assert t.client.calls == []


async def test_batch_bound(tiers: Tiers) -> None:
    t = tiers
    w = await seed_four_users(t)
    before = await commandstats(t.valkey)
    with count_sql(t.engine, library_only=True) as sql:
        with pytest.raises(TooManyItemsError):
            await t.repo.app_configs(w.u1, ["theme"] * (MAX_BATCH_NAMES + 1))
        with pytest.raises(TooManyItemsError):
            await t.repo.app_configs(w.u1, [f"n{i}" for i in range(MAX_BATCH_NAMES + 1)])
    assert sql.count == 0
    assert commandstats_delta(before, await commandstats(t.valkey)) == {}
    at_bound = [f"n{i}" for i in range(MAX_BATCH_NAMES - 1)] + ["theme"]
    views = await t.repo.app_configs(w.u1, at_bound)
    assert len(views) == MAX_BATCH_NAMES
    assert views[-1] == await t.db.app_config(w.u1, "theme")
    if t.cache is not None:
        await t.cache.drain()


# -- single flight per key in batches ----------------------------------------------------------


@hang_guard
async def test_concurrent_cold_batches_load_once(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
    await eight_documents(t, w)
    await t.db.app_config(w.u2, "theme")  # warm the pool
    with count_sql(t.engine, library_only=True) as sql:
        results = await asyncio.gather(*(t.repo.app_configs(w.u1, DOCS) for _ in range(100)))
    truth = await t.db.app_configs(w.u1, DOCS)
    assert all(r == truth for r in results)
    print(f"\n[{t.mode}] 100 concurrent cold batches of 8: {sql.count} SQL statement(s)")
    assert sql.count == 1
    assert t.cache.stats.db_loads == 1
    await t.cache.drain()


@hang_guard
async def test_batch_joins_a_single_read_flight_and_loads_the_rest(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
    loader, single = await park_read(t, t.repo.app_config(w.u1, "theme"))
    batch = asyncio.create_task(t.repo.app_configs(w.u1, ["menu", "theme"]))
    await asyncio.sleep(0)
    while len(loader.calls) < 2:  # the batch's own load (of "menu" only) has started
        await asyncio.sleep(0)
    assert loader.calls == [["theme"], ["menu"]]
    loader.resume.set()
    theme = await single
    assert await batch == [await t.db.app_config(w.u1, "menu"), theme]
    assert t.cache.stats.flights_joined == 1
    assert t.cache.stats.db_loads == 2
    await t.cache.drain()


@hang_guard
async def test_batch_after_invalidation_does_not_join_older_flights(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
    loader, old_batch = await park_read(t, t.repo.app_configs(w.u1, ["theme", "menu"]))
    await t.repo.admin_bulk_update([fragment_input(USER, str(w.u1), "theme", {"v": "new"})])
    new = await t.repo.app_configs(w.u1, ["menu", "theme"])
    assert new == [await t.db.app_config(w.u1, n) for n in ("menu", "theme")]
    assert new[1].config["v"] == "new"
    assert loader.calls == [["theme", "menu"], ["menu", "theme"]]
    loader.resume.set()
    old = await old_batch
    assert "v" not in old[0].config
    assert await t.repo.app_configs(w.u1, ["theme"]) == [new[1]]
    await t.cache.drain()
