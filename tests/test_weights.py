"""L1 and the parse memo bounded by weight (I6): the generic pieces, without servers.

``LocalTier`` and ``WeighedLRU`` are driven directly, with an injected clock, so
each eviction can be named: which entry goes, and whether for weight or count.
"""

from __future__ import annotations

import json
from uuid import uuid4

import pytest

from appconfig_cache import AppConfigFragmentCacheSource, CacheSettingsError
from appconfig_cache.tiered.local import MISS, LocalTier
from appconfig_cache.tiered.readings import Readings
from appconfig_cache.tiered.weights import PER_ENTRY, PER_VALUE, Usage, WeighedLRU, json_weight
from tests.support.clock import FakeClock

TTL = 2.0
BUDGET = 1000  # bytes; the heaviest entry kept is an eighth: 125


def tier(clock: FakeClock, *, maxsize: int = 100, maxbytes: int = BUDGET) -> LocalTier[str]:
    return LocalTier(maxsize, TTL, clock, Readings(TTL), max_life=600.0, maxbytes=maxbytes)


def put(local: LocalTier[str], user: object, name: str, weight: int, clock: FakeClock) -> bool:
    entry = local.put(
        user,  # type: ignore[arg-type]
        name, f"view {name}", "d", local.version, clock() + TTL, weight=weight,
    )  # fmt: skip
    return entry is not None


def test_json_weight_counts_length_and_values() -> None:
    doc = json.dumps({"a": [1, 2, 3], "b": "x,y"}, separators=(",", ":")).encode()
    assert json_weight(doc) == len(doc) + PER_VALUE * doc.count(b",") + PER_ENTRY
    # from an offset: only the view after an envelope's header is weighed
    envelope = b'{"v":1,"g":[1,2,3,4]}\n' + doc
    assert json_weight(envelope, envelope.index(b"\n") + 1) == json_weight(doc)


def test_reweigh_accounts_the_weight_made_later() -> None:
    """An entry stored with an estimate gets its weight later (the fill task weighs the
    views a DB load put in L1): the account follows, a too heavy one goes, and an entry
    that replaced it in the meantime is left alone."""
    clock = FakeClock()
    local = tier(clock)
    a, b, c = uuid4(), uuid4(), uuid4()
    entry_a = local.put(a, "theme", "view a", "d", local.version, clock() + TTL, weight=10)
    entry_b = local.put(b, "theme", "view b", "d", local.version, clock() + TTL, weight=10)
    assert entry_a is not None and entry_b is not None
    assert local.usage().weight == 20
    local.reweigh(a, "theme", entry_a, 100)
    assert local.usage().weight == 110 and local.get(a, "theme") == "view a"
    local.reweigh(b, "theme", entry_b, 126)  # over an eighth of the budget: dropped
    assert local.get(b, "theme") is MISS
    assert local.usage() == Usage(weight=100, refused=1, evicted_for_weight=0)
    assert put(local, c, "theme", 10, clock)
    stale = local.put(c, "menu", "old", "d", local.version, clock() + TTL, weight=10)
    assert stale is not None
    assert put(local, c, "menu", 20, clock)  # a newer entry under the same key
    local.reweigh(c, "menu", stale, None)  # the old one's verdict does not touch it
    assert local.get(c, "menu") == "view menu" and local.usage().weight == 130
    local.reweigh(c, "theme", local.peek(c, "theme"), None)  # type: ignore[arg-type]
    assert local.get(c, "theme") is MISS and local.usage().weight == 120


