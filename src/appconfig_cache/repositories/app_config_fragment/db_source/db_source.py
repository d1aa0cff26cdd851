"""The merged-view SQL and the bulk writes of app-config fragments."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ....errors import AppConfigStorageError
from ....merge import build_view
from ....models import fragments, policies
from ....types import (
    AppConfigData,
    AppConfigFragmentData,
    AppConfigFragmentKey,
    AppConfigScopeType,
    BulkFailure,
)

__all__ = ["AppConfigFragmentDBSource", "ItemFailure", "LoadedViews", "SharedPart"]

T = TypeVar("T")

#: the columns both merged-view queries return per (policy, fragment) row
_POLICY_FRAGMENT_COLUMNS: dict[str, Any] = {
    "config_name": sa.Text,
    "scope_sources": ARRAY(sa.Text),
    "id": sa.Uuid,
    "scope_type": sa.Text,
    "scope_id": sa.Text,
    "config": JSONB,
    "created_at": sa.DateTime(timezone=True),
    "updated_at": sa.DateTime(timezone=True),
}

# One round trip for any number of names: the user's domain, each policy's
# chain, and for every (policy, scope in its chain) the one fragment the user
# reads there. The VALUES row per scope type turns the lookup into probes of
# the (scope_type, scope_id, name) unique index.
_MERGED_VIEW_SQL = (
    sa.text(
        """
SELECT u.domain_name, p.config_name, p.scope_sources,
       f.id, f.scope_type, f.scope_id, f.config, f.created_at, f.updated_at
FROM (SELECT CAST(:uid AS uuid) AS uuid) AS me
LEFT JOIN users AS u ON u.uuid = me.uuid
LEFT JOIN app_config_policies AS p ON p.config_name = ANY(CAST(:names AS text[]))
LEFT JOIN LATERAL (
    VALUES ('public', 'public'),
           ('domain', u.domain_name),
           ('domain_user_defaults', u.domain_name),
           ('user', CAST(me.uuid AS text))
) AS s(scope_type, scope_id) ON s.scope_type = ANY(p.scope_sources)
LEFT JOIN app_config_fragments AS f
       ON f.scope_type = s.scope_type AND f.scope_id = s.scope_id AND f.name = p.config_name
"""
    )
    .bindparams(sa.bindparam("uid", type_=sa.Uuid), sa.bindparam("names", type_=ARRAY(sa.Text)))
    .columns(domain_name=sa.Text, **_POLICY_FRAGMENT_COLUMNS)
)

# The part of the views of ``names`` that every user of one domain shares: each
# policy's chain and its public, domain and domain_user_defaults fragments.
# ``:domain`` NULL (a user without a users row) matches no domain fragment.
_SHARED_SQL = (
    sa.text(
        """
SELECT p.config_name, p.scope_sources,
       f.id, f.scope_type, f.scope_id, f.config, f.created_at, f.updated_at
FROM app_config_policies AS p
LEFT JOIN LATERAL (
    VALUES ('public', 'public'),
           ('domain', CAST(:domain AS text)),
           ('domain_user_defaults', CAST(:domain AS text))
) AS s(scope_type, scope_id) ON s.scope_type = ANY(p.scope_sources)
LEFT JOIN app_config_fragments AS f
       ON f.scope_type = s.scope_type AND f.scope_id = s.scope_id AND f.name = p.config_name
