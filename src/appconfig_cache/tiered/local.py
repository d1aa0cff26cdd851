"""L1: a per-process TTL LRU and the local invalidation records.

Same-process invalidation is O(1): it bumps ``version`` and records the version
against the invalidated user, domain, name or the public scope. An L1 entry
or an in-flight load remembers the version it started at; it is stale when a
record that concerns it is newer. Most hits see an unchanged version and skip
the lookups entirely.

**Renewal.** An entry remembers the generations and the server epoch it was
computed under. When its ``ttl`` is up it is not dropped at once: if the
generation cache confirms, with readings younger than ``ttl``, that all of them
still hold, the entry lives on until the oldest of those readings is ``ttl``
old. So the bound on cross-process staleness is the same as for a Valkey hit
(every reading is taken before it is answered), but a hot entry costs no round
trip of its own. Hits on an entry in the second half of its life put its user
on :attr:`LocalTier.due`, the users whose generations a background refresh reads
in one batch (see the cache source).

**Bounds.** At most ``maxsize`` entries, weighing at most ``maxbytes`` together
(``weights.py``: a weight estimates the view's memory from its JSON). A view
heavier than an eighth of ``maxbytes`` is not kept.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Final, Generic, NamedTuple, TypeVar
from uuid import UUID

from cachetools import Cache, LRUCache

from . import keys
from .keys import Gens
from .readings import Readings
from .weights import NO_USAGE, Usage, WeighedLRU

MISS: Final = object()  # a cached empty view is a hit; only this is a miss

#: an L1 key: the user's UUID as its integer, and the name
Key = tuple[int, str]


def entry_key(user_id: UUID, name: str) -> Key:
    """The L1 key of ``(user_id, name)``.

    A ``UUID`` hashes in Python code (``UUID.__hash__``), its ``int`` in C, and an
    LRU hit hashes its key three times (the lookup, the membership test, the move
    to the end): keyed by the integer, an L1 hit takes about a fifth less time.
    """
    return (user_id.int, name)


V = TypeVar("V")


class Basis(NamedTuple):
    """What an entry was computed under: its generations and the server epoch."""

    gens: Gens
    server: int


class Entry(Generic[V]):
    """An L1 entry: a view, the deadlines and what it was computed under."""

    __slots__ = (
        "basis",
        "domain",
        "expires",
        "hard",
        "refresh_at",
        "request",
        "user_scope",
        "value",
        "version",
        "weight",
    )

    def __init__(
        self,
        value: V,
        domain: str | None,
        version: int,
        expires: float,
        half_life: float,
        basis: Basis | None,
        hard: float,
        request: int,
        user_scope: bool | None,
        weight: int,
    ) -> None:
        self.value = value
        self.domain = domain
        self.version = version
        self.expires = expires
        # Hits after this ask the background refresh to confirm the generations.
        # Without a basis the entry cannot be renewed: it simply expires.
        self.refresh_at = expires - half_life if basis is not None else expires
        self.basis = basis
        self.hard = hard
        #: the request number when the entry was stored
        self.request = request
        #: whether the name's chain had the user scope (None: not known)
        self.user_scope = user_scope
        #: the view's estimated memory (``weights.json_weight``)
        self.weight = weight


class LocalTier(Generic[V]):
    """L1 entries, the local invalidation records and the users' domains."""

    def __init__(
        self,
        maxsize: int,
        ttl: float,
        timer: Callable[[], float],
        readings: Readings,
        *,
        max_life: float = 600.0,
        maxbytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.ttl = ttl
        self._readings = readings
        #: no entry outlives this, renewed or not (the envelopes' TTL in Valkey)
        self.max_life = max_life
        self.timer = timer
        self.maxsize = maxsize
        self.maxbytes = maxbytes
        # An LRU whose entries carry their own deadlines, checked by get() with one
        # clock reading: refresh_at <= expires <= hard, so a hit that is neither in
        # its second half nor expired costs a comparison. Bounded by count and by
        # the entries' weights; a hit reads it as any cachetools LRUCache.
        self._entries: WeighedLRU[Key, Entry[V]] | None = (
            WeighedLRU(maxsize, maxbytes) if maxsize > 0 and maxbytes > 0 else None
        )
        #: the local invalidation version: one more for every local invalidation
        self.version = 0
        self._floor = 0  # entries and flights older than this are stale (after a prune)
        self._public_at = 0
        self._any_domain_at = 0
        self._user_at: dict[UUID, int] = {}
        self._domain_at: dict[str, int] = {}
        self._name_at: dict[str, int] = {}
        self._record_limit = 4 * maxsize + 4096
        #: user -> domain, learnt from the DB and from envelopes
        self.domains: LRUCache[UUID, str] = LRUCache(maxsize=max(4 * maxsize, 65536))
        #: users with hits on entries in the second half of their life (an ordered set)
        self.due: dict[UUID, None] = {}
        self.renewals = 0

    # -- L1 entries ---------------------------------------------------------------

    def get(self, user_id: UUID, name: str) -> V | object:
        entries = self._entries
        if entries is None:
            return MISS
        key = (user_id.int, name)  # entry_key(), inlined on the hit path
        try:
            entry = entries[key]
        except KeyError:
            return MISS
        if entry.version != self.version:
            if self.stale_since(entry.version, user_id, name, entry.domain):
                if not self._recomposable(entry, user_id):
                    del entries[key]
                return MISS  # a recomposable entry stays for stale_entry(), never served
            entry.version = self.version
        now = self.timer()
        if now >= entry.refresh_at:
            if now >= entry.expires and not self.renew(entry, user_id, name, now):
                if entry.basis is None or now >= entry.hard:
                    del entries[key]
                return MISS  # one with a basis stays for expired_entry(), never served
            if now >= entry.refresh_at:  # in the second half of its (renewed) life
                entry.refresh_at = entry.expires  # one request per half-life
                self.due[user_id] = None
        return entry.value

    def renew(self, entry: Entry[V], user_id: UUID, name: str, now: float) -> bool:
        """Extend an expired entry if fresh generation readings confirm its basis."""
        basis, domain = entry.basis, entry.domain
        if basis is None or domain is None:
            return False
        gens = basis.gens
        checks = [
            (keys.PUBLIC_GEN, gens.public),
            (keys.name_gen_key(name), gens.name),
            (keys.user_gen_key(user_id), gens.user),
        ]
        if domain != keys.NO_DOMAIN:
            checks.append((keys.domain_gen_key(domain), gens.domain))
        oldest = self._readings.confirmed_at(checks, basis.server)
        if oldest is None:
            return False
        expires = min(oldest + self.ttl, entry.hard)
        if expires <= now:
            return False
        entry.expires = expires
        entry.refresh_at = expires - self.ttl / 2
        self.renewals += 1
        return True

    def _recomposable(self, entry: Entry[V], user_id: UUID) -> bool:
        """Did only writes to shared scopes (a domain, a name, a policy) make it stale?

        Then its user part still holds until its deadline, and the cache source may
        pair it with a newer shared part (see ``stale_entry``).
        """
        version = entry.version
        return (
            entry.basis is not None
            and entry.domain is not None
            and entry.user_scope is not None
            and version >= self._floor
            and self._public_at <= version
            and self._user_at.get(user_id, 0) <= version
        )

    def stale_entry(self, user_id: UUID, name: str, now: float) -> Entry[V] | None:
        """The entry of ``(user_id, name)`` if only shared writes made it stale (and it
        is younger than ``max_life``): never served, but its user part may be reused."""
        entries = self._entries
        entry = None if entries is None else entries.get(entry_key(user_id, name))
        if (
            entry is None
            or now >= entry.hard
            or not self.stale_since(entry.version, user_id, name, entry.domain)
            or not self._recomposable(entry, user_id)
        ):
            return None
        return entry

    def expired_entry(self, user_id: UUID, name: str, now: float) -> Entry[V] | None:
        """The entry of ``(user_id, name)`` if it expired unconfirmed but nothing
        invalidated it: :meth:`renew` may keep it once fresh readings arrive."""
        entries = self._entries
        entry = None if entries is None else entries.get(entry_key(user_id, name))
        if (
            entry is None
            or entry.basis is None
            or not entry.expires <= now < entry.hard
            or self.stale_since(entry.version, user_id, name, entry.domain)
        ):
            return None
        return entry

    def take_due(self, limit: int) -> list[UUID]:
        """Up to ``limit`` users on :attr:`due`, oldest first, removed from it."""
        due = self.due
        out = list(itertools.islice(due, limit))
        for user_id in out:
            del due[user_id]
        return out

    def put(
        self,
        user_id: UUID,
        name: str,
        value: V,
        domain: str | None,
        version: int,
        expires: float,
        basis: Basis | None = None,
        *,
        request: int = 0,
        user_scope: bool | None = None,
        weight: int,
    ) -> Entry[V] | None:
        """Store unless an invalidation since ``version`` concerns it, it would expire at
        once, or it is too heavy (``weight``: its estimated memory, see ``weights``).
        Returns the entry stored (None: nothing was).

        ``basis``: the generations and server epoch the value was computed under,
        which let the entry be renewed; ``None``: it expires at ``expires``.
        ``request``: the request number now; ``user_scope``: whether the chain had
        the user scope. With both, a shared write recomposes the entry.
        """
        if self._entries is None or self.stale_since(version, user_id, name, domain):
            return None
        now = self.timer()
        if expires <= now:
            return None
        hard = now + self.max_life
        expires = min(expires, hard)
        entry = Entry(
            value, domain, version, expires, self.ttl / 2, basis, hard, request, user_scope,
            weight,
        )  # fmt: skip
        return entry if self._entries.put(entry_key(user_id, name), entry) else None

    def reweigh(self, user_id: UUID, name: str, entry: Entry[V], weight: int | None) -> None:
        """Give ``entry``, stored with an estimate, its weight; ``None``: drop it (its
        value is not to be kept). Nothing happens if the key holds another entry now."""
        entries, key = self._entries, entry_key(user_id, name)
        if entries is None or key not in entries or Cache.__getitem__(entries, key) is not entry:
            return
        if weight is None:
            del entries[key]
            return
        entry.weight = weight
        entries.put(key, entry)  # re-accounted, or dropped if too heavy

    def __len__(self) -> int:
        return 0 if self._entries is None else len(self._entries)

    def peek(self, user_id: UUID, name: str) -> Entry[V] | None:
        """The entry :meth:`get` would serve now, untouched (no LRU move, no renewal)."""
        entries, key = self._entries, entry_key(user_id, name)
        if entries is None or key not in entries:
            return None
        # Cache.__getitem__, not LRUCache's: a look by the monitor must not count as a use.
        entry: Entry[V] = Cache.__getitem__(entries, key)
        if self.stale_since(entry.version, user_id, name, entry.domain):
            return None
        return entry if self.timer() < entry.expires else None

    def sample_keys(self, k: int, rng: random.Random) -> list[tuple[UUID, str]]:
        """Up to ``k`` keys of L1 entries, chosen at random."""
        entries = self._entries
        if entries is None or k <= 0 or not entries:
            return []
        present = list(entries.keys())
        return [(UUID(int=user), name) for user, name in rng.sample(present, min(k, len(present)))]

    @property
    def enabled(self) -> bool:
        """False when ``maxsize`` or ``maxbytes`` is 0: nothing is ever stored."""
        return self._entries is not None

    def usage(self) -> Usage:
        """L1's weight and what its byte budget (``maxbytes``) turned away."""
        return NO_USAGE if self._entries is None else self._entries.usage()

    # -- invalidation records -----------------------------------------------------

    def stale_since(self, version: int, user_id: UUID, name: str, domain: str | None) -> bool:
        """Has anything concerning ``(user_id, name)`` been invalidated after ``version``?

        ``domain=None`` means the domain is not known yet: any domain counts.
        """
        if version < self._floor or self._public_at > version:
            return True
        if self._user_at.get(user_id, 0) > version or self._name_at.get(name, 0) > version:
            return True
        if domain is None:
            return self._any_domain_at > version
        return self._domain_at.get(domain, 0) > version

    def invalidate_public(self) -> None:
        self._public_at = self._bump()

    def invalidate_user(self, user_id: UUID) -> None:
        self._user_at[user_id] = self._bump()

    def invalidate_domain(self, domain: str) -> None:
        self._domain_at[domain] = self._any_domain_at = self._bump()

    def invalidate_name(self, name: str) -> None:
        self._name_at[name] = self._bump()

    def invalidate_all(self) -> None:
        """Make every entry and every load in flight stale (missed broadcasts: see
        :mod:`.broadcast`). Entries are dropped when next looked at, never served."""
        self._floor = self._bump()

    def mark(self) -> int:
        """Advance the version without a record: returns the new version."""
        return self._bump()

    def _bump(self) -> int:
        self.version += 1
        if len(self._user_at) + len(self._domain_at) + len(self._name_at) > self._record_limit:
            # Forget the records but declare everything older stale: one L1
            # cold start instead of unbounded memory.
            self._user_at.clear()
            self._domain_at.clear()
            self._name_at.clear()
            self._floor = self.version
        return self.version
