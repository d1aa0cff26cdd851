"""Time the L2 hit layer by layer, interleaved in one process (what each layer adds).

``python bench/profile_l2_layers.py [rounds]`` starts the embedded servers, seeds the
bench population, warms Valkey for the hot users, and then, in each round, times 400
of each of: a raw ``GET`` of the envelope, the ``MGET`` of the three keys an L2 hit
reads, that ``MGET`` under the cache's round-trip budget, the typed
``Commands.lookup``, ``Lookup.find`` (plus the header, generation and memo checks),
the read path's single flight, and ``repo.app_config`` (``local_maxsize=0``); and,
for reference, the design's floor: the ``MGET`` and the checks that prove an envelope
current, written inline with no flight, no request numbers and no counters, bare and
under a time budget. It prints the best minimum and the median per operation, what
each layer adds, and its ratio to the ``GET`` (minimum/median),
then the pieces of ``find`` timed alone with ``timeit``. Rounds alternate the
layers, so the machine's drift touches them alike.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appconfig_cache import AppConfigFragmentCacheSource, AppConfigFragmentRepository
from appconfig_cache.repositories.app_config_fragment.cache_source.generations import (
    shared_gen_keys,
)
from appconfig_cache.tiered import keys
from appconfig_cache.tiered.envelope import Candidate, decode_header
from bench.support import NAME, profiling_session

PER_ROUND = 400


async def run(rounds: int) -> None:
    async with profiling_session() as bench:
        client, engine, users = bench.client, bench.engine, bench.hot_users
        warm = AppConfigFragmentCacheSource(client, local_maxsize=0)
        warm_repo = AppConfigFragmentRepository(engine, cache_source=warm)
        for _ in range(2):  # the second read of a user fills Valkey
            for uid in users:
                await warm_repo.app_config(uid, NAME)
        await warm.aclose()
        cache = AppConfigFragmentCacheSource(
            client, local_maxsize=0, local_ttl=600.0, outbox_interval=3600
        )
        repo = AppConfigFragmentRepository(engine, cache_source=cache)
        for uid in users:
            await repo.app_config(uid, NAME)
        await cache.drain()
        await _layers(client, cache, repo, users, rounds)
        await _pieces(client, cache, users[0])
        await cache.aclose()


async def _layers(client, cache, repo, users, rounds: int) -> None:
    parts = cache._parts  # a profiling script may look inside
    lookup, read_path, remote = parts.lookup, parts.read_path, parts.remote
    commands = lookup.commands
    triples = [
        [keys.merged_key(u, NAME), keys.user_domain_key(u), keys.user_gen_key(u)] for u in users
    ]
    loader = repo._db.load_views
    now = time.monotonic
    n = len(users)

    async def get(i: int) -> None:
        await client.get(triples[i % n][0])

    async def mget(i: int) -> None:
        await client.mget(triples[i % n])

    async def budget(i: int) -> None:
        await remote.call(lambda: client.mget(triples[i % n]))

    async def typed(i: int) -> None:
        merged, domain, gen = triples[i % n]
        await commands.lookup([merged, domain], (gen, None), {}, now(), 0)

    async def find(i: int) -> None:
        await lookup.find(users[i % n], [NAME], parts.local.version, now())

    async def flight(i: int) -> None:
        await read_path.resolve(users[i % n], [NAME], loader, None)

    async def hit(i: int) -> None:
        await repo.app_config(users[i % n], NAME)

    layers: dict[str, Callable[[int], Awaitable[None]]] = {
        "raw GET": get,
        "MGET of the 3 keys": mget,
        "+ round-trip budget": budget,
        "+ Commands.lookup": typed,
        "+ Lookup.find (checks)": find,
        "+ single flight": flight,
        "+ repo.app_config": hit,
    }
    generations, envelopes = lookup.generations, lookup.envelopes

    async def floor(i: int) -> None:  # what proving an envelope current needs, inline
        uid, (merged, domain_key, gen_key) = users[i % n], triples[i % n]
        raw, domain, gen = await client.mget([merged, domain_key, gen_key])
        header = decode_header(raw)
        current = generations.current(NAME, header.domain, int(gen), now())
        if current is None or header.gens != current.gens or header.user != str(uid):
            raise AssertionError("not a current envelope")
        if domain.decode() != header.domain or envelopes.parse(uid, NAME, raw, header) is None:
            raise AssertionError("not a current envelope")

    async def floor_budget(i: int) -> None:
        async with asyncio.timeout(remote.timeout):
            await floor(i)

    references: dict[str, Callable[[int], Awaitable[None]]] = {
        "inline floor (MGET+checks)": floor,
        "inline floor + budget": floor_budget,
    }
    layers.update(references)
    times: dict[str, list[float]] = {label: [] for label in layers}
    for _ in range(rounds):
        for label, op in layers.items():
            started = time.perf_counter()
            for i in range(PER_ROUND):
                await op(i)
            times[label].append((time.perf_counter() - started) / PER_ROUND * 1e6)
    get_min, get_median = min(times["raw GET"]), statistics.median(times["raw GET"])
    print(f"{'layer':26s} {'min µs':>8s} {'median µs':>10s} {'adds (min)':>11s} {'x GET':>12s}")
    previous = None
    for label, samples in times.items():
        low, median = min(samples), statistics.median(samples)
        if label in references:
            previous = min(times["MGET of the 3 keys"])  # references add to the MGET
        added = "" if previous is None else f"{low - previous:+.1f}"
        ratio = f"{low / get_min:.2f}/{median / get_median:.2f}"
        print(f"{label:26s} {low:8.1f} {median:10.1f} {added:>11s} {ratio:>12s}")
        previous = low


async def _pieces(client, cache, uid) -> None:
    parts = cache._parts
    lookup = parts.lookup
    merged, domain_key = keys.merged_key(uid, NAME), keys.user_domain_key(uid)
    raw, raw_domain = await client.mget([merged, domain_key])
    header = decode_header(raw)
    at = time.monotonic()
    candidate = Candidate(NAME, raw, header)
    pieces: dict[str, Callable[[], object]] = {
        "header decode": lambda: decode_header(raw),
        "candidates": lambda: lookup.envelopes.candidates(
            uid, [NAME], [raw, raw_domain], raw_domain.decode()
        ),
        "current-view check": lambda: lookup._current_views(
            uid, [candidate], header.gens.user, parts.local.version, at
        ),
        "memo hit": lambda: lookup.envelopes.parse(uid, NAME, raw, header),
        "due generations": lambda: lookup.generations.stale(
            shared_gen_keys([NAME], header.domain), at
        ),
        "three key strings": lambda: (
            keys.merged_key(uid, NAME),
            keys.user_domain_key(uid),
            keys.user_gen_key(uid),
        ),
    }
    print("\npieces of Lookup.find, alone (timeit, best of 5):")
    for label, piece in pieces.items():
        number = 5000
        best = min(timeit.repeat(piece, number=number, repeat=5)) / number * 1e6
        print(f"  {label:22s} {best:6.2f} µs")


def main() -> None:
    asyncio.run(run(int(sys.argv[1]) if len(sys.argv) > 1 else 15))


if __name__ == "__main__":
    main()
