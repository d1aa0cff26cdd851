"""Chain ordering and deep merge: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from uuid import UUID

from .types import AppConfigData, AppConfigFragmentData, AppConfigScopeType


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` onto ``base``: objects merge recursively, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        # JSON objects are dicts (validation and the DB both give dicts); a check
        # against the Mapping ABC would cost more than the merge on every DB read.
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def build_view(
    user_id: UUID,
    name: str,
    scope_sources: Sequence[AppConfigScopeType] | None,
    fragments: Iterable[AppConfigFragmentData],
) -> AppConfigData:
    """Order the user's fragments by the policy chain and merge them.

    ``fragments`` must already be the user's (one per scope type at most);
    ``scope_sources`` is ``None`` for a name without a policy.
    """
    if not scope_sources:
        return AppConfigData(user_id=user_id, name=name)
    rank = {scope: i for i, scope in enumerate(scope_sources)}
    ordered = sorted(
        (f for f in fragments if f.scope_type in rank), key=lambda f: rank[f.scope_type]
    )
    config: dict[str, Any] = {}
    for fragment in ordered:
        config = deep_merge(config, fragment.config)
    return AppConfigData(
        user_id=user_id, name=name, fragments=tuple(ordered), config=config or None
    )
