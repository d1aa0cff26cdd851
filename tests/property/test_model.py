"""Model-based consistency: a seeded random walk checked against the DB-only repository.

Each example builds a small organisation, then takes random steps through one
or two cache instances (each with its own L1 and clock) over one Valkey and
one PostgreSQL: reads, every write verb, policy changes, clock advances, and
reads that pause between their DB query and their fill while a write runs.
After every step, reads are checked against the model, the DB-only repository:

- I1/I2: a read equals the current DB view, unless
- I4: the view it returns was superseded by a write *of the other instance*
  less than ``local_ttl`` ago on the reading instance's clock;
- I3: a paused reader that resumes after a write may return the old value to
  its own caller, but no later read may.

``APPCONFIG_CACHE_MODEL_EXAMPLES`` and ``APPCONFIG_CACHE_MODEL_STEPS`` scale the
run (``tox -e soak`` runs a long one). A failure prints the seed and the steps.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from appconfig_cache import (
    AppConfigData,
    AppConfigFragmentCacheSource,
    AppConfigFragmentKey,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    AppConfigScopeType,
    FragmentInput,
    MyFragmentInput,
)
from tests.support.clock import FakeClock
from tests.support.data import add_user, truncate_tables
from tests.support.internals import db_source_of

EXAMPLES = int(os.environ.get("APPCONFIG_CACHE_MODEL_EXAMPLES", "200"))
STEPS = int(os.environ.get("APPCONFIG_CACHE_MODEL_STEPS", "30"))
LOCAL_TTL = 2.0
NAMES = ("theme", "menu", "prefs")
DOMAINS = ("d1", "d2")
SCOPES = tuple(AppConfigScopeType)


@dataclass
class Version:
    """One past value of a view, and when (on each instance's clock) a write replaced it."""

    value: AppConfigData
    replaced_by: int | None = None  # index of the instance whose write replaced it
    replaced_at: list[float] = field(default_factory=list)


@dataclass
class Instance:
    repo: AppConfigFragmentRepository
    policies: AppConfigPolicyRepository
    cache: AppConfigFragmentCacheSource
    clock: FakeClock


class Walk:
    def __init__(self, engine: Any, client: Any, rng: random.Random, instances: int, l2_only: bool):
        self.engine = engine
        self.client = client
        self.rng = rng
        self.oracle = AppConfigFragmentRepository(engine)
        self.instances: list[Instance] = []
        for i in range(instances):
            clock = FakeClock()
            cache = AppConfigFragmentCacheSource(
                client,
                local_ttl=LOCAL_TTL,
                local_maxsize=0 if (l2_only and i == 1) else 64,
                timer=clock,
            )
            self.instances.append(
                Instance(
                    AppConfigFragmentRepository(engine, cache),
                    AppConfigPolicyRepository(engine, cache),
                    cache,
                    clock,
                )
            )
        self.users: list[uuid.UUID] = []
        self.history: dict[tuple[uuid.UUID, str], list[Version]] = {}
        self.log: list[str] = []

    async def setup(self) -> None:
        rng = self.rng
        for _ in range(3):
            self.users.append(await add_user(self.engine, domain=rng.choice(DOMAINS)))
        self.users.append(uuid.uuid4())  # a user without a users row
        policies = AppConfigPolicyRepository(self.engine)
        for name in NAMES:
            await policies.create(name, self._chain())
        for uid in self.users:
            for name in NAMES:
                self.history[(uid, name)] = [Version(await self.oracle.app_config(uid, name))]

    def _chain(self) -> list[AppConfigScopeType]:
        chain = list(SCOPES)
        self.rng.shuffle(chain)
        return chain[: self.rng.randint(1, len(chain))]

    def _config(self) -> dict[str, Any]:
        rng = self.rng
        return {
            rng.choice("abc"): rng.randint(0, 9),
            "nested": {rng.choice("xy"): rng.choice([1, "s", [1, 2], None])},
        }

    # -- the model ------------------------------------------------------------------

    async def record_write(self, writer: int) -> None:
        """After a write returned: append every changed view to its history."""
        for uid in self.users:
            views = await self.oracle.app_configs(uid, list(NAMES))
            for name, view in zip(NAMES, views, strict=True):
                versions = self.history[(uid, name)]
                if versions[-1].value != view:
                    versions[-1].replaced_by = writer
                    versions[-1].replaced_at = [inst.clock.now for inst in self.instances]
                    versions.append(Version(view))

    def acceptable(self, reader: int, uid: uuid.UUID, name: str, value: AppConfigData) -> bool:
        versions = self.history[(uid, name)]
        if value == versions[-1].value:
            return True
        now = self.instances[reader].clock.now
        # An older version is allowed only inside the cross-process window (I4):
        # every write since it must be another instance's, and recent on our clock.
        for version in reversed(versions[:-1]):
            if version.replaced_by == reader or now - version.replaced_at[reader] >= LOCAL_TTL:
                return False
            if value == version.value:
                return True
        return False

    async def check_read(self, reader: int, uid: uuid.UUID, name: str) -> None:
        inst = self.instances[reader]
        if self.rng.random() < 0.5:
            value = await inst.repo.app_config(uid, name)
        else:
            others = [n for n in NAMES if n != name and self.rng.random() < 0.5]
            value = (await inst.repo.app_configs(uid, [name, *others]))[0]
        assert self.acceptable(reader, uid, name, value), self._failure(reader, uid, name, value)

    def _failure(self, reader: int, uid: uuid.UUID, name: str, value: AppConfigData) -> str:
        versions = self.history[(uid, name)]
        return (
            f"instance {reader} read a stale {name!r} for {uid}: got {value.config}, "
            f"current {versions[-1].value.config}, history "
            f"{[(v.value.config, v.replaced_by, v.replaced_at) for v in versions]}\n"
            + "\n".join(self.log)
        )

    # -- steps ----------------------------------------------------------------------

    async def step(self) -> None:
        rng = self.rng
        who = rng.randrange(len(self.instances))
        inst = self.instances[who]
        uid = rng.choice(self.users)
        name = rng.choice(NAMES)
        action = rng.choices(
            ["read", "my", "admin", "purge", "policy", "clock", "racy"],
            weights=[8, 3, 3, 1, 1, 2, 2],
        )[0]
        self.log.append(f"{action} by {who} user={str(uid)[:8]} name={name}")
        if action == "read":
            await self.check_read(who, uid, name)
        elif action == "my":
            await self._my_write(inst, uid, name)
            await self.record_write(who)
        elif action == "admin":
            await self._admin_write(inst, name)
            await self.record_write(who)
        elif action == "purge":
            key = self._key(name)
            await inst.repo.admin_bulk_purge([key])
            await self.record_write(who)
        elif action == "policy":
            await inst.policies.update(name, self._chain())
            await self.record_write(who)
        elif action == "clock":
            inst.clock.advance(rng.choice([0.1, 0.5, 1.0, 1.5, LOCAL_TTL]))
        else:
            await self._racy_read(who, uid, name)
        # After every step, a few reads from every instance must satisfy the model.
        for reader in range(len(self.instances)):
            for _ in range(2):
                await self.check_read(reader, rng.choice(self.users), rng.choice(NAMES))

    def _key(self, name: str) -> AppConfigFragmentKey:
        scope = self.rng.choice(SCOPES)
        scope_id = {
            AppConfigScopeType.PUBLIC: "public",
            AppConfigScopeType.USER: str(self.rng.choice(self.users)),
        }.get(scope, self.rng.choice(DOMAINS))
        return AppConfigFragmentKey(scope_type=scope, scope_id=scope_id, name=name)

    async def _my_write(self, inst: Instance, uid: uuid.UUID, name: str) -> None:
        item = [MyFragmentInput(name=name, config=self._config())]
        result = await inst.repo.bulk_update_my(uid, item)
        if result.failures and result.failures[0].code == "not_found":
            await inst.repo.bulk_create_my(uid, item)

    async def _admin_write(self, inst: Instance, name: str) -> None:
        item = [FragmentInput(key=self._key(name), config=self._config())]
        result = await inst.repo.admin_bulk_update(item)
        if result.failures and result.failures[0].code == "not_found":
            await inst.repo.admin_bulk_create(item)

    async def _racy_read(self, who: int, uid: uuid.UUID, name: str) -> None:
        """A read that pauses after its DB query while a write runs to completion (I3)."""
        inst = self.instances[who]
        gate, arrived = asyncio.Event(), asyncio.Event()
        db = db_source_of(inst.repo)
        original: Callable[..., Awaitable[Any]] = db.load_views

        async def paused(*args: Any) -> Any:
            db.load_views = original  # type: ignore[method-assign]  # pause the first load only
            loaded = await original(*args)
            arrived.set()
            await gate.wait()
            return loaded

        db.load_views = paused  # type: ignore[method-assign]
        try:
            task = asyncio.create_task(inst.repo.app_config(uid, name))
            waiter = asyncio.create_task(arrived.wait())
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            db.load_views = original  # type: ignore[method-assign]  # a cache hit never paused
            writer = self.rng.randrange(len(self.instances))
            await self._my_write(self.instances[writer], uid, name)
            await self.record_write(writer)
            gate.set()
            value = await task
        finally:
            db.load_views = original  # type: ignore[method-assign]
        # The paused read is concurrent with the write: old or new are both fine for it.
        assert any(value == v.value for v in self.history[(uid, name)])
        await inst.cache.drain()

    async def close(self) -> None:
        for inst in self.instances:
            await inst.cache.aclose()


async def _reset(engine: Any, client: Any) -> None:
    await truncate_tables(engine)
    await client.flushdb()


@pytest.mark.parametrize(
    ("instances", "l2_only"), [(1, False), (2, False), (2, True)], ids=["one", "two", "two-l2"]
)
async def test_random_walk_keeps_invariants(engine, valkey_client, instances, l2_only) -> None:
    steps = 0
    for example in range(EXAMPLES):
        seed = 1_000_003 * instances + 7 * example + l2_only
        await _reset(engine, valkey_client)
        walk = Walk(engine, valkey_client, random.Random(seed), instances, l2_only)
        try:
            await walk.setup()
            for _ in range(STEPS):
                await walk.step()
                steps += 1
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from None
        finally:
            await walk.close()
    print(f"model walk ({instances} instance(s), l2_only={l2_only}): {steps} steps checked")
    assert steps == EXAMPLES * STEPS
