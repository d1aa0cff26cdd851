"""I4 with real OS processes: one writer, three readers, one Valkey and one PostgreSQL.

Each process has its own cache source (its own L1). The writer updates a domain
fragment every ~0.15 s; the readers read the user's view in a loop. A read is stale
when a newer version's write call had already returned before the read started; its
staleness is how long before. It must stay within ``local_ttl`` (plus a little slack
for the measurement), and the readers must not go to the DB much more than once per
write and per ``local_ttl``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import AppConfigFragmentRepository, AppConfigPolicyRepository
from tests.support.data import add_users
from tests.support.fragments import fragment_input
from tests.support.scopes import DOMAIN, PUBLIC, USER
from tests.support.workers import released, spawn_worker

pytestmark = [pytest.mark.processes, pytest.mark.slow]

WORKER = Path(__file__).with_name("_worker.py")
LOCAL_TTL = 0.5
DURATION = 3.0
WRITE_INTERVAL = 0.15
READERS = 3
SLACK = 0.25  # measurement only: a read's start is taken before its L1 check


def _staleness(reads: list[list[float]], writes: list[list[float]]) -> tuple[float, int]:
    """Worst staleness of the reads (seconds, 0 if never stale) and how many were stale."""
    worst, stale = 0.0, 0
    for t0, _t1, version in reads:
        newer = [done for v, _start, done in writes if v > version and done < t0]
        if newer:
            stale += 1
            worst = max(worst, t0 - min(newer))
    return worst, stale


@pytest.mark.parametrize("broadcast", [False, True], ids=["broadcast-off", "broadcast-on"])
async def test_staleness_across_processes_is_bounded_by_local_ttl(
    engine: AsyncEngine, database_url: str, valkey_url: str, broadcast: bool
) -> None:
    uid = uuid4()
    await add_users(engine, {uid: "dp"})
    await AppConfigPolicyRepository(engine).create("theme", [PUBLIC, DOMAIN, USER])
    await AppConfigFragmentRepository(engine).admin_bulk_create(
        [fragment_input(DOMAIN, "dp", "theme", {"v": 0})]
    )
    env = {
        **os.environ,
        "APPCONFIG_WORKER_DATABASE_URL": database_url,
        "APPCONFIG_WORKER_VALKEY_URL": valkey_url,
        "APPCONFIG_WORKER_USER": str(uid),
        "APPCONFIG_WORKER_DOMAIN": "dp",
        "APPCONFIG_WORKER_LOCAL_TTL": str(LOCAL_TTL),
        "APPCONFIG_WORKER_DURATION": str(DURATION),
        "APPCONFIG_WORKER_WRITE_INTERVAL": str(WRITE_INTERVAL),
        "APPCONFIG_WORKER_BROADCAST": "1" if broadcast else "0",
    }
    procs = [await spawn_worker(WORKER, "writer", env)] + [
        await spawn_worker(WORKER, "reader", env) for _ in range(READERS)
    ]
    async with released(procs):  # everyone connected and warmed up, then go
        outputs = [await proc.communicate() for proc in procs]
    results: list[dict[str, Any]] = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    writer, readers = results[0], results[1:]
    writes = writer["writes"]
    assert len(writes) >= 5, "the writer hardly ran: the test would prove nothing"
    final = writes[-1][0]

    report = []
    worst_all = 0.0
    for reader in readers:
        reads = reader["reads"]
        worst, stale = _staleness(reads, writes)
        worst_all = max(worst_all, worst)
        versions = [version for _t0, _t1, version in reads]
        # I4: within local_ttl, and the last reads show the last write
        assert worst <= LOCAL_TTL + SLACK, (worst, reader["pid"])
        assert versions[-1] == final
        # never back in time within one process
        assert versions == sorted(versions)
        # DB reads bounded: about one per write and per local_ttl, never one per read
        bound = len(writes) + math.ceil(reader["elapsed"] / LOCAL_TTL) + 2
        assert reader["db_loads"] <= bound, (reader["db_loads"], bound)
        assert reader["sql"] == reader["db_loads"]  # one statement per load
        assert reader["db_loads"] < len(reads) / 5
        report.append(
            f"reader {reader['pid']}: {len(reads)} reads, {stale} stale, worst "
            f"{worst * 1000:.0f} ms, {reader['db_loads']} DB loads (bound {bound}), "
            f"l1 {reader['stats']['l1_hits']} l2 {reader['stats']['l2_hits']}"
        )
    print(
        f"\n{len(writes)} writes in {writer['elapsed']:.1f} s, local_ttl {LOCAL_TTL} s, "
        f"broadcast {'on' if broadcast else 'off'}; "
        f"worst cross-process staleness {worst_all * 1000:.0f} ms\n" + "\n".join(report)
    )
