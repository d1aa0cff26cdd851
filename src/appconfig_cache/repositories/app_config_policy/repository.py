"""AppConfigPolicyRepository: policy writes, then invalidation of the name's slice."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from ...errors import AppConfigError
from ...outbox.store import OutboxStore
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
        if cache_source is not None:
            cache_source.use_outbox(OutboxStore(engine))  # its replayer polls this engine

    async def create(
        self, config_name: str, scope_sources: Sequence[AppConfigScopeType | str]
    ) -> AppConfigPolicyData:
        """Create the policy of ``config_name``; ``PolicyAlreadyExistsError`` if it exists."""
        return await self._write_chain(self._db.create, config_name, scope_sources)

    async def update(
        self, config_name: str, scope_sources: Sequence[AppConfigScopeType | str]
    ) -> AppConfigPolicyData:
        """Replace the merge chain; ``PolicyNotFoundError`` if there is no policy."""
        return await self._write_chain(self._db.update, config_name, scope_sources)

    async def purge(self, config_name: str) -> None:
        """Delete the policy; ``PolicyInUseError`` while fragments reference it."""
        name = validate_name(config_name)
        async with self._invalidating(name) as txids:
            await self._db.purge(name, txids)

    async def get(self, config_name: str) -> AppConfigPolicyData | None:
        return await self._db.get(validate_name(config_name))

    async def _write_chain(
        self,
        write: Callable[
            [str, tuple[AppConfigScopeType, ...], list[int]], Awaitable[AppConfigPolicyData]
        ],
        config_name: str,
        scope_sources: Sequence[AppConfigScopeType | str],
    ) -> AppConfigPolicyData:
        """Validate the name and the chain, write them, then invalidate the name."""
        name = validate_name(config_name)
        chain = validate_scope_sources(scope_sources)
        async with self._invalidating(name) as txids:
            return await write(name, chain, txids)

    @contextlib.asynccontextmanager
    async def _invalidating(self, name: str) -> AsyncIterator[list[int]]:
        """Run a write, then invalidate ``name``'s slice before returning.

        The write puts its transaction's id in the list it is given; once the
        bump is acknowledged, that transaction's outbox rows are deleted.
        A refused write (an ``AppConfigError``) changed nothing. A cancelled or
        failed one may have committed: L1 is invalidated at once and the Valkey
        bump left pending, to be replayed before Valkey is trusted again (and
        its outbox rows stay for a replayer).
        """
        cache = self._cache
        txids: list[int] = []
        try:
            yield txids
        except AppConfigError:
            raise
        except BaseException:
            if cache is not None:
                cache.invalidate_for_policy_nowait(name)
            raise
        if cache is not None:
            cache.outbox_written(txids, await cache.invalidate_for_policy(name))
