"""I10 under faults: a writer cut off from Valkey, killed, or idle; PostgreSQL away.

The writer's own path to Valkey is cut by the proxy (its INCRs are dropped)
while the readers reach Valkey directly, so each bump is really lost: a
precondition checks that a reader still gets the old view before the repair.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from appconfig_cache import AppConfigFragmentRepository
from appconfig_cache.tiered import keys
from tests.faults.conftest import pg_target, pg_url_via
from tests.faults.proxy import FaultProxy
from tests.support.data import add_policy, add_users
from tests.support.fragments import domain_fragment
from tests.support.internals import bump_recovery, trip_breaker
from tests.support.outbox import (
    Reader,
    ReaderFactory,
    add_outbox_rows,
    outbox_rows,
    spawn_outbox_writer,
    sql,
)
from tests.support.scopes import DOMAIN, PUBLIC, USER
from tests.support.valkey import direct_client

REPLAYER = Path(__file__).with_name("_outbox_replayer.py")
NAME = "theme"
HANG_GUARD = 30.0  # a bug must fail the test, not hang it; not a timing assertion


async def _seed(engine: AsyncEngine) -> uuid.UUID:
    uid = uuid.uuid4()
    await add_policy(engine, NAME, [PUBLIC, DOMAIN, USER])
    await add_users(engine, {uid: "d1"})
    done = await AppConfigFragmentRepository(engine).admin_bulk_create(
        [domain_fragment("d1", NAME, {"v": 0})]
    )
    assert not done.failures
    await sql(engine, "DELETE FROM app_config_outbox")
    return uid


async def _read(reader: Reader, uid: uuid.UUID) -> Any:
    reader.expire_l1()
    return (await reader.repo.app_config(uid, NAME)).config


@pytest.mark.processes
async def test_a_killed_writers_change_is_replayed_by_another_process(
    engine: AsyncEngine,
    database_url: str,
    valkey_proxy: FaultProxy,
    make_reader: ReaderFactory,
) -> None:
    uid = await _seed(engine)
    reader = await make_reader()
    assert (await reader.read_until_cached(uid, NAME)).config == {"v": 0}
    writer = await spawn_outbox_writer(uid, "d1", database_url, valkey_proxy.url)
    assert writer.stdin is not None and writer.stdout is not None
    try:
        async with asyncio.timeout(HANG_GUARD):
            assert await writer.stdout.readline() == b"ready\n"
            valkey_proxy.set_drop_matching(b"INCRBY")  # the writer's bumps are lost
            writer.stdin.write(b"write 1\n")
            await writer.stdin.drain()
            assert await writer.stdout.readline() == b"written 1\n"  # committed; bump pending
    finally:
        writer.send_signal(signal.SIGKILL)
        await writer.wait()
    valkey_proxy.set_pass()  # the cut heals; the writer is gone
    assert await outbox_rows(engine) == [("domain", "d1")]
    assert await _read(reader, uid) == {"v": 0}  # the bump was really lost

    assert await reader.cache.replay_outbox(grace=0) == 1
    assert await _read(reader, uid) == {"v": 1}
    fresh = await make_reader()
    assert (await fresh.repo.app_config(uid, NAME)).config == {"v": 1}
    assert await outbox_rows(engine) == []


async def test_an_idle_writer_replays_its_bump_as_soon_as_valkey_answers(
    engine: AsyncEngine, valkey_proxy: FaultProxy, make_reader: ReaderFactory
) -> None:
    uid = await _seed(engine)
    reader = await make_reader()
    assert (await reader.read_until_cached(uid, NAME)).config == {"v": 0}
    # Default retry_interval; the outbox replayer is not involved (interval 1 h).
    writer = await make_reader(valkey_proxy.url, timeout=0.2)
    await writer.read_until_cached(uid, NAME)
    valkey_proxy.set_drop_matching(b"INCRBY")
    done = await writer.repo.admin_bulk_update([domain_fragment("d1", NAME, {"v": 1})])
    assert not done.failures and writer.cache.stats.pending_bumps == 1
    assert await _read(reader, uid) == {"v": 0}  # the bump was really lost
    recovery = bump_recovery(writer.cache)
    assert recovery is not None and not recovery.done()

    healed = time.monotonic()
    valkey_proxy.set_pass()
    async with asyncio.timeout(HANG_GUARD):
        await recovery  # no read, no write: the writer is idle
    took = time.monotonic() - healed
    assert writer.cache.stats.pending_bumps == 0
    assert await _read(reader, uid) == {"v": 1}
    # The rows of a bump that was not acknowledged at once stay for a replayer.
    assert await outbox_rows(engine) == [("domain", "d1")]
    print(f"[outbox] idle writer: bump replayed {took * 1000:.0f} ms after the cut healed")


async def test_valkey_failing_during_a_replay_deletes_nothing(
    engine: AsyncEngine, valkey_proxy: FaultProxy, make_reader: ReaderFactory
) -> None:
    await add_outbox_rows(engine, [("domain", "d1"), ("policy", NAME)])
    replayer = await make_reader(valkey_proxy.url, timeout=0.2)
    valkey_proxy.set_reset()
    assert await replayer.cache.replay_outbox(grace=0) == 0
    assert replayer.cache.stats.outbox_backlog == 2
    assert await outbox_rows(engine) == [("domain", "d1"), ("policy", NAME)]
    valkey_proxy.set_pass()
    assert await replayer.cache.replay_outbox(grace=0) == 2
    assert await outbox_rows(engine) == []
    assert replayer.cache.stats.outbox_backlog == 0


async def test_postgresql_failing_during_a_replay_loses_no_row(
    engine: AsyncEngine, database_url: str, make_reader: ReaderFactory
) -> None:
    await add_outbox_rows(engine, [("domain", "d1"), ("name", NAME)])
    async with FaultProxy(pg_target(database_url)) as db_proxy:
        cut_engine = create_async_engine(pg_url_via(database_url, db_proxy), poolclass=NullPool)
        try:
            replayer = await make_reader(db=cut_engine)
            db_proxy.set_reset()
            assert await replayer.cache.replay_outbox(grace=0) == 0
            assert replayer.cache.stats.outbox_errors == 1
            assert len(await outbox_rows(engine)) == 2
            db_proxy.set_pass()
            assert await replayer.cache.replay_outbox(grace=0) == 2
            assert await outbox_rows(engine) == []
        finally:
            await cut_engine.dispose()


@pytest.mark.parametrize("cooled_down", [False, True], ids=["open", "half-open"])
async def test_a_writer_whose_breaker_is_open_recovers_without_a_read(
    engine: AsyncEngine, make_reader: ReaderFactory, cooled_down: bool
) -> None:
    """The recovery task pings Valkey whatever the breaker's state, and closes it."""
    uid = await _seed(engine)
    reader = await make_reader()
    assert (await reader.read_until_cached(uid, NAME)).config == {"v": 0}
    writer = await make_reader(retry_interval=0.01)
    await writer.read_until_cached(uid, NAME)
    trip_breaker(writer.cache)
    done = await writer.repo.admin_bulk_update([domain_fragment("d1", NAME, {"v": 1})])
    assert not done.failures and writer.cache.stats.pending_bumps == 1  # never sent
    assert await _read(reader, uid) == {"v": 0}
    if cooled_down:
        writer.clock.advance(5.1)  # past breaker_cooldown: the next allow() is the trial
    recovery = bump_recovery(writer.cache)
    assert recovery is not None
    async with asyncio.timeout(HANG_GUARD):
        await recovery
    assert writer.cache.stats.pending_bumps == 0
    assert writer.cache.stats.breaker_state == "closed"
    assert await _read(reader, uid) == {"v": 1}


