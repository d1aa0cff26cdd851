"""Input rules, checked before any I/O.

- A config name matches ``[A-Za-z][A-Za-z0-9_.-]{0,63}``: 1 to 64 characters,
  starting with a letter. It never contains ``:``, braces, globs or spaces,
  so it is safe inside a Valkey key.
- A user id is a :class:`uuid.UUID` (or its text form).
- A scope id is ``"public"`` for the public scope, a canonical UUID for the
  user scope, and for the domain scopes 1 to 255 characters with no control
  characters and no lone surrogate.
- A config is a JSON object of at most ``MAX_CONFIG_BYTES`` serialized bytes,
  nested at most ``MAX_CONFIG_DEPTH`` levels, with string keys, no NaN or
  infinity, no NUL character and no lone surrogate.
- ``scope_sources`` is a non-empty list of known scope types without duplicates.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from .errors import (
    InvalidConfigError,
    InvalidConfigNameError,
    InvalidScopeError,
    InvalidScopeSourcesError,
    InvalidUserIdError,
)
from .types import AppConfigFragmentKey, AppConfigScopeType

MAX_NAME_LENGTH = 64
MAX_SCOPE_ID_LENGTH = 255
MAX_CONFIG_BYTES = 256 * 1024
PUBLIC_SCOPE_ID = "public"

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _shorten(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_utf8(text: str) -> bool:
    """False for a lone surrogate, which neither PostgreSQL nor Valkey keys can hold."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def validate_name(name: object) -> str:
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise InvalidConfigNameError(
            f"invalid config name {_shorten(name)}: expected 1-{MAX_NAME_LENGTH} characters "
            "of [A-Za-z0-9_.-] starting with a letter"
        )
    return name


def validate_user_id(user_id: object) -> UUID:
    if isinstance(user_id, UUID):
        return user_id
    if isinstance(user_id, str) and len(user_id) <= 64:
        try:
            return UUID(user_id)
        except ValueError:
            pass
    raise InvalidUserIdError(f"invalid user id {_shorten(user_id)}: expected a UUID")


def validate_scope_type(scope_type: object) -> AppConfigScopeType:
    try:
        return AppConfigScopeType(scope_type)  # type: ignore[arg-type]
    except ValueError:
        known = ", ".join(s.value for s in AppConfigScopeType)
        raise InvalidScopeError(
            f"unknown scope type {_shorten(scope_type)}: expected one of {known}"
        ) from None


def validate_scope(scope_type: object, scope_id: object) -> tuple[AppConfigScopeType, str]:
    """Check a scope and return it in canonical form (user ids lower-case)."""
    kind = validate_scope_type(scope_type)
    if kind is AppConfigScopeType.PUBLIC:
        if scope_id != PUBLIC_SCOPE_ID:
            raise InvalidScopeError(
                f"the public scope's id must be {PUBLIC_SCOPE_ID!r}, got {_shorten(scope_id)}"
            )
        return kind, PUBLIC_SCOPE_ID
    if kind is AppConfigScopeType.USER:
        try:
            return kind, str(validate_user_id(scope_id))
        except InvalidUserIdError:
            raise InvalidScopeError(
                f"a user scope's id must be a UUID, got {_shorten(scope_id)}"
            ) from None
    if (
        not isinstance(scope_id, str)
        or not 1 <= len(scope_id) <= MAX_SCOPE_ID_LENGTH
        or _CONTROL_RE.search(scope_id)
        or not _is_utf8(scope_id)
    ):
        raise InvalidScopeError(
            f"invalid {kind.value} scope id {_shorten(scope_id)}: expected 1-"
            f"{MAX_SCOPE_ID_LENGTH} characters without control characters"
        )
    return kind, scope_id


def validate_key(key: AppConfigFragmentKey) -> AppConfigFragmentKey:
    kind, scope_id = validate_scope(key.scope_type, key.scope_id)
    validate_name(key.name)
    if scope_id == key.scope_id:
        return key
    return AppConfigFragmentKey(scope_type=kind, scope_id=scope_id, name=key.name)


MAX_CONFIG_DEPTH = 64


def _check_json(value: object, depth: int) -> None:
    """Plain JSON only: str keys, finite numbers, no NUL, no lone surrogates, bounded depth."""
    if depth > MAX_CONFIG_DEPTH:
        raise InvalidConfigError(f"a config is nested deeper than {MAX_CONFIG_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidConfigError("a config may not contain the NUL character")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidConfigError("a config string is not valid Unicode") from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidConfigError(f"config keys must be strings, got {_shorten(key)}")
            _check_json(key, depth + 1)
            _check_json(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json(item, depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidConfigError("a config may not contain NaN or infinity")
    elif value is not None and not isinstance(value, bool | int):
        raise InvalidConfigError(f"a config may not contain a {type(value).__name__}")


def validate_config(config: object) -> dict[str, Any]:
    if not isinstance(config, Mapping):
        raise InvalidConfigError(f"a config must be a JSON object, got {type(config).__name__}")
    _check_json(config, 0)
    text = json.dumps(config, separators=(",", ":"), ensure_ascii=False)
    size = len(text.encode())
    if size > MAX_CONFIG_BYTES:
        raise InvalidConfigError(
            f"a config is {size} bytes serialized; the limit is {MAX_CONFIG_BYTES}"
        )
    # Round-trip so that what we store is exactly what a reader gets back (tuples become lists).
    result: dict[str, Any] = json.loads(text)
    return result


def validate_scope_sources(scope_sources: object) -> tuple[AppConfigScopeType, ...]:
    if isinstance(scope_sources, str | bytes) or not isinstance(scope_sources, Iterable):
        raise InvalidScopeSourcesError("scope_sources must be a list of scope types")
    try:
        chain = tuple(validate_scope_type(s) for s in scope_sources)
    except InvalidScopeError as exc:
        raise InvalidScopeSourcesError(str(exc)) from None
    if not chain:
        raise InvalidScopeSourcesError("scope_sources must not be empty")
    if len(set(chain)) != len(chain):
        raise InvalidScopeSourcesError(f"scope_sources has duplicates: {[s.value for s in chain]}")
    return chain
