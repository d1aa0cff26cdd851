"""The L2 lookup: one ``MGET`` in the user's slot, and the envelopes it proves current."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from uuid import UUID

from ....tiered import keys
from ....tiered.bumps import gen_base
from ....tiered.commands import Commands
from ....tiered.envelope import Candidate, EnvelopeReader
from ....tiered.failures import Failures
from ....tiered.local import Basis, LocalTier
from ....tiered.readings import Readings
from ....tiered.stats import CacheStats
from ....types import AppConfigData
from .generations import FillPlan, ViewGenerations, shared_gen_keys
from .store import Store


@dataclass(frozen=True, slots=True)
class Looked:
    """What a lookup found, and what it read that a fill or a recomposition needs."""

    found: dict[str, AppConfigData]
    #: outdated envelopes whose user generation and server epoch still hold
    reusable: dict[str, Candidate]
    #: the user's domain as far as this process knows it now (None: unknown)
    domain: str | None
    user_gen: int | None
    user_domain: str | None  # what Valkey's user_domain key said
    #: the user generation has held since before any request numbered above this was sent
    user_since: int
    read_at: float


@dataclass(eq=False)
class Lookup:
    """Finds current envelopes in Valkey; their views go to L1 through the store."""

    local: LocalTier[AppConfigData]
    readings: Readings
    commands: Commands
    generations: ViewGenerations
    envelopes: EnvelopeReader[AppConfigData]
    store: Store
    stats: CacheStats
    failures: Failures
    _: KW_ONLY
    local_ttl: float
    #: generation keys read along with a lookup's when they are stale (policy names)
    riders: list[str] = field(default_factory=list)

    async def find(
        self, user_id: UUID, names: list[str], version: int, now: float
    ) -> Looked | None:
        """Look ``names`` up (plus the generations that are due); None if Valkey failed.

        Due generations, and the user's if this process has not seen it exist, are read
        or created in the same round trip: a miss needs no other before its DB query.
        """
        local, readings = self.local, self.readings
        request = readings.next_request()
        domain = before = local.domains.get(user_id)
        due = self.generations.stale(shared_gen_keys(names, domain) + self.riders, now)
        user_gen_key = keys.user_gen_key(user_id)
        user_base = None if readings.user_gen_seen(user_gen_key) else gen_base()
        user_keys = [keys.merged_key(user_id, name) for name in names]
        user_keys.append(keys.user_domain_key(user_id))
        try:
            reply = await self.commands.lookup(
                user_keys, (user_gen_key, user_base), {key: gen_base() for key in due}, now,
                request,
            )  # fmt: skip
        except Exception as exc:  # failures, and replies of another shape
            self.failures.log("valkey read failed", exc)
            self.stats.l2_skipped += len(names)
            return None
        try:
            values = reply.values
            if len(values) != len(user_keys):
                raise TypeError(f"MGET answered {len(values)} values for {len(user_keys)} keys")
            for key, value in zip(due, reply.gens, strict=True):
                readings.put(key, value, now, request)
            user_gen = reply.user_gen
            readings.put(user_gen_key, user_gen, now, request)
            user_since = readings.user_held_since(user_gen_key, user_gen)
            raw_domain = values[-1]
            user_domain = raw_domain.decode() if isinstance(raw_domain, bytes) else None
        except (TypeError, ValueError, IndexError) as exc:  # a reply of another shape
            self.failures.reject("valkey answered a reply of the wrong shape", exc)
            self.stats.l2_skipped += len(names)
            return None
        if user_domain is not None and user_domain != domain:
            domain = user_domain
            local.domains[user_id] = user_domain

        candidates = self.envelopes.candidates(user_id, names, values, user_domain)
        # Domains whose generation is not cached, named by envelopes (checking them needs
        # it) or by the user_domain key (a fill needs it, and reading it after the DB query
        # would not do): one more round trip. A domain this process knew before the lookup
        # was due or fresh: read by now.
        named = {candidate.header.domain for candidate in candidates}
        if domain:
            named.add(domain)
        named.discard(keys.NO_DOMAIN)
        named.discard(before)
        late = self.generations.stale([keys.domain_gen_key(d) for d in named], now)
        if late and not await self.generations.fetch(late, now, create=True):
            return None

        found, reusable = self._current_views(user_id, candidates, user_gen, version, now)
        self.stats.l2_hits += len(found)
        self.stats.l2_misses += len(names) - len(found)
        return Looked(found, reusable, domain, user_gen, user_domain, user_since, now)

    async def plan(self, user_id: UUID, names: list[str], looked: Looked) -> FillPlan | None:
        """The generations new envelopes of ``names`` go under: those read by the lookup
        (before any DB query), plus absent ones created now."""
        return await self.generations.plan(
            user_id, names, looked.domain, looked.user_gen, looked.user_domain, looked.read_at
        )

    def _current_views(
        self,
        user_id: UUID,
        candidates: list[Candidate],
        user_gen: int | None,
        version: int,
        now: float,
    ) -> tuple[dict[str, AppConfigData], dict[str, Candidate]]:
        """The views of the current envelopes (kept in L1), and the reusable outdated ones."""
        found: dict[str, AppConfigData] = {}
        reusable: dict[str, Candidate] = {}
        server_epoch = self.readings.epoch(now)
        request = self.readings.next_request()  # after the reply: see LocalTier.stale_entry
        for candidate in candidates:
            name, header = candidate.name, candidate.header
            current = self.generations.current(name, header.domain, user_gen, now)
            if current is None or header.gens != current.gens or header.epoch != server_epoch:
                self.stats.envelopes_outdated += 1
                if (
                    header.user_scope is not None
                    and user_gen is not None
                    and header.gens.user == user_gen
                    and header.epoch == server_epoch
                ):
                    reusable[name] = candidate  # only shared scopes changed
                continue
            parsed = self.envelopes.parse(user_id, name, candidate.raw, header)
            if parsed is not None:
                found[name] = parsed.value
                self.store.keep_hit(
                    user_id, name, parsed, header.domain, version,
                    current.oldest + self.local_ttl, Basis(current.gens, header.epoch),
                    request, header.user_scope,
                )  # fmt: skip
        return found, reusable
