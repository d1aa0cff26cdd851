"""The behaviour suite, run in three configurations: "db", "valkey" (no L1) and "l1+valkey".

Hit / miss / invalidate per scope type and for policy changes, read-your-writes after
every write verb (I2), partial failures and transparency over random sequences (I1).
Empty views and bounded memory are in ``test_bounds.py``, hostile input in
``test_hostile_input.py``, single flight in ``test_single_flight.py``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import pytest

from appconfig_cache import (
    AppConfigData,
    AppConfigPolicyRepository,
    AppConfigScopeType,
    CacheSettingsError,
    MyFragmentInput,
)
from tests.support.fragments import (
    fragment_input,
    fragment_key,
    raw_fragment_input,
    raw_my_fragment,
)
from tests.support.scopes import ALL_SCOPES, DOMAIN, DOMAIN_USER_DEFAULTS, PUBLIC, USER, scope_id_of
from tests.support.valkey import commandstats, commandstats_delta, incr_calls

from .conftest import (
    LOCAL_TTL,
    FourUsers,
    Seeded,
    Tiers,
    assert_transparent,
    every_pair,
    prime,
    prime_every_pair,
    reads_hit,
    seed_four_users,
)


def affected_users(w: FourUsers, scope: AppConfigScopeType) -> set[UUID]:
    if scope is PUBLIC:
        return set(w.users)
    if scope is USER:
        return {w.u1}
    return {w.u1, w.u2}  # d1


# -- hit, miss and invalidate per scope type (the seed's paths) -----------------------------


async def test_miss_then_hit_returns_the_db_view(tiers: Tiers) -> None:
    t = tiers
    w = await seed_four_users(t)
    first = await t.repo.app_config(w.u1, "theme")
    assert first == await t.db.app_config(w.u1, "theme")
    assert [f.scope_type for f in first.fragments] == list(ALL_SCOPES)
    assert first.config == {"color": "blue", "font": {"size": 12, "family": "serif"}}
    if t.cache is None:
        return
    assert t.db_loads() == 1
    await prime(t, [(w.u1, "theme")])
    hits = t.hits()
    loads = t.db_loads()
    again = await t.repo.app_config(w.u1, "theme")
    assert again == first
    assert t.db_loads() == loads
    assert t.hits() == hits + 1
    stats = t.cache.stats
    if t.l1:
        assert stats.l1_hits >= 1
    else:
        assert stats.l1_hits == 0 and stats.l2_hits >= 1
        assert t.cache.local_size() == 0


@pytest.mark.parametrize("scope", ALL_SCOPES, ids=lambda s: s.value)
async def test_write_at_scope_invalidates_exactly_that_scope(
    tiers: Tiers, scope: AppConfigScopeType
) -> None:
    t = tiers
    w = await seed_four_users(t)
    pairs = await prime_every_pair(t, w)
    sid = scope_id_of(scope, w.u1, "d1")
    mark = {f"new_{scope.value}": 1}
    result = await t.repo.admin_bulk_update([fragment_input(scope, sid, "theme", mark)])
    assert not result.failures, result.failures
    await assert_transparent(t, w)
    assert (await t.repo.app_config(w.u1, "theme")).config.items() >= mark.items()
    if not t.cached:
        return
    # after the write: the scope's users went to the DB for "theme", nobody else did
    await prime(t, pairs)
    await t.repo.admin_bulk_update([fragment_input(scope, sid, "theme", {"color": "black"})])
    hit = await reads_hit(t, pairs)
    touched = affected_users(w, scope)
    for (uid, name), was_hit in hit.items():
        # a scope's generation covers all its users' names; a public fragment is shared
        # by everyone, so its write drops that name only (the name's generation)
        missed = uid in touched and (scope is not PUBLIC or name == "theme")
        assert was_hit is not missed, (scope, uid, name, hit)


@pytest.mark.parametrize("scope", ALL_SCOPES, ids=lambda s: s.value)
async def test_seed_invalidate_for_scope_drops_that_scope(
    seeded: Seeded, scope: AppConfigScopeType
) -> None:
    t, w = seeded
    assert t.cache is not None
    pairs = every_pair(w)
    await prime(t, pairs)
    await t.cache.invalidate_for_scope(scope, scope_id_of(scope, w.u1, "d1"))
    hit = await reads_hit(t, pairs)
    touched = affected_users(w, scope)
    for (uid, _name), was_hit in hit.items():
        assert was_hit is (uid not in touched), (scope, uid, hit)


async def test_seed_invalidate_for_policy_drops_that_name(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
    pairs = every_pair(w)
    await prime(t, pairs)
    await t.cache.invalidate_for_policy("theme")
    hit = await reads_hit(t, pairs)
    for (uid, name), was_hit in hit.items():
        assert was_hit is (name != "theme"), (uid, name, hit)


async def test_seed_get_set_merged_config(cached: Tiers) -> None:
    t = cached
    assert t.cache is not None
    cache = t.cache
    w = await seed_four_users(t)
    assert await cache.get_merged_config(w.u1, "theme") is None  # miss, no DB
    assert cache.stats.db_loads == 0
    view = await t.db.app_config(w.u1, "theme")
    await cache.set_merged_config(w.u1, "theme", view)
    await cache.drain()
    if t.l1:
        assert await cache.get_merged_config(w.u1, "theme") == view
    # the domain was not known when it was stored: a domain invalidation must cover it
    await cache.invalidate_for_scope(DOMAIN, "d1")
    assert await cache.get_merged_config(w.u1, "theme") is None
    # through the read path, then the seed's get sees it (from L1 or from Valkey)
    await prime(t, [(w.u1, "theme")])
    assert await cache.get_merged_config(w.u1, "theme") == view
    await cache.invalidate_for_scope(USER, str(w.u1))
    assert await cache.get_merged_config(w.u1, "theme") is None
    other = await t.db.app_config(w.u2, "theme")
    with pytest.raises(CacheSettingsError):
        await cache.set_merged_config(w.u1, "theme", other)
    with pytest.raises(CacheSettingsError):
        await cache.set_merged_config(w.u1, "menu", view)


# -- policy changes -------------------------------------------------------------------------


async def test_policy_update_changes_the_chain(tiers: Tiers) -> None:
    t = tiers
    w = await seed_four_users(t)
    pairs = await prime_every_pair(t, w)
    await t.policies.update("theme", [USER, PUBLIC])  # reversed priority, domains dropped
    await assert_transparent(t, w)
    view = await t.repo.app_config(w.u1, "theme")
    assert [f.scope_type for f in view.fragments] == [USER, PUBLIC]
    assert view.config == {"color": "grey", "font": {"size": 10}}
    if t.cached:
        await prime(t, pairs)
        await t.policies.update("theme", ALL_SCOPES)
        hit = await reads_hit(t, pairs)
        assert all(was_hit is (name != "theme") for (_u, name), was_hit in hit.items()), hit


async def test_policy_create_and_purge(tiers: Tiers) -> None:
    t = tiers
    w = await seed_four_users(t)
    uid = w.u1
    # no policy: an empty view, and never cached
    for _ in range(3):
        assert await t.repo.app_config(uid, "fresh") == AppConfigData(user_id=uid, name="fresh")
    if t.cached:
        assert t.db_loads() == 3
        await t.cache.drain()  # type: ignore[union-attr]
        assert await t.valkey.exists(f"app_config:merged:{{{uid}}}:fresh") == 0
    await t.policies.create("fresh", [PUBLIC, USER])
    assert (await t.repo.app_config(uid, "fresh")).fragments == ()
    await t.repo.admin_bulk_create([fragment_input(PUBLIC, "public", "fresh", {"a": 1})])
    await t.repo.bulk_create_my(uid, [MyFragmentInput(name="fresh", config={"b": 2})])
    assert (await t.repo.app_config(uid, "fresh")).config == {"a": 1, "b": 2}
    await assert_transparent(t, w, ("theme", "menu", "fresh"))
    # purge the fragments, then the policy: back to an uncached empty view
    purge = await t.repo.admin_bulk_purge(
        [fragment_key(PUBLIC, "public", "fresh"), fragment_key(USER, str(uid), "fresh")]
    )
    assert len(purge.successes) == 2
    assert (await t.repo.app_config(uid, "fresh")).fragments == ()
    await t.policies.purge("fresh")
    assert await t.policies.get("fresh") is None
    if t.cached:
        assert t.cache is not None
        stats = t.cache.stats

        def view_loads() -> int:  # not counting the queries for shared parts
            return stats.db_loads - stats.shared_loads

        loads = view_loads()
        for _ in range(2):
            assert (await t.repo.app_config(uid, "fresh")).fragments == ()
        assert view_loads() == loads + 2  # the cached empty view went with the policy


# -- I2: read-your-writes after every write verb --------------------------------------------

Write = Callable[[Tiers, FourUsers], Awaitable[Any]]


def _admin(verb: str, scope: AppConfigScopeType) -> Write:
    async def write(t: Tiers, w: FourUsers) -> Any:
        sid = scope_id_of(scope, w.u1, "d1")
        if verb == "create":
            result = await t.repo.admin_bulk_create(
                [fragment_input(scope, sid, "layout", {"v": 2})]
            )
        elif verb == "update":
            result = await t.repo.admin_bulk_update([fragment_input(scope, sid, "theme", {"v": 2})])
        else:
            result = await t.repo.admin_bulk_purge([fragment_key(scope, sid, "theme")])
        assert len(result.successes) == 1, result.failures

    return write


async def _create_my(t: Tiers, w: FourUsers) -> Any:
    result = await t.repo.bulk_create_my(w.u1, [MyFragmentInput(name="menu", config={"v": 2})])
    assert len(result.successes) == 1, result.failures
    assert result.successes[0] == await t.db.app_config(w.u1, "menu")


async def _update_my(t: Tiers, w: FourUsers) -> Any:
    result = await t.repo.bulk_update_my(w.u1, [MyFragmentInput(name="theme", config={"v": 2})])
    assert len(result.successes) == 1, result.failures
    assert result.successes[0] == await t.db.app_config(w.u1, "theme")


async def _policy_update(t: Tiers, w: FourUsers) -> Any:
    await t.policies.update("theme", [DOMAIN_USER_DEFAULTS, PUBLIC])


async def _policy_update_drop(t: Tiers, w: FourUsers) -> Any:
    await t.policies.update("layout", [PUBLIC, DOMAIN])  # u2's user fragment drops out


WRITES: dict[str, Write] = {
    "bulk_create_my": _create_my,
    "bulk_update_my": _update_my,
    "policy_update": _policy_update,
    "policy_update_drop": _policy_update_drop,
    **{
        f"admin_{v}_{s.value}": _admin(v, s)
        for v in ("create", "update", "purge")
        for s in ALL_SCOPES
    },
}


@pytest.mark.parametrize("verb", list(WRITES))
async def test_read_your_writes_after_every_verb(tiers: Tiers, verb: str) -> None:
    t = tiers
    w = await seed_four_users(t)
    await AppConfigPolicyRepository(t.engine).create("layout", ALL_SCOPES)
    await t.db.admin_bulk_create([fragment_input(USER, str(w.u2), "layout", {"v": 1})])
    names = ("theme", "menu", "layout")
    pairs = [(uid, name) for uid in w.users for name in names]
    if t.cached:
        await prime(t, pairs)
    before = {pair: await t.repo.app_config(*pair) for pair in pairs}
    await WRITES[verb](t, w)
    # immediately after the call returns, from whichever tier answers
    after = {pair: await t.repo.app_config(*pair) for pair in pairs}
    truth = {pair: await t.db.app_config(*pair) for pair in pairs}
    assert after == truth
    assert after != before, "the write changed nothing: the test proves nothing"
    # and batch reads agree too
    for uid in w.users:
        assert await t.repo.app_configs(uid, list(names)) == [truth[(uid, n)] for n in names]


# -- partial failures -----------------------------------------------------------------------


async def test_partial_failure_invalidates_only_successful_scopes_once(tiers: Tiers) -> None:
    t = tiers
    w = await seed_four_users(t)
    pairs = await prime_every_pair(t, w)
    info_before = await commandstats(t.valkey)
    result = await t.repo.admin_bulk_update(
        [
            fragment_input(DOMAIN, "d1", "theme", {"color": "red"}),  # ok
            fragment_input(DOMAIN, "d2", "menu", {"x": 1}),  # scope_not_allowed
            fragment_input(
                DOMAIN_USER_DEFAULTS, "d1", "theme", {"font": {"family": "mono"}}
            ),  # ok, same generation
            fragment_input(USER, str(w.u3), "theme", {"x": 1}),  # not_found
            raw_fragment_input("user", "not-a-uuid", "theme", {"x": 1}),  # invalid_scope
            fragment_input(DOMAIN, "d1", "theme", {"color": "pink"}),  # ok, same scope again
            raw_fragment_input("domain", "d1", "bad name", {"x": 1}),  # invalid_name
            fragment_input(PUBLIC, "public", "nopolicy", {"x": 1}),  # policy_not_found
        ]
    )
    assert [(f.index, f.code) for f in result.failures] == [
        (1, "scope_not_allowed"),
        (3, "not_found"),
        (4, "invalid_scope"),
        (6, "invalid_name"),
        (7, "policy_not_found"),
    ]
    assert [(f.scope_type, f.scope_id) for f in result.successes] == [
        (DOMAIN, "d1"),
        (DOMAIN_USER_DEFAULTS, "d1"),
        (DOMAIN, "d1"),
    ]
    info_after = await commandstats(t.valkey)
    await assert_transparent(t, w)
    assert (await t.repo.app_config(w.u1, "theme")).config["color"] == "pink"
    if not t.cached:
        assert incr_calls(commandstats_delta(info_before, info_after)) == 0
        return
    assert t.client is not None
    # one round trip, one INCR: the domain generation of d1, once
    bumps = [call for call in t.client.calls if call.has("incr")]
    assert len(bumps) == 1
    assert bumps[0].keys("incr") == ["app_config:gen:domain:d1"]
    assert incr_calls(commandstats_delta(info_before, info_after)) == 1
    # u3 (d2) and everyone's "menu" stayed cached
    await prime(t, pairs)
    await t.repo.admin_bulk_update(
        [
            fragment_input(DOMAIN, "d1", "theme", {"color": "x"}),
            fragment_input(DOMAIN, "d2", "menu", {}),
        ]
    )
    hit = await reads_hit(t, pairs)
    for (uid, _name), was_hit in hit.items():
        assert was_hit is (uid not in (w.u1, w.u2)), hit


async def test_partial_failure_of_my_writes_and_purge(tiers: Tiers) -> None:
    t = tiers
    w = await seed_four_users(t)
    await prime_every_pair(t, w)
    info_before = await commandstats(t.valkey)
    result = await t.repo.bulk_update_my(
        w.u1,
        [
            MyFragmentInput(name="menu", config={"x": 1}),  # not_found: u1 has no menu
            raw_my_fragment("bad:name", {"x": 1}),  # invalid_name
            MyFragmentInput(name="theme", config={"font": {"size": 20}}),  # ok
            MyFragmentInput(name="theme", config={"font": {"size": 21}}),  # ok, same scope
        ],
    )
    assert [(f.index, f.code) for f in result.failures] == [(0, "not_found"), (1, "invalid_name")]
    assert [v.config["font"]["size"] for v in result.successes] == [21, 21]
    purge = await t.repo.admin_bulk_purge(
        [
            fragment_key(USER, str(w.u2), "menu"),  # ok
            fragment_key(USER, str(w.u2), "menu"),  # not_found (just purged)
            fragment_key(USER, str(w.u3), "menu"),  # not_found
        ]
    )
    assert [(f.index, f.code) for f in purge.failures] == [(1, "not_found"), (2, "not_found")]
    info_after = await commandstats(t.valkey)
    await assert_transparent(t, w)
    if not t.cached:
        return
    assert t.client is not None
    assert t.client.commands("incr") == [
        f"app_config:gen:user:{{{w.u1}}}",
        f"app_config:gen:user:{{{w.u2}}}",
    ]
    assert incr_calls(commandstats_delta(info_before, info_after)) == 2


async def test_all_failed_bulk_call_touches_no_cache(seeded: Seeded) -> None:
    t, w = seeded
    await prime(t, every_pair(w))
    assert t.client is not None
    t.client.reset()
    result = await t.repo.admin_bulk_update([fragment_input(DOMAIN, "d9", "theme", {"x": 1})])
    assert [f.code for f in result.failures] == ["not_found"]
    assert t.client.calls == []
    hit = await reads_hit(t, every_pair(w))
    assert all(hit.values())


# -- I1: transparency over random sequences -------------------------------------------------


async def _random_op(t: Tiers, w: FourUsers, rng: random.Random, log: list[str]) -> None:
    uid = rng.choice(w.users)
    name = rng.choice(w.names)
    scope = rng.choice(ALL_SCOPES)
    domain = rng.choice(["d1", "d2"])
    sid = scope_id_of(scope, uid, domain)
    config = {rng.choice("abc"): rng.choice([1, "x", [1, 2], {"n": rng.randint(0, 9)}])}
    op = rng.choice(
        ["read", "read", "batch", "create", "update", "purge", "my", "policy", "tick", "tick"]
    )
    log.append(f"{op} {uid} {name} {scope.value}:{sid} {config}")
    if op == "read":
        assert await t.repo.app_config(uid, name) == await t.db.app_config(uid, name), log
    elif op == "batch":
        names = [rng.choice(w.names) for _ in range(3)]
        assert await t.repo.app_configs(uid, names) == await t.db.app_configs(uid, names), log
    elif op == "create":
        await t.repo.admin_bulk_create([fragment_input(scope, sid, name, config)])
    elif op == "update":
        await t.repo.admin_bulk_update([fragment_input(scope, sid, name, config)])
    elif op == "purge":
        await t.repo.admin_bulk_purge([fragment_key(scope, sid, name)])
    elif op == "my":
        item = MyFragmentInput(name=name, config=config)
        await t.repo.bulk_create_my(uid, [item])
        await t.repo.bulk_update_my(uid, [item])
    elif op == "policy":
        chain = rng.sample(ALL_SCOPES, rng.randint(1, 4))
        await t.policies.update(name, chain)
    else:
        t.clock.advance(rng.choice([0.1, 0.5, 1.0, LOCAL_TTL, 3.0]))
        if t.cache is not None:
            await t.cache.drain()


async def test_transparency_over_random_sequences(tiers: Tiers) -> None:
    t = tiers
    w = await seed_four_users(t)
    for seed in range(12):
        rng = random.Random(seed)
        log: list[str] = [f"seed {seed}"]
        for _ in range(25):
            await _random_op(t, w, rng, log)
            for uid in w.users:
                truth = await t.db.app_configs(uid, list(w.names))
                got = [await t.repo.app_config(uid, n) for n in w.names]
                assert got == truth, (t.mode, log)
    if t.cache is not None:
        stats = t.cache.stats
        assert stats.l1_hits + stats.l2_hits > 0  # the cache answered some of it
