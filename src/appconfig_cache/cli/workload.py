"""The WebUI-bootstrap workload, run in one mode, with every read checked by an oracle.

**Rounds.** The workload (planned in :mod:`.workload_plan`) runs in rounds. In the
timed part of a round, the sessions' reads and the round's writes go through the same
repositories at the same time. In the untimed part, every read of the round is
compared with what a DB-only repository on its own engine returns.

**Oracle.** A mismatch is a *stale read* when the check is conclusive: no write was in
progress when the cached read started, and none started between then and the end
of the oracle read. Otherwise the difference may be a legitimate race and the read
is not judged; any stale value such a race left in a cache would be served again in
a later round, where the check is conclusive. The demo is the only writer of its
tables, so between two writes the database does not change: the oracle reads a given
``(user, name)`` once per write-free stretch and compares later reads with that.

**Clock.** The cache sources get a :class:`PausableClock` as ``timer=``, paused while the
oracle checks: their TTLs see the workload's time only.

**Garbage.** Each measured round starts after ``gc.collect()``. The oracle's reads
between rounds allocate far more long-lived objects than the rounds themselves, so
without it a full collection of the whole heap (about 0.3 s at the default size) would
fall due at random, now in a timed round, now in a check. The young collections a
round's own allocations cause are timed, as in any process.

**Warm-up.** The cached modes start from a Valkey warmed by *another* cache source
(another manager process, as it were): two logins of every user, not measured. The
first load of a user in a process never fills Valkey (the process does not know the
user's domain generation from before its query); the second does. The measured cache
source starts with an empty L1.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from ..repositories.app_config_fragment import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
)
from ..repositories.app_config_policy import AppConfigPolicyRepository
from ..types import AppConfigFragmentKey, AppConfigScopeType, FragmentInput, MyFragmentInput
from .workload_plan import WARMUP_PASSES, Read, Round, Workload, Write, plan_workload

__all__ = [
    "ModeResult",
    "PausableClock",
    "Read",
    "Round",
    "Workload",
    "Write",
    "plan_workload",
    "run_mode",
]


class PausableClock:
    """Monotonic seconds that stand still while paused (a cache source's ``timer=``)."""

    __slots__ = ("_paused_at", "_paused_total")

    def __init__(self) -> None:
        self._paused_total = 0.0
        self._paused_at: float | None = None

    def __call__(self) -> float:
        now = self._paused_at if self._paused_at is not None else time.monotonic()
        return now - self._paused_total

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.monotonic()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused_total += time.monotonic() - self._paused_at
            self._paused_at = None


@dataclass
class ModeResult:
    mode: str
    label: str
    reads: int = 0
    writes: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0  # the timed parts of the measured rounds
    db_queries: int = 0
    checked: int = 0
    inconclusive: int = 0
    stale: int = 0
    raced: int = 0  # mismatches inside a write's window: not judged
    oracle_db_reads: int = 0
    stale_examples: list[str] = field(default_factory=list)
    cache_stats: dict[str, Any] | None = None
    #: the consistency monitor's figures (the L1 + Valkey mode only)
    monitor: dict[str, Any] | None = None


@dataclass(slots=True)
class _Record:
    repo: AppConfigFragmentRepository
    op: Read
    value: Any
    writes_started: int
    write_in_progress: bool


async def run_mode(
    mode: str,
    label: str,
    engine: AsyncEngine,
    oracle: AppConfigFragmentRepository,
    cache: AppConfigFragmentCacheSource | None,
    workload: Workload,
    *,
    concurrency: int,
    warmup_cache: AppConfigFragmentCacheSource | None = None,
    clock: PausableClock | None = None,
    on_progress: Callable[[int], None] = lambda n: None,
) -> ModeResult:
    """Replay ``workload`` against ``engine`` through ``cache`` (None: DB only).

    With ``warmup_cache``, the warm-up logins go through it first. Every read is
    checked; only the measured rounds count in the figures (cache statistics and
    DB queries included).
    """
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    policies = AppConfigPolicyRepository(engine, cache_source=cache)
    result = ModeResult(mode, label)
    writes_started = writes_finished = 0
    write_counts: dict[str, int] = {}
    records: list[_Record] = []
    latencies: list[float] = []
    queries = 0

    def count_query(*_args: Any) -> None:
        nonlocal queries
        queries += 1

    async def read(op: Read, through: AppConfigFragmentRepository = repo) -> None:
        started, busy = writes_started, writes_started != writes_finished
        t0 = time.perf_counter()
        if op.kind == "login":
            value: Any = await through.my_app_configs(op.user_id)
        else:
            value = await through.app_config(op.user_id, op.name)
        latencies.append(time.perf_counter() - t0)
        records.append(_Record(through, op, value, started, busy))

    async def session(reads: list[Read], through: AppConfigFragmentRepository) -> None:
        for op in reads:
            await read(op, through)

    async def write(w: Write) -> None:
        nonlocal writes_started, writes_finished
        writes_started += 1
        try:
            await _apply(w, repo, policies)
        finally:
            writes_finished += 1
        write_counts[w.kind] = write_counts.get(w.kind, 0) + 1
        await read(Read("login", w.probe))  # read-your-writes, through the cache

    limit = asyncio.Semaphore(concurrency)
    # The DB-only answers of the current write-free stretch (see the module docstring).
    known: dict[Read, Any] = {}
    known_at = -1

    async def expected(op: Read) -> Any:
        nonlocal known_at
        if known_at != writes_started:
            known.clear()
            known_at = writes_started
        if op in known:
            return known[op]
        async with limit:
            result.oracle_db_reads += 1
            if op.kind == "login":
                value: Any = await oracle.my_app_configs(op.user_id)
            else:
                value = await oracle.app_config(op.user_id, op.name)
        if known_at == writes_started == writes_finished:
            known[op] = value
        return value

    async def check(record: _Record) -> None:
        want = await expected(record.op)
        conclusive = not record.write_in_progress and writes_started == record.writes_started
        if conclusive:
            result.checked += 1
        else:
            result.inconclusive += 1
        if record.value == want:
            return
        if not conclusive:
            result.raced += 1
            return
        result.stale += 1
        if len(result.stale_examples) < 5:
            op = record.op
            what = "login" if op.kind == "login" else f"app_config {op.name!r}"
            result.stale_examples.append(f"{what} of user {op.user_id}")

    async def play(
        rounds: list[Round], through: AppConfigFragmentRepository, *, measured: bool = False
    ) -> float:
        seconds = 0.0
        for rnd in rounds:
            records.clear()
            if measured:
                gc.collect()  # see "Garbage" in the module docstring
            if clock is not None:
                clock.resume()
            t0 = time.perf_counter()
            await asyncio.gather(
                *map(write, rnd.writes), *(session(reads, through) for reads in rnd.sessions)
            )
            seconds += time.perf_counter() - t0
            if clock is not None:
                clock.pause()
            await asyncio.gather(*map(check, records))
            on_progress(rnd.reads)
        return seconds

    sync_engine = engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", count_query)
    try:
        if warmup_cache is not None:
            warm = AppConfigFragmentRepository(engine, cache_source=warmup_cache)
            for _ in range(WARMUP_PASSES):
                await play(workload.warmup, warm)
            await play(workload.warmup, repo)  # this process has served every user once
        latencies.clear()
        queries = 0
        before = _counters(cache)
        result.seconds = await play(workload.rounds, repo, measured=True)
    finally:
        event.remove(sync_engine, "before_cursor_execute", count_query)
        if clock is not None:
            clock.resume()
    result.reads = len(latencies)
    result.latencies = latencies
    result.db_queries = queries
    result.writes = write_counts
    if cache is not None:
        after = _counters(cache)
        result.cache_stats = {
            key: value - before[key] if isinstance(value, int) and key not in _GAUGES else value
            for key, value in after.items()
        }
    return result


#: stats that say how much is held now, not how often something happened: not differenced
_GAUGES = frozenset({"l1_bytes", "memo_bytes"})


def _counters(cache: AppConfigFragmentCacheSource | None) -> dict[str, Any]:
    return {} if cache is None else cache.stats.as_dict()


async def _apply(
    w: Write, repo: AppConfigFragmentRepository, policies: AppConfigPolicyRepository
) -> None:
    """One write through the repositories; a failed item is a bug worth stopping for."""
    if w.kind == "policy":
        # Flip between two chains, so that every mode makes a real change.
        current = await policies.get(w.target)
        chain = w.other_chain if current and current.scope_sources == w.chain else w.chain
        await policies.update(w.target, list(chain))
        return
    assert w.config is not None
    if w.kind == "user_save":
        assert w.user_id is not None
        done: Any = await repo.bulk_update_my(
            w.user_id, [MyFragmentInput(name=w.target, config=w.config)]
        )
    else:
        if w.kind == "domain_theme":
            key = AppConfigFragmentKey(
                scope_type=AppConfigScopeType.DOMAIN, scope_id=w.target, name="theme"
            )
        else:
            key = AppConfigFragmentKey(
                scope_type=AppConfigScopeType.PUBLIC, scope_id="public", name=w.target
            )
        done = await repo.admin_bulk_update([FragmentInput(key=key, config=w.config)])
    if done.failures:
        failure = done.failures[0]
        raise RuntimeError(f"{w.kind} write failed: {failure.code}: {failure.message}")
