"""Changes of a cache source's statistics (``cache.stats``) over a stretch of a test."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from appconfig_cache import AppConfigFragmentCacheSource


def stats_snapshot(cache: AppConfigFragmentCacheSource) -> Any:
    """A copy of the statistics now, to compare with later ones."""
    return replace(cache.stats)


def stats_change(before: Any, after: Any, *fields: str) -> dict[str, int]:
    """How much each of ``fields`` grew from ``before`` to ``after``."""
    return {f: getattr(after, f) - getattr(before, f) for f in fields}
