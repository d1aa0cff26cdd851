"""The list of config names that have a policy (the bootstrap's first read), in both tiers.

Cached under the ``policies`` generation that every policy change bumps:
``{"g": <gen>, "e": <server epoch>, "names": [...]}`` in Valkey, and a copy in
process memory for ``local_ttl``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass
from typing import NamedTuple

from ....errors import AppConfigError
from ....tiered import keys
from ....tiered.bumps import Bumps, gen_base
from ....tiered.commands import Commands
from ....tiered.failures import Failures
from ....tiered.local import LocalTier
from ....tiered.readings import Readings
from ....tiered.stats import CacheStats
from ....types import AppConfigData
from ....validation import validate_name


class _Copy(NamedTuple):
    names: list[str]
    version: int  # the local invalidation version when it was read
    expires: float


@dataclass(eq=False)
class PolicyNames:
    """The names list: the local copy, then Valkey, then the loader."""

    local: LocalTier[AppConfigData]
    readings: Readings
    commands: Commands
    bumps: Bumps
    stats: CacheStats
    failures: Failures
    _: KW_ONLY
    local_ttl: float
    timer: Callable[[], float]

    def __post_init__(self) -> None:
        self._copy: _Copy | None = None
        self._changed_at = 0  # the local version of the last policy change

    def changed(self) -> None:
        """A policy changed (here or, by the broadcast, elsewhere): the copy is stale."""
        self._changed_at = self.local.mark()

    async def get(self, loader: Callable[[], Awaitable[list[str]]]) -> list[str]:
        now = self.timer()
        copy = self._copy
        if copy is not None and copy.expires > now and self._changed_at <= copy.version:
            return copy.names
        version = self.local.version
        names: list[str] | None = None
        gen: int | None = None
        if await self.bumps.catch_up():
            names, gen = await self._lookup(now)
        server = self.readings.epoch(now)
        if names is None:
            names = await loader()
            self.stats.db_loads += 1
            if gen is not None and server is not None:
                await self._fill(gen, server, names)
        if self._changed_at <= version:
            self._copy = _Copy(names, version, now + self.local_ttl)
        return names

    async def _lookup(self, now: float) -> tuple[list[str] | None, int | None]:
        """``(names or None on a miss, the policies generation read before any DB query)``."""
        request = self.readings.next_request()
        try:
            raw, gen = await self.commands.read_listed(
                keys.POLICY_NAMES, keys.POLICIES_GEN, gen_base(), now, request
            )
        except Exception as exc:  # failures, and replies of another shape
            self.failures.log("valkey read failed", exc)
            return None, None
        epoch = self.readings.epoch(now)
        if gen is None or epoch is None:
            return None, None  # just created: nothing cached can match it
        try:
            doc = json.loads(raw) if raw is not None else None
            if isinstance(doc, dict) and doc.get("g") == gen and doc.get("e") == epoch:
                names = doc.get("names")
                if isinstance(names, list) and all(isinstance(n, str) for n in names):
                    self.stats.l2_hits += 1
                    return [validate_name(n) for n in names], gen
        except (ValueError, TypeError, AppConfigError) as exc:
            self.failures.reject("rejected a malformed policy-name list", exc)
        self.stats.l2_misses += 1
        return None, gen

    async def _fill(self, gen: int, server: int, names: list[str]) -> None:
        payload = json.dumps({"g": gen, "e": server, "names": names}).encode()
        try:
            await self.commands.store(keys.POLICY_NAMES, payload)
        except Exception as exc:
            self.failures.log("valkey fill failed", exc)
