"""Valkey round trips and SQL statements, counted (run with ``-s`` to see the numbers).

A round trip is one awaited client call: a command, or a pipeline's ``execute``. The
counting wrapper sees what the cache source sends; ``INFO commandstats`` confirms the
commands that reached the server.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest

from tests.support.data import add_users
from tests.support.fragments import fragment_input
from tests.support.scopes import ALL_SCOPES, DOMAIN, DOMAIN_USER_DEFAULTS, PUBLIC, USER
from tests.support.sql import count_sql
from tests.support.valkey import commandstats, commandstats_delta, incr_calls

from .conftest import (
    LOCAL_TTL,
    Seeded,
    Tiers,
    standalone_shape_only,
)


async def measure(t: Tiers, label: str, action: Any) -> tuple[int, int, list[list[str]]]:
    """Run ``action`` (an awaitable), wait for the background fills, count."""
    assert t.cache is not None and t.client is not None
    await t.cache.drain()
    t.client.reset()
    with count_sql(t.engine, library_only=True) as sql:
        await action
        await t.cache.drain()
    shape = [call.names for call in t.client.calls]
    print(f"\n[{t.mode}] {label}: {t.client.round_trips} round trip(s), {sql.count} SQL: {shape}")
    return t.client.round_trips, sql.count, shape


async def measure_answer(
    t: Tiers, label: str, action: Any
) -> tuple[int, int, int, list[list[str]]]:
    """Like :func:`measure`, and the round trips sent before ``action`` returned first:
    ``(before the answer, in all, SQL, shape)``."""
    assert t.cache is not None and t.client is not None
    await t.cache.drain()
    t.client.reset()
    with count_sql(t.engine, library_only=True) as sql:
        await action
        before = t.client.round_trips  # the background fills have not run yet
        await t.cache.drain()
    shape = [call.names for call in t.client.calls]
    print(
        f"\n[{t.mode}] {label}: {before} round trip(s) before the answer, "
        f"{t.client.round_trips} in all, {sql.count} SQL: {shape}"
    )
    return before, t.client.round_trips, sql.count, shape


@standalone_shape_only
async def test_read_round_trips(seeded: Seeded) -> None:
    t, w = seeded
    r = t.repo
    # A process's very first read of a user: one pipeline reads the envelope and the
    # user_domain key, and reads or creates (SET NX GET) every generation it can name
    # (and INFO server); then the DB; the fill (user_domain only: d1's generation was
    # not read before the query) goes in the background.
    first = r.app_config(w.u1, "theme")
    before, rt, sql, shape = await measure_answer(t, "first read, nothing anywhere", first)
    assert (before, rt, sql) == (1, 2, 1)
    assert shape[0] == ["mget", "set", "set", "set", "info"] and shape[-1] == ["set"]
    assert await t.valkey.get(f"app_config:user_domain:{{{w.u1}}}") == b"d1"
    t.clock.advance(LOCAL_TTL)
    # now the domain is known: the lookup reads (or creates) its generation too
    second = r.app_config(w.u1, "theme")
    before, rt, sql, shape = await measure_answer(t, "second cold read", second)
    assert (before, rt, sql) == (1, 2, 1)
    assert shape[-1] == ["set"] and await t.valkey.get(f"app_config:merged:{{{w.u1}}}:theme")
    t.clock.advance(LOCAL_TTL)
    label = "L1 renewal, generations due" if t.l1 else "L2 hit, generations due"
    rt, sql, shape = await measure(t, label, r.app_config(w.u1, "theme"))
    assert (rt, sql) == (1, 0)
    # one pipeline: the MGET, the due generations (read or created: SET NX GET) and the
    # server's identity (INFO server); with L1, the expired entry is renewed by the
    # background refresh's pipeline (GETs) without the MGET
    if t.l1:
        assert shape[0][0] == "get" and set(shape[0][1:]) <= {"get", "info"}
    else:
        assert shape[0][0] == "mget" and set(shape[0][1:]) <= {"set", "info"}
    if t.l1:
        rt, sql, _ = await measure(t, "L1 hit", r.app_config(w.u1, "theme"))
        assert (rt, sql) == (0, 0)
        t.clock.advance(LOCAL_TTL / 2)  # L1 keeps it; a second instance has to do the L2 hit
        t2, _c, client2, _clk = t.make_repo(local_maxsize=0)
        await t2.app_config(w.u2, "theme")
        await t2.app_config(w.u2, "menu")
        await _c.drain()
        client2.reset()
        await t2.app_config(w.u1, "theme")
        # u1's generation, never seen by this instance, is read or created with the MGET
        assert [c.names for c in client2.take()] == [["mget", "set"]]
        await t2.app_config(w.u1, "theme")
        print(f"\n[{t.mode}] L2 hit, warm generations: {[c.names for c in client2.calls]}")
        assert [c.names for c in client2.calls] == [["mget"]]
    else:
        rt, sql, shape = await measure(t, "L2 hit, warm generations", r.app_config(w.u1, "theme"))
        assert (rt, sql, shape) == (1, 0, [["mget"]])
    # L2 miss once the user's domain and all generations are known: 1 lookup + 1 fill
    await t.cache.invalidate_for_scope(USER, str(w.u1))
    rt, sql, shape = await measure(t, "L2 miss, warm generations", r.app_config(w.u1, "theme"))
    assert (rt, sql, shape) == (2, 1, [["mget"], ["set"]])
    # A shared scope changed but u1's own generation holds: the view is recomposed from
    # the outdated envelope and d1's shared part (one shared query, shared by d1's users);
    # the lookup, the fill, and one read of the shared generations that were requested
    # before u1's current generation was first seen (the public and name ones; d1's came
    # with the INCR reply, after it): a view must not pair a user part with an older
    # shared part
    await t.cache.invalidate_for_scope(DOMAIN, "d1")
    rt, sql, shape = await measure(t, "read after a domain bump", r.app_config(w.u1, "theme"))
    if t.l1:
        # The L1 entry's user part is reused: no lookup, no envelope. After the shared
        # query, one read of u1's generation (the refresh's pipeline; it may carry
        # shared generations and the server's identity too) shows the user part held.
        assert (rt, sql) == (2, 1)
        assert set(shape[0]) <= {"get", "info"} and shape[-1] == ["set"]
        assert t.cache.stats.l1_recomposed == 1
    else:
        assert (rt, sql, shape) == (3, 1, [["mget"], ["get", "get"], ["set"]])
        assert t.cache.stats.recomposed == 1


#: past the envelopes' TTL (600 s): L1 entries are past their hard limit too
AFTER_A_BREAK = 3600.0


async def expire_in_valkey(t: Tiers, uid: Any, *names: str) -> None:
    """What the envelopes' TTL does: the envelopes and the user_domain key are gone."""
    keys = [f"app_config:merged:{{{uid}}}:{name}" for name in names]
    await t.valkey.delete(*keys, f"app_config:user_domain:{{{uid}}}")


