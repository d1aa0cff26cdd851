"""Merge semantics (DESIGN.md §2) as a table of cases, on the real PostgreSQL, DB only.

Every case stores fragments at the user's scopes plus noise (another user, another
domain, another name) that must never show up, then reads the merged view.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigData,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    AppConfigScopeType,
)
from appconfig_cache.merge import deep_merge
from tests.support.data import add_policy, add_user
from tests.support.fragments import (
    domain_defaults_fragment,
    domain_fragment,
    fragment_input,
    my_fragment,
    public_fragment,
    user_fragment,
)
from tests.support.scopes import ALL_SCOPES, DOMAIN, DOMAIN_USER_DEFAULTS, PUBLIC, USER, scope_id_of

NAME = "theme"
HOME = "d1"  # the domain every case's domain fragments are stored at

Scope = AppConfigScopeType
Config = dict[str, Any]


@dataclass(frozen=True)
class MergeCase:
    id: str
    #: the policy chain at read time; None: the name has no policy
    chain: tuple[Scope, ...] | None
    #: the fragments stored at the user's scopes (domain scopes at HOME)
    stored: dict[Scope, Config]
    expected: Config | None
    #: the scopes of the view's fragments, in order
    contributors: tuple[Scope, ...]
    #: the user's domain; None: the user has no users row
    user_domain: str | None = HOME
    #: the chain the fragments were written under (then updated to ``chain``)
    written_under: tuple[Scope, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


ALL4 = {
    PUBLIC: {"who": "public", "p": 1},
    DOMAIN: {"who": "domain", "d": 1},
    DOMAIN_USER_DEFAULTS: {"who": "dud", "dud": 1},
    USER: {"who": "user", "u": 1},
}

CASES = [
    MergeCase(
        id="chain-order-later-wins",
        chain=(PUBLIC, DOMAIN, USER),
        stored={PUBLIC: {"c": "p"}, DOMAIN: {"c": "d"}, USER: {"c": "u"}},
        expected={"c": "u"},
        contributors=(PUBLIC, DOMAIN, USER),
    ),
    MergeCase(
        id="reversed-chain-public-wins",
        chain=(USER, DOMAIN, PUBLIC),
        stored={PUBLIC: {"c": "p"}, DOMAIN: {"c": "d"}, USER: {"c": "u"}},
        expected={"c": "p"},
        contributors=(USER, DOMAIN, PUBLIC),
    ),
    MergeCase(
        id="all-four-scopes",
        chain=ALL_SCOPES,
        stored=ALL4,
        expected={"who": "user", "p": 1, "d": 1, "dud": 1, "u": 1},
        contributors=ALL_SCOPES,
    ),
    MergeCase(
        id="domain-after-domain-user-defaults",
        chain=(DOMAIN_USER_DEFAULTS, DOMAIN),
        stored={DOMAIN: {"k": "domain"}, DOMAIN_USER_DEFAULTS: {"k": "dud", "x": 1}},
        expected={"k": "domain", "x": 1},
        contributors=(DOMAIN_USER_DEFAULTS, DOMAIN),
    ),
    MergeCase(
        id="nested-merge",
        chain=(PUBLIC, DOMAIN, USER),
        stored={
            PUBLIC: {"ui": {"theme": "light", "font": {"size": 12, "family": "sans"}}, "top": 1},
            DOMAIN: {"ui": {"font": {"family": "serif"}, "logo": "d.png"}},
            USER: {"ui": {"font": {"size": 14}}},
        },
        expected={
            "ui": {"theme": "light", "font": {"size": 14, "family": "serif"}, "logo": "d.png"},
            "top": 1,
        },
        contributors=(PUBLIC, DOMAIN, USER),
    ),
    MergeCase(
        id="list-replaced-not-concatenated",
        chain=(PUBLIC, USER),
        stored={PUBLIC: {"tabs": [1, 2, 3], "ui": {"pins": ["a"]}}, USER: {"tabs": [4], "ui": {}}},
        expected={"tabs": [4], "ui": {"pins": ["a"]}},
        contributors=(PUBLIC, USER),
    ),
    MergeCase(
        id="scalar-replacement",
        chain=(PUBLIC, USER),
        stored={
            PUBLIC: {"a": {"x": 1}, "b": 1, "c": "keep", "d": [1], "e": True},
            USER: {"a": 5, "b": {"y": 2}, "d": {"z": 0}, "e": None},
        },
        expected={"a": 5, "b": {"y": 2}, "c": "keep", "d": {"z": 0}, "e": None},
        contributors=(PUBLIC, USER),
    ),
    MergeCase(
        id="list-of-objects-replaced-wholesale",
        chain=(PUBLIC, USER),
        stored={PUBLIC: {"l": [{"a": 1, "b": 2}]}, USER: {"l": [{"a": 9}]}},
        expected={"l": [{"a": 9}]},
        contributors=(PUBLIC, USER),
    ),
    MergeCase(
        id="absent-scopes-skipped",
        chain=ALL_SCOPES,
        stored={DOMAIN_USER_DEFAULTS: {"only": "dud"}},
        expected={"only": "dud"},
        contributors=(DOMAIN_USER_DEFAULTS,),
    ),
    MergeCase(
        id="domain-user-defaults-only-chain",
        chain=(DOMAIN_USER_DEFAULTS,),
        stored={DOMAIN_USER_DEFAULTS: ALL4[DOMAIN_USER_DEFAULTS]},
        expected=ALL4[DOMAIN_USER_DEFAULTS],
        contributors=(DOMAIN_USER_DEFAULTS,),
    ),
    MergeCase(
        id="empty-configs-give-none",
        chain=(PUBLIC, DOMAIN, USER),
        stored={PUBLIC: {}, USER: {}},
        expected=None,
        contributors=(PUBLIC, USER),
    ),
    MergeCase(
        id="empty-nested-objects-still-count",
        chain=(PUBLIC, USER),
        stored={PUBLIC: {}, USER: {"ui": {}}},
        expected={"ui": {}},
        contributors=(PUBLIC, USER),
    ),
    MergeCase(
        id="empty-over-nonempty-keeps-lower",
        chain=(PUBLIC, USER),
        stored={PUBLIC: {"a": 1}, USER: {}},
        expected={"a": 1},
        contributors=(PUBLIC, USER),
    ),
    MergeCase(
        id="policy-without-fragments",
        chain=ALL_SCOPES,
        stored={},
        expected=None,
        contributors=(),
    ),
    MergeCase(
        id="no-policy-empty-view",
        chain=None,
        stored={},
        expected=None,
        contributors=(),
    ),
    MergeCase(
        id="user-of-another-domain",
        chain=ALL_SCOPES,
        stored=ALL4,
        expected={"who": "user", "p": 1, "u": 1},
        contributors=(PUBLIC, USER),
        user_domain="d2",
    ),
    MergeCase(
        id="no-users-row-no-domain-scopes",
        chain=ALL_SCOPES,
        stored=ALL4,
        expected={"who": "user", "p": 1, "u": 1},
        contributors=(PUBLIC, USER),
        user_domain=None,
    ),
    MergeCase(
        id="scope-dropped-from-chain-by-policy-update",
        chain=(PUBLIC, DOMAIN),
        stored=ALL4,
        expected={"who": "domain", "p": 1, "d": 1},
        contributors=(PUBLIC, DOMAIN),
        written_under=ALL_SCOPES,
    ),
    MergeCase(
        id="policy-update-reorders-chain",
        chain=(USER, DOMAIN_USER_DEFAULTS, DOMAIN, PUBLIC),
        stored=ALL4,
        expected={"who": "public", "p": 1, "d": 1, "dud": 1, "u": 1},
        contributors=(USER, DOMAIN_USER_DEFAULTS, DOMAIN, PUBLIC),
        written_under=ALL_SCOPES,
    ),
]

NOISE_USER = uuid.UUID("00000000-0000-4000-8000-00000000beef")
NOISE = {"who": "noise", "noise": True}


async def _store_case(engine: AsyncEngine, case: MergeCase) -> uuid.UUID:
    uid = uuid.uuid4()
    if case.user_domain is not None:
        await add_user(engine, uid, case.user_domain)
    await add_user(engine, NOISE_USER, "noise-domain")
    repo = AppConfigFragmentRepository(engine)
    other_name = "other"
    await add_policy(engine, other_name, ALL_SCOPES)
    if case.chain is not None:
        await add_policy(engine, NAME, case.written_under or case.chain)
    items = [
        fragment_input(scope, scope_id_of(scope, uid, HOME), NAME, config)
        for scope, config in case.stored.items()
    ]
    written = case.written_under or case.chain or ()
    items += [
        # the same name at scopes this user does not read
        noise
        for noise in (
            user_fragment(NOISE_USER, NAME, NOISE),
            domain_fragment("noise-domain", NAME, NOISE),
            domain_defaults_fragment("noise-domain", NAME, NOISE),
        )
        if noise.key.scope_type in written
    ]
    # the user's own scopes under another name
    items += [
        public_fragment(other_name, NOISE),
        domain_fragment(HOME, other_name, NOISE),
        user_fragment(uid, other_name, NOISE),
    ]
    result = await repo.admin_bulk_create(items)
    assert result.failures == []
    if case.written_under is not None:
        assert case.chain is not None
        await AppConfigPolicyRepository(engine).update(NAME, list(case.chain))
    return uid


def _check_view(view: AppConfigData, uid: uuid.UUID, case: MergeCase) -> None:
    assert view.user_id == uid
    assert view.name == NAME
    assert view.config == case.expected
    assert tuple(f.scope_type for f in view.fragments) == case.contributors
    for fragment in view.fragments:
        assert fragment.name == NAME
        assert fragment.scope_id == scope_id_of(fragment.scope_type, uid, HOME)
        assert fragment.config == case.stored[fragment.scope_type]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_merged_view(engine: AsyncEngine, case: MergeCase) -> None:
    uid = await _store_case(engine, case)
    repo = AppConfigFragmentRepository(engine)

    view = await repo.app_config(uid, NAME)
    _check_view(view, uid, case)

    # The batch read answers the same, and a string user id means the same user.
    (batched, other) = await repo.app_configs(str(uid), [NAME, "other"])  # type: ignore[arg-type]
    assert batched == view
    assert other.config == NOISE


async def test_domain_fragment_is_seen_by_its_domain_only(engine: AsyncEngine) -> None:
    await add_policy(engine, NAME, (PUBLIC, DOMAIN, DOMAIN_USER_DEFAULTS))
    in_d1 = await add_user(engine, domain="d1")
    also_d1 = await add_user(engine, domain="d1")
    in_d2 = await add_user(engine, domain="d2")
    repo = AppConfigFragmentRepository(engine)
    created = await repo.admin_bulk_create(
        [
            domain_fragment("d1", NAME, {"d": "d1"}),
            domain_defaults_fragment("d1", NAME, {"dud": "d1"}),
            domain_fragment("d2", NAME, {"d": "d2"}),
        ]
    )
    assert created.failures == []

    for uid in (in_d1, also_d1):
        view = await repo.app_config(uid, NAME)
        assert view.config == {"d": "d1", "dud": "d1"}
        assert [f.scope_id for f in view.fragments] == ["d1", "d1"]
    view = await repo.app_config(in_d2, NAME)
    assert view.config == {"d": "d2"}
    assert [(f.scope_type, f.scope_id) for f in view.fragments] == [(DOMAIN, "d2")]


async def test_user_fragment_is_seen_by_its_user_only(engine: AsyncEngine) -> None:
    await add_policy(engine, NAME, (PUBLIC, USER))
    alice = await add_user(engine, domain="d1")
    bob = await add_user(engine, domain="d1")
    repo = AppConfigFragmentRepository(engine)
    await repo.bulk_create_my(alice, [my_fragment(NAME, {"mine": "alice"})])

    assert (await repo.app_config(alice, NAME)).config == {"mine": "alice"}
    bobs = await repo.app_config(bob, NAME)
    assert bobs.config is None
    assert bobs.fragments == ()


# -- deep_merge: pure -------------------------------------------------------------------

DEEP_MERGE_CASES = [
    ("both-empty", {}, {}, {}),
    ("empty-override", {"a": 1}, {}, {"a": 1}),
    ("empty-base", {}, {"a": 1}, {"a": 1}),
    ("disjoint-keys", {"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
    ("scalar-replaced", {"a": 1}, {"a": "x"}, {"a": "x"}),
    ("null-replaces", {"a": {"b": 1}}, {"a": None}, {"a": None}),
    ("list-replaced", {"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
    ("list-by-empty-list", {"a": [1, 2]}, {"a": []}, {"a": []}),
    ("object-replaces-scalar", {"a": 1}, {"a": {"b": 2}}, {"a": {"b": 2}}),
    ("scalar-replaces-object", {"a": {"b": 2}}, {"a": 1}, {"a": 1}),
    ("list-replaces-object", {"a": {"b": 2}}, {"a": [1]}, {"a": [1]}),
    ("object-replaces-list", {"a": [1]}, {"a": {"b": 2}}, {"a": {"b": 2}}),
    (
        "nested",
        {"a": {"b": {"c": 1, "d": 2}}},
        {"a": {"b": {"c": 3}}},
        {"a": {"b": {"c": 3, "d": 2}}},
    ),
    ("empty-object-merges", {"a": {"b": 1}}, {"a": {}}, {"a": {"b": 1}}),
    ("false-and-zero-replace", {"a": True, "b": 1}, {"a": False, "b": 0}, {"a": False, "b": 0}),
]


@pytest.mark.parametrize(
    ("base", "override", "expected"),
    [c[1:] for c in DEEP_MERGE_CASES],
    ids=[c[0] for c in DEEP_MERGE_CASES],
)
def test_deep_merge(base: Config, override: Config, expected: Config) -> None:
    assert deep_merge(base, override) == expected


def test_deep_merge_does_not_mutate_its_inputs() -> None:
    base: dict[str, Any] = {"a": {"b": {"c": 1}}, "l": [1]}
    override = {"a": {"b": {"d": 2}}, "l": [2]}
    base_copy = {"a": {"b": {"c": 1}}, "l": [1]}
    override_copy = {"a": {"b": {"d": 2}}, "l": [2]}

    merged = deep_merge(base, override)

    assert merged == {"a": {"b": {"c": 1, "d": 2}}, "l": [2]}
    assert base == base_copy
    assert override == override_copy
    assert merged is not base
    assert merged["a"] is not base["a"]
    assert merged["a"]["b"] is not base["a"]["b"]


def test_deep_merge_is_associative_for_a_chain() -> None:
    a = {"x": {"p": 1, "q": 1}, "l": [1]}
    b = {"x": {"q": 2, "r": 2}}
    c = {"x": {"r": 3}, "l": [3]}
    assert deep_merge(deep_merge(a, b), c) == deep_merge(a, deep_merge(b, c))
    assert deep_merge(deep_merge(a, b), c) == {"x": {"p": 1, "q": 2, "r": 3}, "l": [3]}
