"""Recomposition: after a write to a shared scope, views are rebuilt without a query per user.

An outdated envelope whose user generation still holds carries the user's own
fragment; only the shared part (the policy chain and the public, domain and
domain_user_defaults fragments) is read again, once per domain and generation.
"""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import pytest

from appconfig_cache import AppConfigPolicyRepository, MyFragmentInput
from tests.support.data import add_users
from tests.support.fragments import fragment_input
from tests.support.internals import clear_l1
from tests.support.scopes import DOMAIN, DOMAIN_USER_DEFAULTS, PUBLIC, USER
from tests.support.sql import SqlStatements, count_sql

from .conftest import (
    LOCAL_TTL,
    FourUsers,
    Seeded,
    Tiers,
    rebuilt,
    seed_four_users,
)

NAMES = ["theme", "menu"]


async def _warm(t: Tiers, users: list[UUID]) -> None:
    """Every user's envelopes in Valkey, the process knowing their domains."""
    assert t.cache is not None
    for _ in range(2):  # the first load of a user in a process does not fill Valkey
        for uid in users:
            await t.repo.app_configs(uid, NAMES)
        await t.cache.drain()
        t.clock.advance(LOCAL_TTL)
    for uid in users:
        for name in NAMES:
            assert await t.valkey.exists(f"app_config:merged:{{{uid}}}:{name}")


async def _read_all(t: Tiers, users: list[UUID]) -> SqlStatements:
    assert t.cache is not None
    want = {uid: await _truth(t, uid) for uid in users}
    with count_sql(t.engine, library_only=True) as sql:
        got = {uid: await t.repo.app_configs(uid, NAMES) for uid in users}
        await t.cache.drain()
    assert got == want
    return sql


async def _truth(t: Tiers, uid: UUID) -> list[object]:
    return list(await t.db.app_configs(uid, NAMES))


async def _admin(t: Tiers, scope: object, scope_id: str, name: str, config: dict) -> None:
    result = await t.repo.admin_bulk_update([fragment_input(scope, scope_id, name, config)])  # type: ignore[arg-type]
    assert not result.failures


