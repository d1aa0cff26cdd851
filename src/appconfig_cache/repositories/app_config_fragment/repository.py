"""AppConfigFragmentRepository: reads L1 -> Valkey -> DB; writes, then invalidates."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ...errors import AppConfigValidationError, TooManyItemsError
from ...outbox.store import OutboxStore
from ...tiered.local import MISS
from ...types import (
    AppConfigData,
    AppConfigFragmentData,
    AppConfigFragmentKey,
    AppConfigScopeType,
    BulkFailure,
    BulkResult,
    FragmentInput,
    MyFragmentInput,
)
from ...validation import validate_config, validate_key, validate_name, validate_user_id
from .cache_source import AppConfigFragmentCacheSource
from .db_source import AppConfigFragmentDBSource

__all__ = ["MAX_BATCH_NAMES", "MAX_BULK_ITEMS", "AppConfigFragmentRepository"]

#: the most items one bulk call takes
MAX_BULK_ITEMS = 1000
#: the most names one ``app_configs`` call takes
MAX_BATCH_NAMES = 256

_I = TypeVar("_I")
_Write = Callable[[AsyncConnection, AppConfigFragmentKey, dict[str, Any]], Awaitable[Any]]


class AppConfigFragmentRepository:
    """Merged views and bulk writes of app-config fragments.

    With ``cache_source=None`` every read is one SQL statement; with a cache
    source, reads go L1 -> Valkey -> DB and every write invalidates the scopes
    it touched after its commit and before it returns.
    """

    def __init__(
        self, engine: AsyncEngine, cache_source: AppConfigFragmentCacheSource | None = None
    ) -> None:
        self._db = AppConfigFragmentDBSource(engine)
        self._cache = cache_source
        if cache_source is not None:
            cache_source.use_outbox(OutboxStore(engine))  # its replayer polls this engine
        self._names_ok: set[str] = set()  # names already validated: skip the regex on hot reads

    @property
    def cache_source(self) -> AppConfigFragmentCacheSource | None:
        return self._cache

    # -- reads ----------------------------------------------------------------------

    async def app_config(self, user_id: UUID, name: str) -> AppConfigData:
        """The merged view of ``name`` for ``user_id``."""
        try:
            known = name in self._names_ok  # the hot path skips the regex for known names
        except TypeError:  # unhashable: let validation say what is wrong
            known = False
        if not known:
            self._accept_name(name)
        if type(user_id) is not UUID:
            user_id = validate_user_id(user_id)
        cache = self._cache
        if cache is None:
            return (await self._db.load_views(user_id, (name,))).views[name]
        hit = cache.local_get(user_id, name)
        if hit is not MISS:
            return hit  # type: ignore[return-value]
        return (await cache.resolve(user_id, (name,), self._db.load_views, self._db.load_shared))[
            name
        ]

    async def app_configs(self, user_id: UUID, names: Sequence[str]) -> list[AppConfigData]:
        """The merged views of ``names`` in input order: one round trip per tier at most."""
        uid = validate_user_id(user_id)
        if isinstance(names, str | bytes) or not isinstance(names, Sequence):
            raise AppConfigValidationError("names must be a list of names")
        if len(names) > MAX_BATCH_NAMES:
            raise TooManyItemsError(f"{len(names)} names; app_configs takes {MAX_BATCH_NAMES}")
        for name in names:
            if not self._known_name(name):
                self._accept_name(name)
        unique = list(dict.fromkeys(names))
        if not unique:
            return []
        if self._cache is None:
            views = (await self._db.load_views(uid, unique)).views
        else:
            views = await self._cache.read_through(
                uid, unique, self._db.load_views, self._db.load_shared
            )
        return [views[name] for name in names]

    async def my_app_configs(self, user_id: UUID) -> list[AppConfigData]:
        """Every document the user has: the policy names whose view has fragments."""
        uid = validate_user_id(user_id)

        async def read(names: list[str]) -> list[AppConfigData]:
            views: list[AppConfigData] = []
            for start in range(0, len(names), MAX_BATCH_NAMES):
                views += await self.app_configs(uid, names[start : start + MAX_BATCH_NAMES])
            return views

        if self._cache is None:
            views = await read(await self._db.policy_names())
        else:
            views = await self._cache.bootstrap(self._db.policy_names, read)
        return [view for view in views if view.fragments]

    # -- writes ---------------------------------------------------------------------

    async def bulk_create_my(
        self, user_id: UUID, items: Sequence[MyFragmentInput]
    ) -> BulkResult[AppConfigData]:
        """Create fragments in the caller's own scope; return the recomputed views."""
        return await self._write_my(user_id, items, self._db.create)

    async def bulk_update_my(
        self, user_id: UUID, items: Sequence[MyFragmentInput]
    ) -> BulkResult[AppConfigData]:
        """Replace fragments in the caller's own scope; return the recomputed views."""
        return await self._write_my(user_id, items, self._db.update)

    async def admin_bulk_create(
        self, items: Sequence[FragmentInput]
    ) -> BulkResult[AppConfigFragmentData]:
        """Create fragments at any scope; fails items whose key exists."""
        return await self._write_admin(items, self._db.create)

    async def admin_bulk_update(
        self, items: Sequence[FragmentInput]
    ) -> BulkResult[AppConfigFragmentData]:
        """Replace fragments' configs at any scope; fails items whose key does not exist."""
        return await self._write_admin(items, self._db.update)

    async def admin_bulk_purge(
        self, keys: Sequence[AppConfigFragmentKey]
    ) -> BulkResult[AppConfigFragmentData]:
        """Delete fragments; the successes are the deleted fragments."""
        _check_count(keys)

        def prepare(key: object) -> tuple[AppConfigFragmentKey, dict[str, Any]]:
            if not isinstance(key, AppConfigFragmentKey):
                raise AppConfigValidationError("each key must be an AppConfigFragmentKey")
            return validate_key(key), {}

        async def purge(
            conn: AsyncConnection, key: AppConfigFragmentKey, _config: dict[str, Any]
        ) -> AppConfigFragmentData:
            return await self._db.purge(conn, key)

        done, failures = await self._run(keys, prepare, purge)
        return BulkResult(successes=[f for _, f in done], failures=failures)

    async def _write_my(
        self, user_id: UUID, items: Sequence[MyFragmentInput], write: _Write
    ) -> BulkResult[AppConfigData]:
        uid = validate_user_id(user_id)
        _check_count(items)

        def prepare(item: object) -> tuple[AppConfigFragmentKey, dict[str, Any]]:
            if not isinstance(item, MyFragmentInput):
                raise AppConfigValidationError("each item must be a MyFragmentInput")
            key = AppConfigFragmentKey(
                scope_type=AppConfigScopeType.USER,
                scope_id=str(uid),
                name=validate_name(item.name),
            )
            return key, validate_config(item.config)

        done, failures = await self._run(items, prepare, write)
        names = [fragment.name for _, fragment in done]
        views = await self.app_configs(uid, names) if names else []
        return BulkResult(successes=views, failures=failures)

    async def _write_admin(
        self, items: Sequence[FragmentInput], write: _Write
    ) -> BulkResult[AppConfigFragmentData]:
        _check_count(items)

        def prepare(item: object) -> tuple[AppConfigFragmentKey, dict[str, Any]]:
            if not isinstance(item, FragmentInput):
                raise AppConfigValidationError("each item must be a FragmentInput")
            return validate_key(item.key), validate_config(item.config)

        done, failures = await self._run(items, prepare, write)
        return BulkResult(successes=[f for _, f in done], failures=failures)

    async def _run(
        self,
        items: Sequence[_I],
        prepare: Callable[[_I], tuple[AppConfigFragmentKey, dict[str, Any]]],
        write: _Write,
    ) -> tuple[list[tuple[int, AppConfigFragmentData]], list[BulkFailure]]:
        """Validate every item first (no I/O), write the valid ones, then invalidate once."""
        valid: list[tuple[int, tuple[AppConfigFragmentKey, dict[str, Any]]]] = []
        failures: list[BulkFailure] = []
        for index, item in enumerate(items):
            try:
                valid.append((index, prepare(item)))
            except AppConfigValidationError as exc:
                failures.append(BulkFailure(index=index, code=exc.code, message=str(exc)))

        async def run_one(
            conn: AsyncConnection, payload: tuple[AppConfigFragmentKey, dict[str, Any]]
        ) -> AppConfigFragmentData:
            result: AppConfigFragmentData = await write(conn, *payload)
            return result

        done: list[tuple[int, AppConfigFragmentData]] = []
        txids: list[int] = []
        try:
            failures += await self._db.run_items(valid, run_one, done, txids)
        except BaseException:
            # Cancelled (or failed) half-way: an item may have committed without our
            # knowing. Invalidate every scope the call could have touched.
            if self._cache is not None:
                self._cache.invalidate_keys_nowait([key for _, (key, _c) in valid])
            raise
        if self._cache is not None and done:
            acked = await self._cache.invalidate_keys([f.key for _, f in done])
            self._cache.outbox_written(txids, acked)
        return done, sorted(failures, key=lambda f: f.index)

    def _known_name(self, name: str) -> bool:
        try:
            return name in self._names_ok
        except TypeError:  # unhashable: let validation say what is wrong
            return False

    def _accept_name(self, name: str) -> None:
        validate_name(name)
        if len(self._names_ok) < 4096:
            self._names_ok.add(name)


def _check_count(items: Sequence[Any]) -> None:
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise AppConfigValidationError("bulk items must be a list")
    if len(items) > MAX_BULK_ITEMS:
        raise TooManyItemsError(f"{len(items)} items; a bulk call takes at most {MAX_BULK_ITEMS}")
