"""The behaviour suite, run in three configurations: "db", "valkey" (no L1) and "l1+valkey".

Hit / miss / invalidate per scope type and for policy changes, read-your-writes after
every write verb (I2), partial failures, transparency over random sequences (I1), empty
views, bounded L1 and oversize values (I6), hostile input (I7) and single flight (I9).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import pytest

from appconfig_cache import (
    AppConfigData,
    AppConfigError,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    AppConfigScopeType,
    CacheSettingsError,
    InvalidConfigNameError,
    InvalidScopeError,
    InvalidUserIdError,
    MyFragmentInput,
)
from tests.support.data import add_users
from tests.support.envelopes import join_envelope, split_envelope
from tests.support.fragments import (
    ALL_SCOPES,
    DOMAIN,
    DOMAIN_USER_DEFAULTS,
    PUBLIC,
    USER,
    fragment_input,
    fragment_key,
    raw_fragment_input,
    raw_my_fragment,
    scope_id_of,
)
from tests.support.internals import db_source_of, l1_entries
from tests.support.sql import count_sql
from tests.support.valkey import commandstats, commandstats_delta, incr_calls

from .conftest import (
    LOCAL_TTL,
    FourUsers,
    Tiers,
    assert_transparent,
    build_tiers,
    hang_guard,
    rebuilt,
    seed_four_users,
)

# -- helpers --------------------------------------------------------------------------------


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


def affected_users(w: FourUsers, scope: AppConfigScopeType) -> set[UUID]:
    if scope is PUBLIC:
        return set(w.users)
    if scope is USER:
        return {w.u1}
    return {w.u1, w.u2}  # d1


def every_pair(w: FourUsers) -> list[tuple[UUID, str]]:
    return [(uid, name) for uid in w.users for name in w.names]


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
    pairs = every_pair(w)
    if t.cached:
        await prime(t, pairs)
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
    cached: Tiers, scope: AppConfigScopeType
) -> None:
    t = cached
    assert t.cache is not None
    w = await seed_four_users(t)
    pairs = every_pair(w)
    await prime(t, pairs)
    await t.cache.invalidate_for_scope(scope, scope_id_of(scope, w.u1, "d1"))
    hit = await reads_hit(t, pairs)
    touched = affected_users(w, scope)
    for (uid, _name), was_hit in hit.items():
        assert was_hit is (uid not in touched), (scope, uid, hit)


async def test_seed_invalidate_for_policy_drops_that_name(cached: Tiers) -> None:
    t = cached
    assert t.cache is not None
    w = await seed_four_users(t)
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
    pairs = every_pair(w)
    if t.cached:
        await prime(t, pairs)
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
    pairs = every_pair(w)
    if t.cached:
        await prime(t, pairs)
        assert t.client is not None
        t.client.reset()
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
    pairs = every_pair(w)
    if t.cached:
        await prime(t, pairs)
        assert t.client is not None
        t.client.reset()
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


async def test_all_failed_bulk_call_touches_no_cache(cached: Tiers) -> None:
    t = cached
    w = await seed_four_users(t)
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


# -- empty views are cached; names without a policy never are -------------------------------


async def test_empty_view_is_cached_and_counted_as_a_hit(cached: Tiers) -> None:
    t = cached
    assert t.cache is not None
    w = await seed_four_users(t)
    await t.policies.create("blank", [PUBLIC, USER])
    await prime(t, [(w.u1, "theme")])  # the process learns u1's domain
    empty = await t.repo.app_config(w.u1, "blank")
    assert empty == AppConfigData(user_id=w.u1, name="blank")
    assert empty.config is None and empty.fragments == ()
    await t.cache.drain()
    loads, hits = t.db_loads(), t.hits()
    tier_hits = t.cache.stats.l1_hits if t.l1 else t.cache.stats.l2_hits
    assert await t.repo.app_config(w.u1, "blank") == empty
    assert (t.db_loads(), t.hits()) == (loads, hits + 1)
    # a hit of the tier in front: L1 when there is one, else Valkey
    assert (t.cache.stats.l1_hits if t.l1 else t.cache.stats.l2_hits) == tier_hits + 1
    assert await t.valkey.exists(f"app_config:merged:{{{w.u1}}}:blank") == 1
    if t.l1:  # and from Valkey, once L1 has expired
        t.clock.advance(LOCAL_TTL)
        assert await t.repo.app_config(w.u1, "blank") == empty
        assert t.db_loads() == loads
    assert await t.cache.get_merged_config(w.u1, "blank") == empty  # not a falsy miss


async def test_name_without_policy_is_never_cached(cached: Tiers) -> None:
    t = cached
    assert t.cache is not None
    w = await seed_four_users(t)
    await prime(t, [(w.u1, "theme")])
    base = t.db_loads()
    for i in range(1, 4):
        assert await t.repo.app_config(w.u1, "nopolicy") == AppConfigData(
            user_id=w.u1, name="nopolicy"
        )
        await t.cache.drain()
        assert t.db_loads() == base + i
    assert (
        await t.repo.app_configs(w.u1, ["nopolicy", "nopolicy"])
        == [AppConfigData(user_id=w.u1, name="nopolicy")] * 2
    )
    assert t.db_loads() == base + 4
    assert await t.valkey.keys("app_config:merged:*nopolicy") == []
    assert await t.cache.get_merged_config(w.u1, "nopolicy") is None


# -- I6: bounded memory ---------------------------------------------------------------------


async def test_l1_never_exceeds_local_maxsize(l1: Tiers) -> None:
    t = l1
    w = await seed_four_users(t)
    cache, _client, _clock = t.make_cache(local_maxsize=5)
    repo = AppConfigFragmentRepository(t.engine, cache_source=cache)
    members = {uuid4(): "d1" for _ in range(30)}
    await add_users(t.engine, members)
    sizes = []
    for uid in members:
        for name in w.names:
            assert await repo.app_config(uid, name) == await t.db.app_config(uid, name)
            sizes.append(cache.local_size())
    await repo.app_configs(next(iter(members)), list(w.names))
    sizes.append(cache.local_size())
    assert max(sizes) == 5  # filled up to the bound, never past it
    assert len(l1_entries(cache)) == 5
    # the last entries are still L1 hits; the first ones were evicted
    last = list(members)[-1]
    hits = cache.stats.l1_hits
    await repo.app_config(last, "menu")
    assert cache.stats.l1_hits == hits + 1
    await cache.drain()


async def test_l1_off_holds_nothing(l1: Tiers) -> None:
    t = l1
    w = await seed_four_users(t)
    cache, _client, _clock = t.make_cache(local_maxsize=0)
    repo = AppConfigFragmentRepository(t.engine, cache_source=cache)
    for uid in w.users:
        await repo.app_configs(uid, list(w.names))
    assert cache.local_size() == 0
    assert cache.stats.l1_hits == 0
    await cache.drain()


async def test_oversize_value_is_served_but_cached_nowhere(cached: Tiers) -> None:
    t = cached
    w = await seed_four_users(t)
    cache, client, _clock = t.make_cache(max_value_bytes=2048)
    repo = AppConfigFragmentRepository(t.engine, cache_source=cache)
    await t.db.admin_bulk_update([fragment_input(USER, str(w.u1), "theme", {"blob": "x" * 4096})])
    for i in range(1, 4):
        got = await repo.app_config(w.u1, "theme")
        await cache.drain()
        assert got == await t.db.app_config(w.u1, "theme")
        assert got.config["blob"] == "x" * 4096
        assert cache.stats.db_loads == i  # never a hit
    assert cache.stats.oversize_values == 3
    assert cache.local_size() == 0
    assert await t.valkey.exists(f"app_config:merged:{{{w.u1}}}:theme") == 0
    assert not [key for key in client.commands("set") if ":merged:" in str(key)]
    # small views of the same user are still cached
    await repo.app_config(w.u1, "menu")
    await cache.drain()
    await repo.app_config(w.u1, "menu")
    await cache.drain()
    assert await t.valkey.exists(f"app_config:merged:{{{w.u1}}}:menu") == 1


async def test_oversize_is_measured_in_bytes(cached: Tiers) -> None:
    t = cached
    w = await seed_four_users(t)
    cache, _client, _clock = t.make_cache(max_value_bytes=2048)
    repo = AppConfigFragmentRepository(t.engine, cache_source=cache)
    await t.db.admin_bulk_create([fragment_input(USER, str(w.u1), "menu", {"blob": "€" * 700})])
    view = await repo.app_config(w.u1, "menu")
    text = view.model_dump_json()
    assert len(text) < 2048 < len(text.encode()), (len(text), len(text.encode()))
    await cache.drain()
    assert await repo.app_config(w.u1, "menu") == view  # the second read can fill Valkey
    await cache.drain()
    assert cache.stats.oversize_values == 2
    assert await t.valkey.exists(f"app_config:merged:{{{w.u1}}}:menu") == 0
    assert cache.local_size() == 0


# -- I7: hostile input ----------------------------------------------------------------------

HOSTILE_NAMES = [
    "a:b",
    "{a}",
    "theme}",
    "*",
    "the*",
    "a b",
    "theme\n",
    "th\neme",
    "thème",
    "名前",
    "x" * 10_000,
    "",
    ":",
    "app_config:merged:*",
    "1theme",
    "theme\x00",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: repr(n)[:20])
async def test_hostile_names_fail_before_any_io(cached: Tiers, name: str) -> None:
    t = cached
    assert t.cache is not None and t.client is not None
    w = await seed_four_users(t)
    await prime(t, every_pair(w))
    t.client.reset()
    before = await commandstats(t.valkey)
    with count_sql(t.engine, library_only=True) as sql:
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: t.repo.app_config(w.u1, name),
            lambda: t.repo.app_configs(w.u1, ["theme", name]),
            lambda: t.cache.get_merged_config(w.u1, name),  # type: ignore[union-attr]
            lambda: t.cache.invalidate_for_policy(name),  # type: ignore[union-attr]
            lambda: t.cache.set_merged_config(  # type: ignore[union-attr]
                w.u1, name, AppConfigData.model_construct(user_id=w.u1, name=name)
            ),
            lambda: t.policies.create(name, [PUBLIC]),
            lambda: t.policies.update(name, [PUBLIC]),
            lambda: t.policies.purge(name),
        ]
        for call in calls:
            with pytest.raises(InvalidConfigNameError):
                await call()
        result = await t.repo.bulk_update_my(w.u1, [raw_my_fragment(name, {"x": 1})])
        assert [f.code for f in result.failures] == ["invalid_name"]
    assert sql.count == 0
    assert t.client.calls == []
    assert commandstats_delta(before, await commandstats(t.valkey)) == {}
    hit = await reads_hit(t, every_pair(w))
    assert all(hit.values()), "a hostile call invalidated something"


@pytest.mark.parametrize(
    "user_id", ["*", "{x}", "a:b", "app_config:*", "x" * 10_000, "", "\n", None, 12]
)
async def test_hostile_user_ids_fail_before_any_io(cached: Tiers, user_id: Any) -> None:
    t = cached
    assert t.cache is not None and t.client is not None
    w = await seed_four_users(t)
    t.client.reset()
    before = await commandstats(t.valkey)
    with count_sql(t.engine, library_only=True) as sql:
        with pytest.raises(InvalidUserIdError):
            await t.repo.app_config(user_id, "theme")
        with pytest.raises(InvalidUserIdError):
            await t.repo.app_configs(user_id, ["theme"])
        with pytest.raises(InvalidUserIdError):
            await t.repo.my_app_configs(user_id)
        with pytest.raises(InvalidUserIdError):
            await t.cache.get_merged_config(user_id, "theme")
        with pytest.raises(InvalidScopeError):
            await t.cache.invalidate_for_scope(USER, user_id)
    assert sql.count == 0
    assert t.client.calls == []
    assert commandstats_delta(before, await commandstats(t.valkey)) == {}
    assert await t.repo.app_config(w.u1, "theme") == await t.db.app_config(w.u1, "theme")


HOSTILE_DOMAINS = [
    "a",
    "a:b",
    "a*",
    "*",
    "{a}",
    "a b",
    "a}",
    "ä",
    "app_config:gen:public",
    "a" * 255,
]


async def test_hostile_domains_stay_isolated(cached: Tiers) -> None:
    t = cached
    assert t.cache is not None
    await t.policies.create("theme", [PUBLIC, DOMAIN, USER])
    members = {uuid4(): d for d in HOSTILE_DOMAINS}
    await add_users(t.engine, members)
    await t.db.admin_bulk_create(
        [fragment_input(DOMAIN, d, "theme", {"d": d}) for d in HOSTILE_DOMAINS]
    )
    pairs = [(uid, "theme") for uid in members]
    await prime(t, pairs)
    for victim in HOSTILE_DOMAINS:
        await prime(t, pairs)
        result = await t.repo.admin_bulk_update(
            [fragment_input(DOMAIN, victim, "theme", {"d": victim, "new": True})]
        )
        assert not result.failures
        hit = await reads_hit(t, pairs)
        for uid, _name in pairs:
            assert hit[(uid, "theme")] is (members[uid] != victim), (victim, members[uid])
            assert (await t.repo.app_config(uid, "theme")).config["d"] == members[uid]
        # the seed API with the same ids: only that domain again
        await prime(t, pairs)
        await t.cache.invalidate_for_scope(DOMAIN_USER_DEFAULTS, victim)
        hit = await reads_hit(t, pairs)
        assert [uid for (uid, _n), h in hit.items() if not h] == [
            uid for uid, d in members.items() if d == victim
        ]
    for bad in ["a\nb", "", "x" * 256, "\x00"]:
        with pytest.raises(InvalidScopeError):
            await t.cache.invalidate_for_scope(DOMAIN, bad)
    with pytest.raises(InvalidScopeError):
        await t.cache.invalidate_for_scope(PUBLIC, "*")
    # nothing in Valkey outside the app_config: prefix, no glob or braces made a stray key
    assert all(k.startswith(b"app_config:") for k in await t.valkey.keys("*"))


def _envelope_tamperings(u1: UUID, u2: UUID) -> dict[str, Callable[[bytes, bytes], bytes]]:
    def edit(field: str, value: Any, *, in_view: bool = False) -> Callable[[bytes, bytes], bytes]:
        def apply(own: bytes, _other: bytes) -> bytes:
            header, view = split_envelope(own)
            (view if in_view else header)[field] = value
            return join_envelope(header, view)

        return apply

    return {
        "other_user_inside": edit("u", str(u2)),
        "other_name_inside": edit("n", "menu"),
        "data_of_other_user": edit("user_id", str(u2), in_view=True),
        "data_of_other_name": edit("name", "menu", in_view=True),
        "bad_version": edit("v", 99),
        "short_generations": edit("g", [1, 2, 3]),
        "garbage_bytes": lambda _own, _other: b"\x80\x81\x00garbage{]",
        "garbage_after_header": lambda own, _other: own.partition(b"\n")[0] + b"\n{]\x80",
        "not_json_object": lambda _own, _other: b"[1, 2, 3]",
        "pickle": lambda _own, _other: b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00]\x94.",
        "copied_from_other_user": lambda _own, other: other,
    }


@pytest.mark.parametrize(
    "tamper",
    list(_envelope_tamperings(UUID(int=1), UUID(int=2))),
)
async def test_tampered_envelope_is_rejected(cached: Tiers, tamper: str) -> None:
    t = cached
    w = await seed_four_users(t)
    # u1 and u2 both have a valid envelope for "theme"
    await prime(t, [(w.u1, "theme"), (w.u2, "theme")])
    key1 = f"app_config:merged:{{{w.u1}}}:theme"
    key2 = f"app_config:merged:{{{w.u2}}}:theme"
    own, other = await t.valkey.get(key1), await t.valkey.get(key2)
    assert own is not None and other is not None
    await t.valkey.set(key1, _envelope_tamperings(w.u1, w.u2)[tamper](own, other), ex=600)
    # a fresh process (its L1 is empty), with u1's domain known through user_domain
    repo, cache, _client, _clock = t.make_repo(local_maxsize=0 if not t.l1 else 4096)
    got = await repo.app_config(w.u1, "theme")
    assert got == await t.db.app_config(w.u1, "theme")
    assert cache.stats.envelopes_rejected == 1
    assert cache.stats.db_loads == 1
    assert cache.stats.l2_hits == 0
    assert await cache.get_merged_config(w.u1, "theme") in (None, got)
    # the other user's entry was not touched
    assert await t.valkey.get(key2) == other
    await cache.drain()


# -- I9: one flight -------------------------------------------------------------------------


@hang_guard
async def test_200_concurrent_cold_reads_cause_one_db_query(cached: Tiers) -> None:
    t = cached
    assert t.cache is not None
    w = await seed_four_users(t)
    await t.db.app_config(w.u2, "theme")  # warm the connection pool
    with count_sql(t.engine, library_only=True) as sql:
        views = await asyncio.gather(*(t.repo.app_config(w.u1, "theme") for _ in range(200)))
    truth = await t.db.app_config(w.u1, "theme")
    assert all(v == truth for v in views)
    print(
        f"\n[{t.mode}] 200 concurrent cold reads: {sql.count} SQL statement(s), "
        f"db_loads={t.cache.stats.db_loads}, flights_joined={t.cache.stats.flights_joined}"
    )
    assert sql.count == 1
    assert t.cache.stats.db_loads == 1
    assert t.cache.stats.flights_joined == 199
    await t.cache.drain()


async def test_concurrent_cold_reads_in_db_mode_each_query(engine: Any, valkey_client: Any) -> None:
    """The control: without a cache source, nothing is shared (the counter does count)."""
    t = await build_tiers("db", engine, valkey_client)
    w = await seed_four_users(t)
    with count_sql(t.engine, library_only=True) as sql:
        await asyncio.gather(*(t.repo.app_config(w.u1, "theme") for _ in range(20)))
    assert sql.count == 20


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


@hang_guard
async def test_cancelled_waiter_does_not_cancel_the_others(cached: Tiers) -> None:
    t = cached
    assert t.cache is not None
    w = await seed_four_users(t)
    loader = PausedLoader(t.repo)
    leader = asyncio.create_task(t.repo.app_config(w.u1, "theme"))
    await loader.read_done.wait()
    waiters = [asyncio.create_task(t.repo.app_config(w.u1, "theme")) for _ in range(5)]
    await asyncio.sleep(0)  # they have joined the leader's flight
    waiters[2].cancel()
    await asyncio.gather(waiters[2], return_exceptions=True)
    loader.resume.set()
    views = await asyncio.gather(leader, *[wt for i, wt in enumerate(waiters) if i != 2])
    truth = await t.db.app_config(w.u1, "theme")
    assert all(v == truth for v in views)
    assert waiters[2].cancelled()
    assert loader.calls == [["theme"]]
    assert t.cache.stats.db_loads == 1
    assert t.cache.stats.flights_joined == 5
    await t.cache.drain()


@hang_guard
async def test_cancelled_leader_does_not_cancel_the_others(cached: Tiers) -> None:
    """The read that leads the load is cancelled: its joiners still get the DB value."""
    t = cached
    assert t.cache is not None
    w = await seed_four_users(t)
    loader = PausedLoader(t.repo)
    leader = asyncio.create_task(t.repo.app_config(w.u1, "theme"))
    await loader.read_done.wait()
    waiters = [asyncio.create_task(t.repo.app_config(w.u1, "theme")) for _ in range(5)]
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.gather(leader, return_exceptions=True)
    loader.resume.set()
    views = await asyncio.gather(*waiters)
    truth = await t.db.app_config(w.u1, "theme")
    assert all(v == truth for v in views)
    assert leader.cancelled()
    # the waiters share at most one more load between them
    assert len(loader.calls) <= 2 and t.cache.stats.db_loads <= 2
    assert await t.repo.app_config(w.u1, "theme") == truth
    await t.cache.drain()


@hang_guard
async def test_read_after_invalidation_does_not_join_an_older_flight(cached: Tiers) -> None:
    t = cached
    assert t.cache is not None
    w = await seed_four_users(t)
    loader = PausedLoader(t.repo)
    old_reader = asyncio.create_task(t.repo.app_config(w.u1, "theme"))
    await loader.read_done.wait()  # the old flight has read the old value
    await t.repo.bulk_update_my(w.u1, [MyFragmentInput(name="theme", config={"v": "new"})])
    # bulk_update_my read its own result: it did not join the old flight either
    assert loader.calls == [["theme"], ["theme"]]
    new = await t.repo.app_config(w.u1, "theme")
    assert new.config["v"] == "new"
    loader.resume.set()
    old = await old_reader
    assert "v" not in old.config  # the old flight answered its own readers
    assert await t.repo.app_config(w.u1, "theme") == new
    await t.cache.drain()


@hang_guard
async def test_flights_of_different_keys_are_separate(cached: Tiers) -> None:
    t = cached
    assert t.cache is not None
    w = await seed_four_users(t)
    reads = [t.repo.app_config(uid, name) for uid in w.users for name in w.names] * 10
    views = await asyncio.gather(*reads)
    for view in views:
        assert view == await t.db.app_config(view.user_id, view.name)
    assert t.cache.stats.db_loads == len(w.users) * len(w.names)
    await t.cache.drain()


@hang_guard
async def test_db_errors_reach_every_waiter(cached: Tiers) -> None:
    t = cached
    assert t.cache is not None
    w = await seed_four_users(t)

    async def failing(user_id: UUID, names: Any) -> Any:
        await asyncio.sleep(0)
        raise AppConfigError("db down")

    db_source_of(t.repo).load_views = failing
    results = await asyncio.gather(
        *(t.repo.app_config(w.u1, "theme") for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, AppConfigError) for r in results)
    del db_source_of(t.repo).load_views
    assert await t.repo.app_config(w.u1, "theme") == await t.db.app_config(w.u1, "theme")
    await t.cache.drain()
