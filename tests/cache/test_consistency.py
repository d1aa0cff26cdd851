"""I3 (no stale set, made deterministic) and I4 (bounded staleness across instances).

Every race here is forced with events, never with sleeps: a reader is parked between
its DB read and its fill (a wrapper around the DB source's ``load_views``) or around its Valkey
round trip (a gate in the counting client), the write runs to completion, then the
reader goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import pytest
import valkey.asyncio as valkey_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigData,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    MyFragmentInput,
)
from tests.support.envelopes import servable_envelope
from tests.support.fragments import fragment_input
from tests.support.internals import clear_l1
from tests.support.scopes import DOMAIN, DOMAIN_USER_DEFAULTS, PUBLIC, USER
from tests.support.valkey import Call, PauseAt

from .conftest import (
    LOCAL_TTL,
    FourUsers,
    PausedLoader,
    Seeded,
    Tiers,
    expect,
    hang_guard,
    open_tiers,
    park_read,
    seed_four_users,
)

Write = Callable[
    [Tiers, FourUsers, AppConfigFragmentRepository, AppConfigPolicyRepository], Awaitable[Any]
]


async def _write_user(t: Tiers, w: FourUsers, repo: Any, policies: Any) -> None:
    result = await repo.bulk_update_my(w.u1, [MyFragmentInput(name="theme", config={"v": 2})])
    assert not result.failures


def _write_admin(scope: Any, scope_id: str) -> Write:
    async def write(t: Tiers, w: FourUsers, repo: Any, policies: Any) -> None:
        result = await repo.admin_bulk_update([fragment_input(scope, scope_id, "theme", {"v": 2})])
        assert not result.failures

    return write


async def _write_policy(t: Tiers, w: FourUsers, repo: Any, policies: Any) -> None:
    await policies.update("theme", [USER, PUBLIC])


WRITES: dict[str, Write] = {
    "user": _write_user,
    "domain": _write_admin(DOMAIN, "d1"),
    "domain_user_defaults": _write_admin(DOMAIN_USER_DEFAULTS, "d1"),
    "public": _write_admin(PUBLIC, "public"),
    "policy": _write_policy,
}


async def _learn_domain(t: Tiers, w: FourUsers) -> None:
    """A first read: the instance learns u1's domain and Valkey gets ``user_domain``."""
    assert t.cache is not None
    await t.repo.app_config(w.u1, "theme")
    await t.cache.drain()


async def _fill_envelope(t: Tiers, w: FourUsers) -> None:
    """Leave a valid envelope of (u1, theme) in Valkey and nothing in t's L1."""
    assert t.cache is not None
    await _learn_domain(t, w)
    t.clock.advance(LOCAL_TTL)
    await t.repo.app_config(w.u1, "theme")
    await t.cache.drain()
    t.clock.advance(LOCAL_TTL)  # L1 and the generation cache have expired
    clear_l1(t.cache)  # expired entries wait for a renewal: drop them
    assert await servable_envelope(t.valkey, w.u1, "theme", "d1") is not None


async def _assert_nobody_serves(t: Tiers, w: FourUsers, old: AppConfigData, *others: Any) -> None:
    """After the race: this instance, the given other instances and Valkey are all fresh."""
    assert t.cache is not None
    truth = await t.db.app_config(w.u1, "theme")
    assert truth != old
    assert await t.repo.app_config(w.u1, "theme") == truth
    assert await t.repo.app_configs(w.u1, ["menu", "theme"]) == [
        await t.db.app_config(w.u1, "menu"),
        truth,
    ]
    await t.cache.drain()
    envelope = await servable_envelope(t.valkey, w.u1, "theme", "d1")
    assert envelope in (None, truth), "Valkey holds the old value under current generations"
    for repo, clock in others:
        if clock is not None:
            clock.advance(LOCAL_TTL)
        assert await repo.app_config(w.u1, "theme") == truth
    # and this instance again, once its L1 and generation cache have expired
    t.clock.advance(LOCAL_TTL)
    assert await t.repo.app_config(w.u1, "theme") == truth
    await t.cache.drain()
    envelope = await servable_envelope(t.valkey, w.u1, "theme", "d1")
    assert envelope in (None, truth)


