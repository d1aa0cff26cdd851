"""Replication safety: ``wait_replicas`` against a real primary with one replica.

Valkey replicates asynchronously, so a generation bump the primary acknowledged can
be lost in a failover. With ``wait_replicas=1`` the invalidation pipeline ends in
``WAIT 1 <wait_timeout ms>``: the write call returns once the replica holds the bump,
or, when it does not acknowledge in time, returns anyway with the bump kept pending.
A pending bump makes this instance skip Valkey (reads go to PostgreSQL) until a
replay, tried at most once per breaker cool-down, is acknowledged.

Every command the cache source sends is recorded where it is packed for the wire
(``Connection.pack_command``), so the tests see the ``WAIT`` itself and every
command each phase sent. The test's own look-ups use separate, unrecorded clients.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
import valkey.asyncio as valkey_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigData,
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
)
from appconfig_cache.embedded import EmbeddedValkeyReplicaPair
from appconfig_cache.errors import CacheSettingsError
from appconfig_cache.tiered import keys as cache_keys
from tests.support.clock import FakeClock
from tests.support.data import add_policy, add_user
from tests.support.fragments import domain_fragment, my_fragment, public_fragment
from tests.support.scopes import ALL_SCOPES
from tests.support.valkey import WireRecorder, direct_client

pytestmark = pytest.mark.cluster

NAME = "theme"
DOMAIN_NAME = "d1"
WAIT_TIMEOUT = 0.5
WAIT_ARGS = ("1", str(round(WAIT_TIMEOUT * 1000)))
COOLDOWN = 30.0
#: the Valkey call budget of the main tests: above WAIT_TIMEOUT, so that WAIT can answer
#: "0 replicas" inside it (see test_wait_timeout_at_the_call_budget_... for the default)
BUDGET = 2.0


class Recorder(WireRecorder):
    """The wire recorder, with the ``WAIT`` the invalidation pipeline ends in."""

    def waits(self) -> list[tuple[str, ...]]:
        return [command for command in self.of("WAIT") if command[1:] == WAIT_ARGS]


@contextmanager
def replica_paused(pair: EmbeddedValkeyReplicaPair) -> Iterator[None]:
    """The replica stopped (SIGSTOP) for the block, running again after it."""
    pair.pause_replica()
    try:
        yield
    finally:
        pair.resume_replica()


@dataclass
class Setup:
    cache: AppConfigFragmentCacheSource
    repo: AppConfigFragmentRepository
    db_only: AppConfigFragmentRepository
    recorder: Recorder
    clock: FakeClock
    uid: uuid.UUID
    engine: AsyncEngine
    primary: valkey_asyncio.Valkey  # unrecorded
    replica: valkey_asyncio.Valkey  # unrecorded, reads the replica directly

    async def read_checked(self) -> AppConfigData:
        """A read through the cache, which must equal the DB-only repository's."""
        view = await self.repo.app_config(self.uid, NAME)
        assert view == await self.db_only.app_config(self.uid, NAME)
        await self.cache.drain()
        return view

    async def update_domain(self, config: dict[str, Any]) -> None:
        result = await self.repo.admin_bulk_update([domain_fragment(DOMAIN_NAME, NAME, config)])
        assert not result.failures


@pytest_asyncio.fixture(loop_scope="session")
async def make_setup(
    engine: AsyncEngine, replica_pair: EmbeddedValkeyReplicaPair
) -> AsyncIterator[Any]:
    """Builds the data set and a cache source with ``wait_replicas=1`` on the primary."""
    opened: list[Any] = []

    async def make(**cache_kwargs: Any) -> Setup:
        await add_policy(engine, NAME, ALL_SCOPES)
        uid = await add_user(engine, domain=DOMAIN_NAME)
        db_only = AppConfigFragmentRepository(engine)
        created = await db_only.admin_bulk_create(
            [
                public_fragment(NAME, {"color": "grey", "size": 1}),
                domain_fragment(DOMAIN_NAME, NAME, {"color": "blue"}),
            ]
        )
        assert not created.failures
        # These rows are the setup's: left there, the cache source's outbox replayer
        # would bump them a few seconds in, among the bumps this module counts.
        async with engine.begin() as conn:
            await conn.execute(sa.text("DELETE FROM app_config_outbox"))
        recorder, clock = Recorder(), FakeClock()
        # The socket timeout is far above WAIT's: a paused replica must show as WAIT's
        # answer (0 replicas), never as a broken connection.
        client = recorder.client(replica_pair.primary_url, timeout=5.0)
        cache_kwargs = {
            "wait_replicas": 1,
            "wait_timeout": WAIT_TIMEOUT,
            "breaker_cooldown": COOLDOWN,
            "timer": clock,
            **cache_kwargs,
        }
        cache = AppConfigFragmentCacheSource(client, **cache_kwargs)
        primary = direct_client(replica_pair.primary_url, timeout=5.0)
        replica = direct_client(replica_pair.replica_url, timeout=5.0)
        opened.extend([cache, client, primary, replica])
        repo = AppConfigFragmentRepository(engine, cache_source=cache)
        return Setup(cache, repo, db_only, recorder, clock, uid, engine, primary, replica)

    try:
        yield make
    finally:
        for resource in opened:
            await resource.aclose()


