"""One OS process of the failover drill: ``python _drill_worker.py reader|writer``.

Configuration comes from the environment (``APPCONFIG_DRILL_*``). The worker warms
up, prints ``ready``, waits for ``go`` on stdin, runs for the given duration and
prints one JSON line with what it did. Times are ``time.monotonic()``, the same
clock in every process of the machine.

- A writer updates, in turn, each user's own fragment (``{"u": n}``) and each
  domain's fragment (``{"d": n}``) of ``theme``; it records every write call:
  ``[kind, index, version, started, returned, ok]``.
- A reader reads every user's view concurrently, round after round; it records
  every read ``[user index, started, returned, u, d, ok]`` and samples its cache's
  counters every 0.1 s. ``APPCONFIG_DRILL_L1=0`` turns its L1 off.

A request that raises is recorded with ``ok`` false: the drill counts those.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import create_async_engine

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentKey,
    AppConfigFragmentRepository,
    AppConfigScopeType,
    FragmentInput,
    MyFragmentInput,
    make_valkey_client,
)

SAMPLED = ("l2_hits", "l2_misses", "l2_skipped", "db_loads", "valkey_errors", "breaker_opens")
SAMPLE_EVERY = 0.1


class _MonotonicFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{time.monotonic():.3f} {super().format(record)}"


async def main(role: str) -> dict[str, Any]:
    env = os.environ
    handler = logging.StreamHandler()  # the cache's warnings, on stderr, for the report
    handler.setFormatter(_MonotonicFormatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger("appconfig_cache").addHandler(handler)
    users = [UUID(u) for u in env["APPCONFIG_DRILL_USERS"].split(",")]
    domains = env["APPCONFIG_DRILL_DOMAINS"].split(",")
    local_ttl = float(env["APPCONFIG_DRILL_LOCAL_TTL"])
    duration = float(env["APPCONFIG_DRILL_DURATION"])
    engine = create_async_engine(env["APPCONFIG_DRILL_DATABASE_URL"], pool_size=4)
    client = make_valkey_client(env["APPCONFIG_DRILL_VALKEY_URL"], cluster=True)
    # a reader with L1 off asks Valkey on every read: its hit rate shows L2 recovering
    l1_off = role == "reader" and env.get("APPCONFIG_DRILL_L1") == "0"
    cache = AppConfigFragmentCacheSource(
        client,
        local_ttl=local_ttl,
        local_maxsize=0 if l1_off else 4096,
        breaker_cooldown=float(env["APPCONFIG_DRILL_BREAKER_COOLDOWN"]),
    )
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    for uid in users:  # connections open, the slot map and the users' domains known
        await repo.app_config(uid, "theme")
    await cache.drain()

    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    start = time.monotonic()
    out: dict[str, Any] = {"role": role, "pid": os.getpid()}
    if role == "writer":
        out["writes"] = await _write(repo, users, domains, start, duration)
    else:
        out["reads"], out["samples"] = await _read(repo, cache, users, start, duration)
    await cache.drain()
    out["stats"] = cache.stats.as_dict()
    await cache.aclose()
    await client.aclose()
    await engine.dispose()
    return out


async def _write(
    repo: AppConfigFragmentRepository,
    users: list[UUID],
    domains: list[str],
    start: float,
    duration: float,
) -> list[list[Any]]:
    writes: list[list[Any]] = []
    version = 0
    targets = [("u", i) for i in range(len(users))] + [("d", i) for i in range(len(domains))]
    while time.monotonic() - start < duration:
        for kind, index in targets:
            version += 1
            t0 = time.monotonic()
            try:
                if kind == "u":
                    result = await repo.bulk_update_my(
                        users[index], [MyFragmentInput(name="theme", config={"u": version})]
                    )
                else:
                    key = AppConfigFragmentKey(
                        scope_type=AppConfigScopeType.DOMAIN, scope_id=domains[index], name="theme"
                    )
                    result = await repo.admin_bulk_update(
                        [FragmentInput(key=key, config={"d": version})]
                    )
                ok = not result.failures
            except Exception:
                ok = False
            writes.append([kind, index, version, t0, time.monotonic(), ok])
            await asyncio.sleep(0.02)  # pacing: about 50 writes a second
    return writes


async def _read(
    repo: AppConfigFragmentRepository,
    cache: AppConfigFragmentCacheSource,
    users: list[UUID],
    start: float,
    duration: float,
) -> tuple[list[list[Any]], list[list[Any]]]:
    reads: list[list[Any]] = []
    samples: list[list[Any]] = []

    async def one(index: int) -> None:
        t0 = time.monotonic()
        try:
            config = (await repo.app_config(users[index], "theme")).config or {}
            reads.append([index, t0, time.monotonic(), config.get("u", 0), config.get("d", 0), 1])
        except Exception:
            reads.append([index, t0, time.monotonic(), 0, 0, 0])

    next_sample = start
    while (now := time.monotonic()) - start < duration:
        if now >= next_sample:
            stats = cache.stats
            samples.append([now, *(getattr(stats, name) for name in SAMPLED)])
            next_sample = now + SAMPLE_EVERY
        await asyncio.gather(*(one(i) for i in range(len(users))))
        await asyncio.sleep(0.005)  # pacing
    return reads, samples


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1]))
    print(json.dumps(result), flush=True)
