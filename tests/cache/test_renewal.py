"""L1 renewal: a hot entry outlives ``local_ttl`` only on fresh generation readings.

Each test uses a second cache source "B" (another process) with its own fake clock,
so that the writer's clock and B's are independent, and B's round trips are counted.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from uuid import UUID

from appconfig_cache import AppConfigFragmentRepository
from tests.support.clock import FakeClock
from tests.support.internals import trip_breaker, valkey_usable
from tests.support.scopes import DOMAIN
from tests.support.valkey import CountingValkey, PauseAt

from .conftest import (
    LOCAL_TTL,
    SUITE_ON_CLUSTER_ENV,
    Seeded,
    Tiers,
)
from .test_consistency import _write_admin, _write_user

HALF = LOCAL_TTL / 2
#: one refresh: a pipeline, plus, on a cluster, the epoch read from every primary in
#: parallel with it (counted as a second call)
REFRESH_CALLS = 2 if os.environ.get(SUITE_ON_CLUSTER_ENV) else 1


async def _renewable(
    t: Tiers, uid: UUID, name: str, **kwargs: Any
) -> tuple[AppConfigFragmentRepository, Any, CountingValkey, FakeClock, Any]:
    """B, holding ``(uid, name)`` in L1 with the generations it was computed under.

    The first load of a user in a process does not know the user's domain, so its
    entry has no basis; the load after ``local_ttl`` does.
    """
    repo, cache, client, clock = t.make_repo(**kwargs)
    await repo.app_config(uid, name)
    await cache.drain()
    clock.advance(LOCAL_TTL)
    value = await repo.app_config(uid, name)
    await cache.drain()
    client.reset()
    assert await repo.app_config(uid, name) == value
    assert client.round_trips == 0, "B does not serve it from L1: the test would prove nothing"
    return repo, cache, client, clock, value


async def test_a_hot_entry_is_renewed_without_a_round_trip_of_its_own(seeded: Seeded) -> None:
    t, w = seeded
    repo, cache, client, clock, value = await _renewable(t, w.u1, "theme")
    start = clock.now
    clock.now = start + HALF + 0.1  # a hit in the second half asks for a refresh
    assert await repo.app_config(w.u1, "theme") == value
    assert client.round_trips == 0  # the refresh runs in the background
    await cache.drain()
    assert cache.stats.gen_refreshes == 1
    # one pipeline: the user's generation (and shared ones)
    assert client.round_trips == REFRESH_CALLS
    client.reset()
    renewals = cache.stats.l1_renewals
    clock.now = start + LOCAL_TTL + 0.5  # past the entry's first life
    assert await repo.app_config(w.u1, "theme") == value
    assert client.round_trips == 0
    assert cache.stats.l1_renewals == renewals + 1
    await cache.drain()  # that hit was in the renewed life's second half: another refresh
    assert cache.stats.gen_refreshes == 2
    last_reading = start + LOCAL_TTL + 0.5
    # each life ends local_ttl after the reading that renewed it, never later
    client.reset()
    clock.now = last_reading + LOCAL_TTL - 0.001
    assert await repo.app_config(w.u1, "theme") == value
    assert client.round_trips == 0
    clock.now = last_reading + LOCAL_TTL
    assert await repo.app_config(w.u1, "theme") == value
    assert client.round_trips >= 1


async def test_one_refresh_covers_every_due_user(seeded: Seeded) -> None:
    t, w = seeded
    repo, cache, client, clock = t.make_repo()
    users = [w.u1, w.u2, w.u3]
    for _ in range(2):  # the second pass has the users' domains: renewable entries
        for uid in users:
            await repo.app_configs(uid, ["theme", "menu"])
        await cache.drain()
        clock.advance(LOCAL_TTL)
    for uid in users:
        await repo.app_configs(uid, ["theme", "menu"])
    await cache.drain()
    client.reset()
    refreshes = cache.stats.gen_refreshes
    clock.advance(HALF + 0.1)
    for uid in users:
        await repo.app_configs(uid, ["theme", "menu"])
    await cache.drain()
    assert cache.stats.gen_refreshes == refreshes + 1
    assert client.round_trips == REFRESH_CALLS
    want = {uid: await t.db.app_configs(uid, ["theme", "menu"]) for uid in users}
    client.reset()
    clock.advance(HALF - 0.05)  # past the entries' first life, before the renewed one's half
    for uid in users:
        assert await repo.app_configs(uid, ["theme", "menu"]) == want[uid]
    await cache.drain()
    assert client.round_trips == 0  # six entries, three users, zero round trips


async def test_a_write_before_the_refresh_stops_the_renewal(seeded: Seeded) -> None:
    t, w = seeded
    repo, cache, _client, clock, old = await _renewable(t, w.u1, "theme")
    start = clock.now
    await _write_user(t, w, t.repo, t.policies)  # A writes u1's own fragment
    new = await t.db.app_config(w.u1, "theme")
    assert new != old
    clock.now = start + HALF + 0.1
    assert await repo.app_config(w.u1, "theme") == old  # within B's bound
    await cache.drain()  # the refresh reads u1's new generation
    renewals = cache.stats.l1_renewals
    clock.now = start + LOCAL_TTL
    assert await repo.app_config(w.u1, "theme") == new
    assert cache.stats.l1_renewals == renewals


async def test_a_write_after_the_refresh_is_seen_local_ttl_after_the_reading(
    seeded: Seeded,
) -> None:
    t, w = seeded
    repo, cache, _client, clock, old = await _renewable(t, w.u2, "theme")
    start = clock.now
    read_at = start + HALF + 0.1
    clock.now = read_at
    await repo.app_config(w.u2, "theme")
    await cache.drain()  # B reads the generations at read_at
    await _write_admin(DOMAIN, "d1")(t, w, t.repo, t.policies)  # then A writes d1's theme
    new = await t.db.app_config(w.u2, "theme")
    assert new != old
    clock.now = read_at + LOCAL_TTL - 0.001
    assert await repo.app_config(w.u2, "theme") == old  # renewed: stale, but in the bound
    clock.now = read_at + LOCAL_TTL
    assert await repo.app_config(w.u2, "theme") == new


async def test_generations_gone_from_valkey_stop_the_renewal(seeded: Seeded) -> None:
    """A Valkey restarted empty (here: flushed) answers no generation: nothing is renewed."""
    t, w = seeded
    repo, cache, client, clock, old = await _renewable(t, w.u1, "theme")
    start = clock.now
    await t.valkey.flushall()
    clock.now = start + HALF + 0.1
    await repo.app_config(w.u1, "theme")
    await cache.drain()
    assert cache.stats.gen_refreshes == 1
    renewals = cache.stats.l1_renewals
    client.reset()
    clock.now = start + LOCAL_TTL
    assert await repo.app_config(w.u1, "theme") == old
    assert client.round_trips >= 1  # not an L1 hit: asked Valkey (and the DB)
    assert cache.stats.l1_renewals == renewals


async def test_no_entry_outlives_the_envelope_ttl(seeded: Seeded) -> None:
    t, w = seeded
    ttl = 3
    repo, cache, client, clock, value = await _renewable(t, w.u3, "menu", ttl=ttl)
    start = filled = clock.now  # when B stored the entry it serves
    clock.now = start + HALF + 0.1
    await repo.app_config(w.u3, "menu")
    await cache.drain()
    client.reset()
    clock.now = filled + ttl - 0.01  # renewed, still inside the hard lifetime
    assert await repo.app_config(w.u3, "menu") == value
    assert client.round_trips == 0
    await cache.drain()
    clock.now = filled + ttl
    client.reset()
    assert await repo.app_config(w.u3, "menu") == value
    assert client.round_trips >= 1


async def test_no_renewal_without_valkey(seeded: Seeded) -> None:
    """With the breaker open the refresh does not run and entries expire at local_ttl."""
    t, w = seeded
    repo, cache, _client, clock, old = await _renewable(t, w.u1, "menu")
    start = clock.now
    trip_breaker(cache)  # as after confirmed failures; cools down for 5 s
    assert not valkey_usable(cache)
    clock.now = start + HALF + 0.1
    await repo.app_config(w.u1, "menu")
    await cache.drain()
    assert cache.stats.gen_refreshes == 0
    clock.now = start + LOCAL_TTL
    loads = cache.stats.db_loads
    assert await repo.app_config(w.u1, "menu") == old
    assert cache.stats.db_loads == loads + 1
    assert cache.stats.l1_renewals == 0


# -- an entry that expired before its user came back -----------------------------------------


async def test_an_expired_entry_is_renewed_by_one_batched_read(seeded: Seeded) -> None:
    """No hit in its second half, so no background refresh: when the users come back,
    their expired entries wait for one read of the generations, not a lookup each."""
    t, w = seeded
    users = [w.u1, w.u2, w.u3]
    repo, cache, client, clock = t.make_repo()
    for _ in range(2):  # the second pass has the users' domains: renewable entries
        for uid in users:
            await repo.app_configs(uid, ["theme", "menu"])
        await cache.drain()
        clock.advance(LOCAL_TTL)
    assert cache.stats.gen_refreshes == 0
    want = {uid: await t.db.app_configs(uid, ["theme", "menu"]) for uid in users}
    client.reset()
    got = await asyncio.gather(*(repo.app_configs(uid, ["theme", "menu"]) for uid in users))
    assert dict(zip(users, got, strict=True)) == want
    assert client.commands("mget") == []  # no lookup
    assert client.round_trips == REFRESH_CALLS  # one pipeline for the three users
    assert cache.stats.l1_renewals == 2 * len(users)


async def test_an_expired_entry_whose_user_wrote_is_not_renewed(seeded: Seeded) -> None:
    t, w = seeded
    repo, cache, _client, clock, old = await _renewable(t, w.u1, "theme")
    await _write_user(t, w, t.repo, t.policies)  # A writes u1's own fragment
    new = await t.db.app_config(w.u1, "theme")
    assert new != old
    clock.advance(LOCAL_TTL)  # no hit in the second half: the entry simply expired
    renewals = cache.stats.l1_renewals
    assert await repo.app_config(w.u1, "theme") == new
    assert cache.stats.l1_renewals == renewals


async def test_a_local_write_while_the_renewal_waits_is_seen(seeded: Seeded) -> None:
    """B's read waits for the generation read; B's own domain write lands meanwhile.
    Once the write has returned, B serves the new view (I2), not the renewed old one."""
    t, w = seeded
    repo, cache, client, clock, old = await _renewable(t, w.u2, "theme")
    clock.advance(LOCAL_TTL)
    user_gen = f"app_config:gen:user:{{{w.u2}}}"
    pause = PauseAt(lambda call: user_gen in call.keys("get"))
    client.before = pause
    reader = asyncio.create_task(repo.app_config(w.u2, "theme"))
    await pause.reached.wait()
    await _write_admin(DOMAIN, "d1")(t, w, repo, t.policies)  # through B
    client.before = None
    pause.release()
    new = await t.db.app_config(w.u2, "theme")
    assert new != old
    assert await reader in (old, new)  # it overlapped the write
    assert await repo.app_config(w.u2, "theme") == new
    await cache.drain()
