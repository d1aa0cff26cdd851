"""Empty views are cached and names without a policy never are; bounded L1 and
oversize values (I6)."""

from __future__ import annotations

from uuid import UUID, uuid4

from appconfig_cache import (
    AppConfigData,
)
from appconfig_cache.tiered.weights import UNWEIGHED, json_weight
from tests.support.data import add_policy, add_users
from tests.support.fragments import fragment_input, user_fragment
from tests.support.internals import l1_entries
from tests.support.scopes import PUBLIC, USER

from .conftest import (
    LOCAL_TTL,
    Seeded,
    Tiers,
    prime,
    seed_four_users,
)

# -- empty views are cached; names without a policy never are -------------------------------


async def test_empty_view_is_cached_and_counted_as_a_hit(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
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


async def test_name_without_policy_is_never_cached(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
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
    repo, cache, _client, _clock = t.make_repo(local_maxsize=5)
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
    repo, cache, _client, _clock = t.make_repo(local_maxsize=0)
    for uid in w.users:
        await repo.app_configs(uid, list(w.names))
    assert cache.local_size() == 0
    assert cache.stats.l1_hits == 0
    await cache.drain()


async def test_oversize_value_is_served_but_cached_nowhere(seeded: Seeded) -> None:
    t, w = seeded
    repo, cache, client, _clock = t.make_repo(max_value_bytes=2048)
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


async def test_oversize_is_measured_in_bytes(seeded: Seeded) -> None:
    t, w = seeded
    repo, cache, _client, _clock = t.make_repo(max_value_bytes=2048)
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


# -- I6 in bytes: L1 and the parse memo bounded by weight ------------------------------------


def _large_config(seed: int, items: int) -> dict[str, object]:
    """A saved document of ``items`` small objects (~40 bytes of JSON each)."""
    return {"items": [{"id": seed * 10_000 + i, "label": f"item {i}"} for i in range(items)]}


async def _users_with_large_views(t: Tiers, count: int, items: int) -> list[UUID]:
    await add_policy(t.engine, "big", [PUBLIC, USER])
    members = {uuid4(): "d1" for _ in range(count)}
    await add_users(t.engine, members)
    result = await t.db.admin_bulk_create(
        [user_fragment(uid, "big", _large_config(i, items)) for i, uid in enumerate(members)]
    )
    assert not result.failures, result.failures
    return list(members)


async def test_l1_weight_stays_under_local_maxbytes(l1: Tiers) -> None:
    t = l1
    budget = 1_500_000
    users = await _users_with_large_views(t, 24, items=200)
    repo, cache, _client, _clock = t.make_repo(local_maxbytes=budget)
    for _round in range(2):  # the second round reads what the first filled or evicted
        for uid in users:
            assert await repo.app_config(uid, "big") == await t.db.app_config(uid, "big")
            assert 0 < cache.stats.l1_bytes <= budget
            await cache.drain()
    entries = l1_entries(cache)
    weights = [entry.weight for entry in entries.values()]
    assert sum(weights) == cache.stats.l1_bytes  # the account is exact
    # each view weighs more than its JSON, and a few fit where 24 would not
    view_json = len((await t.db.app_config(users[0], "big")).model_dump_json())
    assert min(weights) > view_json
    assert 2 <= len(weights) < len(users) and len(weights) * max(weights) > budget / 2
    assert cache.stats.l1_evicted_for_weight > 0 and cache.stats.l1_refused == 0
    # the last user read is an L1 hit still
    hits = cache.stats.l1_hits
    assert await repo.app_config(users[-1], "big") == await t.db.app_config(users[-1], "big")
    assert cache.stats.l1_hits == hits + 1
    await cache.drain()


async def test_a_loaded_view_is_in_l1_at_once_and_weighed_off_the_callers_latency(
    l1: Tiers,
) -> None:
    """A DB load puts its view in L1 before the read returns, with an estimate; the fill
    task makes its JSON, weighs it and writes the envelope."""
    t = l1
    (uid,) = await _users_with_large_views(t, 1, items=200)
    repo, cache, _client, _clock = t.make_repo()
    expected = await t.db.app_config(uid, "big")
    for _ in range(2):  # the first read learns the user's domain; the second fills
        assert await repo.app_config(uid, "big") == expected
        assert cache.stats.l1_bytes == UNWEIGHED  # not weighed yet: no JSON made
        hits = cache.stats.l1_hits
        assert await repo.app_config(uid, "big") == expected  # at once an L1 hit
        assert cache.stats.l1_hits == hits + 1
        await cache.drain()
        assert cache.stats.l1_bytes == json_weight(expected.model_dump_json().encode())
        await cache.invalidate_for_scope(USER, str(uid))
    assert await t.valkey.exists(f"app_config:merged:{{{uid}}}:big") == 1


async def test_a_view_heavier_than_an_eighth_of_l1_is_served_not_kept(l1: Tiers) -> None:
    t = l1
    budget = 400_000
    (heavy,) = await _users_with_large_views(t, 1, items=400)  # weighs over 50 kB
    repo, cache, _client, _clock = t.make_repo(local_maxbytes=budget)
    expected = await t.db.app_config(heavy, "big")
    for i in range(1, 4):
        assert await repo.app_config(heavy, "big") == expected
        await cache.drain()
        assert cache.stats.l1_refused == i
    assert cache.local_size() == 0 and cache.stats.l1_bytes == 0 and cache.stats.l1_hits == 0
    # not kept in L1, but Valkey has it (max_value_bytes is the only limit there)
    assert await t.valkey.exists(f"app_config:merged:{{{heavy}}}:big") == 1
    assert cache.stats.l2_hits >= 1


async def test_parse_memo_weight_stays_under_its_budget(l1: Tiers) -> None:
    t = l1
    budget = 1_600_000
    users = await _users_with_large_views(t, 16, items=200)
    repo, cache, _client, _clock = t.make_repo(local_maxsize=0, parse_memo_maxbytes=budget)
    for _round in range(3):  # the first round learns the domain, the second fills Valkey
        for uid in users:
            assert await repo.app_config(uid, "big") == await t.db.app_config(uid, "big")
            assert cache.stats.memo_bytes <= budget
            await cache.drain()
    stats = cache.stats
    assert stats.memo_bytes > 0 and stats.memo_evicted_for_weight > 0 and stats.memo_refused == 0
    assert stats.l2_hits > 0
