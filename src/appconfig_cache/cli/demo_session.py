"""The demo's session: the servers, the seeded organisation and the planned workload."""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from ._common import (
    CliError,
    Progress,
    database_error,
    database_url_for,
    describe_url,
    one_line,
    ping_valkey,
    valkey_client_for,
)
from .demo_metrics import DemoMonitor, serve_metrics

__all__ = ["DEFAULTS", "DEMO_SCHEMA", "QUICK", "DemoSession", "demo_session"]

#: the PostgreSQL schema the demo creates, fills and drops (never the caller's tables)
DEMO_SCHEMA = "appconfig_cache_demo"

DEFAULTS = {"domains": 5, "users": 3000, "requests": 12000}
QUICK = {"domains": 3, "users": 400, "requests": 1500}
#: L1's byte budget per entry of --local-maxsize (the defaults' ratio: 160 MiB at 8,192)
DEMO_BYTES_PER_ENTRY = 20 * 1024


class _Say:
    """Status lines on stderr, silent with --json."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)


@dataclass
class DemoSession:
    """The servers, the seeded organisation and the planned workload, ready for modes."""

    args: argparse.Namespace
    valkey_url: str
    engine: Any
    oracle: Any
    workload: Any
    bars: bool
    setup: dict[str, Any]
    #: the consistency monitor's own engine, so its queries are not the mode's
    monitor_engine: Any = None
    #: the Prometheus collector served on --metrics-port (None: not served)
    collector: Any = None

    async def run(self, mode: str, label: str) -> Any:
        """Replay the workload in one mode (each mode starts cold); its ``ModeResult``."""
        from ..repositories.app_config_fragment import AppConfigFragmentCacheSource
        from ..types import AppConfigScopeType
        from .workload import PausableClock, run_mode

        args, workload = self.args, self.workload
        cache = client = warmup_cache = None
        clock = PausableClock()
        if mode != "db_only":
            client = valkey_client_for(self.valkey_url, max_connections=args.concurrency + 16)
            # Start every cached mode cold: nothing the previous mode cached matches.
            # The warm-up then goes through another cache source (another process).
            warmup_cache = AppConfigFragmentCacheSource(client, local_maxsize=0)
            await warmup_cache.invalidate_for_scope(AppConfigScopeType.PUBLIC, "public")
            local = 0 if mode == "valkey_only" else args.local_maxsize
            cache = AppConfigFragmentCacheSource(
                client, local_maxsize=local, local_ttl=args.local_ttl, timer=clock,
                # the byte budget grows with the count: the library's default at 8,192
                local_maxbytes=local * DEMO_BYTES_PER_ENTRY,
            )  # fmt: skip
        monitor = None
        if mode == "l1_valkey" and cache is not None and self.monitor_engine is not None:
            monitor = DemoMonitor(cache, self.monitor_engine)
        if self.collector is not None and cache is not None:
            self.collector.add(cache, mode, monitor=None if monitor is None else monitor.monitor)
        steps = workload.reads + (workload.warmup_reads if warmup_cache else 0)
        bar = Progress(label, steps, enabled=self.bars)
        try:
            if monitor is not None:
                monitor.start()
            result = await run_mode(
                mode, label, self.engine, self.oracle, cache, workload,
                concurrency=args.concurrency, warmup_cache=warmup_cache, clock=clock,
                on_progress=bar.advance,
            )  # fmt: skip
            if monitor is not None:
                result.monitor = await monitor.finish()
            return result
        finally:
            bar.close()
            if monitor is not None:
                await monitor.aclose()
            for source in (cache, warmup_cache):
                if source is not None:
                    await source.aclose()
            if client is not None:
                await client.aclose()


@asynccontextmanager
async def demo_session(args: argparse.Namespace) -> AsyncIterator[DemoSession]:
    """Start (or reach) the servers, seed the organisation and plan the workload."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from ..embedded import EmbeddedServerError, embedded_postgres, embedded_valkey
    from ..models import create_schema
    from ..repositories.app_config_fragment import AppConfigFragmentRepository
    from .seed import POLICIES, plan_org, seed_org, seed_size
    from .workload import plan_workload

    sizes = QUICK if args.quick else DEFAULTS
    n_domains = args.domains or sizes["domains"]
    n_users = args.users or sizes["users"]
    n_requests = args.requests or sizes["requests"]
    if args.local_maxsize is None:
        args.local_maxsize = n_users * len(POLICIES)
    bars = (args.progress or sys.stderr.isatty()) and not args.json
    say = _Say(not args.json)
    rng = random.Random(args.seed)

    async with AsyncExitStack() as stack:
        try:
            if args.valkey_url:
                valkey_url, valkey_where = args.valkey_url, "external"
            else:
                say("starting an embedded Valkey ...")
                valkey_url = await stack.enter_async_context(embedded_valkey())
                valkey_where = "embedded"
            if args.database_url:
                db_url, db_where = database_url_for(args.database_url), "external"
            else:
                say("starting an embedded PostgreSQL ...")
                db_url = await stack.enter_async_context(embedded_postgres())
                db_where = "embedded"
        except EmbeddedServerError as exc:
            raise CliError(one_line(exc)) from None

        probe = valkey_client_for(valkey_url)
        try:
            await ping_valkey(probe, valkey_url)
        finally:
            await probe.aclose()

        # The demo's tables live in a schema of their own, found through search_path.
        admin = create_async_engine(db_url, pool_size=1, max_overflow=0)
        stack.push_async_callback(admin.dispose)
        try:
            async with admin.begin() as conn:
                await conn.execute(text(f"DROP SCHEMA IF EXISTS {DEMO_SCHEMA} CASCADE"))
                await conn.execute(text(f"CREATE SCHEMA {DEMO_SCHEMA}"))
        except Exception as exc:
            raise database_error(exc, args.database_url or db_url) from None

        async def drop_schema() -> None:
            async with admin.begin() as conn:
                await conn.execute(text(f"DROP SCHEMA IF EXISTS {DEMO_SCHEMA} CASCADE"))

        stack.push_async_callback(drop_schema)
        settings = {"server_settings": {"search_path": DEMO_SCHEMA}}
        pool = {"pool_size": 16, "max_overflow": 0}
        engine = create_async_engine(db_url, connect_args=settings, **pool)
        stack.push_async_callback(engine.dispose)
        oracle_engine = create_async_engine(db_url, connect_args=settings, **pool)
        stack.push_async_callback(oracle_engine.dispose)
        await create_schema(engine)

        org = plan_org(n_domains, n_users, rng)
        say(
            f"seeding {n_domains} domains, {n_users:,} users and {len(org.fragments):,} "
            f"fragments (Valkey: {valkey_where} {describe_url(valkey_url)}, "
            f"PostgreSQL: {db_where})"
        )
        bar = Progress("seeding", seed_size(org), enabled=bars)
        started = time.monotonic()
        await seed_org(engine, org, on_progress=bar.advance)
        bar.close()
        seed_seconds = time.monotonic() - started
        workload = plan_workload(
            org, n_requests, args.concurrency, rng, admin_events=args.admin_events
        )
        setup = {
            "seed": args.seed,
            "quick": bool(args.quick),
            "concurrency": args.concurrency,
            "requests_per_mode": n_requests,
            "warmup_logins_per_mode": workload.warmup_reads,
            "sizes": {
                "domains": n_domains,
                "users": n_users,
                "names": len(org.names),
                "fragments": len(org.fragments),
            },
            "servers": {"valkey": valkey_where, "postgresql": db_where},
            "admin_events": args.admin_events,
            "cache_settings": {"local_maxsize": args.local_maxsize, "local_ttl": args.local_ttl},
            "seed_seconds": seed_seconds,
        }
        oracle = AppConfigFragmentRepository(oracle_engine)
        monitor_engine = create_async_engine(
            db_url, connect_args=settings, pool_size=2, max_overflow=0
        )
        stack.push_async_callback(monitor_engine.dispose)
        collector = None
        if args.metrics_port is not None:
            collector = serve_metrics(args.metrics_port, stack)
            say(f"serving Prometheus metrics on http://127.0.0.1:{args.metrics_port}/metrics")
        yield DemoSession(
            args, valkey_url, engine, oracle, workload, bars, setup, monitor_engine, collector
        )
