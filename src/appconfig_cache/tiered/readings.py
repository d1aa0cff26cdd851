"""Generation readings, the server epoch, and the request numbers that order them.

Every request to Valkey that reads a generation takes a *request number*
(:meth:`Readings.next_request`) before it is sent. Replies can arrive out of
order (a ``GET`` sent before an ``INCR`` may be answered after it), so a
reading only replaces one taken by an older request. Forgetting a generation
takes a number too: replies to requests sent before it cannot bring the old
value back.

The *server epoch* is the identity of the Valkey server(s), from ``INFO
server``: a restart, a restore or a failover changes it, and no envelope
written before can match again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from cachetools import LRUCache

from . import keys

_FORGOTTEN = float("-inf")
#: readings kept at most; past this they are all dropped (read again on demand)
_MAX_READINGS = 65536


class Reading(NamedTuple):
    """A generation's value (None: absent in Valkey), when it was read, and by which request."""

    value: int | None
    read_at: float
    request: int


class Readings:
    """What this process last read of the generations and the server epoch.

    A reading serves for ``ttl`` seconds (``local_ttl``): the bound on how long
    another process's invalidation can go unseen here.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._request = 0
        self._floor = 0  # replies to requests numbered below this are not kept
        self._gens: dict[str, Reading] = {}
        #: the keys of ``_gens`` that are not a user's (few: public, names, domains)
        self._shared_keys: set[str] = set()
        self._server = Reading(None, _FORGOTTEN, 0)
        # user generation key -> its value and the request number when it was first seen
        self._user_since: LRUCache[str, Reading] = LRUCache(maxsize=65536)

    def next_request(self) -> int:
        self._request += 1
        return self._request

    # -- generations ----------------------------------------------------------------

    def get(self, key: str, now: float) -> Reading | None:
        """The reading of ``key`` if it is younger than ``ttl``."""
        found = self._gens.get(key)
        if found is None or now - found.read_at >= self.ttl:
            return None
        return found

    def put(self, key: str, value: int | None, read_at: float, request: int) -> None:
        """Remember what request ``request`` read, unless a newer request's reading is kept."""
        found = self._gens.get(key)
        if (found is not None and found.request > request) or request < self._floor:
            return
        if len(self._gens) > _MAX_READINGS:
            self._gens.clear()
            self._shared_keys.clear()
        self._record(key, Reading(value, read_at, request))

    def forget(self, key: str, request: int) -> None:
        """Mark ``key`` unknown; replies to requests older than ``request`` cannot revive it."""
        self._record(key, Reading(None, _FORGOTTEN, request))

    def forget_all(self) -> None:
        """Forget every generation reading; replies to requests already sent are not kept."""
        self._floor = self.next_request()
        self._gens.clear()
        self._shared_keys.clear()

    def _record(self, key: str, reading: Reading) -> None:
        self._gens[key] = reading
        if not key.startswith(keys.USER_GEN_PREFIX):
            self._shared_keys.add(key)

    def shared_due(self, now: float) -> list[str]:
        """The non-user generations in the second half of their life (a refresh reads them)."""
        limit = now - self.ttl / 2
        gens = self._gens
        return [key for key in self._shared_keys if _FORGOTTEN < gens[key].read_at <= limit]

    def fresh_values(self, prefix: str, now: float) -> dict[str, int]:
        """The non-user generations under ``prefix`` with a reading younger than ``ttl``."""
        limit, gens = now - self.ttl, self._gens
        return {
            key: reading.value
            for key in self._shared_keys
            if key.startswith(prefix)
            and (reading := gens[key]).value is not None
            and reading.read_at > limit
        }

    def confirmed_at(self, expected: Iterable[tuple[str, int]], server_epoch: int) -> float | None:
        """When the oldest of the readings was taken, if each ``(key, value)`` and the server
        epoch read as expected (at any age), else None."""
        server = self._server
        if server.value != server_epoch:
            return None
        oldest = server.read_at
        for key, value in expected:
            found = self._gens.get(key)
            if found is None or found.value != value:
                return None
            oldest = min(oldest, found.read_at)
        return oldest

    def user_held_since(self, user_key: str, value: int | None) -> int:
        """Record a reply's user generation; return since when that value is known to hold.

        The stamp is a request number taken when the reply is handled: a request
        numbered above it was sent after the value was current in Valkey.
        """
        known = self._user_since.get(user_key)
        if known is not None and known.value == value and value is not None:
            return known.request
        request = self.next_request()
        self._user_since[user_key] = Reading(value, 0.0, request)
        return request

    def user_gen_seen(self, user_key: str) -> bool:
        """Has a reply shown this user generation existing (it is then read, not created)?"""
        known = self._user_since.get(user_key)
        return known is not None and known.value is not None

    # -- the server epoch -------------------------------------------------------------

    def epoch(self, now: float) -> int | None:
        """The server epoch, if read less than ``ttl`` ago."""
        server = self._server
        return None if now - server.read_at >= self.ttl else server.value

    def epoch_due(self, now: float) -> bool:
        """Is the epoch in the second half of its life (a refresh reads it again)?"""
        return _FORGOTTEN < self._server.read_at <= now - self.ttl / 2

    def put_epoch(self, value: int, read_at: float, request: int) -> None:
        if self._server.request <= request:
            self._server = Reading(value, read_at, request)

    def forget_epoch(self) -> None:
        """Valkey looked unreachable: it may have restarted, so read its identity again."""
        self._server = Reading(None, _FORGOTTEN, self.next_request())
