"""Every exception a Valkey call can raise, and garbage or protocol errors from the fault
proxy, never reach the caller: every entry point answers as the DB does (I5)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

import pytest
import valkey.exceptions as vex
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    AppConfigScopeType,
)
from tests.support.clock import FakeClock
from tests.support.fragments import domain_fragment, my_fragment, public_fragment, user_fragment
from tests.support.valkey import RaiseOnCall

from .conftest import (
    COOLDOWN,
    Faults,
    Load,
    StackFactory,
    own_config,
    recover,
    seed_population,
)
from .proxy import FaultProxy

pytestmark = pytest.mark.slow

# -- every exception class a call can raise ------------------------------------------------


def _valkey_exception_classes() -> list[type[BaseException]]:
    return [
        cls
        for _, cls in inspect.getmembers(vex, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == vex.__name__
    ]


def _make(cls: type[BaseException]) -> Callable[[], BaseException]:
    def make() -> BaseException:
        try:
            return cls("3999 127.0.0.1:6381")  # MovedError and AskError parse their message
        except Exception:
            return cls()

    return make


FAULTS = [(cls.__name__, _make(cls)) for cls in _valkey_exception_classes()]
FAULTS += [("OSError", _make(OSError)), ("asyncio.TimeoutError", _make(asyncio.TimeoutError))]


async def _every_verb(
    engine: AsyncEngine,
    cache: AppConfigFragmentCacheSource,
    population: Any,
    tag: str,
) -> None:
    """Every public entry point once, each answer checked against the DB."""
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    policies = AppConfigPolicyRepository(engine, cache_source=cache)
    oracle = AppConfigFragmentRepository(engine)
    uid, other = population.users[0], population.users[1]
    name, domain = population.names[0], population.domain_of[uid]
    extra = f"extra_{tag}"

    assert await repo.app_config(uid, name) == await oracle.app_config(uid, name)
    assert await repo.app_configs(uid, population.names) == await oracle.app_configs(
        uid, population.names
    )
    assert await repo.my_app_configs(other) == await oracle.my_app_configs(other)
    await policies.create(extra, [AppConfigScopeType.PUBLIC, AppConfigScopeType.USER])
    await policies.update(extra, list(AppConfigScopeType))
    created = await repo.bulk_create_my(uid, [my_fragment(extra, own_config(uid, extra, 1))])
    assert not created.failures and created.successes == [await oracle.app_config(uid, extra)]
    updated = await repo.bulk_update_my(uid, [my_fragment(extra, own_config(uid, extra, 2))])
    assert not updated.failures and updated.successes == [await oracle.app_config(uid, extra)]
    admin = await repo.admin_bulk_create(
        [domain_fragment(domain, extra, {"d": 1}), public_fragment(extra, {"p": 1})]
    )
    assert not admin.failures
    admin = await repo.admin_bulk_update([domain_fragment(domain, extra, {"d": 2})])
    assert not admin.failures
    assert await repo.app_config(uid, extra) == await oracle.app_config(uid, extra)
    await cache.invalidate_for_scope(AppConfigScopeType.USER, str(uid))
    await cache.invalidate_for_scope(AppConfigScopeType.DOMAIN, domain)
    await cache.invalidate_for_scope(AppConfigScopeType.DOMAIN_USER_DEFAULTS, domain)
    await cache.invalidate_for_scope(AppConfigScopeType.PUBLIC, "public")
    await cache.invalidate_for_policy(name)
    want = await oracle.app_config(other, name)
    await cache.set_merged_config(other, name, want)
    got = await cache.get_merged_config(other, name)
    assert got is None or got == want
    purged = await repo.admin_bulk_purge(
        [
            user_fragment(uid, extra, {}).key,
            domain_fragment(domain, extra, {}).key,
            public_fragment(extra, {}).key,
        ]
    )
    assert not purged.failures
    await policies.purge(extra)
    for user in (uid, other):
        assert await repo.app_configs(user, population.names) == await oracle.app_configs(
            user, population.names
        )
    await cache.drain()


async def test_no_valkey_exception_escapes(
    engine: AsyncEngine, valkey_url: str, make_stack: StackFactory, clock: FakeClock
) -> None:
    """Each class raised by every data call (before, then after Valkey answered)."""
    population = await seed_population(engine, users=2)
    stack = await make_stack(valkey_url, timer=clock)
    calls = stack.calls
    assert len(FAULTS) >= 30
    worst, seen = 0.0, 0
    # After Valkey answered: one class of each kind the breaker tells apart is enough.
    after = {"ConnectionError", "TimeoutError", "ResponseError", "OutOfMemoryError", "OSError"}
    after |= {"asyncio.TimeoutError", "InvalidResponse", "DataError", "ClusterDownError"}
    cases = [("before", label, fault) for label, fault in FAULTS]
    cases += [("after", label, fault) for label, fault in FAULTS if label in after]
    for when, label, fault in cases:
        # A breaker that never opens, so every entry point meets the fault.
        cache = AppConfigFragmentCacheSource(
            calls,
            timer=clock,
            breaker_window=10_000,
            breaker_threshold=10_000,
            breaker_min_calls=10_000,
        )
        raising = RaiseOnCall(fault)
        setattr(calls, when, raising)
        start = time.perf_counter()
        try:
            await _every_verb(engine, cache, population, f"{when}_{label.replace('.', '_')}")
        finally:
            setattr(calls, when, None)
            await cache.aclose()
        worst = max(worst, time.perf_counter() - start)
        stats = cache.stats
        counted = stats.valkey_errors + stats.valkey_timeouts + stats.valkey_refusals
        # Every faulted call went through the budgeted path and was classified once.
        assert raising.raised == counted > 0, (label, when, stats)
        seen += 1
    print(
        f"[fault] exceptions: {seen} cases, failed=0, worst entry-point sweep {worst * 1000:.0f}ms"
    )


# -- garbage and protocol errors from the proxy --------------------------------------------

PROXY_FAULTS: list[Any] = [
    pytest.param(lambda p: p.set_garbage(), id="garbage"),
    pytest.param(lambda p: p.set_garbage(b"+OK\r\n:1\r\n$-7\r\n"), id="malformed-resp"),
    pytest.param(lambda p: p.set_answer(b"-ERR injected\r\n"), id="error-replies"),
    pytest.param(lambda p: p.set_answer(b"-WRONGTYPE injected\r\n"), id="wrongtype-replies"),
    pytest.param(lambda p: p.set_answer(b"$-1\r\n"), id="nil-replies"),
    pytest.param(lambda p: p.set_answer(b":1\r\n"), id="integer-replies"),
    pytest.param(lambda p: p.set_answer(b"*0\r\n"), id="empty-array-replies"),
    pytest.param(lambda p: p.set_fragment(64), id="fragmented"),
    pytest.param(lambda p: p.set_reset(), id="reset"),
    pytest.param(lambda p: p.set_blackhole(), id="blackhole"),
]


@pytest.mark.parametrize("inject", PROXY_FAULTS)
async def test_proxy_faults_never_reach_the_caller(
    faults: Faults,
    valkey_proxy: FaultProxy,
    inject: Callable[[FaultProxy], None],
    request: pytest.FixtureRequest,
) -> None:
    engine, make_stack, clock = faults
    population = await seed_population(engine, users=6)
    stack = await make_stack(
        valkey_proxy.url, timer=clock, local_maxsize=0, probe_timeout=0.3, breaker_cooldown=COOLDOWN
    )
    load = Load(stack.repo, AppConfigFragmentRepository(engine), population)
    await load.sweep()
    inject(valkey_proxy)
    for _ in range(4):
        await load.write()
        await load.read_round(12)
    await _every_verb(engine, stack.cache, population, "proxy")
    during = load.worst
    valkey_proxy.set_pass()
    reopened = await recover(load, stack.cache, clock)
    load.report(
        f"proxy {request.node.callspec.id} (worst while faulty {during * 1000:.0f}ms, "
        f"breaker re-opened {reopened}x after the fault cleared)"
    )
    load.check()