# -- I3: a reader parked between its DB read and its fill --------------------------------------


@pytest.mark.parametrize("write", list(WRITES))
@hang_guard
async def test_stale_set_between_db_read_and_fill(seeded: Seeded, write: str) -> None:
    t, w = seeded
    assert t.cache is not None
    await _learn_domain(t, w)
    t.clock.advance(LOCAL_TTL)  # the parked reader will go to Valkey, miss, and to the DB
    # B: another instance that already holds the generations, and u2's view in L1
    b_repo, b_cache, _b_client, b_clock = t.make_repo()
    await b_repo.app_config(w.u2, "theme")
    await b_repo.app_config(w.u2, "theme")
    await b_cache.drain()

    # the reader has the old value, not yet stored anywhere
    loader, reader = await park_read(t, t.repo.app_config(w.u1, "theme"))
    loader.restore()
    await WRITES[write](t, w, t.repo, t.policies)  # the write and its invalidation complete
    loader.resume.set()
    old = await reader
    await t.cache.drain()  # its fills (L1 now, Valkey in the background) have landed
    assert old != await t.db.app_config(w.u1, "theme")

    # B, before its local_ttl: old (its generations are older than the write) or new
    seen = await b_repo.app_config(w.u1, "theme")
    assert seen in (old, await t.db.app_config(w.u1, "theme"))
    c_repo, _c_cache, _c_client, _c_clock = t.make_repo()  # a fresh instance
    await _assert_nobody_serves(t, w, old, (c_repo, None), (b_repo, b_clock))


@pytest.mark.parametrize("write", ["user", "domain", "public", "policy"])
@hang_guard
async def test_stale_set_of_a_batch(seeded: Seeded, write: str) -> None:
    t, w = seeded
    assert t.cache is not None
    await _learn_domain(t, w)
    t.clock.advance(LOCAL_TTL)
    loader, reader = await park_read(t, t.repo.app_configs(w.u1, ["menu", "theme"]))
    assert loader.calls == [["menu", "theme"]]
    loader.restore()
    await WRITES[write](t, w, t.repo, t.policies)
    loader.resume.set()
    _menu, old = await reader
    await t.cache.drain()
    c_repo, _c_cache, _c_client, _c_clock = t.make_repo()
    await _assert_nobody_serves(t, w, old, (c_repo, None))


