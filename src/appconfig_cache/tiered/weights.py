"""Weights: what a cached value costs in memory, and an LRU bounded by their sum.

A value's *weight* is an estimate, in bytes, of the memory its parsed form
takes, made from its JSON, which the fill path has at hand anyway: the JSON's
length, plus :data:`PER_VALUE` bytes per comma (every further value of an
object or an array costs a comma and a Python object or two), plus
:data:`PER_ENTRY` for the cache's own bookkeeping. It is cheap (one C-speed
count over bytes that are already there), stable (the same bytes always weigh
the same) and was measured against ``tracemalloc`` and RSS (``bench/memory.py``,
``docs/deployment.rst``).

:class:`WeighedLRU` is a cachetools ``LRUCache`` whose ``maxsize`` is the weight
budget (cachetools' ``getsizeof``), with the entry count bounded as well. A
value heavier than :data:`HEAVY_SHARE` of the budget is refused: it would
evict a large part of the cache for one entry.
"""

from __future__ import annotations

from typing import Final, NamedTuple, Protocol, TypeVar

from cachetools import LRUCache

#: bytes of memory per comma of a value's JSON (measured: 109 to 153 per comma)
PER_VALUE: Final = 128
#: bytes of bookkeeping per entry: the key, the entry object, the LRU's slots
PER_ENTRY: Final = 512
#: a value heavier than budget / HEAVY_SHARE is served, never kept
HEAVY_SHARE: Final = 8
#: the weight of an entry stored before its JSON is made: off the caller's latency, the
#: fill task weighs it (``LocalTier.reweigh``) within the same loop iteration or the next
UNWEIGHED: Final = PER_ENTRY


def json_weight(data: bytes, start: int = 0) -> int:
    """The estimated memory of ``data[start:]`` (JSON) once parsed, plus an entry's keep."""
    return len(data) - start + PER_VALUE * data.count(b",", start) + PER_ENTRY


class Usage(NamedTuple):
    """What a :class:`WeighedLRU` holds, and what its weight budget turned away."""

    #: the sum of the entries' weights, in bytes
    weight: int
    #: values refused because they weighed more than :attr:`WeighedLRU.heaviest`
    refused: int
    #: entries evicted to stay under the weight budget (not those evicted for the count)
    evicted_for_weight: int


NO_USAGE: Final = Usage(0, 0, 0)


class Weighed(Protocol):
    @property
    def weight(self) -> int: ...


K = TypeVar("K")
W = TypeVar("W", bound=Weighed)


def _weight_of(value: Weighed) -> int:
    return value.weight


class WeighedLRU(LRUCache[K, W]):
    """An LRU of at most ``maxcount`` entries whose weights sum to at most ``maxweight``.

    Store with :meth:`put` only: it evicts the least recently used entries to make
    room, and counts those evicted for weight. Reads, deletions and ``clear`` are
    cachetools', which keep ``currsize`` (the sum of the weights) exact.
    """

    def __init__(self, maxcount: int, maxweight: int) -> None:
        if maxcount < 1 or maxweight < 1:
            raise ValueError("a WeighedLRU needs maxcount >= 1 and maxweight >= 1")
        super().__init__(maxweight, getsizeof=_weight_of)
        self.maxcount = maxcount
        #: the heaviest value kept
        self.heaviest = maxweight // HEAVY_SHARE
        #: values refused because they weighed more than :attr:`heaviest`
        self.refused = 0
        #: entries evicted to stay under the weight budget (not for the count)
        self.evicted_for_weight = 0

    def put(self, key: K, value: W) -> bool:
        """Store ``value`` under ``key``; False if it is too heavy to keep.

        A refused value also drops what ``key`` held: that older value must not
        outlive the newer one that could not be kept.
        """
        if key in self:
            del self[key]
        weight = value.weight
        if weight > self.heaviest:
            self.refused += 1
            return False
        while len(self) >= self.maxcount:
            self.popitem()
        while self.currsize + weight > self.maxsize:
            self.popitem()
            self.evicted_for_weight += 1
        self[key] = value  # room is made: cachetools evicts nothing more
        return True

    def usage(self) -> Usage:
        return Usage(int(self.currsize), self.refused, self.evicted_for_weight)