async def test_a_write_returns_after_the_replica_holds_the_bump(make_setup: Any) -> None:
    s: Setup = await make_setup(timeout=BUDGET)
    await s.read_checked()  # both tiers warm; the generations exist on the primary

    user_gen = cache_keys.user_gen_key(s.uid)
    for step in range(3):
        s.recorder.reset()
        before = await s.primary.get(user_gen)
        write = s.repo.bulk_create_my if step == 0 else s.repo.bulk_update_my
        result = await write(s.uid, [my_fragment(NAME, {"step": step})])
        assert not result.failures
        # Right after the call returns, the replica already holds the primary's value.
        on_primary = await s.primary.get(user_gen)
        assert on_primary is not None and on_primary != before
        assert await s.replica.get(user_gen) == on_primary
        # ... because the bump pipeline ended in WAIT, after the INCRBY.
        names = s.recorder.names()
        assert len(s.recorder.waits()) == 1, s.recorder.commands
        assert names.index("WAIT") > names.index("INCRBY")
        assert [c[1] for c in s.recorder.of("INCRBY")] == [user_gen]
        assert result.successes == [await s.db_only.app_config(s.uid, NAME)]

    # An admin write to the domain: the same for the domain's generation.
    domain_gen = cache_keys.domain_gen_key(DOMAIN_NAME)
    s.recorder.reset()
    await s.update_domain({"color": "green"})
    on_primary = await s.primary.get(domain_gen)
    assert on_primary is not None
    assert await s.replica.get(domain_gen) == on_primary
    assert [c[1] for c in s.recorder.of("INCRBY")] == [domain_gen]
    assert len(s.recorder.waits()) == 1

    stats = s.cache.stats
    assert stats.pending_bumps == 0
    assert stats.valkey_errors == 0 and stats.valkey_timeouts == 0
    view = await s.read_checked()
    assert view.config == {"color": "green", "size": 1, "step": 2}


