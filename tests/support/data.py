"""Rows in the library's tables: users, policies; emptying and snapshotting the tables."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import AppConfigPolicyData, AppConfigPolicyRepository, AppConfigScopeType
from appconfig_cache.models import users

from .scopes import ALL_SCOPES

TABLES = ("users", "app_config_policies", "app_config_fragments", "app_config_outbox")


async def add_user(
    engine: AsyncEngine, uid: uuid.UUID | None = None, domain: str = "d1"
) -> uuid.UUID:
    """Insert a ``users`` row (a fresh UUID unless given) and return the user's id."""
    uid = uid or uuid.uuid4()
    await add_users(engine, {uid: domain})
    return uid


async def add_users(engine: AsyncEngine, members: dict[uuid.UUID, str]) -> None:
    """Insert a ``users`` row for every ``{user id: domain}``."""
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(users), [{"uuid": uid, "domain_name": d} for uid, d in members.items()]
        )


async def add_policy(
    engine: AsyncEngine, name: str, scopes: Sequence[AppConfigScopeType] = ALL_SCOPES
) -> AppConfigPolicyData:
    """Create the policy of ``name`` through the DB-only policy repository."""
    return await AppConfigPolicyRepository(engine).create(name, list(scopes))


async def truncate_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))


async def fragment_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every stored fragment as a dict, ordered by key."""
    async with engine.connect() as conn:
        result = await conn.execute(
            sa.text(
                "SELECT id, scope_type, scope_id, name, config, created_at, updated_at "
                "FROM app_config_fragments ORDER BY scope_type, scope_id, name"
            ).columns(config=sa.JSON)
        )
        return [dict(row._mapping) for row in result]


async def table_snapshot(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the library's tables, for "nothing was written" checks."""
    snapshot: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        for table in TABLES:
            rows = await conn.execute(sa.text(f"SELECT * FROM {table}"))
            snapshot[table] = sorted((tuple(map(repr, row)) for row in rows), key=repr)
    return snapshot
