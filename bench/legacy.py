"""The legacy cache-aside shape, as a baseline: the manager's old ``AppConfigCacheSource``.

- one Valkey ``GET`` per request, a JSON payload, no in-process tier;
- on a miss: the merged-view SQL, then ``SET ... EX`` (and the domain
  membership set the old source kept for invalidation, in the same pipeline);
- invalidation deletes keys: USER by the user's key pattern, DOMAIN through
  the domain's member set, PUBLIC and policy changes by ``SCAN`` over the prefix.

No single flight, no generations: it is what the library replaces, written
here only so every figure has this baseline beside it.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import AppConfigData, AppConfigScopeType, suppress_with_log
from appconfig_cache.repositories.app_config_fragment.db_source import (
    AppConfigFragmentDBSource,
)

_logger = logging.getLogger("bench.legacy")

PREFIX = "legacy_app_config:"


def merged_key(user_id: UUID, name: str) -> str:
    return f"{PREFIX}merged:{user_id}:{name}"


def domain_members_key(domain: str) -> str:
    return f"{PREFIX}domain_members:{domain}"


class LegacyAppConfigCacheSource:
    """GET / SET EX of JSON views; deletes on invalidation."""

    def __init__(self, client: Any, *, ttl: int = 600, scan_count: int = 1000) -> None:
        self.client = client
        self.ttl = ttl
        self.scan_count = scan_count

    async def get_merged_config(self, user_id: UUID, name: str) -> AppConfigData | None:
        raw = await self.client.get(merged_key(user_id, name))
        if raw is None:
            return None
        return AppConfigData.model_validate_json(raw)

    async def set_merged_config(
        self, user_id: UUID, name: str, merged: AppConfigData, domain: str | None
    ) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.set(merged_key(user_id, name), merged.model_dump_json(), ex=self.ttl)
        if domain is not None:
            pipe.sadd(domain_members_key(domain), str(user_id))
        await pipe.execute()

    async def invalidate_for_scope(self, scope_type: AppConfigScopeType, scope_id: str) -> None:
        if scope_type is AppConfigScopeType.USER:
            await self._delete_matching(f"{PREFIX}merged:{scope_id}:*")
        elif scope_type is AppConfigScopeType.PUBLIC:
            await self._delete_matching(f"{PREFIX}merged:*")
        else:
            members = await self.client.smembers(domain_members_key(scope_id))
            for member in members:
                user = member.decode() if isinstance(member, bytes) else member
                await self._delete_matching(f"{PREFIX}merged:{user}:*")

    async def invalidate_for_policy(self, config_name: str) -> None:
        await self._delete_matching(f"{PREFIX}merged:*:{config_name}")

    async def _delete_matching(self, pattern: str) -> int:
        deleted = 0
        batch: list[Any] = []
        async for key in self.client.scan_iter(match=pattern, count=self.scan_count):
            batch.append(key)
            if len(batch) >= self.scan_count:
                deleted += await self.client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self.client.unlink(*batch)
        return deleted


class LegacyRepository:
    """``app_config`` through the legacy cache-aside: cache, else DB then fill."""

    def __init__(self, engine: AsyncEngine, cache: LegacyAppConfigCacheSource) -> None:
        self._db = AppConfigFragmentDBSource(engine)
        self.cache = cache
        self.db_loads = 0

    async def app_config(self, user_id: UUID, name: str) -> AppConfigData:
        cached: AppConfigData | None = None
        with suppress_with_log(Exception, "legacy cache read failed", logger=_logger):
            cached = await self.cache.get_merged_config(user_id, name)
        if cached is not None:
            return cached
        loaded = await self._db.load_views(user_id, (name,))
        self.db_loads += 1
        view = loaded.views[name]
        with suppress_with_log(Exception, "legacy cache fill failed", logger=_logger):
            await self.cache.set_merged_config(user_id, name, view, loaded.domain)
        return view
