"""Fragment keys and inputs, built the usual way or past pydantic (``raw_*``)."""

from __future__ import annotations

import uuid
from typing import Any

from appconfig_cache import AppConfigFragmentKey, AppConfigScopeType, FragmentInput, MyFragmentInput

from .scopes import DOMAIN, DOMAIN_USER_DEFAULTS, PUBLIC, USER


def fragment_key(
    scope_type: AppConfigScopeType | str, scope_id: str, name: str
) -> AppConfigFragmentKey:
    return AppConfigFragmentKey(
        scope_type=AppConfigScopeType(scope_type), scope_id=scope_id, name=name
    )


def fragment_input(
    scope_type: AppConfigScopeType | str, scope_id: str, name: str, config: dict[str, Any]
) -> FragmentInput:
    return FragmentInput(key=fragment_key(scope_type, scope_id, name), config=config)


def public_fragment(name: str, config: dict[str, Any]) -> FragmentInput:
    return fragment_input(PUBLIC, "public", name, config)


def domain_fragment(domain: str, name: str, config: dict[str, Any]) -> FragmentInput:
    return fragment_input(DOMAIN, domain, name, config)


def domain_defaults_fragment(domain: str, name: str, config: dict[str, Any]) -> FragmentInput:
    return fragment_input(DOMAIN_USER_DEFAULTS, domain, name, config)


def user_fragment(uid: uuid.UUID, name: str, config: dict[str, Any]) -> FragmentInput:
    return fragment_input(USER, str(uid), name, config)


def my_fragment(name: str, config: dict[str, Any]) -> MyFragmentInput:
    return MyFragmentInput(name=name, config=config)


def raw_my_fragment(name: Any, config: Any) -> MyFragmentInput:
    """A ``MyFragmentInput`` that skips pydantic, to reach the library's own validation."""
    return MyFragmentInput.model_construct(name=name, config=config)


def raw_fragment_input(scope_type: Any, scope_id: Any, name: Any, config: Any) -> FragmentInput:
    """A ``FragmentInput`` that skips pydantic, to reach the library's own validation."""
    return FragmentInput.model_construct(
        key=raw_fragment_key(scope_type, scope_id, name), config=config
    )


def raw_fragment_key(scope_type: Any, scope_id: Any, name: Any) -> AppConfigFragmentKey:
    return AppConfigFragmentKey.model_construct(scope_type=scope_type, scope_id=scope_id, name=name)
