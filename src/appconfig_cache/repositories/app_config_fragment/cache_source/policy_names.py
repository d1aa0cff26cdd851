"""The list of config names that have a policy (the bootstrap's first read), in both tiers.

Cached under the ``policies`` generation that every policy change bumps:
``{"g": <gen>, "e": <server epoch>, "names": [...]}`` in Valkey, and a copy in
process memory for ``local_ttl``.

Once the copy exists, the ``policies`` generation rides along with the read
path's generation reads (the lookup's pipeline, the background refresh), and a
fresh reading of it equal to the copy's renews the copy. A bootstrap whose copy
has expired reads the views of the copy's names first; their round trip reads
the generation, so an unchanged list costs no round trip of its own.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import NamedTuple

from ....errors import AppConfigError
from ....tiered import keys
from ....tiered.bumps import Bumps, gen_base
from ....tiered.commands import Commands
from ....tiered.failures import Failures
from ....tiered.fills import FillQueue
from ....tiered.local import LocalTier
from ....tiered.readings import Readings
from ....tiered.stats import CacheStats
from ....types import AppConfigData
from ....validation import validate_name

#: reads the views of names, in their order
ViewsReader = Callable[[list[str]], Awaitable[list[AppConfigData]]]


class _Copy(NamedTuple):
    names: list[str]
    version: int  # the local invalidation version when it was read
    expires: float
    gen: int | None  # the policies generation it was read under (None: unknown)
    epoch: int | None  # the server epoch then


@dataclass(eq=False)
class PolicyNames:
    """The names list: the local copy, then Valkey, then the loader."""

    local: LocalTier[AppConfigData]
    readings: Readings
    commands: Commands
    bumps: Bumps
    fills: FillQueue
    stats: CacheStats
    failures: Failures
    _: KW_ONLY
    local_ttl: float
    timer: Callable[[], float]
    #: generation keys the lookup reads along with its own when stale: the policies
    #: generation, once there is a copy to renew
    riders: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._copy: _Copy | None = None
        self._changed_at = 0  # the local version of the last policy change

    def changed(self) -> None:
        """A policy changed (here or, by the broadcast, elsewhere): the copy is stale."""
        self._changed_at = self.local.mark()

    def current(self) -> list[str] | None:
        """The copy's names if they are current: young, or confirmed by a fresh reading
        of the policies generation (which renews the copy)."""
        copy = self._copy
        if copy is None or self._changed_at > copy.version:
            return None
        now = self.timer()
        if copy.expires > now:
            return copy.names
        reading = self.readings.get(keys.POLICIES_GEN, now)
        if (
            copy.gen is None
            or reading is None
            or reading.value != copy.gen
            or self.readings.epoch(now) != copy.epoch
        ):
            return None
        self._copy = copy._replace(expires=reading.read_at + self.local_ttl)
        return copy.names

    async def bootstrap(
        self, loader: Callable[[], Awaitable[list[str]]], read: ViewsReader
    ) -> list[AppConfigData]:
        """The views of every name with a policy, in the list's order.

        With an expired copy, the views of its names are read first: the read path's
        round trip reads the policies generation too, and an unchanged list is then
        confirmed without a round trip of its own.
        """
        names = self.current()
        if names is not None:
            return await read(names)
        copy = self._copy
        if copy is None or copy.gen is None or self._changed_at > copy.version:
            return await read(await self.get(loader))
        guess = copy.names
        views = dict(zip(guess, await read(guess), strict=True))
        names = self.current()
        if names is None or names != guess:
            self.stats.bootstrap_list_changed += 1
            names = await self.get(loader)
            if rest := [name for name in names if name not in views]:
                views.update(zip(rest, await read(rest), strict=True))
        return [views[name] for name in names]

    async def get(self, loader: Callable[[], Awaitable[list[str]]]) -> list[str]:
        names = self.current()
        if names is not None:
            return names
        now = self.timer()
        version = self.local.version
        names = None
        gen: int | None = None
        if await self.bumps.catch_up():
            names, gen = await self._lookup(now)
        server = self.readings.epoch(now)
        if names is None:
            names = await loader()
            self.stats.db_loads += 1
            if gen is not None and server is not None:  # off the caller's latency
                payload = json.dumps({"g": gen, "e": server, "names": names}).encode()
                self.fills.add(lambda: [(keys.POLICY_NAMES, payload)], 1)
        if self._changed_at <= version:
            self._copy = _Copy(names, version, now + self.local_ttl, gen, server)
            if gen is not None and keys.POLICIES_GEN not in self.riders:
                self.riders.append(keys.POLICIES_GEN)
        return names

    async def _lookup(self, now: float) -> tuple[list[str] | None, int | None]:
        """``(names or None on a miss, the policies generation read before any DB query)``."""
        request = self.readings.next_request()
        base = gen_base()
        try:
            raw, gen = await self.commands.read_listed(
                keys.POLICY_NAMES, keys.POLICIES_GEN, base, now, request
            )
        except Exception as exc:  # failures, and replies of another shape
            self.failures.log("valkey read failed", exc)
            return None, None
        if gen is None:  # just created: nothing cached can match it, a fill can
            self.readings.put(keys.POLICIES_GEN, base, now, request)
            return None, base
        self.readings.put(keys.POLICIES_GEN, gen, now, request)
        epoch = self.readings.epoch(now)
        if epoch is None:
            return None, None
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
