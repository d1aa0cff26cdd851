"""After a gap in the broadcast: what the first reads of every hot user cost (issue 18).

Nothing cached before a lost subscription may be served unconfirmed. Two ways:

- ``drop`` (what the library does): every L1 entry and generation reading is
  dropped; each user's next read is a Valkey lookup (an ``MGET`` and an envelope
  parse, the parse memo helping).
- ``confirm`` (the alternative): the entries are kept but treated as expired; the
  next reads wait for the background refresh, which reads every waiting user's
  generation in one pipelined round trip and renews the entries. It is measured
  here through that same renewal path: the clock moves past ``local_ttl``.

The burst is the 64 hot users read concurrently (a busy process just after the
resubscribe), and one by one.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.support.clock import FakeClock
from tests.support.internals import broadcast_gap
from tests.support.stats import stats_change, stats_snapshot
from tests.support.valkey import CountingValkey

from appconfig_cache import AppConfigFragmentCacheSource

from .support import NAME, BenchSession, drain, measure, scaled, warm_valkey

pytestmark = pytest.mark.benchmark(group="broadcast gap")

_COUNTERS = ("l1_hits", "l1_misses", "l2_hits", "db_loads", "l1_renewals", "gen_refreshes")
_LOCAL_TTL = 30.0


@pytest.mark.parametrize("burst", [True, False], ids=["concurrent", "sequential"])
@pytest.mark.parametrize("way", ["drop", "confirm"])
def test_first_reads_after_a_gap(
    benchmark, clean_valkey: BenchSession, way: str, burst: bool
) -> None:
    bench = clean_valkey
    users = bench.hot_users
    bench.run(warm_valkey(bench, users, [NAME]))
    clock = FakeClock()
    counting = CountingValkey(bench.client)
    # ttl bounds how long an entry may be renewed; the clock moves far in this bench
    cache = AppConfigFragmentCacheSource(counting, ttl=10**7, local_ttl=_LOCAL_TTL, timer=clock)
    repo = bench.repo(cache)

    async def read_all() -> None:
        if burst:
            await asyncio.gather(*(repo.app_config(uid, NAME) for uid in users))
        else:
            for uid in users:
                await repo.app_config(uid, NAME)
        await drain(cache)

    bench.run(read_all())  # every user in L1, their domains and generations known

    def gap() -> None:
        if way == "drop":
            broadcast_gap(cache)
        else:
            clock.advance(_LOCAL_TTL)  # every entry and reading expired, none invalidated

    before = stats_snapshot(cache)
    trips_before = counting.round_trips
    measure(
        benchmark, bench, f"gap.{way}.{'concurrent' if burst else 'sequential'}", read_all,
        ops=len(users), rounds=scaled(benchmark, 40, 1), setup=gap,
    )  # fmt: skip
    delta = stats_change(before, cache.stats, *_COUNTERS)
    rounds = benchmark.stats.stats.rounds if benchmark.stats else 1
    benchmark.extra_info["stats"] = delta
    benchmark.extra_info["valkey_round_trips_per_round"] = (
        counting.round_trips - trips_before
    ) / rounds
    bench.run(cache.aclose())
    assert delta["db_loads"] == 0  # either way, Valkey confirms: the DB is not asked
    if way == "drop":
        assert delta["l2_hits"] >= len(users)
    else:
        assert delta["l1_renewals"] >= len(users) and delta["l2_hits"] == 0
