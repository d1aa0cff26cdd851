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


@standalone_shape_only
async def test_read_round_trips(seeded: Seeded) -> None:
    t, w = seeded
    r = t.repo
    # a process's very first read of a user: lookup, create the generations, fill user_domain
    rt, sql, shape = await measure(t, "first read, nothing anywhere", r.app_config(w.u1, "theme"))
    assert (rt, sql) == (3, 1)
    assert shape[0][0] == "mget" and shape[-1] == ["set"]  # the fill: user_domain only
    assert await t.valkey.get(f"app_config:user_domain:{{{w.u1}}}") == b"d1"
    t.clock.advance(LOCAL_TTL)
    # now the domain is known: lookup (+ its generation), create it, fill the envelope
    rt, sql, _ = await measure(t, "second cold read", r.app_config(w.u1, "theme"))
    assert (rt, sql) == (3, 1)
    t.clock.advance(LOCAL_TTL)
    label = "L1 renewal, generations due" if t.l1 else "L2 hit, generations due"
    rt, sql, shape = await measure(t, label, r.app_config(w.u1, "theme"))
    assert (rt, sql) == (1, 0)
    # one pipeline: the MGET, the due generations and the server's identity (INFO server);
    # with L1, the expired entry is renewed by that pipeline without the MGET
    assert shape[0][0] == ("get" if t.l1 else "mget") and set(shape[0][1:]) <= {"get", "info"}
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
    # the lookup with the due generations, then the domain's generation (never the DB)
    assert client.round_trips == 2
    assert shape[1] == ["get"]


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
