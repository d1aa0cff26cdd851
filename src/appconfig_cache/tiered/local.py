"""L1: a per-process TTL LRU, the local invalidation records, and the generation cache.

Same-process invalidation is O(1): it bumps ``epoch`` and records the epoch
against the invalidated user, domain, name or the public scope. An L1 entry
or an in-flight load remembers the epoch it started at; it is stale when a
record that concerns it is newer. Most hits see an unchanged epoch and skip
the lookups entirely.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final
from uuid import UUID

from cachetools import LRUCache, TLRUCache

from ..types import AppConfigData

MISS: Final = object()  # a cached empty view is a hit; only this is a miss


class _Entry:
    __slots__ = ("domain", "epoch", "expires", "value")

    def __init__(
        self, value: AppConfigData, domain: str | None, epoch: int, expires: float
    ) -> None:
        self.value = value
        self.domain = domain
        self.epoch = epoch
        self.expires = expires


def _entry_expiry(_key: object, entry: _Entry, _now: float) -> float:
    return entry.expires


class LocalTier:
    """Everything the cache source keeps in process memory."""

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float]) -> None:
        self.ttl = ttl
        self.timer = timer
        self.maxsize = maxsize
        self._entries: TLRUCache[tuple[UUID, str], _Entry] | None = (
            TLRUCache(maxsize, _entry_expiry, timer=timer) if maxsize > 0 else None
        )
        self.epoch = 0
        self._floor = 0  # entries and flights older than this are stale (after a prune)
        self._public_at = 0
        self._any_domain_at = 0
        self._user_at: dict[UUID, int] = {}
        self._domain_at: dict[str, int] = {}
        self._name_at: dict[str, int] = {}
        self._record_limit = 4 * maxsize + 4096
        #: user -> domain, learnt from the DB and from envelopes
        self.domains: LRUCache[UUID, str] = LRUCache(maxsize=max(4 * maxsize, 65536))
        #: generation key -> (value or None when absent, fetched at, request sequence)
        self._gens: dict[str, tuple[int | None, float, int]] = {}

    # -- L1 entries ---------------------------------------------------------------

    def get(self, user_id: UUID, name: str) -> AppConfigData | object:
        entries = self._entries
        if entries is None:
            return MISS
        try:
            entry = entries[(user_id, name)]
        except KeyError:
            return MISS
        if entry.epoch != self.epoch:
            if self.stale_since(entry.epoch, user_id, name, entry.domain):
                del entries[(user_id, name)]
                return MISS
            entry.epoch = self.epoch
        return entry.value

    def put(
        self,
        user_id: UUID,
        name: str,
        value: AppConfigData,
        domain: str | None,
        epoch: int,
        expires: float,
    ) -> bool:
        """Store unless an invalidation since ``epoch`` concerns it, or it would expire at once."""
        if self._entries is None or self.stale_since(epoch, user_id, name, domain):
            return False
        if expires <= self.timer():
            return False
        self._entries[(user_id, name)] = _Entry(value, domain, epoch, expires)
        return True

    def __len__(self) -> int:
        return 0 if self._entries is None else len(self._entries)

    # -- invalidation records -----------------------------------------------------

    def stale_since(self, epoch: int, user_id: UUID, name: str, domain: str | None) -> bool:
        """Has anything concerning ``(user_id, name)`` been invalidated after ``epoch``?

        ``domain=None`` means the domain is not known yet: any domain counts.
        """
        if epoch < self._floor or self._public_at > epoch:
            return True
        if self._user_at.get(user_id, 0) > epoch or self._name_at.get(name, 0) > epoch:
            return True
        if domain is None:
            return self._any_domain_at > epoch
        return self._domain_at.get(domain, 0) > epoch

    def invalidate_public(self) -> None:
        self._public_at = self._bump()

    def invalidate_user(self, user_id: UUID) -> None:
        self._user_at[user_id] = self._bump()

    def invalidate_domain(self, domain: str) -> None:
        self._domain_at[domain] = self._any_domain_at = self._bump()

    def invalidate_name(self, name: str) -> None:
        self._name_at[name] = self._bump()

    def mark(self) -> int:
        """Advance the epoch without a record: returns the new epoch."""
        return self._bump()

    def _bump(self) -> int:
        self.epoch += 1
        if len(self._user_at) + len(self._domain_at) + len(self._name_at) > self._record_limit:
            # Forget the records but declare everything older stale: one L1
            # cold start instead of unbounded memory.
            self._user_at.clear()
            self._domain_at.clear()
            self._name_at.clear()
            self._floor = self.epoch
        return self.epoch

    # -- generation cache ---------------------------------------------------------

    def gen(self, key: str, now: float) -> tuple[int | None, float, int] | None:
        """A cached generation younger than ``ttl``: ``(value, fetched_at, seq)``."""
        found = self._gens.get(key)
        if found is None or now - found[1] >= self.ttl:
            return None
        return found

    def set_gen(self, key: str, value: int | None, fetched_at: float, seq: int) -> None:
        """Remember a generation read by request number ``seq``.

        A reply can arrive after a newer one (a read sent before an INCR,
        answered after it): ``seq`` keeps the older value from winning.
        """
        found = self._gens.get(key)
        if found is not None and found[2] > seq:
            return
        if len(self._gens) > 65536:
            self._gens.clear()
        self._gens[key] = (value, fetched_at, seq)

    def forget_gen(self, key: str, seq: int) -> None:
        """Mark a generation unknown; replies to requests older than ``seq`` cannot revive it."""
        self._gens[key] = (None, float("-inf"), seq)
