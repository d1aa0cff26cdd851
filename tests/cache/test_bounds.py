"""Empty views are cached and names without a policy never are; bounded L1 and
oversize values (I6)."""

from __future__ import annotations

from uuid import uuid4

from appconfig_cache import (
    AppConfigData,
)
from tests.support.data import add_users
from tests.support.fragments import fragment_input
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