WHERE p.config_name = ANY(CAST(:names AS text[]))
"""
    )
    .bindparams(sa.bindparam("domain", type_=sa.Text), sa.bindparam("names", type_=ARRAY(sa.Text)))
    .columns(**_POLICY_FRAGMENT_COLUMNS)
)

_POLICY_CHAIN_SQL = (
    sa.select(policies.c.scope_sources)
    .where(policies.c.config_name == sa.bindparam("name"))
    .with_for_update(read=True)
)

_FRAGMENT_COLUMNS = (
    fragments.c.id,
    fragments.c.scope_type,
    fragments.c.scope_id,
    fragments.c.name,
    fragments.c.config,
    fragments.c.created_at,
    fragments.c.updated_at,
)
#: the writing transaction, as the outbox trigger records it (``models.outbox.txid``)
_TXID = sa.func.txid_current().label("outbox_txid")
#: where ``_one_fragment`` leaves the txid for ``run_items`` (the write callables
#: return the public fragment type, which has no place for it)
_TXID_INFO = "appconfig_cache.outbox_txid"


@dataclass(frozen=True, slots=True)
class LoadedViews:
    """What one merged-view query returns for a user and a list of names."""

    domain: str | None
    views: dict[str, AppConfigData]
    #: the names that have a policy; only their views may be cached
    with_policy: frozenset[str]
    #: each policy's chain, for the names that have one
    chains: dict[str, tuple[AppConfigScopeType, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SharedPart:
    """What every user of a domain shares in the view of one name."""

    chain: tuple[AppConfigScopeType, ...]
    #: the public, domain and domain_user_defaults fragments of the chain
    fragments: tuple[AppConfigFragmentData, ...]


class ItemFailure(Exception):
    """One bulk item failed; carries the stable code. Never leaves this package."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _fragment(row: Any, name: str | None = None) -> AppConfigFragmentData:
    """A fragment row; ``name``: the row's name column when it has another label."""
    return AppConfigFragmentData(
        id=row.id,
        scope_type=AppConfigScopeType(row.scope_type),
        scope_id=row.scope_id,
        name=row.name if name is None else name,
        config=row.config,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _chains_and_fragments(
    rows: Sequence[Any],
) -> tuple[dict[str, tuple[AppConfigScopeType, ...]], dict[str, list[AppConfigFragmentData]]]:
    """Group merged-view rows: each policy's chain, and the fragments found for it."""
    chains: dict[str, tuple[AppConfigScopeType, ...]] = {}
    found: dict[str, list[AppConfigFragmentData]] = {}
    for row in rows:
        if row.config_name is None:
            continue
        if row.config_name not in chains:
            chains[row.config_name] = tuple(AppConfigScopeType(s) for s in row.scope_sources)
            found[row.config_name] = []
        if row.id is not None:
            found[row.config_name].append(_fragment(row, row.config_name))
    return chains, found


def _key_filter(key: AppConfigFragmentKey) -> sa.ColumnElement[bool]:
    return sa.and_(
        fragments.c.scope_type == key.scope_type.value,
        fragments.c.scope_id == key.scope_id,
        fragments.c.name == key.name,
    )


class AppConfigFragmentDBSource:
    """PostgreSQL access for fragments. Knows nothing of any cache."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # Reads run in autocommit: one statement needs no BEGIN/ROLLBACK round trips.
        self._read_engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def load_views(self, user_id: UUID, names: Sequence[str]) -> LoadedViews:
        """The merged views of ``names`` for ``user_id``, in one SQL statement."""
        try:
            async with self._read_engine.connect() as conn:
                result = await conn.execute(
                    _MERGED_VIEW_SQL, {"uid": user_id, "names": list(names)}
                )
                rows = result.all()
        except (SQLAlchemyError, OSError) as exc:
            raise AppConfigStorageError(f"merged-view query failed: {exc}") from exc
        domain: str | None = rows[0].domain_name if rows else None
        chains, found = _chains_and_fragments(rows)
        views = {
            name: build_view(user_id, name, chains.get(name), found.get(name, ())) for name in names
        }
        return LoadedViews(domain=domain, views=views, with_policy=frozenset(chains), chains=chains)

    async def load_shared(self, domain: str | None, names: Sequence[str]) -> dict[str, SharedPart]:
        """The shared parts of the views of ``names`` in ``domain``, in one statement.

        Names without a policy are absent from the result. ``domain=None``: a
        user without a users row (public fragments only).
        """
        try:
            async with self._read_engine.connect() as conn:
                result = await conn.execute(_SHARED_SQL, {"domain": domain, "names": list(names)})
                rows = result.all()
        except (SQLAlchemyError, OSError) as exc:
            raise AppConfigStorageError(f"shared-view query failed: {exc}") from exc
        chains, found = _chains_and_fragments(rows)
        return {name: SharedPart(chain, tuple(found[name])) for name, chain in chains.items()}

    async def policy_names(self) -> list[str]:
        """Every config name that has a policy, sorted."""
        try:
            async with self._read_engine.connect() as conn:
                result = await conn.execute(
                    sa.select(policies.c.config_name).order_by(policies.c.config_name)
                )
                return list(result.scalars())
        except (SQLAlchemyError, OSError) as exc:
            raise AppConfigStorageError(f"policy list query failed: {exc}") from exc

    # -- writes: each item in its own transaction --------------------------------

    async def run_items(
        self,
        items: Sequence[tuple[int, T]],
        write: Callable[[AsyncConnection, T], Awaitable[AppConfigFragmentData]],
        done: list[tuple[int, AppConfigFragmentData]],
        txids: list[int] | None = None,
    ) -> list[BulkFailure]:
        """Run ``write`` for each ``(index, item)`` in its own transaction.

        Committed items are appended to ``done`` as they commit, so a caller
        that is cancelled half-way still knows what to invalidate; their
        transaction ids (those of their outbox rows) to ``txids``. A failed
        item is reported with its index and a stable code; the others go on.
        """
        failed: list[BulkFailure] = []
        for index, item in items:
            try:
                async with self._engine.begin() as conn:
                    conn.info.pop(_TXID_INFO, None)
                    done.append((index, await write(conn, item)))
                    txid = conn.info.pop(_TXID_INFO, None)
                    if txids is not None and txid is not None:
                        txids.append(txid)
            except ItemFailure as exc:
                failed.append(BulkFailure(index=index, code=exc.code, message=exc.message))
            except IntegrityError as exc:
                # A concurrent policy purge beat our FOR SHARE read.
                failed.append(
                    BulkFailure(index=index, code="policy_not_found", message=str(exc.orig))
                )
            except (SQLAlchemyError, OSError) as exc:
                failed.append(BulkFailure(index=index, code="storage_error", message=str(exc)))
        return failed

    @staticmethod
    async def _check_policy(conn: AsyncConnection, key: AppConfigFragmentKey) -> None:
        chain = (await conn.execute(_POLICY_CHAIN_SQL, {"name": key.name})).scalar_one_or_none()
        if chain is None:
            raise ItemFailure("policy_not_found", f"no policy for config name {key.name!r}")
        if key.scope_type.value not in chain:
            raise ItemFailure(
                "scope_not_allowed",
                f"the policy of {key.name!r} does not allow the {key.scope_type.value} scope "
                f"(allowed: {', '.join(chain)})",
            )

    async def create(
        self, conn: AsyncConnection, key: AppConfigFragmentKey, config: dict[str, Any]
    ) -> AppConfigFragmentData:
        await self._check_policy(conn, key)
        stmt = (
            pg_insert(fragments)
            .values(
                scope_type=key.scope_type.value, scope_id=key.scope_id, name=key.name, config=config
            )
            .on_conflict_do_nothing(constraint="uq_app_config_fragment_key")
            .returning(*_FRAGMENT_COLUMNS, _TXID)
        )
        return await _one_fragment(conn, stmt, key, "already_exists", "already exists")

    async def update(
        self, conn: AsyncConnection, key: AppConfigFragmentKey, config: dict[str, Any]
    ) -> AppConfigFragmentData:
        await self._check_policy(conn, key)
        stmt = (
            sa.update(fragments)
            .where(_key_filter(key))
            .values(config=config, updated_at=sa.func.now())
            .returning(*_FRAGMENT_COLUMNS, _TXID)
        )
        return await _one_fragment(conn, stmt, key, "not_found", "does not exist")

    async def purge(
        self, conn: AsyncConnection, key: AppConfigFragmentKey
    ) -> AppConfigFragmentData:
        stmt = sa.delete(fragments).where(_key_filter(key)).returning(*_FRAGMENT_COLUMNS, _TXID)
        return await _one_fragment(conn, stmt, key, "not_found", "does not exist")


async def _one_fragment(
    conn: AsyncConnection, stmt: sa.Executable, key: AppConfigFragmentKey, code: str, missing: str
) -> AppConfigFragmentData:
    """The fragment a ``RETURNING`` write gives back; no row fails the item with ``code``."""
    row = (await conn.execute(stmt)).one_or_none()
    if row is None:
        raise ItemFailure(code, f"fragment {_describe(key)} {missing}")
    conn.info[_TXID_INFO] = row.outbox_txid
    return _fragment(row)


def _describe(key: AppConfigFragmentKey) -> str:
    return f"({key.scope_type.value}, {key.scope_id!r}, {key.name!r})"
