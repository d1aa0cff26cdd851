"""Outbox test helpers: reader stacks (each its own client, L1 and clock) and SQL.

The ``make_reader`` fixture is imported by the conftest of each directory that uses it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigData,
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    make_valkey_client,
)
from tests.support.clock import FakeClock


@dataclass
class Reader:
    """One cache source as another process would have it: own client, own L1, own clock."""

    client: Any
    cache: AppConfigFragmentCacheSource
    repo: AppConfigFragmentRepository
    clock: FakeClock

    def expire_l1(self) -> None:
        """Move past L1's lifetime (and the generation readings'), so Valkey is asked."""
        self.clock.advance(self.cache.local_ttl * 2 + 1)

    async def read_until_cached(self, user_id: uuid.UUID, name: str) -> AppConfigData:
        """Read until the view is in Valkey (a first read learns the domain, the next fills)."""
        for _ in range(2):
            view = await self.repo.app_config(user_id, name)
            await self.cache.drain()
            self.expire_l1()
        return view


ReaderFactory = Callable[..., Awaitable[Reader]]


@pytest_asyncio.fixture(loop_scope="session")
async def make_reader(engine: AsyncEngine, valkey_url: str) -> AsyncIterator[ReaderFactory]:
    made: list[Reader] = []

    async def make(url: str | None = None, *, db: AsyncEngine | None = None, **kw: Any) -> Reader:
        client = make_valkey_client(url or valkey_url, socket_timeout=1.0)
        clock = FakeClock()
        kw.setdefault("timer", clock)
        kw.setdefault("outbox_interval", 3600.0)  # replays are driven by the test
        cache = AppConfigFragmentCacheSource(client, **kw)
        reader = Reader(client, cache, AppConfigFragmentRepository(db or engine, cache), clock)
        made.append(reader)
        return reader

    yield make
    for reader in made:
        await reader.cache.aclose()
        await reader.client.aclose()


#: the writer process of the killed-writer scenarios (tests/faults and bench/outbox_recovery)
OUTBOX_WRITER = Path(__file__).resolve().parent.parent / "faults" / "_outbox_writer.py"


async def spawn_outbox_writer(
    user_id: uuid.UUID, domain: str, database_url: str, valkey_url: str
) -> asyncio.subprocess.Process:
    """Start :data:`OUTBOX_WRITER` (stdin and stdout piped); it prints ``ready`` once warm."""
    env = {
        **os.environ,
        "APPCONFIG_WRITER_USER": str(user_id),
        "APPCONFIG_WRITER_DOMAIN": domain,
        "APPCONFIG_WRITER_DATABASE_URL": database_url,
        "APPCONFIG_WRITER_VALKEY_URL": valkey_url,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, str(OUTBOX_WRITER), env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def sql(engine: AsyncEngine, statement: str, **params: Any) -> None:
    """A change behind the library's back: plain SQL in its own transaction."""
    async with engine.begin() as conn:
        await conn.execute(sa.text(statement), params)


async def outbox_rows(engine: AsyncEngine) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT kind, ident FROM app_config_outbox ORDER BY id"))
        return [(kind, ident) for kind, ident in rows]


async def clear_outbox(engine: AsyncEngine) -> None:
    """Delete every outbox row: set-up data written before any cache exists has nothing
    to invalidate, and a replayer must not bump it in the middle of a later check."""
    async with engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM app_config_outbox"))


async def add_outbox_rows(engine: AsyncEngine, rows: list[tuple[str, str]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("INSERT INTO app_config_outbox (kind, ident) VALUES (:kind, :ident)"),
            [{"kind": kind, "ident": ident} for kind, ident in rows],
        )


def new_user() -> uuid.UUID:
    return uuid.uuid4()
