"""The org the consistency tests (``check``, the monitor, the metrics) read, and a change
made behind the cache."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import AppConfigFragmentRepository
from tests.support.data import add_policy, add_users
from tests.support.fragments import domain_fragment, user_fragment


async def theme_org(
    engine: AsyncEngine, n_users: int, names: Sequence[str], user_theme: dict[str, Any]
) -> list[uuid.UUID]:
    """``n_users`` users of domain d1: a d1 fragment for each of ``names``, and a ``theme``
    fragment of each user's own (``user_theme``)."""
    users = [uuid.uuid4() for _ in range(n_users)]
    await add_users(engine, {uid: "d1" for uid in users})
    for name in names:
        await add_policy(engine, name)
    plain = AppConfigFragmentRepository(engine)
    await plain.admin_bulk_create([domain_fragment("d1", n, {"color": "blue"}) for n in names])
    await plain.admin_bulk_create([user_fragment(uid, "theme", user_theme) for uid in users])
    return users


async def change_behind_the_cache(engine: AsyncEngine, uid: uuid.UUID) -> None:
    """Change a user's theme in PostgreSQL with invalidation bypassed (plain SQL)."""
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE app_config_fragments SET config = CAST(:c AS JSONB) "
                "WHERE scope_type = 'user' AND scope_id = :uid AND name = 'theme'"
            ),
            {"c": json.dumps({"size": "secret-value"}), "uid": str(uid)},
        )
