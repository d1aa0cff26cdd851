"""The cache source's end of the outbox: replay what it names, and clean up after writers.

The outbox's SQL lives in :mod:`appconfig_cache.outbox` and its engine comes
from a repository (:meth:`OutboxLink.attach`); this module turns rows into
invalidation targets and decides when a writer's rows may go: only after
Valkey has acknowledged their bumps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from uuid import UUID

from sqlalchemy.exc import SQLAlchemyError

from ....errors import AppConfigError
from ....outbox.replayer import Replayer
from ....outbox.store import OutboxRow, OutboxStore
from ....tiered.bumps import Bumps
from ....tiered.failures import Failures
from ....tiered.stats import CacheStats
from ....tiered.tasks import Background
from ....types import AppConfigScopeType
from ....validation import validate_name
from .invalidation import NAME, Invalidation, Target

_DOMAIN_KINDS = frozenset({AppConfigScopeType.DOMAIN, AppConfigScopeType.DOMAIN_USER_DEFAULTS})


def parse_rows(rows: Sequence[OutboxRow]) -> tuple[list[Target], list[str]]:
    """The targets and policy names that outbox rows name; rows no view can depend on
    (a user id that is no UUID, a name that no read accepts, an unknown kind) are dropped."""
    targets: dict[Target, None] = {}
    policies: dict[str, None] = {}
    for row in rows:
        kind, ident = row.kind, row.ident
        try:
            if kind == AppConfigScopeType.USER:
                targets[(AppConfigScopeType.USER, str(UUID(ident)))] = None
            elif kind in _DOMAIN_KINDS:
                # Domains come from the users table as they are; so do the keys built for them.
                targets[(AppConfigScopeType(kind), ident)] = None
            elif kind == NAME:
                targets[(NAME, validate_name(ident))] = None
            elif kind == "policy":
                policies[validate_name(ident)] = None
        except (ValueError, AppConfigError):
            continue
    return list(targets), list(policies)


@dataclass(eq=False)
class OutboxLink:
    """Owns the replayer once a repository has attached an outbox."""

    invalidation: Invalidation
    bumps: Bumps
    background: Background
    stats: CacheStats
    failures: Failures
    _: KW_ONLY
    grace: float
    interval: float
    batch: int
    store: OutboxStore | None = field(default=None, init=False)
    replayer: Replayer | None = field(default=None, init=False)

    def attach(self, store: OutboxStore) -> None:
        """Use ``store``'s outbox; the first one attached stays."""
        if self.store is None:
            self.store = store
            self.replayer = Replayer(
                store, self.apply, self.stats, self.failures.log, lambda: self.bumps.settled,
                grace=self.grace, interval=self.interval, batch=self.batch,
            )  # fmt: skip

    def ensure_started(self) -> None:
        if self.replayer is not None:
            self.replayer.ensure_started()

    async def apply(self, rows: list[OutboxRow]) -> bool:
        """Invalidate what ``rows`` name; whether Valkey acknowledged it."""
        targets, policies = parse_rows(rows)
        return await self.invalidation.replay(targets, policies)

    def written(self, txids: Sequence[int], acked: bool) -> None:
        """A write's bumps returned: once acknowledged, its rows go (in the background).

        Rows of a bump that did not land stay for a replayer, and so do those of
        a write that failed or was cancelled (never passed here).
        """
        if acked and txids and self.store is not None:
            self.background.spawn(self._forget(self.store, list(txids)))

    async def _forget(self, store: OutboxStore, txids: list[int]) -> None:
        try:
            self.stats.outbox_double_bumps += await store.forget(txids)
        except (SQLAlchemyError, OSError) as exc:
            self.stats.outbox_errors += 1
            self.failures.log("outbox cleanup failed; the replayer will take the rows", exc)

    async def replay_now(
        self, *, grace: float | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        if self.replayer is None:
            return 0
        return await self.replayer.poll(grace=grace, progress=progress)

    async def aclose(self) -> None:
        if self.replayer is not None:
            await self.replayer.aclose()
