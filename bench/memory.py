"""How much memory a process's cache takes: RSS growth while reading large views (I6).

Starts the embedded Valkey and PostgreSQL (or uses ``APPCONFIG_CACHE_VALKEY_URL`` /
``APPCONFIG_CACHE_DATABASE_URL``), saves one large document per user through
``bulk_create_my``, then, for each configuration, starts a fresh Python process
that reads every user's view ``--passes`` times through a cache source and
reports its RSS growth. Each reader is a new process so that neither the seeding
nor an earlier reader leaves memory behind for it to reuse::

    python bench/memory.py                                   # 600 users x ~240 kB, twice
    python bench/memory.py --shape text --users 200 --passes 1
    python bench/memory.py --before /tmp/main/src            # also main's code, same data

Configurations: ``default`` (a default cache source), ``uncached``
(``local_maxsize=0, parse_memo_size=0``: what reading costs with nothing kept,
the overhead to subtract), and with ``--before``, ``default`` again on the code
in that ``src`` directory. For each it prints the RSS growth, the entries L1 and
the memo hold, and the weight they account (``stats.l1_bytes`` +
``stats.memo_bytes``, absent before this accounting existed). ``cache MB`` is
the growth minus the uncached growth: what the caches hold, to set against the
accounted weight.

Shapes: ``records`` (a list of small objects: many values per byte, the costly
shape once parsed) and ``text`` (a few long strings: about their size). Progress
goes to stderr; ``--json`` prints the runs as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any

NAME = "notebook"
NAMESPACE = uuid.UUID("6b3c1f3e-52b1-4c57-9a53-9a0d1e0c7d19")
MB = 1024 * 1024


def user_id(index: int) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"memory-{index}")


def large_config(index: int, kb: int, shape: str) -> dict[str, Any]:
    """About ``kb`` kB of compact JSON, different for every user."""
    if shape == "text":
        cell = f"{index:08d} " + "lorem ipsum dolor sit amet " * 37  # ~1 kB
        return {"cells": [f"{cell}{i}" for i in range(kb)], "title": f"notebook {index}"}
    # ~120 bytes per record: ids, short strings, a flag, a nested object, a short list
    return {
        "records": [
            {
                "id": index * 100_000 + i,
                "label": f"cell {i} of {index}",
                "kind": ("code", "markdown", "raw")[i % 3],
                "collapsed": i % 2 == 0,
                "pos": {"row": i, "col": i % 7},
                "tags": [f"t{i % 5}", f"u{index % 11}"],
            }
            for i in range(kb * 1024 // 120)
        ],
        "title": f"notebook {index}",
    }


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- the reader (a child process) -------------------------------------------------------------


async def read_views(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy.ext.asyncio import create_async_engine

    from appconfig_cache import (
        AppConfigFragmentCacheSource,
        AppConfigFragmentRepository,
        make_valkey_client,
    )

    settings = json.loads(args.settings)
    engine = create_async_engine(args.database_url, pool_size=4)
    client = make_valkey_client(args.valkey_url)
    cache = AppConfigFragmentCacheSource(client, **settings)
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    users = [user_id(i) for i in range(args.users)]
    try:
        # warm up connections, pools and code paths on a user with no document
        for _ in range(3):
            await repo.app_config(uuid.uuid4(), NAME)
        await cache.drain()
        gc.collect()
        start = rss_bytes()
        growth = []
        started = time.monotonic()
        for _ in range(args.passes):
            for uid in users:
                view = await repo.app_config(uid, NAME)
                assert view.config is not None and view.user_id == uid
            await cache.drain()
            gc.collect()
            growth.append(rss_bytes() - start)
        stats = cache.stats
        return {
            "rss_start_mb": start / MB,
            "growth_mb": [g / MB for g in growth],
            "seconds": time.monotonic() - started,
            "l1_entries": cache.local_size(),
            "l1_bytes": getattr(stats, "l1_bytes", None),
            "memo_bytes": getattr(stats, "memo_bytes", None),
            "l1_refused": getattr(stats, "l1_refused", None),
            "memo_refused": getattr(stats, "memo_refused", None),
            "l1_hits": stats.l1_hits,
            "l2_hits": stats.l2_hits,
            "db_loads": stats.db_loads,
        }
    finally:
        await cache.aclose()
        await client.aclose()
        await engine.dispose()


# -- the driver ---------------------------------------------------------------------------------


async def seed(database_url: str, users: int, kb: int, shape: str) -> int:
    """One policy and one ``kb``-kB user document per user; returns the JSON bytes saved."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from appconfig_cache import (
        AppConfigFragmentRepository,
        AppConfigPolicyRepository,
        AppConfigScopeType,
        MyFragmentInput,
        create_schema,
    )

    engine = create_async_engine(database_url)
    try:
        await create_schema(engine)
        policies = AppConfigPolicyRepository(engine)
        await policies.create(NAME, [AppConfigScopeType.PUBLIC, AppConfigScopeType.USER])
        repo = AppConfigFragmentRepository(engine)
        saved = 0
        for i in range(users):
            config = large_config(i, kb, shape)
            result = await repo.bulk_create_my(
                user_id(i), [MyFragmentInput(name=NAME, config=config)]
            )
            assert not result.failures, result.failures
            saved += len(json.dumps(config, separators=(",", ":")))
        return saved
    finally:
        await engine.dispose()


