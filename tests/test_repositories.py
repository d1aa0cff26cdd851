"""The DB-only repositories: bulk verbs with partial success, the policy lifecycle, batch
reads, and the one-statement merged view. All against the real PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    AppConfigScopeType,
    BulkFailure,
    PolicyAlreadyExistsError,
    PolicyInUseError,
    PolicyNotFoundError,
    TooManyItemsError,
)
from appconfig_cache.repositories.app_config_fragment.repository import MAX_BATCH_NAMES
from tests.support.data import add_policy, add_user, fragment_rows, table_snapshot
from tests.support.fragments import (
    domain_defaults_fragment,
    domain_fragment,
    fragment_input,
    fragment_key,
    my_fragment,
    public_fragment,
    raw_fragment_input,
    raw_fragment_key,
    raw_my_fragment,
    user_fragment,
)
from tests.support.scopes import DOMAIN, DOMAIN_USER_DEFAULTS, PUBLIC, USER
from tests.support.sql import count_sql


@pytest.fixture
def repo(engine: AsyncEngine) -> AppConfigFragmentRepository:
    return AppConfigFragmentRepository(engine)


@pytest.fixture
def policies(engine: AsyncEngine) -> AppConfigPolicyRepository:
    return AppConfigPolicyRepository(engine)


def _codes(failures: list[BulkFailure]) -> list[tuple[int, str]]:
    return [(f.index, f.code) for f in failures]


async def _standard_policies(engine: AsyncEngine) -> None:
    """theme, menu: every scope; public_only: public; domain_only: both domain scopes."""
    await add_policy(engine, "theme", (PUBLIC, DOMAIN, DOMAIN_USER_DEFAULTS, USER))
    await add_policy(engine, "menu", (PUBLIC, USER))
    await add_policy(engine, "public_only", (PUBLIC,))
    await add_policy(engine, "domain_only", (DOMAIN, DOMAIN_USER_DEFAULTS))


# -- bulk_create_my / bulk_update_my ----------------------------------------------------


async def test_bulk_create_my_partial_success(
    engine: AsyncEngine, repo: AppConfigFragmentRepository
) -> None:
    await _standard_policies(engine)
    uid = await add_user(engine, domain="d1")
    await repo.admin_bulk_create([public_fragment("theme", {"base": 1, "ui": {"x": 1}})])

    result = await repo.bulk_create_my(
        uid,
        [
            my_fragment("theme", {"ui": {"y": 2}}),  # 0 ok
            my_fragment("nopolicy", {"a": 1}),  # 1
            my_fragment("public_only", {"a": 1}),  # 2
            my_fragment("theme", {"second": True}),  # 3: item 0 created it
            raw_my_fragment("1theme", {"a": 1}),  # 4
            my_fragment("menu", {"nan": float("nan")}),  # 5
            my_fragment("menu", {"m": [1, 2]}),  # 6 ok
            "not an input",  # type: ignore[list-item]  # 7
        ],
    )

    assert _codes(result.failures) == [
        (1, "policy_not_found"),
        (2, "scope_not_allowed"),
        (3, "already_exists"),
        (4, "invalid_name"),
        (5, "invalid_config"),
        (7, "invalid_input"),
    ]
    assert all(f.message for f in result.failures)
    assert [v.name for v in result.successes] == ["theme", "menu"]
    # the recomputed merged views, equal to what a read returns now
    assert result.successes == await repo.app_configs(uid, ["theme", "menu"])
    assert result.successes[0].config == {"base": 1, "ui": {"x": 1, "y": 2}}
    assert result.successes[1].config == {"m": [1, 2]}

    rows = [r for r in await fragment_rows(engine) if r["scope_type"] == "user"]
    assert [(r["scope_id"], r["name"], r["config"]) for r in rows] == [
        (str(uid), "menu", {"m": [1, 2]}),
        (str(uid), "theme", {"ui": {"y": 2}}),  # item 3 did not overwrite
    ]


async def test_bulk_update_my_partial_success_replaces_wholesale(
    engine: AsyncEngine, repo: AppConfigFragmentRepository
) -> None:
    await _standard_policies(engine)
    uid = await add_user(engine, domain="d1")
    other = await add_user(engine, domain="d1")
    await repo.admin_bulk_create([domain_fragment("d1", "theme", {"d": 1})])
    created = await repo.bulk_create_my(uid, [my_fragment("theme", {"a": 1, "ui": {"b": 2}})])
    await repo.bulk_create_my(other, [my_fragment("menu", {"other": True})])
    before = created.successes[0].fragments[-1]

    result = await repo.bulk_update_my(
        uid,
        [
            my_fragment("menu", {"x": 1}),  # 0: only `other` has a menu fragment
            my_fragment("theme", {"ui": {"c": 3}}),  # 1 ok
            my_fragment("nopolicy", {}),  # 2
            my_fragment("public_only", {}),  # 3
            raw_my_fragment("theme", ["not", "an", "object"]),  # 4
        ],
    )

    assert _codes(result.failures) == [
        (0, "not_found"),
        (2, "policy_not_found"),
        (3, "scope_not_allowed"),
        (4, "invalid_config"),
    ]
    assert len(result.successes) == 1
    view = result.successes[0]
    assert view == await repo.app_config(uid, "theme")
    assert view.config == {"d": 1, "ui": {"c": 3}}  # the old "a" and ui.b are gone
    after = view.fragments[-1]
    assert after.id == before.id
    assert after.created_at == before.created_at
    assert after.updated_at >= before.updated_at
    assert after.config == {"ui": {"c": 3}}
    assert (await repo.app_config(other, "menu")).config == {"other": True}


async def test_bulk_my_with_only_failures_returns_no_views(
    engine: AsyncEngine, repo: AppConfigFragmentRepository
) -> None:
    await _standard_policies(engine)
    uid = await add_user(engine)
    before = await table_snapshot(engine)
    items = [my_fragment("nopolicy", {"a": 1}), my_fragment("public_only", {"a": 1})]
    for verb in (repo.bulk_create_my, repo.bulk_update_my):
        result = await verb(uid, items)
        assert result.successes == []
        assert _codes(result.failures) == [(0, "policy_not_found"), (1, "scope_not_allowed")]
    result = await repo.bulk_update_my(uid, [my_fragment("theme", {"a": 1})])
    assert (result.successes, _codes(result.failures)) == ([], [(0, "not_found")])
    assert await table_snapshot(engine) == before


async def test_bulk_my_on_empty_list(
    engine: AsyncEngine, repo: AppConfigFragmentRepository
) -> None:
    uid = await add_user(engine)
    with count_sql(engine) as log:
        assert (await repo.bulk_create_my(uid, [])).successes == []
        assert (await repo.bulk_update_my(uid, [])).failures == []
        assert (await repo.admin_bulk_purge([])).successes == []
    assert log.count == 0


# -- admin verbs ------------------------------------------------------------------------


async def test_admin_bulk_create_partial_success(
    engine: AsyncEngine, repo: AppConfigFragmentRepository
) -> None:
    await _standard_policies(engine)
    uid = uuid.uuid4()
    result = await repo.admin_bulk_create(
        [
            public_fragment("theme", {"p": 1}),  # 0 ok
            domain_fragment("d1", "theme", {"d": 1}),  # 1 ok
            domain_defaults_fragment("d1", "theme", {"dud": 1}),  # 2 ok
            user_fragment(uid, "theme", {"u": 1}),  # 3 ok
            public_fragment("theme", {"again": 1}),  # 4
            public_fragment("nopolicy", {}),  # 5
            user_fragment(uid, "public_only", {}),  # 6
            fragment_input(PUBLIC, "not-public", "theme", {}),  # 7
            fragment_input(USER, "not-a-uuid", "theme", {}),  # 8
            raw_fragment_input("nope", "x", "theme", {}),  # 9
            raw_fragment_input(PUBLIC, "public", "bad name", {}),  # 10
            raw_fragment_input(PUBLIC, "public", "menu", {"x": float("inf")}),  # 11
            my_fragment("theme", {}),  # type: ignore[list-item]  # 12: wrong input type
            domain_fragment("d2", "domain_only", {"d2": 1}),  # 13 ok
        ]
    )

    assert _codes(result.failures) == [
        (4, "already_exists"),
        (5, "policy_not_found"),
        (6, "scope_not_allowed"),
        (7, "invalid_scope"),
        (8, "invalid_scope"),
        (9, "invalid_scope"),
        (10, "invalid_name"),
        (11, "invalid_config"),
        (12, "invalid_input"),
    ]
    assert [(f.scope_type, f.scope_id, f.name, f.config) for f in result.successes] == [
        (PUBLIC, "public", "theme", {"p": 1}),
        (DOMAIN, "d1", "theme", {"d": 1}),
        (DOMAIN_USER_DEFAULTS, "d1", "theme", {"dud": 1}),
        (USER, str(uid), "theme", {"u": 1}),
        (DOMAIN, "d2", "domain_only", {"d2": 1}),
    ]
    rows = await fragment_rows(engine)
    assert sorted((r["id"], r["config"]) for r in rows) == sorted(
        (f.id, f.config) for f in result.successes
    )


async def test_admin_bulk_update_partial_success(
    engine: AsyncEngine, repo: AppConfigFragmentRepository, policies: AppConfigPolicyRepository
) -> None:
    await _standard_policies(engine)
    uid = uuid.uuid4()
    created = await repo.admin_bulk_create(
        [public_fragment("theme", {"p": 1, "keep?": "no"}), user_fragment(uid, "menu", {"u": 1})]
    )
    assert created.failures == []
    await policies.update("menu", [PUBLIC])  # the user scope is no longer allowed for menu

    result = await repo.admin_bulk_update(
        [
            public_fragment("menu", {}),  # 0: no such fragment
            public_fragment("theme", {"p": 2}),  # 1 ok
            user_fragment(uid, "menu", {"u": 2}),  # 2: scope dropped from the chain
            public_fragment("nopolicy", {}),  # 3
            fragment_input(DOMAIN, "", "theme", {}),  # 4
            raw_fragment_input(PUBLIC, "public", "theme", "{}"),  # 5
        ]
    )

    assert _codes(result.failures) == [
        (0, "not_found"),
        (2, "scope_not_allowed"),
        (3, "policy_not_found"),
        (4, "invalid_scope"),
        (5, "invalid_config"),
    ]
    [updated] = result.successes
    assert updated.id == created.successes[0].id
    assert updated.config == {"p": 2}
    rows = {(r["scope_type"], r["name"]): r["config"] for r in await fragment_rows(engine)}
    assert rows == {("public", "theme"): {"p": 2}, ("user", "menu"): {"u": 1}}


async def test_admin_bulk_purge_partial_success(
    engine: AsyncEngine, repo: AppConfigFragmentRepository
) -> None:
    await _standard_policies(engine)
    uid = uuid.uuid4()
    created = await repo.admin_bulk_create(
        [
            public_fragment("theme", {"p": 1}),
            domain_fragment("d1", "theme", {"d": 1}),
            user_fragment(uid, "theme", {"u": 1}),
        ]
    )
    by_scope = {f.scope_type: f for f in created.successes}

    result = await repo.admin_bulk_purge(
        [
            fragment_key(DOMAIN, "d1", "theme"),  # 0 ok
            fragment_key(DOMAIN, "d2", "theme"),  # 1
            fragment_key(PUBLIC, "public", "nopolicy"),  # 2
            fragment_key(USER, str(uid).upper(), "theme"),  # 3 ok: the id is normalised
            fragment_key(DOMAIN, "d1", "theme"),  # 4: item 0 purged it
            raw_fragment_key(PUBLIC, "public", "no spaces"),  # 5
            fragment_key(PUBLIC, "PUBLIC", "theme"),  # 6
            public_fragment("theme", {}),  # type: ignore[list-item]  # 7: not a key
        ]
    )

    assert _codes(result.failures) == [
        (1, "not_found"),
        (2, "not_found"),
        (4, "not_found"),
        (5, "invalid_name"),
        (6, "invalid_scope"),
        (7, "invalid_input"),
    ]
    assert result.successes == [by_scope[DOMAIN], by_scope[USER]]
    assert [(r["scope_type"], r["name"]) for r in await fragment_rows(engine)] == [
        ("public", "theme")
    ]


async def test_admin_and_my_writes_meet_on_the_same_key(
    engine: AsyncEngine, repo: AppConfigFragmentRepository
) -> None:
    await _standard_policies(engine)
    uid = await add_user(engine)
    await repo.admin_bulk_create([fragment_input(USER, str(uid).upper(), "theme", {"a": 1})])
    mine = await repo.bulk_create_my(uid, [my_fragment("theme", {"b": 2})])
    assert _codes(mine.failures) == [(0, "already_exists")]
    updated = await repo.bulk_update_my(uid, [my_fragment("theme", {"b": 2})])
    assert updated.successes[0].config == {"b": 2}
    assert [r["scope_id"] for r in await fragment_rows(engine)] == [str(uid)]


# -- required-policy invariant ----------------------------------------------------------


async def test_required_policy_invariant(
    engine: AsyncEngine, repo: AppConfigFragmentRepository, policies: AppConfigPolicyRepository
) -> None:
    uid = await add_user(engine)
    # no policy at all: every scope fails, for every write verb
    for scope_type, scope_id in (
        (PUBLIC, "public"),
        (DOMAIN, "d1"),
        (DOMAIN_USER_DEFAULTS, "d1"),
        (USER, str(uid)),
    ):
        item = fragment_input(scope_type, scope_id, "theme", {"a": 1})
        assert _codes((await repo.admin_bulk_create([item])).failures) == [(0, "policy_not_found")]
        assert _codes((await repo.admin_bulk_update([item])).failures) == [(0, "policy_not_found")]
    assert _codes((await repo.bulk_create_my(uid, [my_fragment("theme", {})])).failures) == [
        (0, "policy_not_found")
    ]
    assert await fragment_rows(engine) == []

    # a policy allows exactly the scopes of its chain
    await policies.create("theme", [DOMAIN, USER])
    result = await repo.admin_bulk_create(
        [
            public_fragment("theme", {}),
            domain_fragment("d1", "theme", {}),
            domain_defaults_fragment("d1", "theme", {}),
            user_fragment(uid, "theme", {}),
        ]
    )
    assert _codes(result.failures) == [(0, "scope_not_allowed"), (2, "scope_not_allowed")]
    assert "public" in result.failures[0].message

    # dropping a scope from the chain refuses new writes there, but not purges
    await policies.update("theme", [DOMAIN])
    assert _codes((await repo.bulk_update_my(uid, [my_fragment("theme", {"x": 1})])).failures) == [
        (0, "scope_not_allowed")
    ]
    purged = await repo.admin_bulk_purge([fragment_key(USER, str(uid), "theme")])
    assert purged.failures == []
    assert [(r["scope_type"], r["config"]) for r in await fragment_rows(engine)] == [("domain", {})]


async def test_schema_refuses_a_fragment_without_policy(engine: AsyncEngine) -> None:
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO app_config_fragments (id, scope_type, scope_id, name, config) "
                    "VALUES (gen_random_uuid(), 'public', 'public', 'orphan', '{}')"
                )
            )


# -- policies ---------------------------------------------------------------------------


async def test_policy_create_get_update(policies: AppConfigPolicyRepository) -> None:
    assert await policies.get("theme") is None
    created = await policies.create("theme", ["public", AppConfigScopeType.USER])
    assert created.config_name == "theme"
    assert created.scope_sources == (PUBLIC, USER)
    assert await policies.get("theme") == created

    updated = await policies.update("theme", [USER, DOMAIN, PUBLIC])
    assert updated.id == created.id
    assert updated.created_at == created.created_at
    assert updated.updated_at >= created.updated_at
    assert updated.scope_sources == (USER, DOMAIN, PUBLIC)
    assert await policies.get("theme") == updated


async def test_policy_create_twice_raises(
    engine: AsyncEngine, policies: AppConfigPolicyRepository
) -> None:
    first = await policies.create("theme", [PUBLIC])
    with pytest.raises(PolicyAlreadyExistsError):
        await policies.create("theme", [USER])
    assert await policies.get("theme") == first


async def test_policy_update_and_purge_of_missing_policy_raise(
    engine: AsyncEngine, policies: AppConfigPolicyRepository
) -> None:
    with pytest.raises(PolicyNotFoundError):
        await policies.update("ghost", [PUBLIC])
    with pytest.raises(PolicyNotFoundError):
        await policies.purge("ghost")
    assert await policies.get("ghost") is None
    assert (await table_snapshot(engine))["app_config_policies"] == []


async def test_policy_purge_refused_while_referenced(
    engine: AsyncEngine, repo: AppConfigFragmentRepository, policies: AppConfigPolicyRepository
) -> None:
    policy = await policies.create("theme", [PUBLIC, USER])
    await policies.create("menu", [PUBLIC])
    uid = uuid.uuid4()
    await repo.admin_bulk_create(
        [public_fragment("theme", {"a": 1}), user_fragment(uid, "theme", {"b": 1})]
    )
    before = await table_snapshot(engine)

    with pytest.raises(PolicyInUseError):
        await policies.purge("theme")
    assert await table_snapshot(engine) == before
    assert await policies.get("theme") == policy

    # one fragment left still blocks
    await repo.admin_bulk_purge([fragment_key(PUBLIC, "public", "theme")])
    with pytest.raises(PolicyInUseError):
        await policies.purge("theme")

    await repo.admin_bulk_purge([fragment_key(USER, str(uid), "theme")])
    await policies.purge("theme")
    assert await policies.get("theme") is None
    assert await policies.get("menu") is not None  # only that policy went
    with pytest.raises(PolicyNotFoundError):
        await policies.purge("theme")

    # after the purge the name has no policy again: an empty view and refused writes
    assert (await repo.app_config(uid, "theme")).fragments == ()
    failures = (await repo.admin_bulk_create([public_fragment("theme", {})])).failures
    assert _codes(failures) == [(0, "policy_not_found")]


# -- reads ------------------------------------------------------------------------------


async def _read_fixture(engine: AsyncEngine, repo: AppConfigFragmentRepository) -> uuid.UUID:
    """A user in d1 with fragments at every scope of five names."""
    uid = await add_user(engine, domain="d1")
    items = []
    for n in range(5):
        name = f"doc{n}"
        await add_policy(engine, name)
        items += [
            public_fragment(name, {"n": n, "s": "public"}),
            domain_fragment("d1", name, {"s": "domain"}),
            domain_defaults_fragment("d1", name, {"dud": True}),
            user_fragment(uid, name, {"u": [n]}),
        ]
    assert (await repo.admin_bulk_create(items)).failures == []
    return uid


async def test_app_config_issues_exactly_one_statement(
    engine: AsyncEngine, repo: AppConfigFragmentRepository
) -> None:
    uid = await _read_fixture(engine, repo)
    await repo.app_config(uid, "doc0")  # warm-up: the pool and the dialect's setup queries

    with count_sql(engine) as log:
        view = await repo.app_config(uid, "doc1")
    assert log.count == 1, log.statements
    assert "app_config_fragments" in log.statements[0]
    assert "users" in log.statements[0]
    assert "app_config_policies" in log.statements[0]
    assert view.config == {"n": 1, "s": "domain", "dud": True, "u": [1]}
    assert len(view.fragments) == 4

    with count_sql(engine) as log:
        views = await repo.app_configs(uid, [f"doc{n}" for n in range(5)])
    assert log.count == 1, log.statements
    assert [v.config["n"] for v in views if v.config] == [0, 1, 2, 3, 4]
    assert all(len(v.fragments) == 4 for v in views)

    # a user without a users row and a name without a policy: still one statement
    with count_sql(engine) as log:
        await repo.app_config(uuid.uuid4(), "nopolicy")
    assert log.count == 1, log.statements


async def test_the_statement_counter_sees_every_statement(
    engine: AsyncEngine, repo: AppConfigFragmentRepository
) -> None:
    # the counter is the proof above: it must count more than one when there is more
    uid = await _read_fixture(engine, repo)
    await repo.app_config(uid, "doc0")
    with count_sql(engine) as log:
        await repo.app_config(uid, "doc0")
        await repo.app_config(uid, "doc1")
        await repo.my_app_configs(uid)  # the policy names, then the views
    assert log.count == 4, log.statements


async def test_app_configs_keeps_input_order_and_answers_duplicates(
    engine: AsyncEngine, repo: AppConfigFragmentRepository
) -> None:
    uid = await _read_fixture(engine, repo)
    names = ["doc3", "nopolicy", "doc0", "doc3", "doc4", "doc0"]
    await repo.app_config(uid, "doc0")

    with count_sql(engine) as log:
        views = await repo.app_configs(uid, names)
    assert log.count == 1

    assert [v.name for v in views] == names
    assert views[0] == views[3] == await repo.app_config(uid, "doc3")
    assert views[2] == views[5] == await repo.app_config(uid, "doc0")
    assert views[1].fragments == () and views[1].config is None
    assert all(v.user_id == uid for v in views)


async def test_app_configs_bounds(engine: AsyncEngine, repo: AppConfigFragmentRepository) -> None:
    uid = await add_user(engine)
    await repo.app_config(uid, "warm")
    with count_sql(engine) as log:
        assert await repo.app_configs(uid, []) == []
        with pytest.raises(TooManyItemsError):
            await repo.app_configs(uid, [f"n{i}" for i in range(MAX_BATCH_NAMES + 1)])
    assert log.count == 0

    views = await repo.app_configs(uid, [f"n{i}" for i in range(MAX_BATCH_NAMES)])
    assert len(views) == MAX_BATCH_NAMES


async def test_my_app_configs_lists_only_views_with_fragments(
    engine: AsyncEngine, repo: AppConfigFragmentRepository
) -> None:
    uid = await add_user(engine, domain="d1")
    stranger = await add_user(engine, domain="d2")
    for name in ("a_public", "b_nothing", "c_mine", "d_empty", "e_domain"):
        await add_policy(engine, name)
    await repo.admin_bulk_create(
        [
            public_fragment("a_public", {"p": 1}),
            domain_fragment("d1", "e_domain", {"d": 1}),
        ]
    )
    await repo.bulk_create_my(uid, [my_fragment("c_mine", {"m": 1}), my_fragment("d_empty", {})])

    mine = await repo.my_app_configs(uid)
    assert [v.name for v in mine] == ["a_public", "c_mine", "d_empty", "e_domain"]
    assert mine == await repo.app_configs(uid, ["a_public", "c_mine", "d_empty", "e_domain"])
    assert mine[2].config is None and len(mine[2].fragments) == 1  # an empty fragment counts

    theirs = await repo.my_app_configs(stranger)
    assert [v.name for v in theirs] == ["a_public"]
    nobody = await repo.my_app_configs(uuid.uuid4())
    assert [v.name for v in nobody] == ["a_public"]


async def test_my_app_configs_with_no_policies(
    engine: AsyncEngine, repo: AppConfigFragmentRepository
) -> None:
    assert await repo.my_app_configs(await add_user(engine)) == []


async def test_my_app_configs_sees_documents_beyond_the_batch_bound(
    engine: AsyncEngine, repo: AppConfigFragmentRepository
) -> None:
    uid = await add_user(engine)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO app_config_policies (id, config_name, scope_sources) "
                "SELECT gen_random_uuid(), 'doc' || lpad(i::text, 4, '0'), ARRAY['user'] "
                "FROM generate_series(0, :n) AS i"
            ),
            {"n": MAX_BATCH_NAMES},
        )
    last = f"doc{MAX_BATCH_NAMES:04d}"  # sorts after the first MAX_BATCH_NAMES names
    assert (await repo.bulk_create_my(uid, [my_fragment(last, {"x": 1})])).failures == []
    assert [v.name for v in await repo.my_app_configs(uid)] == [last]
