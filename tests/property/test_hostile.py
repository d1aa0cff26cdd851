"""Hostile input (I7): property tests over every user-controlled field.

For each field (config name, names lists, user id, scope type, scope id, config
content) Hypothesis draws hostile values: ``: { } * ? [ ] \\``, spaces, newlines,
NUL, other control characters, non-ASCII, 10 kB strings, ids that are not UUIDs,
values of the wrong type, near misses of the reference domains, and valid values.
The property is the same everywhere:

- either the call raises an ``AppConfigError`` subclass (or, for a bulk item, reports
  its stable failure code) and sent nothing: no SQL statement
  (``before_cursor_execute``) and no Valkey command (recorded where a command is
  packed for the wire, so pipelines and connection set-up count too);
- or it succeeds and stays isolated: the only generation it bumps is its own scope's,
  every key it touches is an ``app_config:`` key, nothing outside its own user slot is
  written, and three reference users in the domains ``ref``, ``ref:x`` and ``ref*``
  keep their views: L1 hits in the writing process, Valkey hits in a fresh one.

Tampered envelopes are in ``test_hostile_envelopes.py``; the oracle, the strategies and
the harness in ``hostile.py``.

pytest-asyncio runs ``@given`` on ``async def`` tests itself (each example on the
session loop), so the properties use the session's ``engine`` directly; the fixtures
are function-scoped, so examples share one data set and must leave it as they found it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from appconfig_cache import (
    AppConfigData,
    AppConfigError,
    AppConfigFragmentKey,
    AppConfigPolicyRepository,
)
from appconfig_cache.errors import (
    AppConfigValidationError,
    InvalidConfigNameError,
    InvalidScopeError,
    InvalidScopeSourcesError,
    InvalidUserIdError,
    TooManyItemsError,
)
from appconfig_cache.tiered import keys as cache_keys
from tests.support.clock import FakeClock
from tests.support.data import add_user
from tests.support.fragments import (
    domain_defaults_fragment,
    domain_fragment,
    raw_fragment_input,
    raw_fragment_key,
    raw_my_fragment,
)
from tests.support.scopes import DOMAIN, DOMAIN_USER_DEFAULTS, PUBLIC, USER

from .hostile import (
    LOCAL_TTL,
    MAX_BATCH_NAMES,
    MENU,
    POLICY_NAMES,
    PROPERTY,
    REF_DOMAINS,
    THEME,
    IsolationHarness,
    audit,
    canonical_uid,
    config_ok,
    domain_ok,
    hostile_configs,
    hostile_names,
    hostile_scopes,
    hostile_text,
    hostile_user_ids,
    name_ok,
    scope_type_of,
    valid_names,
)

# -- 1. domain scope ids: writes and invalidations stay in their own domain ---------------


@PROPERTY
@given(domain=hostile_text.filter(lambda d: d not in REF_DOMAINS))
async def test_hostile_domain_writes_stay_in_their_own_domain(
    harness: IsolationHarness, domain: str
) -> None:
    w = harness
    writer = w.cache()
    repo = w.repo(writer)
    try:
        await w.warm(writer)
        before = await w.ref_views()
        items = [
            domain_fragment(domain, THEME, {"hostile": domain}),
            domain_defaults_fragment(domain, THEME, {"hostile_defaults": domain}),
        ]
        keys = [item.key for item in items]
        event("accepted" if domain_ok(domain) else "refused")
        if not domain_ok(domain):
            for scope_type in (DOMAIN, DOMAIN_USER_DEFAULTS):
                out = await w.attempt(lambda t=scope_type: writer.invalidate_for_scope(t, domain))
                assert isinstance(out.error, InvalidScopeError), out
                out.assert_no_io()
            for call in (
                lambda: repo.admin_bulk_create(items),
                lambda: repo.admin_bulk_update(items),
                lambda: repo.admin_bulk_purge(keys),
            ):
                out = await w.attempt(call)
                assert out.error is None
                assert [f.code for f in out.result.failures] == ["invalid_scope"] * 2
                assert out.result.successes == []
                out.assert_no_io()
            await writer.drain()
            assert w.recorder.commands == []
            await w.assert_refs_untouched(writer, before)
            return

        own_gen = cache_keys.domain_gen_key(domain)
        assert own_gen not in {cache_keys.domain_gen_key(d) for d in REF_DOMAINS}
        await w.db_only.admin_bulk_purge(keys)  # left over by a failed example, if any
        member = await add_user(w.engine, domain=domain)

        # Create: the only bump is the hostile domain's own generation.
        out = await w.attempt(lambda: repo.admin_bulk_create(items))
        await writer.drain()
        assert out.error is None and out.result.failures == [], out.result.failures
        assert audit(out.commands, own_slot=None) == [own_gen]
        await w.assert_refs_untouched(writer, before)

        # The write reached its own domain: a member reads it, through both tiers.
        view = await repo.app_config(member, THEME)
        assert view == await w.db_only.app_config(member, THEME)
        assert view.config is not None
        assert view.config["hostile"] == domain and view.config["hostile_defaults"] == domain
        await writer.drain()

        # A bare invalidation of the domain: the same.
        out = await w.attempt(lambda: writer.invalidate_for_scope(DOMAIN, domain))
        assert out.error is None
        assert audit(out.commands, own_slot=None) == [own_gen]
        await w.assert_refs_untouched(writer, before)

        # Purge: the same again, and the member no longer sees the fragments (I2).
        out = await w.attempt(lambda: repo.admin_bulk_purge(keys))
        await writer.drain()
        assert out.error is None and len(out.result.successes) == 2
        assert audit(out.commands, own_slot=None) == [own_gen]
        await w.assert_refs_untouched(writer, before)
        view = await repo.app_config(member, THEME)
        assert view == await w.db_only.app_config(member, THEME)
        assert [f.scope_type for f in view.fragments] == [PUBLIC]
        assert writer.stats.envelopes_rejected == 0
    finally:
        await writer.aclose()


# -- 2. scope types and scope ids: a clear error first, or exactly one own bump ------------


@PROPERTY
@given(scope=hostile_scopes)
async def test_hostile_scopes_fail_first_or_bump_only_their_own_generation(
    harness: IsolationHarness, scope: tuple[Any, Any]
) -> None:
    w = harness
    scope_type, scope_id = scope
    kind = scope_type_of(scope_type)
    expected_gen: str | None = None
    if kind is PUBLIC and scope_id == "public":
        expected_gen = cache_keys.PUBLIC_GEN
    elif kind is USER and canonical_uid(scope_id) is not None:
        expected_gen = cache_keys.user_gen_key(canonical_uid(scope_id))  # type: ignore[arg-type]
    elif kind in (DOMAIN, DOMAIN_USER_DEFAULTS) and domain_ok(scope_id):
        expected_gen = cache_keys.domain_gen_key(scope_id)

    cache = w.cache()
    repo = w.repo(cache)
    policies = AppConfigPolicyRepository(w.engine, cache_source=cache)
    try:
        out = await w.attempt(lambda: cache.invalidate_for_scope(scope_type, scope_id))
        event("accepted" if expected_gen is not None else "refused")
        if expected_gen is None:
            assert isinstance(out.error, InvalidScopeError), out
            out.assert_no_io()
            # The same key in a bulk write fails that item, and nothing is sent.
            if kind is not None:
                scope_type = kind  # what pydantic would have made of it
            item = raw_fragment_input(scope_type, scope_id, THEME, {"a": 1})
            key = raw_fragment_key(scope_type, scope_id, THEME)
            for call in (
                lambda: repo.admin_bulk_create([item]),
                lambda: repo.admin_bulk_update([item]),
                lambda: repo.admin_bulk_purge([key]),
            ):
                out = await w.attempt(call)
                assert out.error is None
                assert [f.code for f in out.result.failures] == ["invalid_scope"]
                out.assert_no_io()
        else:
            assert out.error is None
            assert audit(out.commands, own_slot=None) == [expected_gen]
            assert cache.stats.pending_bumps == 0
        if kind is None:
            # An unknown scope type in a policy chain: refused before any I/O.
            out = await w.attempt(lambda: policies.create("hostile", [scope_type]))
            assert isinstance(out.error, InvalidScopeSourcesError), out
            out.assert_no_io()
        await cache.drain()
    finally:
        await cache.aclose()


# -- 3. user ids ------------------------------------------------------------------------


@PROPERTY
@given(data=st.data())
async def test_hostile_user_ids_fail_first_or_read_only_their_own_user(
    harness: IsolationHarness, data: st.DataObject
) -> None:
    w = harness
    user_id = data.draw(hostile_user_ids(w.refs.values()), label="user_id")
    uid = canonical_uid(user_id)
    cache = w.cache()
    repo = w.repo(cache)
    try:
        await w.warm(cache)
        before = await w.ref_views()
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: repo.app_config(user_id, THEME),
            lambda: repo.app_configs(user_id, [THEME, MENU]),
            lambda: repo.my_app_configs(user_id),
            lambda: cache.get_merged_config(user_id, THEME),
            lambda: repo.bulk_create_my(user_id, [raw_my_fragment(MENU, {"x": 1})]),
            lambda: repo.bulk_update_my(user_id, [raw_my_fragment(THEME, {"x": 1})]),
            lambda: cache.invalidate_for_scope(USER, user_id),
        ]
        event("accepted" if uid is not None else "refused")
        if uid is None:
            for call in calls:
                out = await w.attempt(call)
                assert isinstance(out.error, InvalidUserIdError | InvalidScopeError), out
                out.assert_no_io()
            await cache.drain()
            await w.assert_refs_untouched(cache, before)
            return

        # A valid spelling reads exactly the canonical user's views.
        for call in calls[:4]:
            out = await w.attempt(call)
            await cache.drain()
            assert out.error is None
            audit(out.commands, own_slot=uid)
        expected = await w.db_only.app_config(uid, THEME)
        assert await repo.app_config(user_id, THEME) == expected
        assert expected.user_id == uid
        assert [v.name for v in await repo.app_configs(user_id, [THEME, MENU])] == [THEME, MENU]
        got = await cache.get_merged_config(user_id, THEME)
        assert got is None or got == expected
        # Its invalidation bumps that user's generation and nothing else.
        out = await w.attempt(lambda: cache.invalidate_for_scope(USER, user_id))
        assert out.error is None
        assert audit(out.commands, own_slot=None) == [cache_keys.user_gen_key(uid)]
        others = {k: v for k, v in before.items() if k != uid}
        await w.assert_refs_untouched(cache, others)
    finally:
        await cache.aclose()


# -- 4. config names and names lists ----------------------------------------------------


@PROPERTY
@given(name=hostile_names.filter(lambda n: n not in POLICY_NAMES))
async def test_hostile_names_fail_first_or_stay_in_their_own_name(
    harness: IsolationHarness, name: Any
) -> None:
    w = harness
    uid = w.refs["ref"]
    cache = w.cache()
    repo = w.repo(cache)
    policies = AppConfigPolicyRepository(w.engine, cache_source=cache)
    try:
        await w.warm(cache)
        before = await w.ref_views()
        reads: list[Callable[[], Awaitable[Any]]] = [
            lambda: repo.app_config(uid, name),
            lambda: repo.app_configs(uid, [name]),
            lambda: repo.app_configs(uid, [THEME, name]),
            lambda: cache.get_merged_config(uid, name),
            lambda: policies.get(name),
        ]
        event("accepted" if name_ok(name) else "refused")
        if not name_ok(name):
            for call in [
                *reads,
                lambda: cache.invalidate_for_policy(name),
                lambda: policies.create(name, [PUBLIC]),
                lambda: policies.update(name, [PUBLIC]),
                lambda: policies.purge(name),
            ]:
                out = await w.attempt(call)
                assert isinstance(out.error, InvalidConfigNameError), out
                out.assert_no_io()
            for call in (
                lambda: repo.bulk_create_my(uid, [raw_my_fragment(name, {"a": 1})]),
                lambda: repo.admin_bulk_create(
                    [raw_fragment_input(PUBLIC, "public", name, {"a": 1})]
                ),
                lambda: repo.admin_bulk_purge([raw_fragment_key(USER, str(uid), name)]),
            ):
                out = await w.attempt(call)
                assert out.error is None
                assert [f.code for f in out.result.failures] == ["invalid_name"]
                out.assert_no_io()
            await cache.drain()
            await w.assert_refs_untouched(cache, before)
            return

        # A valid name without a policy: an empty view, never cached, never another's.
        for call in reads:
            out = await w.attempt(call)
            await cache.drain()
            assert out.error is None
            audit(out.commands, own_slot=uid)
        view = await repo.app_config(uid, name)
        assert view == AppConfigData(user_id=uid, name=name)
        assert await w.direct.exists(cache_keys.merged_key(uid, name)) == 0
        # Its policy invalidation bumps its own name and the policy list, nothing else.
        out = await w.attempt(lambda: cache.invalidate_for_policy(name))
        assert out.error is None
        assert sorted(audit(out.commands, own_slot=None)) == sorted(
            [cache_keys.name_gen_key(name), cache_keys.POLICIES_GEN]
        )
        await w.assert_refs_untouched(cache, before)
    finally:
        await cache.aclose()


@PROPERTY
@given(
    names=st.lists(
        st.sampled_from(POLICY_NAMES) | valid_names | hostile_names, min_size=0, max_size=8
    )
    | st.lists(st.sampled_from(POLICY_NAMES), min_size=MAX_BATCH_NAMES + 1, max_size=300)
    | st.text(max_size=8)
)
async def test_hostile_names_lists(harness: IsolationHarness, names: Any) -> None:
    w = harness
    uid = w.refs["ref:x"]
    cache = w.cache()
    repo = w.repo(cache)
    try:
        out = await w.attempt(lambda: repo.app_configs(uid, names))
        await cache.drain()
        if isinstance(names, str):
            assert isinstance(out.error, AppConfigValidationError), out
            out.assert_no_io()
        elif len(names) > MAX_BATCH_NAMES:
            assert isinstance(out.error, TooManyItemsError), out
            out.assert_no_io()
        elif not all(name_ok(n) for n in names):
            # One bad name fails the whole batch before any tier is asked.
            assert isinstance(out.error, InvalidConfigNameError), out
            out.assert_no_io()
        else:
            assert out.error is None
            audit(out.commands, own_slot=uid)
            views = out.result
            assert [v.name for v in views] == names
            assert all(v.user_id == uid for v in views)
            for view in views:
                assert view == await w.db_only.app_config(uid, view.name)
            assert out.statements <= 1  # one SQL statement for every missing name
    finally:
        await cache.aclose()


# -- 5. config content ------------------------------------------------------------------


@PROPERTY
@given(config=hostile_configs)
async def test_hostile_configs_fail_first_or_round_trip_in_their_own_user(
    harness: IsolationHarness, config: Any
) -> None:
    w = harness
    uid = w.writer_uid
    cache = w.cache()
    repo = w.repo(cache)
    try:
        await w.warm(cache)
        await repo.app_config(uid, THEME)  # the writer's own view is cached too
        await cache.drain()
        before = await w.ref_views()
        out = await w.attempt(lambda: repo.bulk_update_my(uid, [raw_my_fragment(THEME, config)]))
        await cache.drain()
        assert out.error is None
        event("accepted" if config_ok(config) else "refused")
        if not config_ok(config):
            assert [f.code for f in out.result.failures] == ["invalid_config"], out.result
            out.assert_no_io()
            item = raw_fragment_input(USER, str(uid), THEME, config)
            out = await w.attempt(lambda: repo.admin_bulk_update([item]))
            assert [f.code for f in out.result.failures] == ["invalid_config"]
            out.assert_no_io()
            await w.assert_refs_untouched(cache, before)
            return

        assert out.result.failures == []
        # The only bump is the writer's own user generation; fills stay in its slot.
        assert audit(out.commands, own_slot=uid) == [cache_keys.user_gen_key(uid)]
        expected = await w.db_only.app_config(uid, THEME)
        assert out.result.successes == [expected]
        own = [f for f in expected.fragments if f.scope_type is USER]
        assert own[0].config == json.loads(json.dumps(config))  # stored exactly as given
        # Through the envelope: a fresh Valkey-only process hits it and decodes it equal.
        view, stats = await w.fresh_read(uid, THEME)
        assert view == expected
        assert stats.l2_hits == 1 and stats.db_loads == 0, stats
        assert stats.envelopes_rejected == 0
        await w.assert_refs_untouched(cache, before)
    finally:
        await cache.aclose()


# -- 7. bugs found here -------------------------------------------------------------------


async def test_lone_surrogate_domain_is_refused_before_any_io(harness: IsolationHarness) -> None:
    w = harness
    cache = w.cache()
    repo = w.repo(cache)
    try:
        hostile = "ref\ud800"
        out = await w.attempt(lambda: repo.admin_bulk_create([domain_fragment(hostile, THEME, {})]))
        assert [f.code for f in out.result.failures] == ["invalid_scope"], out.result.failures
        out.assert_no_io()
        out = await w.attempt(lambda: cache.invalidate_for_scope(DOMAIN, hostile))
        assert isinstance(out.error, InvalidScopeError), out
        out.assert_no_io()
    finally:
        await cache.aclose()


async def test_one_hostile_domain_id_does_not_switch_valkey_off(harness: IsolationHarness) -> None:
    w = harness
    clock = FakeClock()
    cooldown = 5.0
    cache = w.cache(timer=clock, breaker_cooldown=cooldown)
    repo = w.repo(cache)
    try:
        await w.warm(cache)
        with contextlib.suppress(AppConfigError):  # refusing it is the fix
            await cache.invalidate_for_scope(DOMAIN, "x\ud800")
        for _ in range(3):
            clock.advance(cooldown + LOCAL_TTL)
            for uid in w.refs.values():
                assert await repo.app_config(uid, THEME) == await w.db_only.app_config(uid, THEME)
            await cache.drain()
        stats = cache.stats
        assert stats.pending_bumps == 0, stats
        # Valkey still answers: lookups, or the generation reads that renew L1 entries
        assert stats.l2_skipped == 0 and stats.l2_hits + stats.gen_refreshes > 0, stats
    finally:
        await cache.aclose()


@pytest.mark.parametrize("names", [None, 3, "generator"])
async def test_names_that_are_not_a_list_get_a_clear_error(
    harness: IsolationHarness, names: Any
) -> None:
    if names == "generator":
        names = (n for n in [THEME])
    repo = harness.repo(None)
    out = await harness.attempt(lambda: repo.app_configs(harness.refs["ref"], names))
    assert isinstance(out.error, AppConfigValidationError)
    out.assert_no_io()


def test_fragment_key_refuses_an_unknown_scope_type_at_construction() -> None:
    """The pydantic models are the first line: an unknown scope type never reaches I/O.

    (Their error is pydantic's ``ValidationError``, a ``ValueError``, not an
    ``AppConfigError``; the library's own check answers for ``model_construct`` input.)
    """
    with pytest.raises(ValueError):
        AppConfigFragmentKey(scope_type="nope", scope_id="x", name=THEME)  # type: ignore[arg-type]
