"""The broadcast gap (issue 18): messages published while a subscription is down are lost.

Once the subscription has been down, nothing cached before the drop may be served
until Valkey confirms it: a process with ``local_ttl=30`` must not serve the old
view for 30 s because it missed one message. The reader's clock never moves in
these tests, so only the gap handling (not ``local_ttl``) can make it see the write.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    MyFragmentInput,
    make_valkey_client,
)
from appconfig_cache.tiered.local import MISS, LocalTier
from appconfig_cache.tiered.readings import Readings
from tests.faults.proxy import FaultProxy
from tests.support.clock import FakeClock
from tests.support.data import add_policy, add_user
from tests.support.internals import broadcast_gap, db_source_of, l1_holds
from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
STARTUP_GUARD = 60.0  # a hang guard for the writer process, not a timing assertion


async def _write_from_another_process(
    database_url: str, valkey_url: str, uid: UUID, config: dict[str, Any]
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.write_once",
        database_url, valkey_url, str(uid), json.dumps(config),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), STARTUP_GUARD)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0 and out.strip() == b"done", err.decode()[-2000:]


async def _reader(engine: AsyncEngine, url: str) -> tuple[Any, AppConfigFragmentCacheSource, Any]:
    client = make_valkey_client(url)
    cache = AppConfigFragmentCacheSource(client, broadcast=True, local_ttl=30.0, timer=FakeClock())
    await cache.start()
    return client, cache, AppConfigFragmentRepository(engine, cache_source=cache)


@pytest.mark.parametrize("read_while_down", [False, True], ids=["after-resub", "while-down"])
async def test_write_missed_by_a_dropped_subscription_is_seen_on_the_next_read(
    engine: AsyncEngine,
    database_url: str,
    valkey_url: str,
    valkey_client: Any,
    valkey_proxy: FaultProxy,
    read_while_down: bool,
) -> None:
    await add_policy(engine, "theme")
    uid = await add_user(engine, domain="d1")
    await AppConfigFragmentRepository(engine).bulk_create_my(
        uid, [MyFragmentInput(name="theme", config={"v": 1})]
    )
    client, b, repo_b = await _reader(engine, valkey_proxy.url)  # B reaches Valkey via the proxy
    try:
        assert (await repo_b.app_config(uid, "theme")).config == {"v": 1}
        hits = b.stats.l1_hits
        assert (await repo_b.app_config(uid, "theme")).config == {"v": 1}
        assert b.stats.l1_hits == hits + 1  # cached in L1, for 30 s of a clock that never moves
        received = b.stats.broadcast_received

        valkey_proxy.set_hold()  # B's open connections pass; its resubscribe waits
        assert await valkey_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        await wait_for(lambda: b.stats.broadcast == "down", what="B to notice the drop")
        await _write_from_another_process(database_url, valkey_url, uid, {"v": 2})
        assert b.stats.broadcast == "down"  # the write's message reached no one here

        if read_while_down:
            # Nothing cached before the drop is served while it lasts.
            assert (await repo_b.app_config(uid, "theme")).config == {"v": 2}
        valkey_proxy.set_pass()
        await wait_for(lambda: b.stats.broadcast == "up", what="B to resubscribe")
        # The first read after the resubscribe sees the write (the clock has not moved).
        assert (await repo_b.app_config(uid, "theme")).config == {"v": 2}
        assert b.stats.broadcast_received == received  # the message itself was lost
        # ...and what it reads then is cached again, and kept fresh by the broadcast.
        hits = b.stats.l1_hits
        assert (await repo_b.app_config(uid, "theme")).config == {"v": 2}
        assert b.stats.l1_hits == hits + 1
    finally:
        await b.aclose()
        await client.aclose()


async def test_a_load_in_flight_across_a_gap_is_not_kept(
    engine: AsyncEngine, valkey_url: str
) -> None:
    """A DB load that began before the gap computed under generations read before it:
    it answers its own caller but is not stored in L1."""
    await add_policy(engine, "theme")
    uid = await add_user(engine, domain="d1")
    client, b, repo_b = await _reader(engine, valkey_url)
    parked, release = asyncio.Event(), asyncio.Event()
    db = db_source_of(repo_b)
    load_views = db.load_views

    async def slow_load(*args: Any, **kwargs: Any) -> Any:
        parked.set()
        await release.wait()
        return await load_views(*args, **kwargs)

    db.load_views = slow_load
    try:
        reading = asyncio.create_task(repo_b.app_config(uid, "theme"))
        await parked.wait()
        broadcast_gap(b)  # as a lost subscription does
        release.set()
        assert (await reading).config is None
        assert not l1_holds(b, uid, "theme")
        await repo_b.app_config(uid, "theme")  # a load that saw no gap is kept
        assert l1_holds(b, uid, "theme")
    finally:
        await b.aclose()
        await client.aclose()


def test_invalidate_all_makes_every_entry_unservable() -> None:
    clock = FakeClock()
    local: LocalTier[str] = LocalTier(16, 30.0, clock, Readings(30.0))
    uid = UUID(int=1)
    assert local.put(uid, "a", "view", "d1", local.version, clock() + 30.0, weight=1)
    version = local.version
    local.invalidate_all()
    assert local.get(uid, "a") is MISS
    assert not local.put(uid, "b", "late", "d1", version, clock() + 30.0, weight=1)  # began before
    assert local.put(uid, "b", "new", "d1", local.version, clock() + 30.0, weight=1)
    assert local.get(uid, "b") == "new"


def test_forget_all_refuses_replies_to_requests_sent_before() -> None:
    readings = Readings(30.0)
    before = readings.next_request()
    readings.put("app_config:gen:public", 5, 0.0, before)
    readings.forget_all()
    assert readings.get("app_config:gen:public", 0.0) is None
    readings.put("app_config:gen:name:x", 7, 0.0, before)  # a reply that arrives late
    assert readings.get("app_config:gen:name:x", 0.0) is None
    after = readings.next_request()
    readings.put("app_config:gen:name:x", 8, 0.0, after)
    assert readings.get("app_config:gen:name:x", 0.0) == (8, 0.0, after)


async def test_a_silent_subscription_counts_as_lost(
    engine: AsyncEngine, valkey_url: str, valkey_proxy: FaultProxy
) -> None:
    """A node that hangs (or a network that drops packets) never closes the connection:
    the subscription's PINGs go unanswered, and that silence is a gap like a drop."""
    await add_policy(engine, "theme")
    uid = await add_user(engine, domain="d1")
    await AppConfigFragmentRepository(engine).bulk_create_my(
        uid, [MyFragmentInput(name="theme", config={"v": 1})]
    )
    client, b, repo_b = await _reader(engine, valkey_proxy.url)
    client_a = make_valkey_client(valkey_url)
    a = AppConfigFragmentCacheSource(client_a, broadcast=True)
    try:
        assert (await repo_b.app_config(uid, "theme")).config == {"v": 1}
        gaps, received = b.stats.broadcast_gaps, b.stats.broadcast_received
        valkey_proxy.set_blackhole()  # B's connections stay open; nothing gets through
        await AppConfigFragmentRepository(engine, cache_source=a).bulk_update_my(
            uid, [MyFragmentInput(name="theme", config={"v": 2})]
        )
        await wait_for(lambda: b.stats.broadcast == "down", what="B to notice the silence")
        assert b.stats.broadcast_gaps == gaps + 1
        valkey_proxy.set_pass()
        await wait_for(lambda: b.stats.broadcast == "up", what="B to resubscribe")
        assert (await repo_b.app_config(uid, "theme")).config == {"v": 2}
        assert b.stats.broadcast_received == received  # the message itself was lost
    finally:
        await a.aclose()
        await client_a.aclose()
        await b.aclose()
        await client.aclose()
