"""SQLAlchemy 2 tables and :func:`create_schema`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .outbox.triggers import TRIGGER_DDL


class Base(DeclarativeBase):
    pass


class UserRow(Base):
    """The slice of the manager's users table that the merge needs."""

    __tablename__ = "users"

    uuid: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    domain_name: Mapped[str] = mapped_column(sa.Text, nullable=False)


class AppConfigPolicyRow(Base):
    __tablename__ = "app_config_policies"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    config_name: Mapped[str] = mapped_column(sa.Text, unique=True, nullable=False)
    scope_sources: Mapped[list[str]] = mapped_column(ARRAY(sa.Text), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )


class AppConfigFragmentRow(Base):
    __tablename__ = "app_config_fragments"
    __table_args__ = (
        sa.UniqueConstraint("scope_type", "scope_id", "name", name="uq_app_config_fragment_key"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    scope_type: Mapped[str] = mapped_column(sa.Text, nullable=False)
    scope_id: Mapped[str] = mapped_column(sa.Text, nullable=False)
    name: Mapped[str] = mapped_column(
        sa.Text,
        sa.ForeignKey("app_config_policies.config_name", name="fk_app_config_fragment_policy"),
        nullable=False,
        index=True,
    )
    config: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )


class AppConfigOutboxRow(Base):
    """What a committed change invalidates, written by the triggers (``outbox/triggers.py``).

    ``kind`` is a scope type (``user``, ``domain``, ``domain_user_defaults``),
    ``name`` (a public fragment: that name's views) or ``policy``; ``ident`` is
    the scope id or the config name. Key strings never appear here.
    """

    __tablename__ = "app_config_outbox"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.Text, nullable=False)
    ident: Mapped[str] = mapped_column(sa.Text, nullable=False)
    #: the writing transaction (``txid_current()``): its writer deletes its rows by it
    txid: Mapped[int] = mapped_column(
        sa.BigInteger, nullable=False, server_default=sa.text("txid_current()"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.text("clock_timestamp()"),
        index=True,
    )


users = cast(sa.Table, UserRow.__table__)
policies = cast(sa.Table, AppConfigPolicyRow.__table__)
fragments = cast(sa.Table, AppConfigFragmentRow.__table__)
outbox = cast(sa.Table, AppConfigOutboxRow.__table__)


async def create_schema(engine: AsyncEngine) -> None:
    """Create the tables that do not exist, and (re)install the outbox triggers.

    Idempotent. On a database made by an earlier version, the existing tables
    are left as they are; the outbox table and its triggers are added.
    """
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all, checkfirst=True)
        for statement in TRIGGER_DDL:
            await conn.execute(sa.text(statement))
