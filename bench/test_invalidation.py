"""Invalidation cost with 10 and with 100,000 cached entries (O(1) means a ratio of about 1).

Valkey is filled with real envelopes in the real key layout
(``appconfig_cache.tiered.keys``), under the current generations, so each one
is a hit until invalidated; L1 holds as many of them as it can. Then PUBLIC,
DOMAIN and policy invalidation are timed through the cache source's API,
beside a floor (the same pipelined ``SET NX`` + ``INCR`` sent raw). The legacy
shape (delete by ``SCAN``) is timed beside it for PUBLIC.
"""

from __future__ import annotations

import uuid

import pytest
from tests.support.stats import stats_snapshot

from appconfig_cache import AppConfigScopeType
from appconfig_cache.tiered import keys as cache_keys
from appconfig_cache.tiered.commands import server_epoch_of
from appconfig_cache.tiered.envelope import encode_envelope

from .legacy import LegacyAppConfigCacheSource
from .legacy import merged_key as legacy_key
from .support import NAME, NAMES, BenchSession, measure, scaled, warm_valkey

pytestmark = pytest.mark.benchmark(group="invalidation")

SIZES = (10, 100_000)
N_OPS = 50
_CHUNK = 2000


def _entries(benchmark, size: int) -> int:
    return size if size <= 1000 else scaled(benchmark, size, 1000)


async def _fill(bench: BenchSession, size: int) -> tuple[str, list[tuple[uuid.UUID, str]]]:
    """``size`` live envelopes for synthetic users of one domain; returns (domain, entries)."""
    template = bench.hot_users[0]
    domain = bench.domain_of[template]
    await warm_valkey(bench, [template], NAMES)  # creates the generations, as a real read does
    client = bench.client
    gen_keys = [
        cache_keys.PUBLIC_GEN,
        cache_keys.domain_gen_key(domain),
        *map(cache_keys.name_gen_key, NAMES),
    ]
    values = dict(zip(gen_keys, await client.mget(gen_keys), strict=True))
    public, by_domain = (
        int(values[cache_keys.PUBLIC_GEN]),
        int(values[cache_keys.domain_gen_key(domain)]),
    )
    epoch = server_epoch_of(await client.info("server"))
    repo = bench.repo(None)
    data = {name: (await repo.app_config(template, name)).model_dump_json() for name in NAMES}
    entries: list[tuple[uuid.UUID, str]] = []
    users = [uuid.uuid4() for _ in range(-(-size // len(NAMES)))]
    for uid in users:
        for name in NAMES:
            if len(entries) < size:
                entries.append((uid, name))
    user_gen = 1 << 40
    pipe = client.pipeline(transaction=False)
    queued = 0
    for uid in users:
        pipe.set(cache_keys.user_gen_key(uid), user_gen)
        pipe.set(cache_keys.user_domain_key(uid), domain, ex=600)
        queued += 2
    for uid, name in entries:
        gens = (public, int(values[cache_keys.name_gen_key(name)]), by_domain, user_gen)
        body = data[name].replace(str(template), str(uid))
        envelope = encode_envelope(uid, name, domain, gens, epoch, body.encode())
        pipe.set(cache_keys.merged_key(uid, name), envelope, ex=600)
        queued += 1
        if queued >= _CHUNK:
            await pipe.execute()
            pipe = client.pipeline(transaction=False)
            queued = 0
    await pipe.execute()
    return domain, entries


async def _raw_bump(cache, domain):
    # The floor: the one pipelined round trip an invalidation needs, without our code.
    pipe = cache.client.pipeline(transaction=False)
    pipe.set(cache_keys.PUBLIC_GEN, 1, nx=True)
    pipe.incr(cache_keys.PUBLIC_GEN)
    await pipe.execute()


INVALIDATIONS = {
    "floor": _raw_bump,
    "public": lambda cache, domain: cache.invalidate_for_scope(AppConfigScopeType.PUBLIC, "public"),
    "domain": lambda cache, domain: cache.invalidate_for_scope(AppConfigScopeType.DOMAIN, domain),
    "policy": lambda cache, domain: cache.invalidate_for_policy(NAME),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", list(INVALIDATIONS))
def test_invalidation(benchmark, clean_valkey: BenchSession, kind: str, size: int) -> None:
    bench = clean_valkey
    entries_n = _entries(benchmark, size)
    domain, entries = bench.run(_fill(bench, entries_n))
    cache = bench.cache()
    repo = bench.repo(cache)

    async def load_l1():
        # Every entry is a live envelope: reading it is a Valkey hit that fills L1.
        for uid, name in entries[: min(len(entries), 4096)]:
            await repo.app_config(uid, name)

    before = stats_snapshot(cache)
    bench.run(load_l1())
    assert cache.stats.db_loads == before.db_loads, "the synthetic envelopes did not match"
    dbsize = bench.run(bench.client.dbsize())
    invalidate = INVALIDATIONS[kind]

    async def body():
        for _ in range(N_OPS):
            await invalidate(cache, domain)

    measure(
        benchmark,
        bench,
        f"invalidation.{kind}.{size}",
        body,
        ops=N_OPS,
        rounds=scaled(benchmark, 60, 1),
        entries=len(entries),
        l1_entries=cache.local_size(),
        valkey_keys=dbsize,
    )
    if kind == "floor":
        return
    # The invalidation took effect: the first synthetic entry is no longer served from cache.
    uid, name = entries[0]
    if kind == "policy" and name != NAME:
        uid, name = next((u, n) for u, n in entries if n == NAME)
    loads = cache.stats.db_loads
    bench.run(repo.app_config(uid, name))
    assert cache.stats.db_loads == loads + 1


@pytest.mark.parametrize("size", SIZES)
def test_legacy_invalidation_public(benchmark, clean_valkey: BenchSession, size: int) -> None:
    """The legacy shape: PUBLIC deletes the whole prefix with SCAN + UNLINK (refilled untimed)."""
    bench = clean_valkey
    entries_n = _entries(benchmark, size)
    legacy = LegacyAppConfigCacheSource(bench.client)
    template = bench.hot_users[0]
    repo = bench.repo(None)
    data = {name: bench.run(repo.app_config(template, name)).model_dump_json() for name in NAMES}
    users = [uuid.uuid4() for _ in range(-(-entries_n // len(NAMES)))]
    entries = [(u, n) for u in users for n in NAMES][:entries_n]

    async def refill():
        pipe = bench.client.pipeline(transaction=False)
        for i, (uid, name) in enumerate(entries, 1):
            pipe.set(legacy_key(uid, name), data[name].replace(str(template), str(uid)), ex=600)
            if i % _CHUNK == 0:
                await pipe.execute()
                pipe = bench.client.pipeline(transaction=False)
        await pipe.execute()

    def setup():
        bench.run(refill())

    async def body():
        await legacy.invalidate_for_scope(AppConfigScopeType.PUBLIC, "public")

    measure(
        benchmark,
        bench,
        f"legacy.invalidation.public.{size}",
        body,
        ops=1,
        rounds=scaled(benchmark, 3 if size > 1000 else 30, 1),
        warmup_rounds=0,
        setup=setup,
        entries=len(entries),
    )
    assert bench.run(bench.client.dbsize()) == 0
