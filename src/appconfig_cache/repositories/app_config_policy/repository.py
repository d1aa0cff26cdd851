"""AppConfigPolicyRepository: policy writes, then invalidation of the name's slice."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from ...types import AppConfigPolicyData, AppConfigScopeType
from ...validation import validate_name, validate_scope_sources
from ..app_config_fragment.cache_source import AppConfigFragmentCacheSource
from .db_source import AppConfigPolicyDBSource

__all__ = ["AppConfigPolicyRepository"]


class AppConfigPolicyRepository:
    """Policies of config names. Every change invalidates that name's cached views."""

    def __init__(
        self, engine: AsyncEngine, cache_source: AppConfigFragmentCacheSource | None = None
    ) -> None:
        self._db = AppConfigPolicyDBSource(engine)
        self._cache = cache_source

    async def create(
        self, config_name: str, scope_sources: Sequence[AppConfigScopeType | str]
    ) -> AppConfigPolicyData:
        """Create the policy of ``config_name``; ``PolicyAlreadyExistsError`` if it exists."""
        name = validate_name(config_name)
        chain = validate_scope_sources(scope_sources)
        created = await self._db.create(name, chain)
        await self._invalidate(name)
        return created

    async def update(
        self, config_name: str, scope_sources: Sequence[AppConfigScopeType | str]
    ) -> AppConfigPolicyData:
        """Replace the merge chain; ``PolicyNotFoundError`` if there is no policy."""
        name = validate_name(config_name)
        chain = validate_scope_sources(scope_sources)
        updated = await self._db.update(name, chain)
        await self._invalidate(name)
        return updated

    async def purge(self, config_name: str) -> None:
        """Delete the policy; ``PolicyInUseError`` while fragments reference it."""
        name = validate_name(config_name)
        await self._db.purge(name)
        await self._invalidate(name)

    async def get(self, config_name: str) -> AppConfigPolicyData | None:
        return await self._db.get(validate_name(config_name))

    async def _invalidate(self, name: str) -> None:
        if self._cache is not None:
            await self._cache.invalidate_for_policy(name)