def run_reader(
    args: argparse.Namespace, urls: tuple[str, str], settings: dict[str, Any], src: str | None
) -> dict[str, Any]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    command = [
        sys.executable, __file__, "--reader",
        "--valkey-url", urls[0], "--database-url", urls[1],
        "--users", str(args.users), "--passes", str(args.passes),
        "--settings", json.dumps(settings),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout))


async def drive(args: argparse.Namespace) -> None:
    from appconfig_cache.embedded import EmbeddedValkey, embedded_postgres, to_asyncpg_url

    async with AsyncExitStack() as stack:
        valkey_url = os.environ.get("APPCONFIG_CACHE_VALKEY_URL")
        if not valkey_url:
            server = EmbeddedValkey()
            server.start()
            stack.callback(server.stop)
            valkey_url = server.url
        database_url = os.environ.get("APPCONFIG_CACHE_DATABASE_URL")
        if database_url:
            database_url = to_asyncpg_url(database_url)
        else:
            database_url = await stack.enter_async_context(embedded_postgres())
        log(f"seeding {args.users} users x ~{args.kb} kB ({args.shape})")
        saved = await seed(database_url, args.users, args.kb, args.shape)
        log(f"saved {saved / MB:.1f} MB of JSON, {saved / args.users / 1024:.0f} kB per user")
        configurations: list[tuple[str, dict[str, Any], str | None]] = [
            ("default", {}, None),
            ("uncached", {"local_maxsize": 0, "parse_memo_size": 0}, None),
        ]
        if args.before:
            configurations.append(("default, before", {}, args.before))
        rows = []
        for label, settings, src in configurations:
            flush_valkey(valkey_url)
            log(f"reading: {label}")
            run = run_reader(args, (valkey_url, database_url), settings, src)
            run["configuration"] = label
            rows.append(run)
            if args.json:
                print(json.dumps(run))
        print_table(rows)


def flush_valkey(url: str) -> None:
    import valkey

    client = valkey.Valkey.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def print_table(rows: list[dict[str, Any]]) -> None:
    uncached = next((r for r in rows if r["configuration"] == "uncached"), None)
    print(
        f"{'configuration':<18}{'RSS growth MB (per pass)':>26}{'cache MB':>10}"
        f"{'accounted MB':>14}{'L1 entries':>12}{'DB loads':>10}{'L2 hits':>9}"
    )
    for r in rows:
        growth = r["growth_mb"]
        cache_mb = growth[-1] - uncached["growth_mb"][-1] if uncached else float("nan")
        accounted = (
            (r["l1_bytes"] + r["memo_bytes"]) / MB if r["l1_bytes"] is not None else float("nan")
        )
        per_pass = ", ".join(f"{g:.0f}" for g in growth)
        print(
            f"{r['configuration']:<18}{per_pass:>26}{cache_mb:>10.0f}{accounted:>14.0f}"
            f"{r['l1_entries']:>12}{r['db_loads']:>10}{r['l2_hits']:>9}"
        )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--kb", type=int, default=240, help="size of each user's document")
    parser.add_argument("--shape", choices=["records", "text"], default="records")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--before", metavar="SRC", help="also read with the code in this src/")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--reader", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--valkey-url", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        print(json.dumps(asyncio.run(read_views(args))))
    else:
        asyncio.run(drive(args))


if __name__ == "__main__":
    main()
