"""Opt-in cross-process L1 invalidation (issue 6): two instances over one Valkey."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    CacheSettingsError,
    MyFragmentInput,
)
from tests.support.clock import FakeClock
from tests.support.data import add_policy, add_user
from tests.support.polling import wait_for


async def _pair(engine, valkey_client, *, broadcast: bool):
    clock_a, clock_b = FakeClock(), FakeClock()
    a = AppConfigFragmentCacheSource(valkey_client, broadcast=broadcast, timer=clock_a)
    b = AppConfigFragmentCacheSource(valkey_client, broadcast=broadcast, timer=clock_b)
    await a.start()
    await b.start()
    return (
        AppConfigFragmentRepository(engine, a),
        AppConfigFragmentRepository(engine, b),
        a,
        b,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def broadcasting(engine: Any, valkey_client: Any) -> AsyncIterator[tuple[Any, ...]]:
    """A user of d1, a "theme" policy, and two started cache sources A and B with the
    broadcast on: ``(uid, repo_a, repo_b, a, b)``; both closed at the end."""
    await add_policy(engine, "theme")
    uid = await add_user(engine, domain="d1")
    repo_a, repo_b, a, b = await _pair(engine, valkey_client, broadcast=True)
    try:
        yield uid, repo_a, repo_b, a, b
    finally:
        await a.aclose()
        await b.aclose()


async def test_broadcast_drops_other_instances_l1_at_once(broadcasting: Any) -> None:
    uid, repo_a, repo_b, _a, b = broadcasting
    await repo_a.bulk_create_my(uid, [MyFragmentInput(name="theme", config={"c": 1})])
    assert (await repo_b.app_config(uid, "theme")).config == {"c": 1}
    assert b.stats.l1_hits == 0
    assert (await repo_b.app_config(uid, "theme")).config == {"c": 1}
    assert b.stats.l1_hits == 1  # B now serves from its own L1

    await repo_a.bulk_update_my(uid, [MyFragmentInput(name="theme", config={"c": 2})])
    # No clock moves: only the broadcast can make B drop its L1 entry.
    await wait_for(
        lambda: b.stats.broadcast_received >= 1, what="B to receive the bump", timeout=5.0
    )
    assert (await repo_b.app_config(uid, "theme")).config == {"c": 2}
    assert b.stats.broadcast == "up"


async def test_without_broadcast_other_instance_waits_for_local_ttl(engine, valkey_client) -> None:
    await add_policy(engine, "theme")
    uid = await add_user(engine, domain="d1")
    clock_b = FakeClock()
    a = AppConfigFragmentCacheSource(valkey_client)
    b = AppConfigFragmentCacheSource(valkey_client, local_ttl=2.0, timer=clock_b)
    repo_a, repo_b = AppConfigFragmentRepository(engine, a), AppConfigFragmentRepository(engine, b)
    await repo_a.bulk_create_my(uid, [MyFragmentInput(name="theme", config={"c": 1})])
    assert (await repo_b.app_config(uid, "theme")).config == {"c": 1}
    await repo_a.bulk_update_my(uid, [MyFragmentInput(name="theme", config={"c": 2})])
    assert (await repo_b.app_config(uid, "theme")).config == {"c": 1}  # inside the window
    assert b.stats.broadcast == "off"
    clock_b.advance(2.0)
    assert (await repo_b.app_config(uid, "theme")).config == {"c": 2}
    await a.aclose()
    await b.aclose()


async def test_lost_subscription_drops_l1_and_comes_back(
    broadcasting: Any, valkey_client: Any
) -> None:
    uid, repo_a, repo_b, a, b = broadcasting
    await repo_a.bulk_create_my(uid, [MyFragmentInput(name="theme", config={"c": 1})])
    assert (await repo_b.app_config(uid, "theme")).config == {"c": 1}
    killed = await valkey_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert killed >= 2
    await wait_for(
        lambda: b.stats.broadcast != "up", what="B to notice the lost subscription", timeout=5.0
    )
    # Messages may be lost meanwhile: B no longer serves what it cached before the drop.
    hits = b.stats.l1_hits
    assert (await repo_b.app_config(uid, "theme")).config == {"c": 1}
    assert b.stats.l1_hits == hits  # read again, not served from L1
    # The subscription comes back by itself, and then works again.
    await wait_for(
        lambda: a.stats.broadcast == "up" and b.stats.broadcast == "up",
        what="resub",
        timeout=5.0,
    )
    await repo_a.bulk_update_my(uid, [MyFragmentInput(name="theme", config={"c": 3})])
    await wait_for(
        lambda: b.stats.broadcast_received >= 1, what="B to receive the bump", timeout=5.0
    )
    assert (await repo_b.app_config(uid, "theme")).config == {"c": 3}


async def test_wait_replicas_is_refused_on_a_standalone_without_replicas(
    engine, valkey_client
) -> None:
    """WAIT with no replica attached never reaches N: the bump stays pending, reads stay correct."""
    await add_policy(engine, "theme")
    uid = await add_user(engine, domain="d1")
    cache = AppConfigFragmentCacheSource(valkey_client, wait_replicas=1, wait_timeout=0.01)
    repo = AppConfigFragmentRepository(engine, cache)
    await repo.bulk_create_my(uid, [MyFragmentInput(name="theme", config={"c": 1})])
    assert cache.stats.pending_bumps == 1
    assert (await repo.app_config(uid, "theme")).config == {"c": 1}
    assert cache.stats.l2_skipped >= 1  # Valkey is not trusted while a bump is pending
    await cache.aclose()


def test_settings_are_checked() -> None:
    with pytest.raises(CacheSettingsError):
        AppConfigFragmentCacheSource(object(), wait_replicas=-1)