@standalone_shape_only
@pytest.mark.parametrize("process", ["same", "fresh", "fresh, user_domain kept"])
async def test_full_miss_of_a_returning_user_asks_valkey_once(seeded: Seeded, process: str) -> None:
    """The first read after a break: the user's L1 entry and envelope have both expired.

    A process that never read the user but finds Valkey's ``user_domain`` (and no
    envelope) reads that domain's generation in a second round trip, so that its fill
    can go under it: the one case with two round trips before the answer.
    """
    t, w = seeded
    assert t.cache is not None
    await t.repo.app_configs(w.u1, ["theme", "menu"])
    await t.cache.drain()
    t.clock.advance(AFTER_A_BREAK)
    await expire_in_valkey(t, w.u1, "theme", "menu")
    if process == "fresh, user_domain kept":
        await t.valkey.set(f"app_config:user_domain:{{{w.u1}}}", "d1")
    if process == "same":
        repo = t.repo
    else:  # a process that never read u1: its domain is unknown here
        t.extra.append(t.cache)  # closed at teardown with the others
        repo, t.cache, t.client, _clock = t.make_repo(local_maxsize=4096 if t.l1 else 0)
    rounds = 2 if process == "fresh, user_domain kept" else 1
    before, _rt, sql, _shape = await measure_answer(
        t, f"full miss, returning user ({process} process)", repo.app_config(w.u1, "theme")
    )
    assert (before, sql) == (rounds, 1)
    # filled when d1's generation was read before the query
    envelope = await t.valkey.get(f"app_config:merged:{{{w.u1}}}:theme")
    assert (envelope is not None) == (process != "fresh")
    assert await repo.app_config(w.u1, "theme") == await t.db.app_config(w.u1, "theme")
    # the batch path: one round trip before the answer (the domain is known by now)
    before, _rt, sql, _shape = await measure_answer(
        t, f"batch full miss, returning user ({process} process)",
        repo.app_configs(w.u1, ["menu"]),
    )  # fmt: skip
    assert (before, sql) == (1, 1)
    # this process knows u1's domain now: filled
    assert await t.valkey.get(f"app_config:merged:{{{w.u1}}}:menu") is not None


