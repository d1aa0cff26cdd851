"""Every input rule: the right AppConfigError subclass, raised (or failing only its bulk
item) before any SQL statement, with nothing written."""

from __future__ import annotations

import decimal
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigError,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    AppConfigValidationError,
    InvalidConfigError,
    InvalidConfigNameError,
    InvalidScopeError,
    InvalidScopeSourcesError,
    InvalidUserIdError,
    TooManyItemsError,
)
from appconfig_cache.repositories.app_config_fragment.repository import MAX_BULK_ITEMS
from appconfig_cache.validation import (
    MAX_CONFIG_BYTES,
    validate_config,
    validate_name,
    validate_scope,
    validate_scope_sources,
    validate_user_id,
)
from tests.support.data import add_policy, add_user, fragment_rows, table_snapshot
from tests.support.fragments import (
    fragment_input,
    raw_fragment_input,
    raw_fragment_key,
    raw_my_fragment,
    user_fragment,
)
from tests.support.scopes import DOMAIN, DOMAIN_USER_DEFAULTS, PUBLIC, USER
from tests.support.sql import count_sql

UID = uuid.UUID("3b0c5a8e-0d4f-4e8a-9d6a-6b1e2f3a4c5d")


def _params(table: dict[str, Any]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("value", list(table.values()), ids=list(table))


@pytest_asyncio.fixture
async def nothing_written(engine: AsyncEngine) -> AsyncIterator[Any]:
    """Seed a policy and a fragment, count statements in the test, then check the tables.

    The test body runs inside the counter; it must issue no statement at all.
    """
    await add_policy(engine, "theme")
    await add_user(engine, UID, "d1")
    repo = AppConfigFragmentRepository(engine)
    await repo.admin_bulk_create([user_fragment(UID, "theme", {"seed": 1})])
    await repo.app_config(UID, "theme")  # warm the pool
    before = await table_snapshot(engine)
    with count_sql(engine) as log:
        yield log
    assert log.count == 0, log.statements
    assert await table_snapshot(engine) == before


async def _raises(error: type[AppConfigError], call: Awaitable[Any]) -> AppConfigError:
    with pytest.raises(error) as info:
        await call
    assert isinstance(info.value, AppConfigValidationError)
    return info.value


# -- config names -----------------------------------------------------------------------

INVALID_NAMES = {
    "empty": "",
    "too-long": "a" * 65,
    "leading-digit": "1abc",
    "leading-underscore": "_abc",
    "leading-dot": ".abc",
    "leading-dash": "-abc",
    "colon": "app:config",
    "open-brace": "a{b",
    "close-brace": "a}b",
    "hash-tag": "{user}",
    "star": "theme*",
    "question-mark": "theme?",
    "brackets": "a[b]",
    "slash": "a/b",
    "space": "a b",
    "newline": "a\nb",
    "trailing-newline": "theme\n",
    "tab": "a\tb",
    "nul": "a\x00b",
    "non-ascii-letter": "thème",
    "non-ascii-digit": "a\u0661",
    "fullwidth": "\uff54\uff48\uff45\uff4d\uff45",
    "10kB": "a" * 10_240,
    "none": None,
    "int": 5,
    "bytes": b"theme",
}
VALID_NAMES = ["a", "Z", "a" * 64, "theme", "theme.v2", "a-b_c.d", "A1-2_3"]


@_params(INVALID_NAMES)
def test_invalid_name_rule(value: object) -> None:
    with pytest.raises(InvalidConfigNameError):
        validate_name(value)


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_name_rule(name: str) -> None:
    assert validate_name(name) == name


@_params(INVALID_NAMES)
async def test_invalid_name_reaches_no_sql(
    engine: AsyncEngine, nothing_written: Any, value: Any
) -> None:
    repo = AppConfigFragmentRepository(engine)
    policies = AppConfigPolicyRepository(engine)
    await _raises(InvalidConfigNameError, repo.app_config(UID, value))
    await _raises(InvalidConfigNameError, repo.app_configs(UID, ["theme", value]))
    for call in (
        policies.create(value, [PUBLIC]),
        policies.update(value, [PUBLIC]),
        policies.purge(value),
        policies.get(value),
    ):
        await _raises(InvalidConfigNameError, call)

    item = raw_fragment_input(PUBLIC, "public", value, {"a": 1})
    for result in (
        await repo.bulk_create_my(UID, [raw_my_fragment(value, {"a": 1})]),
        await repo.bulk_update_my(UID, [raw_my_fragment(value, {"a": 1})]),
        await repo.admin_bulk_create([item]),
        await repo.admin_bulk_update([item]),
        await repo.admin_bulk_purge([raw_fragment_key(PUBLIC, "public", value)]),
    ):
        assert result.successes == []
        assert [(f.index, f.code) for f in result.failures] == [(0, "invalid_name")]


@pytest.mark.parametrize("method", ["app_config", "app_configs"])
async def test_unhashable_name_is_a_name_error(engine: AsyncEngine, method: str) -> None:
    repo = AppConfigFragmentRepository(engine)
    name: Any = ["theme"]
    call = repo.app_config(UID, name) if method == "app_config" else repo.app_configs(UID, [name])
    with pytest.raises(InvalidConfigNameError):
        await call


# -- user ids ---------------------------------------------------------------------------

INVALID_USER_IDS = {
    "not-a-uuid": "not-a-uuid",
    "empty": "",
    "truncated": str(UID)[:-1],
    "trailing-garbage": str(UID) + "0",
    "leading-space": " " + str(UID),
    "10kB": "a" * 10_240,
    "int": 123,
    "none": None,
    "bytes": UID.bytes,
    "list": [str(UID)],
}


@_params(INVALID_USER_IDS)
def test_invalid_user_id_rule(value: object) -> None:
    with pytest.raises(InvalidUserIdError):
        validate_user_id(value)


@pytest.mark.parametrize("text", [str(UID), str(UID).upper(), UID.hex])
def test_user_id_text_forms(text: str) -> None:
    assert validate_user_id(text) == UID
    assert validate_user_id(UID) is UID


@_params(INVALID_USER_IDS)
async def test_invalid_user_id_reaches_no_sql(
    engine: AsyncEngine, nothing_written: Any, value: Any
) -> None:
    repo = AppConfigFragmentRepository(engine)
    await _raises(InvalidUserIdError, repo.app_config(value, "theme"))
    await _raises(InvalidUserIdError, repo.app_configs(value, ["theme"]))
    await _raises(InvalidUserIdError, repo.my_app_configs(value))
    item = raw_my_fragment("theme", {"a": 1})
    await _raises(InvalidUserIdError, repo.bulk_create_my(value, [item]))
    await _raises(InvalidUserIdError, repo.bulk_update_my(value, [item]))


async def test_user_id_text_is_the_same_user(engine: AsyncEngine) -> None:
    await add_policy(engine, "theme")
    await add_user(engine, UID, "d1")
    repo = AppConfigFragmentRepository(engine)
    await repo.admin_bulk_create([user_fragment(UID, "theme", {"u": 1})])
    expected = await repo.app_config(UID, "theme")
    assert expected.config == {"u": 1}
    for text in (str(UID), str(UID).upper()):
        assert await repo.app_config(text, "theme") == expected  # type: ignore[arg-type]


# -- scope ids --------------------------------------------------------------------------

INVALID_SCOPES = {
    "public-other-id": (PUBLIC, "other"),
    "public-upper": (PUBLIC, "PUBLIC"),
    "public-empty": (PUBLIC, ""),
    "public-none": (PUBLIC, None),
    "user-not-uuid": (USER, "alice"),
    "user-empty": (USER, ""),
    "user-int": (USER, 5),
    "user-uuid-garbage": (USER, str(UID) + ":x"),
    "domain-empty": (DOMAIN, ""),
    "domain-256": (DOMAIN, "d" * 256),
    "domain-10kB": (DOMAIN, "d" * 10_240),
    "domain-newline": (DOMAIN, "a\nb"),
    "domain-nul": (DOMAIN, "a\x00b"),
    "domain-del": (DOMAIN, "a\x7fb"),
    "domain-c1-control": (DOMAIN, "a\x85b"),
    "domain-none": (DOMAIN, None),
    "dud-empty": (DOMAIN_USER_DEFAULTS, ""),
    "dud-256": (DOMAIN_USER_DEFAULTS, "d" * 256),
    "dud-tab": (DOMAIN_USER_DEFAULTS, "\t"),
    "unknown-type": ("tenant", "t1"),
    "type-upper": ("PUBLIC", "public"),
    "type-none": (None, "public"),
}
VALID_SCOPES = {
    "public": (PUBLIC, "public", "public"),
    "user": (USER, str(UID), str(UID)),
    "user-upper-normalised": (USER, str(UID).upper(), str(UID)),
    "domain-1": (DOMAIN, "d", "d"),
    "domain-255": (DOMAIN, "d" * 255, "d" * 255),
    "domain-unicode": (DOMAIN, "ドメイン", "ドメイン"),
    "domain-punctuation": (DOMAIN, "a:b {c} *", "a:b {c} *"),
    "dud-string-type": ("domain_user_defaults", "d1", "d1"),
}


@_params(INVALID_SCOPES)
def test_invalid_scope_rule(value: tuple[Any, Any]) -> None:
    with pytest.raises(InvalidScopeError):
        validate_scope(*value)


@_params(VALID_SCOPES)
def test_valid_scope_rule(value: tuple[Any, str, str]) -> None:
    scope_type, scope_id, canonical = value
    kind, normalised = validate_scope(scope_type, scope_id)
    assert kind == scope_type
    assert normalised == canonical


@_params(INVALID_SCOPES)
async def test_invalid_scope_reaches_no_sql(
    engine: AsyncEngine, nothing_written: Any, value: tuple[Any, Any]
) -> None:
    repo = AppConfigFragmentRepository(engine)
    item = raw_fragment_input(*value, "theme", {"a": 1})
    for result in (
        await repo.admin_bulk_create([item]),
        await repo.admin_bulk_update([item]),
        await repo.admin_bulk_purge([raw_fragment_key(*value, "theme")]),
    ):
        assert result.successes == []
        assert [(f.index, f.code) for f in result.failures] == [(0, "invalid_scope")]


async def test_upper_case_user_scope_is_stored_lower_case(engine: AsyncEngine) -> None:
    await add_policy(engine, "theme")
    await add_user(engine, UID, "d1")
    repo = AppConfigFragmentRepository(engine)
    result = await repo.admin_bulk_create(
        [fragment_input(USER, str(UID).upper(), "theme", {"u": 1})]
    )
    assert result.failures == []
    assert result.successes[0].scope_id == str(UID)
    assert [r["scope_id"] for r in await fragment_rows(engine)] == [str(UID)]
    assert (await repo.app_config(UID, "theme")).config == {"u": 1}
    again = await repo.admin_bulk_create([fragment_input(USER, str(UID), "theme", {"u": 2})])
    assert [f.code for f in again.failures] == ["already_exists"]


# -- configs ----------------------------------------------------------------------------


def _circular() -> dict[str, Any]:
    config: dict[str, Any] = {}
    config["self"] = config
    return config


def _deep(levels: int) -> dict[str, Any]:
    inner: list[Any] = []
    root = {"deep": inner}
    for _ in range(levels):
        inner.append([])
        inner = inner[0]
    return root


OVERHEAD = len('{"a":""}')
INVALID_CONFIGS = {
    "list": [1, 2],
    "string": '{"a": 1}',
    "none": None,
    "int": 5,
    "pairs": (("a", 1),),
    "nan": {"a": float("nan")},
    "nan-in-list": {"a": [1, float("nan")]},
    "inf": {"a": float("inf")},
    "minus-inf": {"a": {"b": float("-inf")}},
    "nul-in-value": {"a": "x\x00y"},
    "nul-in-nested-value": {"a": ["ok", {"b": "\x00"}]},
    "nul-in-key": {"a\x00": 1},
    "over-256KiB": {"a": "x" * (MAX_CONFIG_BYTES - OVERHEAD + 1)},
    "over-256KiB-in-bytes": {"a": "é" * ((MAX_CONFIG_BYTES - OVERHEAD) // 2 + 1)},
    "tuple-key": {("a", "b"): 1},
    "set": {"a": {1, 2}},
    "bytes": {"a": b"x"},
    "datetime": {"a": datetime(2024, 1, 1)},
    "decimal": {"a": decimal.Decimal("1.5")},
    "object": {"a": object()},
    "uuid": {"a": UID},
    "circular": _circular(),
    "too-deep": _deep(100_000),
}
NON_STRING_KEYS = {
    "int-key": {1: "a"},
    "nested-int-key": {"a": {1: "b"}},
    "bool-key": {True: 1},
    "none-key": {None: 1},
    "float-key": {"a": [{1.5: 1}]},
}


@_params(INVALID_CONFIGS)
def test_invalid_config_rule(value: object) -> None:
    with pytest.raises(InvalidConfigError):
        validate_config(value)


@_params(NON_STRING_KEYS)
def test_non_string_keys_are_rejected(value: object) -> None:
    with pytest.raises(InvalidConfigError):
        validate_config(value)


def test_lone_surrogate_is_an_invalid_config() -> None:
    with pytest.raises(InvalidConfigError):
        validate_config(json.loads('{"a": "\\ud800"}'))


async def test_lone_surrogate_fails_only_its_bulk_item(engine: AsyncEngine) -> None:
    await add_policy(engine, "theme")
    repo = AppConfigFragmentRepository(engine)
    result = await repo.admin_bulk_create(
        [
            fragment_input(PUBLIC, "public", "theme", {"ok": 1}),
            raw_fragment_input(PUBLIC, "public", "theme", json.loads('{"a": "\\ud800"}')),
        ]
    )
    assert [(f.index, f.code) for f in result.failures] == [(1, "invalid_config")]
    assert len(result.successes) == 1


def test_a_literal_backslash_u0000_is_not_a_nul() -> None:
    config = {"path": "C:\\u0000\\file"}  # backslash, 'u0000': no NUL character
    assert "\x00" not in config["path"]
    assert validate_config(config) == config


VALID_CONFIGS = {
    "empty": ({}, {}),
    "nested": ({"a": {"b": [1, "x", None, True, 1.5]}}, {"a": {"b": [1, "x", None, True, 1.5]}}),
    "unicode": ({"ключ": "値 🌙"}, {"ключ": "値 🌙"}),
    "tuple-becomes-list": ({"a": (1, 2)}, {"a": [1, 2]}),
    "exactly-256KiB": (
        {"a": "x" * (MAX_CONFIG_BYTES - OVERHEAD)},
        {"a": "x" * (MAX_CONFIG_BYTES - OVERHEAD)},
    ),
    "big-int": ({"a": 2**80}, {"a": 2**80}),
}


@_params(VALID_CONFIGS)
def test_valid_config_rule(value: tuple[dict[str, Any], dict[str, Any]]) -> None:
    config, stored = value
    assert validate_config(config) == stored


@_params(INVALID_CONFIGS)
async def test_invalid_config_reaches_no_sql(
    engine: AsyncEngine, nothing_written: Any, value: Any
) -> None:
    repo = AppConfigFragmentRepository(engine)
    item = raw_fragment_input(PUBLIC, "public", "theme", value)
    for result in (
        await repo.bulk_create_my(UID, [raw_my_fragment("theme", value)]),
        await repo.bulk_update_my(UID, [raw_my_fragment("theme", value)]),
        await repo.admin_bulk_create([item]),
        await repo.admin_bulk_update([item]),
    ):
        assert result.successes == []
        assert [(f.index, f.code) for f in result.failures] == [(0, "invalid_config")]


async def test_exactly_256kib_config_is_stored(engine: AsyncEngine) -> None:
    await add_policy(engine, "theme")
    repo = AppConfigFragmentRepository(engine)
    config = {"a": "x" * (MAX_CONFIG_BYTES - OVERHEAD)}
    result = await repo.bulk_create_my(UID, [raw_my_fragment("theme", config)])
    assert result.failures == []
    assert result.successes[0].config == config


# -- scope_sources ----------------------------------------------------------------------

INVALID_SCOPE_SOURCES = {
    "empty-list": [],
    "empty-tuple": (),
    "unknown": ["public", "tenant"],
    "upper-case": ["PUBLIC"],
    "duplicates": ["public", "user", "public"],
    "duplicates-mixed-types": [PUBLIC, "public"],
    "bare-string": "public",
    "bare-bytes": b"public",
    "bare-enum": USER,
    "none": None,
    "int": 3,
    "none-item": [None],
    "nested-list": [["public"]],
}


@_params(INVALID_SCOPE_SOURCES)
def test_invalid_scope_sources_rule(value: object) -> None:
    with pytest.raises(InvalidScopeSourcesError):
        validate_scope_sources(value)


def test_valid_scope_sources_keep_order() -> None:
    chain = ["user", DOMAIN, "domain_user_defaults", PUBLIC]
    assert validate_scope_sources(chain) == (USER, DOMAIN, DOMAIN_USER_DEFAULTS, PUBLIC)
    assert validate_scope_sources(iter(["public"])) == (PUBLIC,)


@_params(INVALID_SCOPE_SOURCES)
async def test_invalid_scope_sources_reach_no_sql(
    engine: AsyncEngine, nothing_written: Any, value: Any
) -> None:
    policies = AppConfigPolicyRepository(engine)
    await _raises(InvalidScopeSourcesError, policies.create("menu", value))
    await _raises(InvalidScopeSourcesError, policies.update("theme", value))


# -- bulk shapes and bounds -------------------------------------------------------------

BulkCall = Callable[[AppConfigFragmentRepository, Any], Awaitable[Any]]
BULK_VERBS: dict[str, tuple[BulkCall, Any]] = {
    "bulk_create_my": (
        lambda repo, items: repo.bulk_create_my(UID, items),
        raw_my_fragment("1bad", {}),
    ),
    "bulk_update_my": (
        lambda repo, items: repo.bulk_update_my(UID, items),
        raw_my_fragment("1bad", {}),
    ),
    "admin_bulk_create": (
        lambda repo, items: repo.admin_bulk_create(items),
        raw_fragment_input(PUBLIC, "public", "1bad", {}),
    ),
    "admin_bulk_update": (
        lambda repo, items: repo.admin_bulk_update(items),
        raw_fragment_input(PUBLIC, "public", "1bad", {}),
    ),
    "admin_bulk_purge": (
        lambda repo, items: repo.admin_bulk_purge(items),
        raw_fragment_key(PUBLIC, "public", "1bad"),
    ),
}


@_params(BULK_VERBS)
async def test_bulk_over_the_bound_raises_before_io(
    engine: AsyncEngine, nothing_written: Any, value: tuple[BulkCall, Any]
) -> None:
    call, bad_item = value
    repo = AppConfigFragmentRepository(engine)
    await _raises(TooManyItemsError, call(repo, [bad_item] * (MAX_BULK_ITEMS + 1)))
    # at the bound: accepted, and every item fails on its own
    result = await call(repo, [bad_item] * MAX_BULK_ITEMS)
    assert [f.index for f in result.failures] == list(range(MAX_BULK_ITEMS))
    assert {f.code for f in result.failures} == {"invalid_name"}


@_params(BULK_VERBS)
async def test_bulk_items_must_be_a_list(
    engine: AsyncEngine, nothing_written: Any, value: tuple[BulkCall, Any]
) -> None:
    call, bad_item = value
    repo = AppConfigFragmentRepository(engine)
    for items in ("theme", b"theme", None, (i for i in [bad_item]), {"a": bad_item}):
        await _raises(AppConfigValidationError, call(repo, items))


async def test_app_configs_names_must_be_a_list(engine: AsyncEngine, nothing_written: Any) -> None:
    repo = AppConfigFragmentRepository(engine)
    await _raises(AppConfigValidationError, repo.app_configs(UID, "theme"))


# -- the error tree ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidConfigNameError, "invalid_name"),
        (InvalidUserIdError, "invalid_user_id"),
        (InvalidScopeError, "invalid_scope"),
        (InvalidConfigError, "invalid_config"),
        (InvalidScopeSourcesError, "invalid_scope_sources"),
        (TooManyItemsError, "too_many_items"),
        (AppConfigValidationError, "invalid_input"),
    ],
)
def test_validation_errors_and_codes(error: type[AppConfigError], code: str) -> None:
    assert issubclass(error, AppConfigValidationError)
    assert issubclass(error, AppConfigError)
    assert error.code == code