async def test_an_unacknowledged_bump_stays_pending_until_replayed(
    make_setup: Any, replica_pair: EmbeddedValkeyReplicaPair
) -> None:
    s: Setup = await make_setup(timeout=BUDGET)
    domain_gen = cache_keys.domain_gen_key(DOMAIN_NAME)
    await s.read_checked()
    with replica_paused(replica_pair):
        s.recorder.reset()
        await s.update_domain({"color": "red"})
        # The write returned although the replica never acknowledged its bump.
        assert len(s.recorder.waits()) == 1
        assert [c[1] for c in s.recorder.of("INCRBY")] == [domain_gen]
        assert s.cache.stats.pending_bumps == 1
        # WAIT answered "0 replicas" inside the budget: not a Valkey failure.
        assert s.cache.stats.valkey_timeouts == 0 and s.cache.stats.valkey_errors == 0

        # Reads stay DB-correct (they see the write) and do not read Valkey.
        skipped, loads = s.cache.stats.l2_skipped, s.cache.stats.db_loads
        s.recorder.reset()
        for _ in range(3):
            view = await s.read_checked()
            assert view.config == {"color": "red", "size": 1}
            s.clock.advance(s.cache.local_ttl + 0.1)  # past L1; 3 x 2.1 s < one cool-down
        assert "MGET" not in s.recorder.names(), s.recorder.names()
        assert s.cache.stats.l2_skipped >= skipped + 3
        assert s.cache.stats.db_loads == loads + 3
        assert s.cache.stats.pending_bumps == 1
        # The replay is tried at most once in the cool-down, whatever the number of reads.
        assert len(s.recorder.waits()) <= 1
        s.recorder.reset()
        for _ in range(3):
            await s.read_checked()
            s.clock.advance(s.cache.local_ttl + 0.1)
        assert s.recorder.commands == [], "a read used Valkey while a bump was pending"

        # A cool-down later, one read replays; the replica is still paused: pending.
        s.clock.advance(COOLDOWN)
        s.recorder.reset()
        await s.read_checked()
        await s.read_checked()
        assert len(s.recorder.waits()) == 1
        assert "MGET" not in s.recorder.names()
        assert s.cache.stats.pending_bumps == 1
        assert await s.primary.get(domain_gen) is not None  # the primary has every bump

    # The replica is back; within the cool-down nothing is replayed yet.
    s.recorder.reset()
    s.clock.advance(s.cache.local_ttl + 0.1)
    await s.read_checked()
    assert s.recorder.commands == []
    assert s.cache.stats.pending_bumps == 1

    # Past the cool-down the next read replays the bump, the replica acknowledges it,
    # nothing is pending any more, and that same read uses Valkey again.
    s.clock.advance(COOLDOWN)
    s.recorder.reset()
    skipped = s.cache.stats.l2_skipped
    view = await s.read_checked()
    assert view.config == {"color": "red", "size": 1}
    assert s.cache.stats.pending_bumps == 0
    assert len(s.recorder.waits()) == 1
    assert [c[1] for c in s.recorder.of("INCRBY")] == [domain_gen]
    assert "MGET" in s.recorder.names()
    assert s.cache.stats.l2_skipped == skipped
    assert await s.replica.get(domain_gen) == await s.primary.get(domain_gen)

    # Valkey is trusted again: another instance (another process) reads that fill.
    other = AppConfigFragmentCacheSource(s.primary, timer=s.clock)
    try:
        other_repo = AppConfigFragmentRepository(s.engine, cache_source=other)
        assert await other_repo.app_config(s.uid, NAME) == view
        assert other.stats.l2_hits == 1 and other.stats.db_loads == 0
    finally:
        await other.aclose()


async def test_a_paused_replica_is_not_a_valkey_failure(
    make_setup: Any, replica_pair: EmbeddedValkeyReplicaPair
) -> None:
    """WAIT answering 0 replicas leaves the breaker closed and counts no Valkey error."""
    s: Setup = await make_setup(timeout=BUDGET)
    await s.read_checked()
    with replica_paused(replica_pair):
        for step in range(3):
            await s.update_domain({"step": step})
            view = await s.read_checked()
            assert view.config == {"color": "grey", "size": 1, "step": step}
            s.clock.advance(COOLDOWN + 1)
    stats = s.cache.stats
    assert stats.pending_bumps == 1
    assert stats.breaker_state == "closed" and stats.breaker_opens == 0
    assert stats.valkey_errors == 0 and stats.valkey_timeouts == 0


async def test_the_read_right_after_an_unacknowledged_write_does_not_wait_again(
    make_setup: Any, replica_pair: EmbeddedValkeyReplicaPair
) -> None:
    s: Setup = await make_setup(timeout=BUDGET)
    await s.read_checked()
    with replica_paused(replica_pair):
        await s.update_domain({"color": "red"})
        assert s.cache.stats.pending_bumps == 1
        s.recorder.reset()
        view = await s.read_checked()  # same instant: still within the write's attempt
        assert view.config == {"color": "red", "size": 1}
        assert s.recorder.waits() == [], "the read replayed the bump at once (one more WAIT)"


async def test_wait_timeout_at_the_call_budget_is_refused_or_not_a_timeout(
    make_setup: Any, replica_pair: EmbeddedValkeyReplicaPair
) -> None:
    try:
        s: Setup = await make_setup()  # the brief's settings: wait_timeout=0.5, timeout default
    except CacheSettingsError:  # refusing the setting would be a fix too
        return
    await s.read_checked()
    with replica_paused(replica_pair):
        s.recorder.reset()
        await s.update_domain({"color": "red"})
        assert s.cache.stats.pending_bumps == 1
        assert s.cache.stats.valkey_timeouts == 0
        assert "PING" not in s.recorder.names()