@standalone_shape_only
async def test_miss_of_a_new_user_asks_valkey_once(seeded: Seeded) -> None:
    """A user nobody has read: the lookup creates the user's generation (SET NX GET);
    the envelope is filled under the domain generation this process read for another
    user of the domain before the query."""
    t, w = seeded
    assert t.cache is not None
    await t.repo.app_config(w.u2, "theme")  # u2's domain is learnt here,
    await t.repo.app_config(w.u2, "menu")  # and d1's generation read here
    await t.cache.drain()
    new, batch = uuid4(), uuid4()
    await add_users(t.engine, {new: "d1", batch: "d1"})
    before, _rt, sql, shape = await measure_answer(
        t, "full miss, new user", t.repo.app_config(new, "theme")
    )
    assert (before, sql) == (1, 1)
    assert shape[0][:2] == ["mget", "set"]  # the lookup reads or creates u's generation
    assert shape[-1] == ["set", "set"]  # the envelope and the user_domain key
    before, _rt, sql, shape = await measure_answer(
        t, "batch full miss, new user", t.repo.app_configs(batch, ["theme", "menu"])
    )
    assert (before, sql) == (1, 1)
    # another process finds the envelopes current: an L2 hit, no SQL
    repo2, cache2, _client2, _clock2 = t.make_repo(local_maxsize=0)
    pairs = [(new, "theme"), (batch, "theme"), (batch, "menu")]
    with count_sql(t.engine, library_only=True) as sql2:
        views = [await repo2.app_config(uid, name) for uid, name in pairs]
    assert sql2.count == 0 and cache2.stats.l2_hits == 3
    assert views == [await t.db.app_config(uid, name) for uid, name in pairs]


@standalone_shape_only
async def test_fresh_process_reads_a_warm_envelope(seeded: Seeded) -> None:
    t, w = seeded
    await t.repo.app_config(w.u1, "theme")
    await t.cache.drain()  # type: ignore[union-attr]
    t.clock.advance(LOCAL_TTL)
    await t.repo.app_config(w.u1, "theme")
    await t.cache.drain()  # type: ignore[union-attr]
    repo, cache, client, _clock = t.make_repo(local_maxsize=0 if not t.l1 else 4096)
    with count_sql(t.engine, library_only=True) as sql:
        view = await repo.app_config(w.u1, "theme")
    shape = [call.names for call in client.calls]
    print(f"\n[{t.mode}] a fresh instance's L2 hit: {client.round_trips} round trips {shape}")
    assert view == await t.db.app_config(w.u1, "theme")
    assert sql.count == 0 and cache.stats.l2_hits == 1
    # the lookup with the due generations, then the domain's generation (read or created;
    # never the DB)
    assert client.round_trips == 2
    assert shape[1] == ["set"]