async def test_a_public_change_costs_one_query_for_every_user(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
    users = [w.u1, w.u2, w.u3, w.u4]
    await _warm(t, users)
    await _admin(t, PUBLIC, "public", "theme", {"color": "white"})
    loads = t.cache.stats.db_loads
    sql = await _read_all(t, users)
    stats = t.cache.stats
    # theme: one shared query per domain (d1, d2, no domain); menu is unchanged: L2 hits
    assert stats.shared_loads == 3
    assert rebuilt(t.cache) == 4
    assert stats.db_loads - loads == 3
    assert sql.count == 3
    # and the recomposed views were written back: the next round is all hits
    t.clock.advance(LOCAL_TTL)
    sql = await _read_all(t, users)
    assert sql.count == 0


@pytest.mark.parametrize("scope", [DOMAIN, DOMAIN_USER_DEFAULTS])
async def test_a_domain_change_is_one_query_for_the_domain(seeded: Seeded, scope: object) -> None:
    t, w = seeded
    assert t.cache is not None
    more = [uuid4() for _ in range(6)]
    await add_users(t.engine, dict.fromkeys(more, "d1"))
    users = [w.u1, w.u2, w.u3, *more]
    await _warm(t, users)
    await _admin(t, scope, "d1", "theme", {"color": "red", "font": {"size": 20}})
    sql = await _read_all(t, users)
    assert t.cache.stats.shared_loads == 1  # d1's theme and menu; d2 (u3) is unchanged
    assert rebuilt(t.cache) == 2 * (2 + len(more))
    assert sql.count == 1


async def test_concurrent_users_share_one_shared_query(cached: Tiers) -> None:
    t = cached
    assert t.cache is not None
    await seed_four_users(t)
    more = [uuid4() for _ in range(30)]
    await add_users(t.engine, dict.fromkeys(more, "d1"))
    await _warm(t, more)
    await _admin(t, DOMAIN, "d1", "theme", {"color": "red"})
    with count_sql(t.engine, library_only=True) as sql:
        got = await asyncio.gather(*(t.repo.app_configs(uid, NAMES) for uid in more))
        await t.cache.drain()
    assert sql.count == 1
    for uid, views in zip(more, got, strict=True):
        assert views == await _truth(t, uid)


async def test_a_user_write_is_a_full_load(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
    await _warm(t, [w.u1])
    done = await t.repo.bulk_update_my(w.u1, [MyFragmentInput(name="theme", config={"x": 1})])
    assert not done.failures
    sql = await _read_all(t, [w.u1])
    assert rebuilt(t.cache) == 0
    assert sql.count == 1


async def test_a_policy_change_recomposes_with_the_new_chain(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
    await _warm(t, [w.u1, w.u2])
    await t.policies.update(
        "theme", [USER, DOMAIN_USER_DEFAULTS, PUBLIC]
    )  # the user's fragment now loses
    sql = await _read_all(t, [w.u1, w.u2])
    assert rebuilt(t.cache) == 2
    assert sql.count == 1  # u1 reads d1's theme part, u2 finds it in memory; menu: hits
    assert t.cache.stats.shared_loads == 1


async def test_a_chain_that_gains_the_user_scope_is_a_full_load(seeded: Seeded) -> None:
    """An envelope made without the user scope cannot tell the user's own fragment."""
    t, w = seeded
    assert t.cache is not None
    await t.policies.update("theme", [PUBLIC, DOMAIN])  # u1's user fragment drops out
    t.clock.advance(LOCAL_TTL)
    await _warm(t, [w.u1])
    await t.policies.update("theme", [PUBLIC, DOMAIN, USER])  # and comes back
    sql = await _read_all(t, [w.u1])  # compared with the DB: the user fragment is there
    assert rebuilt(t.cache) == 0
    assert sql.count == 2  # the shared query shows the new chain; then the full load


async def test_the_shared_part_is_read_again_after_each_change(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
    await _warm(t, [w.u1, w.u2])
    for i in range(3):
        await _admin(t, DOMAIN, "d1", "theme", {"color": f"c{i}"})
        sql = await _read_all(t, [w.u1, w.u2])
        assert sql.count == 1
    assert t.cache.stats.shared_loads == 3


async def test_a_removed_policy_is_not_recomposed(cached: Tiers) -> None:
    t = cached
    assert t.cache is not None
    w: FourUsers = await seed_four_users(t, fragments=False)  # a policy in use cannot be purged
    await _warm(t, [w.u1])
    await AppConfigPolicyRepository(t.engine, cache_source=t.cache).purge("theme")
    sql = await _read_all(t, [w.u1])  # theme is now the empty view of a name without policy
    assert rebuilt(t.cache) == 0
    assert sql.count == 2  # the shared query finds no policy; then the full load


async def test_a_public_scope_invalidation_reloads_everything(seeded: Seeded) -> None:
    """``invalidate_for_scope(PUBLIC)`` (``appconfig-cache invalidate --public``) is the
    flush after changing the tables behind the library's back: nothing is recomposed,
    so a user's own fragment changed by SQL shows too."""
    t, w = seeded
    assert t.cache is not None
    await _warm(t, [w.u1, w.u2])
    done = await t.db.bulk_update_my(w.u1, [MyFragmentInput(name="theme", config={"by": "sql"})])
    assert not done.failures  # through a DB-only repository: no invalidation
    await t.cache.invalidate_for_scope(PUBLIC, "public")
    sql = await _read_all(t, [w.u1, w.u2])  # compared with the DB
    assert rebuilt(t.cache) == 0
    assert sql.count == 2


async def test_a_new_user_part_never_meets_an_old_shared_part(seeded: Seeded) -> None:
    """B holds d1's shared part and generation from before A's domain write; A then
    writes u1's own fragment. B's recomposition must read d1's generation again: its
    cached one would pick its cached d1 part, and with u1's new fragment that makes a
    view that never was."""
    t, w = seeded
    assert t.cache is not None
    b_repo, b_cache, _b_client, b_clock = t.make_repo()

    async def b_reads() -> object:
        clear_l1(b_cache)  # B's L1 may serve the old view (I4): skip it
        got = await b_repo.app_config(w.u1, "theme")
        await b_cache.drain()
        return got

    for _ in range(2):
        await b_repo.app_configs(w.u1, NAMES)
        await b_cache.drain()
        b_clock.advance(LOCAL_TTL)
    await b_repo.app_configs(w.u1, NAMES)
    await b_cache.drain()
    await t.repo.app_configs(w.u1, NAMES)
    await _admin(t, PUBLIC, "public", "theme", {"color": "white"})
    b_clock.advance(LOCAL_TTL)  # B reads the generations again, sees the public write
    recomposed = b_cache.stats.recomposed
    await b_reads()  # B recomposes: it now holds d1's theme part
    assert b_cache.stats.recomposed == recomposed + 1
    await _admin(t, DOMAIN, "d1", "theme", {"color": "red"})  # A: d1 first
    done = await t.repo.bulk_update_my(w.u1, [MyFragmentInput(name="theme", config={"u": 2})])
    assert not done.failures  # then u1's own fragment
    await t.repo.app_configs(w.u1, NAMES)  # A fills Valkey under the new generations
    await t.cache.drain()
    assert await b_reads() == await t.db.app_config(w.u1, "theme")


# -- from L1: a live entry that only a shared write made stale --------------------------------


async def _in_l1(t: Tiers, users: list[UUID]) -> None:
    """Every user's views in L1 with the generations they were computed under."""
    assert t.cache is not None
    await _warm(t, users)
    for uid in users:
        await t.repo.app_configs(uid, NAMES)
    await t.cache.drain()
    assert t.client is not None
    t.client.reset()
    for uid in users:
        await t.repo.app_configs(uid, NAMES)
    assert t.client.round_trips == 0, "not served from L1: the test would prove nothing"


async def test_l1_entries_are_recomposed_without_a_lookup(l1: Tiers) -> None:
    t = l1
    assert t.cache is not None and t.client is not None
    w = await seed_four_users(t)
    users = [w.u1, w.u2]
    await _in_l1(t, users)
    await _admin(t, DOMAIN, "d1", "theme", {"color": "red"})
    t.client.reset()
    sql = await _read_all(t, users)  # compared with the DB
    assert t.client.commands("mget") == []  # no envelope was looked up
    assert t.cache.stats.l1_recomposed == 4 and t.cache.stats.recomposed == 0
    assert sql.count == 1  # d1's shared part of both names, once
    # the rebuilt views went to Valkey too: another process finds them current
    other_repo, other, client, _clock = t.make_repo(local_maxsize=0)
    for uid in users:
        assert await other_repo.app_configs(uid, NAMES) == await _truth(t, uid)
    assert other.stats.l2_hits == 4 and other.stats.db_loads == 0, other.stats
    assert client.round_trips >= 1


async def test_l1_recompositions_confirm_users_in_one_batch(l1: Tiers) -> None:
    t = l1
    assert t.cache is not None and t.client is not None
    await seed_four_users(t)
    more = [uuid4() for _ in range(30)]
    await add_users(t.engine, dict.fromkeys(more, "d1"))
    await _in_l1(t, more)
    await _admin(t, DOMAIN, "d1", "theme", {"color": "red"})
    t.client.reset()
    with count_sql(t.engine, library_only=True) as sql:
        got = await asyncio.gather(*(t.repo.app_configs(uid, NAMES) for uid in more))
    await t.cache.drain()
    for uid, views in zip(more, got, strict=True):
        assert views == await _truth(t, uid)
    assert sql.count == 1
    assert t.cache.stats.l1_recomposed == 2 * len(more)
    assert t.client.commands("mget") == []
    # the users' generations: one pipeline for all (30 users, far below a refresh batch)
    reads = [call for call in t.client.calls if call.has("get")]
    assert len(reads) == 1, reads
    assert len({key for call in reads for key in call.keys("get")}) >= len(more)


async def test_l1_recomposition_sees_another_process_user_write(l1: Tiers) -> None:
    """B writes u1's own fragment, then A writes d1's theme. A's L1 entry has u1's old
    fragment: paired with d1's new part it would be a view that never was. The read of
    u1's generation after the shared query shows the user write: the usual path."""
    t = l1
    assert t.cache is not None
    w = await seed_four_users(t)
    await _in_l1(t, [w.u1])
    b_repo, _b_cache, _client, _clock = t.make_repo()
    done = await b_repo.bulk_update_my(w.u1, [MyFragmentInput(name="theme", config={"u": 2})])
    assert not done.failures
    await _admin(t, DOMAIN, "d1", "theme", {"color": "red"})
    got = await t.repo.app_config(w.u1, "theme")
    assert got == await t.db.app_config(w.u1, "theme")
    assert {"u": 2}.items() <= (got.config or {}).items()
    assert t.cache.stats.l1_recomposed == 0


@pytest.mark.parametrize("write", ["user", "public_scope"])
async def test_l1_entries_are_not_recomposed_after_user_or_flush(l1: Tiers, write: str) -> None:
    t = l1
    assert t.cache is not None
    w = await seed_four_users(t)
    await _in_l1(t, [w.u1])
    if write == "user":
        done = await t.repo.bulk_update_my(w.u1, [MyFragmentInput(name="theme", config={"x": 1})])
        assert not done.failures
    else:
        done = await t.db.bulk_update_my(w.u1, [MyFragmentInput(name="theme", config={"x": 2})])
        assert not done.failures  # behind the cache's back, then the operators' flush
        await t.cache.invalidate_for_scope(PUBLIC, "public")
    await _read_all(t, [w.u1])  # compared with the DB
    assert rebuilt(t.cache) == 0
