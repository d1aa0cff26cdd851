"""Hostile input (I7) on the cached configurations: refused before any I/O, kept in its
own keys; tampered envelopes are rejected."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import pytest

from appconfig_cache import (
    AppConfigData,
    InvalidConfigNameError,
    InvalidScopeError,
    InvalidUserIdError,
)
from tests.support.data import add_users
from tests.support.envelopes import join_envelope, split_envelope
from tests.support.fragments import fragment_input, raw_my_fragment
from tests.support.scopes import DOMAIN, DOMAIN_USER_DEFAULTS, PUBLIC, USER
from tests.support.sql import count_sql
from tests.support.valkey import commandstats, commandstats_delta

from .conftest import (
    Seeded,
    Tiers,
    every_pair,
    prime,
    reads_hit,
)

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
async def test_hostile_names_fail_before_any_io(seeded: Seeded, name: str) -> None:
    t, w = seeded
    assert t.cache is not None and t.client is not None
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
async def test_hostile_user_ids_fail_before_any_io(seeded: Seeded, user_id: Any) -> None:
    t, w = seeded
    assert t.cache is not None and t.client is not None
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
async def test_tampered_envelope_is_rejected(seeded: Seeded, tamper: str) -> None:
    t, w = seeded
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