INVALIDATIONS: dict[str, Any] = {
    "user": lambda c, w: c.invalidate_for_scope(USER, str(w.u1)),
    "domain": lambda c, w: c.invalidate_for_scope(DOMAIN, "d1"),
    "domain_user_defaults": lambda c, w: c.invalidate_for_scope(DOMAIN_USER_DEFAULTS, "d1"),
    "public": lambda c, w: c.invalidate_for_scope(PUBLIC, "public"),
    "policy": lambda c, w: c.invalidate_for_policy("theme"),
}


@pytest.mark.parametrize("kind", list(INVALIDATIONS))
async def test_each_invalidation_is_one_round_trip(seeded: Seeded, kind: str) -> None:
    t, w = seeded
    assert t.cache is not None and t.client is not None
    for uid in w.users:  # something cached, so "whatever is cached" means something
        for name in w.names:
            await t.repo.app_config(uid, name)
    await t.cache.drain()
    before = await commandstats(t.valkey)
    rt, sql, shape = await measure(t, f"invalidate {kind}", INVALIDATIONS[kind](t.cache, w))
    delta = commandstats_delta(before, await commandstats(t.valkey))
    bumped = 2 if kind == "policy" else 1  # the name's generation and the policy list's
    assert (rt, sql) == (1, 0)
    assert shape == [["set", "incr"] * bumped]
    assert incr_calls(delta) == bumped
    assert not {"scan", "keys", "del", "unlink", "smembers"} & set(delta)


async def test_bulk_write_over_many_scopes_is_one_round_trip(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None and t.client is not None
    t.client.reset()
    result = await t.repo.admin_bulk_update(
        [
            fragment_input(PUBLIC, "public", "theme", {"a": 1}),
            fragment_input(DOMAIN, "d1", "theme", {"a": 2}),
            fragment_input(DOMAIN_USER_DEFAULTS, "d1", "theme", {"a": 3}),
            fragment_input(DOMAIN, "d2", "theme", {"a": 4}),
            fragment_input(USER, str(w.u1), "theme", {"a": 5}),
            fragment_input(PUBLIC, "public", "menu", {"a": 6}),
        ]
    )
    assert not result.failures
    shape = [call.names for call in t.client.calls]
    print(f"\n[{t.mode}] a bulk write touching 5 scopes (5 generations): {shape}")
    assert len(shape) == 1
    # public fragments are shared by everyone: their names' generations, not the public one
    assert sorted(t.client.commands("incr")) == sorted(
        [
            "app_config:gen:name:theme",
            "app_config:gen:name:menu",
            "app_config:gen:domain:d1",
            "app_config:gen:domain:d2",
            f"app_config:gen:user:{{{w.u1}}}",
        ]
    )


async def test_invalidation_cost_does_not_grow_with_what_is_cached(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None and t.client is not None
    members = {uuid4(): "d1" for _ in range(100)}
    await add_users(t.engine, members)
    for uid in members:
        await t.repo.app_configs(uid, list(w.names))
    await t.cache.drain()
    before = await commandstats(t.valkey)
    invalidation = t.cache.invalidate_for_scope(PUBLIC, "public")
    rt, _sql, shape = await measure(t, "invalidate public, 200 views cached", invalidation)
    delta = commandstats_delta(before, await commandstats(t.valkey))
    assert rt == 1 and shape == [["set", "incr"]]
    assert incr_calls(delta) == 1 and set(delta) <= {"set", "incr", "incrby"}


async def test_policy_change_round_trips(seeded: Seeded) -> None:
    t, w = seeded
    rt, sql, shape = await measure(t, "policy create", t.policies.create("extra", ALL_SCOPES))
    assert (rt, sql) == (1, 1)
    assert shape == [["set", "incr", "set", "incr"]]
    assert t.client is not None
    assert t.client.commands("incr") == ["app_config:gen:name:extra", "app_config:gen:policies"]
    rt, sql, _ = await measure(t, "policy update", t.policies.update("theme", [USER]))
    assert (rt, sql) == (1, 1)
    assert (await t.repo.app_config(w.u1, "theme")).fragments[0].scope_type is USER