def test_eviction_by_weight_keeps_lru_order() -> None:
    clock = FakeClock()
    local = tier(clock)
    users = [uuid4() for _ in range(11)]
    for user in users[:10]:
        assert put(local, user, "theme", 100, clock)
    assert local.usage() == Usage(weight=1000, refused=0, evicted_for_weight=0)
    assert local.get(users[0], "theme") == "view theme"  # now the most recently used
    assert put(local, users[10], "theme", 100, clock)
    # the least recently used entry went, not the oldest stored
    assert local.get(users[1], "theme") is MISS
    assert local.get(users[0], "theme") == "view theme"
    assert local.usage() == Usage(weight=1000, refused=0, evicted_for_weight=1)
    # a heavier entry makes room for itself: two more go, least recently used first
    assert put(local, uuid4(), "menu", 125, clock)
    assert local.get(users[2], "theme") is MISS and local.get(users[3], "theme") is MISS
    assert local.get(users[4], "theme") == "view theme"
    assert local.usage() == Usage(weight=925, refused=0, evicted_for_weight=3)
    assert len(local) == 9


def test_a_heavy_view_is_refused_and_drops_the_older_value() -> None:
    clock = FakeClock()
    local = tier(clock)
    user = uuid4()
    assert put(local, user, "theme", 125, clock)  # an eighth of the budget: kept
    assert put(local, uuid4(), "menu", 50, clock)
    assert not put(local, user, "theme", 126, clock)  # heavier: refused
    # the older value of the key must not outlive the newer one that was not kept
    assert local.get(user, "theme") is MISS
    assert local.usage() == Usage(weight=50, refused=1, evicted_for_weight=0)


def test_ttl_is_kept_and_expiry_releases_weight() -> None:
    clock = FakeClock()
    local = tier(clock)
    early, late = uuid4(), uuid4()
    assert put(local, early, "theme", 100, clock)
    clock.advance(TTL / 2)
    assert put(local, late, "theme", 100, clock)
    clock.advance(TTL / 2)  # the first entry's deadline (no basis: it cannot be renewed)
    assert local.get(early, "theme") is MISS
    assert local.get(late, "theme") == "view theme"
    assert local.usage().weight == 100
    clock.advance(TTL / 2)
    assert local.get(late, "theme") is MISS
    assert local.usage().weight == 0 and len(local) == 0


def test_the_count_still_bounds_and_is_not_counted_as_weight() -> None:
    clock = FakeClock()
    local = tier(clock, maxsize=3)
    users = [uuid4() for _ in range(5)]
    for user in users:
        assert put(local, user, "theme", 10, clock)
    assert len(local) == 3
    assert [local.get(u, "theme") is MISS for u in users] == [True, True, False, False, False]
    assert local.usage() == Usage(weight=30, refused=0, evicted_for_weight=0)


def test_replacing_an_entry_reweighs_it() -> None:
    clock = FakeClock()
    local = tier(clock)
    user = uuid4()
    assert put(local, user, "theme", 100, clock)
    assert put(local, user, "theme", 40, clock)
    assert local.usage().weight == 40 and len(local) == 1


@pytest.mark.parametrize(("maxsize", "maxbytes"), [(0, BUDGET), (100, 0)])
def test_either_bound_at_zero_turns_l1_off(maxsize: int, maxbytes: int) -> None:
    clock = FakeClock()
    local = tier(clock, maxsize=maxsize, maxbytes=maxbytes)
    assert not put(local, uuid4(), "theme", 1, clock)
    assert len(local) == 0 and local.usage() == Usage(0, 0, 0)


def test_weighed_lru_refuses_bounds_below_one() -> None:
    with pytest.raises(ValueError, match="maxcount"):
        WeighedLRU[str, object](0, 10)  # type: ignore[type-var]


@pytest.mark.parametrize(
    "setting",
    [
        {"local_maxbytes": -1},
        {"parse_memo_maxbytes": -1},
        {"local_maxbytes": 1.5},
        {"parse_memo_maxbytes": "16M"},
    ],
)
def test_byte_budgets_are_checked_before_any_io(setting: dict[str, object]) -> None:
    # the client is never touched: the settings are refused first
    with pytest.raises(CacheSettingsError, match="maxbytes"):
        AppConfigFragmentCacheSource(object(), **setting)  # type: ignore[arg-type]
