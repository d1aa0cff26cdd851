"""The outbox's SQL: claim due rows, delete a writer's rows, measure the backlog.

Knows nothing of Valkey: what "applying" a batch means is the caller's
``apply``, run while the batch's rows are locked; the rows are deleted in the
same transaction only if it says the bumps landed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["Backlog", "OutboxRow", "OutboxStore"]

_DUE = "created_at < clock_timestamp() - make_interval(secs => :grace)"

# Cheap and indexed (created_at): what every cache source runs once per interval.
_ANY_DUE_SQL = sa.text(f"SELECT EXISTS (SELECT 1 FROM app_config_outbox WHERE {_DUE})")

# Rows another replayer holds are skipped, not waited for: two replayers share
# a backlog instead of queueing behind each other.
_CLAIM_SQL = sa.text(
    f"SELECT id, kind, ident FROM app_config_outbox WHERE {_DUE} "
    "ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
)

_DELETE_IDS_SQL = sa.text("DELETE FROM app_config_outbox WHERE id = ANY(CAST(:ids AS bigint[]))")

_DELETE_TXIDS_SQL = sa.text(
    "WITH gone AS (DELETE FROM app_config_outbox WHERE txid = ANY(CAST(:txids AS bigint[])) "
    "RETURNING txid) SELECT count(DISTINCT txid) FROM gone"
)

_BACKLOG_SQL = sa.text(
    "SELECT count(*), EXTRACT(EPOCH FROM clock_timestamp() - min(created_at)) "
    "FROM app_config_outbox"
)


class OutboxRow(NamedTuple):
    id: int
    kind: str
    ident: str


class Backlog(NamedTuple):
    rows: int
    #: seconds since the oldest row was written (None: the outbox is empty)
    oldest_age: float | None


class NotApplied(Exception):
    """``apply`` said the bumps did not land: the batch's rows stay."""


class OutboxStore:
    """SQL on the outbox table of one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def any_due(self, grace: float) -> bool:
        async with self._autocommit.connect() as conn:
            return bool((await conn.execute(_ANY_DUE_SQL, {"grace": grace})).scalar_one())

    async def replay_batch(
        self, limit: int, grace: float, apply: Callable[[list[OutboxRow]], Awaitable[bool]]
    ) -> int:
        """Claim up to ``limit`` due rows, ``apply`` them, delete them: one transaction.

        Returns how many rows were replayed; raises :class:`NotApplied` (nothing
        deleted) if ``apply`` returned False, and what the database raises.
        """
        async with self.engine.begin() as conn:
            claimed = await conn.execute(_CLAIM_SQL, {"grace": grace, "limit": limit})
            rows = [OutboxRow(*row) for row in claimed.all()]
            if not rows:
                return 0
            if not await apply(rows):
                raise NotApplied  # leaves the block: the transaction rolls back
            await conn.execute(_DELETE_IDS_SQL, {"ids": [row.id for row in rows]})
        return len(rows)

    async def forget(self, txids: Sequence[int]) -> int:
        """Delete the rows of these (committed, bumped) transactions.

        Returns how many of the transactions had no row left: a replayer got
        there first, and their targets were bumped twice.
        """
        wanted = set(txids)
        async with self._autocommit.connect() as conn:
            found = (await conn.execute(_DELETE_TXIDS_SQL, {"txids": list(wanted)})).scalar_one()
        return len(wanted) - int(found)

    async def backlog(self) -> Backlog:
        async with self._autocommit.connect() as conn:
            rows, age = (await conn.execute(_BACKLOG_SQL)).one()
        return Backlog(int(rows), None if age is None else float(age))
