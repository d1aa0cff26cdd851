"""SQL for app-config policies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ....errors import (
    AppConfigStorageError,
    PolicyAlreadyExistsError,
    PolicyInUseError,
    PolicyNotFoundError,
)
from ....models import fragments, policies
from ....types import AppConfigPolicyData, AppConfigScopeType

__all__ = ["AppConfigPolicyDBSource"]

_COLUMNS = (
    policies.c.id,
    policies.c.config_name,
    policies.c.scope_sources,
    policies.c.created_at,
    policies.c.updated_at,
)
#: the writing transaction, as the outbox trigger records it (``models.outbox.txid``)
_TXID = sa.func.txid_current().label("outbox_txid")


def _policy(row: Any) -> AppConfigPolicyData:
    return AppConfigPolicyData(
        id=row.id,
        config_name=row.config_name,
        scope_sources=tuple(AppConfigScopeType(s) for s in row.scope_sources),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class AppConfigPolicyDBSource:
    """PostgreSQL access for policies. Knows nothing of any cache."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self, name: str, chain: Sequence[AppConfigScopeType], txids: list[int] | None = None
    ) -> AppConfigPolicyData:
        """``txids``: where the committed write's transaction id goes (its outbox rows)."""
        stmt = (
            pg_insert(policies)
            .values(config_name=name, scope_sources=[s.value for s in chain])
            .on_conflict_do_nothing(index_elements=[policies.c.config_name])
            .returning(*_COLUMNS, _TXID)
        )
        row = await self._write_returning(stmt, "create", txids)
        if row is None:
            raise PolicyAlreadyExistsError(f"a policy for {name!r} already exists")
        return _policy(row)

    async def update(
        self, name: str, chain: Sequence[AppConfigScopeType], txids: list[int] | None = None
    ) -> AppConfigPolicyData:
        stmt = (
            sa.update(policies)
            .where(policies.c.config_name == name)
            .values(scope_sources=[s.value for s in chain], updated_at=sa.func.now())
            .returning(*_COLUMNS, _TXID)
        )
        row = await self._write_returning(stmt, "update", txids)
        if row is None:
            raise PolicyNotFoundError(f"no policy for {name!r}")
        return _policy(row)

    async def _write_returning(
        self, stmt: sa.Executable, action: str, txids: list[int] | None
    ) -> sa.Row[Any] | None:
        """Run one ``RETURNING`` write in its own transaction; its row, or ``None``."""
        try:
            async with self._engine.begin() as conn:
                row = (await conn.execute(stmt)).one_or_none()
        except (SQLAlchemyError, OSError) as exc:
            raise AppConfigStorageError(f"policy {action} failed: {exc}") from exc
        if row is not None and txids is not None:
            txids.append(row.outbox_txid)
        return row

    async def purge(self, name: str, txids: list[int] | None = None) -> None:
        referenced = sa.exists().where(fragments.c.name == name)
        stmt = (
            sa.delete(policies)
            .where(policies.c.config_name == name, ~referenced)
            .returning(policies.c.id, _TXID)
        )
        try:
            async with self._engine.begin() as conn:
                deleted = (await conn.execute(stmt)).one_or_none()
                if deleted is not None and txids is not None:
                    txids.append(deleted.outbox_txid)
                if deleted is None:
                    found = await conn.execute(
                        sa.select(sa.exists().where(policies.c.config_name == name))
                    )
                    if not found.scalar_one():
                        raise PolicyNotFoundError(f"no policy for {name!r}")
                    raise PolicyInUseError(
                        f"the policy for {name!r} is still referenced by fragments; "
                        "purge them first"
                    )
        except IntegrityError as exc:  # a fragment was added while we deleted
            raise PolicyInUseError(
                f"the policy for {name!r} is still referenced by fragments"
            ) from exc
        except (SQLAlchemyError, OSError) as exc:
            raise AppConfigStorageError(f"policy purge failed: {exc}") from exc

    async def get(self, name: str) -> AppConfigPolicyData | None:
        try:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(sa.select(*_COLUMNS).where(policies.c.config_name == name))
                ).one_or_none()
        except (SQLAlchemyError, OSError) as exc:
            raise AppConfigStorageError(f"policy read failed: {exc}") from exc
        return None if row is None else _policy(row)
