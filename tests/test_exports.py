"""The package root exports exactly ``__all__``; the data types are frozen and JSON round-trip."""

from __future__ import annotations

import builtins
import types
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pydantic
import pytest

import appconfig_cache
from appconfig_cache import (
    AppConfigData,
    AppConfigFragmentData,
    AppConfigFragmentKey,
    AppConfigPolicyData,
    AppConfigScopeType,
    BulkFailure,
    BulkResult,
    FragmentInput,
    MyFragmentInput,
)

#: DESIGN.md §3: the fixed public names
DESIGN_NAMES = {
    "AppConfigScopeType",
    "AppConfigFragmentKey",
    "AppConfigFragmentData",
    "AppConfigData",
    "AppConfigPolicyData",
    "MyFragmentInput",
    "FragmentInput",
    "BulkResult",
    "BulkFailure",
    "AppConfigFragmentRepository",
    "AppConfigPolicyRepository",
    "AppConfigFragmentCacheSource",
    "create_schema",
    "suppress_with_log",
    "AppConfigError",
}


def _public_attributes() -> set[str]:
    return {
        name
        for name, value in vars(appconfig_cache).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_all_has_no_duplicates_and_every_name_exists() -> None:
    exported = appconfig_cache.__all__
    assert len(exported) == len(set(exported))
    missing = [name for name in exported if not hasattr(appconfig_cache, name)]
    assert missing == []


def test_all_equals_the_public_attributes() -> None:
    public = _public_attributes()
    listed = set(appconfig_cache.__all__) - {"__version__"}
    assert public - listed == set(), "public but not in __all__"
    assert listed - public == set(), "in __all__ but not a public attribute"


def test_design_names_are_exported() -> None:
    assert set(appconfig_cache.__all__) >= DESIGN_NAMES


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from appconfig_cache import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(appconfig_cache.__all__)


def test_exported_errors_derive_from_the_root() -> None:
    errors = [
        value
        for name in appconfig_cache.__all__
        if isinstance(value := getattr(appconfig_cache, name), type)
        and issubclass(value, BaseException)
    ]
    assert appconfig_cache.AppConfigError in errors
    assert len(errors) > 5
    for error in errors:
        assert issubclass(error, appconfig_cache.AppConfigError), error
        # no class reuses a builtin name (CONVENTIONS.md)
        assert not hasattr(builtins, error.__name__), error


def test_version_is_a_string() -> None:
    assert isinstance(appconfig_cache.__version__, str)
    assert appconfig_cache.__version__


# -- JSON round trip --------------------------------------------------------------------

UID = uuid.UUID("6f1c1f8e-3a52-4d0e-9a43-2f0a4b1e9c11")
T0 = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
TOKYO = timezone(timedelta(hours=9))


def _fragment(
    scope_type: AppConfigScopeType, scope_id: str, config: dict[str, object]
) -> AppConfigFragmentData:
    return AppConfigFragmentData(
        id=uuid.uuid4(),
        scope_type=scope_type,
        scope_id=scope_id,
        name="théme.v2",
        config=config,
        created_at=T0,
        updated_at=T0.astimezone(TOKYO) + timedelta(microseconds=1),
    )


_FRAGMENTS = (
    _fragment(AppConfigScopeType.PUBLIC, "public", {"ui": {"theme": "light", "tabs": [1, 2]}}),
    _fragment(AppConfigScopeType.DOMAIN, "ドメイン", {"ui": {"font": {"size": 12.5}}}),
    _fragment(AppConfigScopeType.DOMAIN_USER_DEFAULTS, "ドメイン", {}),
    _fragment(AppConfigScopeType.USER, str(UID), {"ui": {"theme": "dark 🌙"}, "n": None}),
)

ROUND_TRIP_VIEWS = {
    "with_fragments": AppConfigData(
        user_id=UID,
        name="theme",
        fragments=_FRAGMENTS,
        config={
            "ui": {"theme": "dark 🌙", "tabs": [1, 2], "font": {"size": 12.5}},
            "n": None,
        },
    ),
    "nested_and_unicode": AppConfigData(
        user_id=UID,
        name="menu",
        fragments=_FRAGMENTS[3:],
        config={
            "ключ": {"深い": {"deeper": [{"a": [True, False, None]}, 'ü\u00e9\u2028\t"\\']}},
            "big": 2**62,
            "neg": -1.5e-7,
            "empty": {},
            "empty_list": [],
        },
    ),
    "config_none": AppConfigData(user_id=UID, name="empty", fragments=_FRAGMENTS[2:3], config=None),
    "no_fragments": AppConfigData(user_id=UID, name="nothing"),
}


@pytest.mark.parametrize("view", ROUND_TRIP_VIEWS.values(), ids=ROUND_TRIP_VIEWS.keys())
def test_app_config_data_json_round_trip(view: AppConfigData) -> None:
    text = view.model_dump_json()
    again = AppConfigData.model_validate_json(text)
    assert again == view
    assert again.model_dump_json() == text
    assert again.fragments == view.fragments
    assert again.config == view.config
    assert isinstance(again.fragments, tuple)


def test_round_trip_keeps_config_none_distinct_from_empty() -> None:
    view = ROUND_TRIP_VIEWS["config_none"]
    again = AppConfigData.model_validate_json(view.model_dump_json())
    assert again.config is None
    assert again.fragments[0].config == {}


# -- frozen models ----------------------------------------------------------------------

FROZEN_INSTANCES = {
    "AppConfigFragmentKey": (
        AppConfigFragmentKey(scope_type=AppConfigScopeType.PUBLIC, scope_id="public", name="a"),
        "name",
        "b",
    ),
    "AppConfigFragmentData": (_FRAGMENTS[0], "config", {}),
    "AppConfigData": (ROUND_TRIP_VIEWS["with_fragments"], "config", None),
    "AppConfigPolicyData": (
        AppConfigPolicyData(
            id=uuid.uuid4(),
            config_name="a",
            scope_sources=(AppConfigScopeType.PUBLIC,),
            created_at=T0,
            updated_at=T0,
        ),
        "scope_sources",
        (),
    ),
    "MyFragmentInput": (MyFragmentInput(name="a", config={}), "name", "b"),
    "FragmentInput": (
        FragmentInput(
            key=AppConfigFragmentKey(scope_type="public", scope_id="public", name="a"), config={}
        ),
        "config",
        {"x": 1},
    ),
    "BulkFailure": (BulkFailure(index=0, code="not_found", message="m"), "index", 1),
    "BulkResult": (BulkResult[int](successes=[1]), "successes", []),
}


@pytest.mark.parametrize(
    ("instance", "field", "value"), FROZEN_INSTANCES.values(), ids=FROZEN_INSTANCES.keys()
)
def test_models_are_frozen(instance: pydantic.BaseModel, field: str, value: object) -> None:
    before = instance.model_dump()
    with pytest.raises(pydantic.ValidationError):
        setattr(instance, field, value)
    assert instance.model_dump() == before


@pytest.mark.parametrize(
    "instance",
    [v[0] for v in FROZEN_INSTANCES.values() if not isinstance(v[0], BulkResult)],
    ids=[k for k, v in FROZEN_INSTANCES.items() if not isinstance(v[0], BulkResult)],
)
def test_models_reject_unknown_fields(instance: pydantic.BaseModel) -> None:
    # extra="forbid": a misspelt field is an error, not silently dropped
    with pytest.raises(pydantic.ValidationError):
        type(instance).model_validate({**instance.model_dump(), "unexpected": 1})


def test_equal_keys_hash_equal() -> None:
    a = AppConfigFragmentKey(scope_type="user", scope_id=str(UID), name="theme")
    b = AppConfigFragmentKey(scope_type=AppConfigScopeType.USER, scope_id=str(UID), name="theme")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


def test_scope_type_is_a_str_enum() -> None:
    assert [s.value for s in AppConfigScopeType] == [
        "public",
        "domain",
        "domain_user_defaults",
        "user",
    ]
    assert AppConfigScopeType("user") is AppConfigScopeType.USER
    assert isinstance(AppConfigScopeType.USER, str)
    assert str(AppConfigScopeType.USER) == "user"
    assert f"{AppConfigScopeType.DOMAIN_USER_DEFAULTS}" == "domain_user_defaults"
