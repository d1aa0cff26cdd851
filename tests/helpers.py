"""Shared test helpers: users rows, SQL statement counting, fragment builders, table snapshots.

Import as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigFragmentKey,
    AppConfigPolicyData,
    AppConfigPolicyRepository,
    AppConfigScopeType,
    FragmentInput,
    MyFragmentInput,
)

PUBLIC = AppConfigScopeType.PUBLIC
DOMAIN = AppConfigScopeType.DOMAIN
DOMAIN_USER_DEFAULTS = AppConfigScopeType.DOMAIN_USER_DEFAULTS
USER = AppConfigScopeType.USER
#: every scope type, low to high priority in the usual chain
ALL_SCOPES: tuple[AppConfigScopeType, ...] = (PUBLIC, DOMAIN, DOMAIN_USER_DEFAULTS, USER)

TABLES = ("users", "app_config_policies", "app_config_fragments")


# -- users ------------------------------------------------------------------------------


async def add_user(
    engine: AsyncEngine, uid: uuid.UUID | None = None, domain: str = "d1"
) -> uuid.UUID:
    """Insert a ``users`` row (a fresh UUID unless given) and return the user's id."""
    uid = uid or uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("INSERT INTO users (uuid, domain_name) VALUES (:uid, :domain)"),
            {"uid": uid, "domain": domain},
        )
    return uid


# -- policies ---------------------------------------------------------------------------


async def add_policy(
    engine: AsyncEngine, name: str, scopes: Sequence[AppConfigScopeType] = ALL_SCOPES
) -> AppConfigPolicyData:
    """Create the policy of ``name`` through the DB-only policy repository."""
    return await AppConfigPolicyRepository(engine).create(name, list(scopes))


# -- fragment builders ------------------------------------------------------------------


def scope_id_of(scope_type: AppConfigScopeType, uid: uuid.UUID, domain: str) -> str:
    """The scope id a user in ``domain`` reads at ``scope_type``."""
    if scope_type is PUBLIC:
        return "public"
    if scope_type is USER:
        return str(uid)
    return domain


def fragment_key(
    scope_type: AppConfigScopeType | str, scope_id: str, name: str
) -> AppConfigFragmentKey:
    return AppConfigFragmentKey(
        scope_type=AppConfigScopeType(scope_type), scope_id=scope_id, name=name
    )


def fragment_input(
    scope_type: AppConfigScopeType | str, scope_id: str, name: str, config: dict[str, Any]
) -> FragmentInput:
    return FragmentInput(key=fragment_key(scope_type, scope_id, name), config=config)


def public_fragment(name: str, config: dict[str, Any]) -> FragmentInput:
    return fragment_input(PUBLIC, "public", name, config)


def domain_fragment(domain: str, name: str, config: dict[str, Any]) -> FragmentInput:
    return fragment_input(DOMAIN, domain, name, config)


def domain_defaults_fragment(domain: str, name: str, config: dict[str, Any]) -> FragmentInput:
    return fragment_input(DOMAIN_USER_DEFAULTS, domain, name, config)


def user_fragment(uid: uuid.UUID, name: str, config: dict[str, Any]) -> FragmentInput:
    return fragment_input(USER, str(uid), name, config)


def my_fragment(name: str, config: dict[str, Any]) -> MyFragmentInput:
    return MyFragmentInput(name=name, config=config)


def raw_my_fragment(name: Any, config: Any) -> MyFragmentInput:
    """A ``MyFragmentInput`` that skips pydantic, to reach the library's own validation."""
    return MyFragmentInput.model_construct(name=name, config=config)


def raw_fragment_input(scope_type: Any, scope_id: Any, name: Any, config: Any) -> FragmentInput:
    """A ``FragmentInput`` that skips pydantic, to reach the library's own validation."""
    return FragmentInput.model_construct(
        key=raw_fragment_key(scope_type, scope_id, name), config=config
    )


def raw_fragment_key(scope_type: Any, scope_id: Any, name: Any) -> AppConfigFragmentKey:
    return AppConfigFragmentKey.model_construct(scope_type=scope_type, scope_id=scope_id, name=name)


# -- SQL statement counting -------------------------------------------------------------


@dataclass
class StatementLog:
    """The SQL statements the engine sent while the counter was active."""

    statements: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.statements)


@contextmanager
def count_statements(engine: AsyncEngine) -> Iterator[StatementLog]:
    """Record every statement sent to the driver (``before_cursor_execute``) in the block.

    The listener sits on the engine, so it also sees engines derived with
    ``execution_options()``. Warm the pool up first (one read) when counting a read:
    a new connection runs the dialect's own setup queries.
    """
    log = StatementLog()

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        log.statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield log
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


# -- table contents ---------------------------------------------------------------------


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