@pytest.mark.processes
@pytest.mark.slow
async def test_two_replayer_processes_share_ten_thousand_rows(
    engine: AsyncEngine, database_url: str, valkey_url: str
) -> None:
    users = [uuid.uuid4() for _ in range(10_000)]
    await add_outbox_rows(engine, [("user", str(u)) for u in users])
    env = {
        **os.environ,
        "APPCONFIG_REPLAYER_DATABASE_URL": database_url,
        "APPCONFIG_REPLAYER_VALKEY_URL": valkey_url,
    }
    pipe = asyncio.subprocess.PIPE
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(REPLAYER), env=env, stdin=pipe, stdout=pipe
        )
        for _ in range(2)
    ]
    results = []
    try:
        async with asyncio.timeout(HANG_GUARD * 2):
            for proc in procs:
                assert proc.stdout is not None
                assert await proc.stdout.readline() == b"ready\n"
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            for proc in procs:
                assert proc.stdout is not None
                results.append(json.loads(await proc.stdout.readline()))
                assert await proc.wait() == 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert sum(r["replayed"] for r in results) == 10_000, results
    assert all(r["errors"] == 0 and r["pending"] == 0 for r in results), results
    assert await outbox_rows(engine) == []
    direct = direct_client(valkey_url)
    try:
        gen_keys = [keys.user_gen_key(u) for u in users]
        applied = 0
        for start in range(0, len(gen_keys), 1000):
            applied += await direct.exists(*gen_keys[start : start + 1000])
    finally:
        await direct.aclose()
    assert applied == 10_000  # every row bumped its generation at least once
    print(f"[outbox] two replayer processes: {[r['replayed'] for r in results]} rows each")
