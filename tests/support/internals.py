"""Every reach into the private state of the library's objects, one line each.

The cache source's internals change as it is rewritten; only this module follows them.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from appconfig_cache import AppConfigFragmentCacheSource, AppConfigFragmentRepository
from appconfig_cache.tiered.local import entry_key


def l1_entries(cache: AppConfigFragmentCacheSource) -> Any:
    """The L1 mapping of keys (``entry_key``) to entries, expired ones included (None: L1 off)."""
    return cache._local._entries


def l1_holds(cache: AppConfigFragmentCacheSource, user_id: UUID, name: str) -> bool:
    """Does L1 hold an entry of ``(user_id, name)``, expired or stale ones included?"""
    entries = l1_entries(cache)
    return entries is not None and entry_key(user_id, name) in entries


def clear_l1(cache: AppConfigFragmentCacheSource) -> None:
    """Drop every L1 entry, expired ones waiting for a renewal included."""
    entries = l1_entries(cache)
    if entries is not None:
        entries.clear()


def trip_breaker(cache: AppConfigFragmentCacheSource) -> None:
    """Open the breaker as confirmed failures would (it cools down as configured)."""
    cache._parts.remote.breaker.trip()


def valkey_usable(cache: AppConfigFragmentCacheSource) -> bool:
    """Would the cache source ask Valkey now (breaker closed or trying)?"""
    return bool(cache._parts.remote.available())


def background_tasks(cache: AppConfigFragmentCacheSource) -> list[asyncio.Task[Any]]:
    """The loads, fills, refreshes and replays the cache source runs in the background."""
    return list(cache._parts.background._tasks)


def db_source_of(repo: AppConfigFragmentRepository) -> Any:
    """The repository's DB source (its ``load_views`` is what tests wrap to park a load)."""
    return repo._db


def merged_view_statement() -> Any:
    """The repository's merged-view SQL statement (``text()`` with ``:uid`` and ``:names``)."""
    from appconfig_cache.repositories.app_config_fragment.db_source import db_source

    return db_source._MERGED_VIEW_SQL


def bump_recovery(cache: AppConfigFragmentCacheSource) -> asyncio.Task[None] | None:
    """The task that replays pending bumps once Valkey answers (None: none started)."""
    task: asyncio.Task[None] | None = cache._parts.bumps._recovery
    return task


def broadcast_gap(cache: AppConfigFragmentCacheSource) -> None:
    """Apply a gap in the broadcast now, as a lost or (re)confirmed subscription does."""
    cache._parts.invalidation.apply_gap()


def cluster_root(cluster: Any) -> Any:
    """The directory an embedded cluster keeps its nodes' files in (None: stopped)."""
    return cluster._root