@hang_guard
async def test_stale_set_with_my_app_configs(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
    await _learn_domain(t, w)
    t.clock.advance(LOCAL_TTL)
    loader, reader = await park_read(t, t.repo.my_app_configs(w.u1))
    loader.restore()
    await _write_user(t, w, t.repo, t.policies)
    loader.resume.set()
    old = {v.name: v for v in await reader}["theme"]
    await t.cache.drain()
    c_repo, _c_cache, _c_client, _c_clock = t.make_repo()
    await _assert_nobody_serves(t, w, old, (c_repo, None))
    assert {v.name: v for v in await t.repo.my_app_configs(w.u1)}["theme"] == (
        await t.db.app_config(w.u1, "theme")
    )


@pytest.mark.parametrize("write", list(WRITES))
@pytest.mark.parametrize("known", ["nothing", "user_domain"])
@hang_guard
async def test_stale_set_by_a_reader_that_did_not_know_the_domain(
    seeded: Seeded, write: str, known: str
) -> None:
    """Instance A never read u1: its lookup asks Valkey once, and its fill goes under the
    d1 generation it read for u2 before the query (``nothing``: the domain was unknown
    until the DB load; ``user_domain``: Valkey's user_domain key named it). The write runs
    in another instance while A is parked after its DB read, so A forgets nothing."""
    t, w = seeded
    assert t.cache is not None
    if known == "user_domain":  # left by an earlier reader; u1's envelope has expired
        await t.valkey.set(f"app_config:user_domain:{{{w.u1}}}", "d1")
    a_repo, a_cache, a_client, a_clock = t.make_repo(local_maxsize=4096 if t.l1 else 0)
    await a_repo.app_config(w.u2, "theme")  # A learns u2's domain,
    await a_repo.app_config(w.u2, "menu")  # and reads d1's generation
    await a_cache.drain()
    a_client.reset()

    loader = PausedLoader(a_repo)
    reader = asyncio.create_task(a_repo.app_config(w.u1, "theme"))
    await loader.read_done.wait()
    loader.restore()
    assert a_client.round_trips == 1  # the lookup only: no round trip for d1's generation
    await WRITES[write](t, w, t.repo, t.policies)  # the write and its invalidation complete
    loader.resume.set()
    old = await reader
    await a_cache.drain()
    assert old != await t.db.app_config(w.u1, "theme")
    # A's fill did land, under the generations it read before its DB query
    assert await t.valkey.get(f"app_config:merged:{{{w.u1}}}:theme") is not None
    c_repo, _c_cache, _c_client, _c_clock = t.make_repo()  # a fresh instance
    await _assert_nobody_serves(t, w, old, (c_repo, None), (a_repo, a_clock))


# -- I3: the write lands while the reader's Valkey round trip is in flight ----------------------


def _lookup_of(uid: UUID) -> Callable[[Call], bool]:
    key = f"app_config:merged:{{{uid}}}:theme"
    return lambda call: key in call.keys("mget")


@pytest.mark.parametrize("write", list(WRITES))
@pytest.mark.parametrize("gate", ["before", "after"])
@hang_guard
async def test_stale_set_during_the_mget(seeded: Seeded, write: str, gate: str) -> None:
    """``before``: parked before its MGET is sent; ``after``: the reply (read before the
    write) is in hand but not yet looked at. A valid old envelope is in Valkey."""
    t, w = seeded
    assert t.cache is not None and t.client is not None
    await _fill_envelope(t, w)
    pause = PauseAt(_lookup_of(w.u1))
    setattr(t.client, gate, pause)
    old_value = await t.db.app_config(w.u1, "theme")
    reader = asyncio.create_task(t.repo.app_config(w.u1, "theme"))
    await pause.reached.wait()
    await WRITES[write](t, w, t.repo, t.policies)
    pause.release()
    got = await reader
    setattr(t.client, gate, None)
    assert got in (old_value, await t.db.app_config(w.u1, "theme"))
    await t.cache.drain()
    c_repo, _c_cache, _c_client, _c_clock = t.make_repo()
    await _assert_nobody_serves(t, w, old_value, (c_repo, None))


# -- I2/I3: a read that overlaps the invalidation's own Valkey round trip -----------------------


def _bump_race_params() -> list[Any]:
    return [
        pytest.param(mode, write, gate, gens, id=f"{mode}-{write}-{gate}-{gens}")
        for mode in ("valkey", "l1+valkey")
        for write in ("user", "domain", "public", "policy")
        for gate in ("before", "after")
        for gens in ("fresh", "due")
    ]


@pytest.mark.parametrize(("mode", "write", "gate", "gens"), _bump_race_params())
@hang_guard
async def test_read_during_the_invalidation_round_trip(
    engine: AsyncEngine,
    valkey_client: valkey_asyncio.Valkey,
    mode: str,
    write: str,
    gate: str,
    gens: str,
) -> None:
    """The write's INCR pipeline is parked (``before``: not sent yet, as when it waits
    for a pooled connection; ``after``: applied by Valkey, reply not yet processed). A
    read in the same process runs meanwhile. Once the write returns, I2 says every read
    reflects it."""
    async with open_tiers(mode, engine, valkey_client) as t:
        assert t.cache is not None and t.client is not None
        w = await seed_four_users(t)
        await _fill_envelope(t, w)
        await t.repo.app_config(w.u1, "theme")  # warm L1 and the generation cache
        if gens == "due":
            t.clock.advance(LOCAL_TTL)
        old_value = await t.db.app_config(w.u1, "theme")
        pause = PauseAt(lambda call: call.has("incr"))
        setattr(t.client, gate, pause)
        writer = asyncio.create_task(WRITES[write](t, w, t.repo, t.policies))
        await pause.reached.wait()
        during = await t.repo.app_config(w.u1, "theme")  # started before the write returned
        assert during in (old_value, await t.db.app_config(w.u1, "theme"))
        pause.release()
        await writer
        setattr(t.client, gate, None)
        truth = await t.db.app_config(w.u1, "theme")
        assert truth != old_value
        after = await t.repo.app_config(w.u1, "theme")
        expect(after == truth, f"[{mode}] the write returned, then the old value was served")
        await t.cache.drain()
        expect(await t.repo.app_config(w.u1, "theme") == truth, "old value served again")


# -- I4: two instances with separate L1s over one Valkey -------------------------------------


@pytest.mark.parametrize("write", list(WRITES))
@pytest.mark.parametrize("reader_l1", [True, False], ids=["B-l1", "B-valkey"])
async def test_other_instance_sees_a_write_within_local_ttl(
    seeded: Seeded, write: str, reader_l1: bool
) -> None:
    t, w = seeded
    assert t.cache is not None
    b_repo, b_cache, _b_client, b_clock = t.make_repo(local_maxsize=4096 if reader_l1 else 0)
    # B reads until it serves (u1, theme) from its own tiers
    for _ in range(3):
        await b_repo.app_config(w.u1, "theme")
        await b_cache.drain()
    loads = b_cache.stats.db_loads
    old = await b_repo.app_config(w.u1, "theme")
    assert b_cache.stats.db_loads == loads, "B does not cache: the test would prove nothing"

    await WRITES[write](t, w, t.repo, t.policies)
    new = await t.db.app_config(w.u1, "theme")
    assert new != old
    assert await t.repo.app_config(w.u1, "theme") == new  # A at once (I2)

    # B: maybe stale until its clock has moved local_ttl past the write, never after;
    # and once it has served the new value it never goes back
    served: list[str] = []
    for step in [0.0, 0.5, 1.0, 1.5, LOCAL_TTL - 0.001]:
        b_clock.now = 1000.0 + step
        got = await b_repo.app_config(w.u1, "theme")
        assert got in (old, new), step
        served.append("new" if got == new else "old")
        await b_cache.drain()
    assert served == sorted(served, key=lambda s: s == "new"), served  # old* new*
    if reader_l1:
        assert served[0] == "old"  # B's L1 really held it: "bounded", not "never cached"
    b_clock.now = 1000.0 + LOCAL_TTL
    assert await b_repo.app_config(w.u1, "theme") == new
    for _ in range(3):
        b_clock.advance(0.7)
        assert await b_repo.app_config(w.u1, "theme") == new
        await b_cache.drain()
    print(f"\n[{t.mode} writer, B {'l1' if reader_l1 else 'valkey'}, {write}] B served {served}")


async def test_other_instance_bound_counts_from_its_oldest_generation(seeded: Seeded) -> None:
    """B's L1 entry made from an L2 hit expires local_ttl after the oldest generation it
    was checked against, not local_ttl after the hit."""
    t, w = seeded
    assert t.cache is not None
    await _fill_envelope(t, w)
    b_repo, b_cache, _b_client, b_clock = t.make_repo()
    await b_repo.app_config(w.u2, "theme")  # B fetches the generations at t=1000
    await b_repo.app_config(w.u2, "menu")  # ... and the domain's, now that it knows it
    await b_cache.drain()
    b_clock.now = 1000.0 + 1.5
    old = await b_repo.app_config(w.u1, "theme")  # an L2 hit at t=1001.5
    assert b_cache.stats.l2_hits >= 1
    await _write_admin(DOMAIN, "d1")(t, w, t.repo, t.policies)
    new = await t.db.app_config(w.u1, "theme")
    assert old != new
    b_clock.now = 1000.0 + LOCAL_TTL  # 0.5 s after the hit, local_ttl after the fetch
    assert await b_repo.app_config(w.u1, "theme") == new
