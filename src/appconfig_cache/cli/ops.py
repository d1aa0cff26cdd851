"""Operator commands: ``invalidate``, ``stats`` and ``schema create``."""

from __future__ import annotations

import argparse
import contextlib
import json
import random
from collections.abc import AsyncIterator
from typing import Any

from ..tiered import keys as cache_keys
from ..types import AppConfigScopeType
from ..validation import validate_name, validate_scope, validate_user_id
from ._common import (
    EXIT_OK,
    CliError,
    add_command,
    add_command_group,
    add_database_url,
    add_valkey_url,
    checked_arg,
    database_error,
    database_url_for,
    describe_url,
    non_negative_int,
    one_line,
    ping_valkey,
    valkey_client_for,
)

__all__ = ["add_parsers", "scan_cache_keys"]

INVALIDATE_DESCRIPTION = """\
Invalidate the cached merged views of one user, one domain, everything under the public
scope, or one config name.

This only bumps generation counters in Valkey (one INCR each): entries already cached
stop matching and expire by their TTL; nothing is deleted and the database is not
touched. Other processes keep serving their own L1 copies for at most their local_ttl
(2 seconds by default). A domain invalidation covers both the domain and the
domain_user_defaults scopes; --policy NAME also refreshes the cached list of names.
"""

STATS_DESCRIPTION = """\
Count the cache's keys in Valkey by kind and estimate their memory.

Keys are read with SCAN MATCH app_config:* (the library's fixed prefix; nothing else
is scanned) in batches, so a large keyspace is walked without blocking the server.
MEMORY USAGE is asked for a random sample of each kind and scaled to the count.
Also prints the public and policies generations and how many domain, name and user
generations exist. With --database-url, also the invalidation outbox: how many rows
wait to be replayed and how old the oldest is (see "appconfig-cache outbox drain").
"""

_SCAN_MATCH = cache_keys.PREFIX + "*"  # fixed: never built from user input
_KINDS = ("merged", "gen", "user_domain", "other")


_user_arg = checked_arg(validate_user_id)
_domain_arg = checked_arg(lambda text: validate_scope(AppConfigScopeType.DOMAIN, text)[1])
_name_arg = checked_arg(validate_name)


def add_parsers(commands: Any) -> None:
    inv = _valkey_command(
        commands,
        "invalidate",
        summary="bump the generation of a user, a domain, the public scope or a config name",
        description=INVALIDATE_DESCRIPTION,
    )
    which = inv.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", type=_user_arg, metavar="UUID", help="one user's views")
    which.add_argument(
        "--domain", type=_domain_arg, metavar="NAME", help="the views of every user of a domain"
    )
    which.add_argument("--public", action="store_true", help="every view (the public scope)")
    which.add_argument(
        "--policy", type=_name_arg, metavar="NAME", help="every view of one config name"
    )
    inv.add_argument("--json", action="store_true", help="print the result as JSON")
    inv.set_defaults(handler=_run_invalidate)

    st = _valkey_command(
        commands,
        "stats",
        summary="count the cache's keys in Valkey and show the generations",
        description=STATS_DESCRIPTION,
    )
    st.add_argument(
        "--sample",
        type=non_negative_int,
        default=200,
        metavar="N",
        help="keys per kind whose MEMORY USAGE is asked (default 200, 0 skips memory)",
    )
    st.add_argument("--json", action="store_true", help="print the figures as JSON")
    st.add_argument(
        "--database-url",
        metavar="URL",
        help="also show the invalidation outbox: pending rows and the oldest one's age",
    )
    st.set_defaults(handler=_run_stats)

    schema_commands = add_command_group(
        commands,
        "schema",
        summary="manage the database schema",
        description="Manage the library's tables in PostgreSQL.",
    )
    create = schema_commands.add_parser(
        "create",
        help="create the tables if they do not exist",
        description=(
            "Create the tables users, app_config_policies, app_config_fragments and "
            "app_config_outbox (with their indexes) if they do not exist, and install the "
            "outbox triggers (again: idempotent). Existing tables are left as they are."
        ),
    )
    add_database_url(create)
    create.set_defaults(handler=_run_schema_create)


def _valkey_command(
    commands: Any, name: str, *, summary: str, description: str
) -> argparse.ArgumentParser:
    """A command that works on the cache's Valkey, given by the required ``--valkey-url``."""
    parser = add_command(commands, name, summary=summary, description=description)
    add_valkey_url(parser)
    return parser


@contextlib.asynccontextmanager
async def _valkey_session(client: Any, url: str) -> AsyncIterator[None]:
    """Ping Valkey, run the block, close the client; any failure becomes one line."""
    try:
        await ping_valkey(client, url)
        yield
    except CliError:
        raise
    except Exception as exc:
        raise CliError(f"Valkey at {describe_url(url)}: {one_line(exc)}") from None
    finally:
        await client.aclose()


# -- invalidate ----------------------------------------------------------------------------


def _run_invalidate(args: argparse.Namespace) -> int:
    import asyncio

    client = valkey_client_for(args.valkey_url)
    result = asyncio.run(_invalidate(client, args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, change in result["generations"].items():
            print(f"{key}: {change['before']} -> {change['after']}")
        print(f"invalidated {result['target']}")
    return EXIT_OK


async def _invalidate(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    from ..repositories.app_config_fragment import AppConfigFragmentCacheSource

    async with _valkey_session(client, args.valkey_url):
        if args.user is not None:
            target = f"user {args.user}"
            gen_keys = [cache_keys.user_gen_key(args.user)]
        elif args.domain is not None:
            target = f"domain {args.domain!r}"
            gen_keys = [cache_keys.domain_gen_key(args.domain)]
        elif args.public:
            target = "the public scope (every view)"
            gen_keys = [cache_keys.PUBLIC_GEN]
        else:
            target = f"config name {args.policy!r}"
            gen_keys = [cache_keys.name_gen_key(args.policy), cache_keys.POLICIES_GEN]
        before = await client.mget(gen_keys)
        cache = AppConfigFragmentCacheSource(client)
        try:
            if args.user is not None:
                await cache.invalidate_for_scope(AppConfigScopeType.USER, str(args.user))
            elif args.domain is not None:
                await cache.invalidate_for_scope(AppConfigScopeType.DOMAIN, args.domain)
            elif args.public:
                await cache.invalidate_for_scope(AppConfigScopeType.PUBLIC, "public")
            else:
                await cache.invalidate_for_policy(args.policy)
            # The library keeps a bump that failed to replay it later; this process
            # ends now, so a pending bump is a failure to report.
            if cache.stats.pending_bumps:
                raise CliError(
                    f"the invalidation did not reach Valkey at {describe_url(args.valkey_url)}"
                )
        finally:
            await cache.aclose()
        after = await client.mget(gen_keys)
    return {
        "target": target,
        "generations": {
            key: {"before": _int_or_none(b), "after": _int_or_none(a)}
            for key, b, a in zip(gen_keys, before, after, strict=True)
        },
    }


def _int_or_none(raw: Any) -> int | None:
    try:
        return None if raw is None else int(raw)
    except (TypeError, ValueError):
        return None


# -- stats ---------------------------------------------------------------------------------


async def scan_cache_keys(client: Any) -> AsyncIterator[bytes]:
    """Every key under the library's fixed prefix, by SCAN in batches of about 1,000."""
    async for key in client.scan_iter(match=_SCAN_MATCH, count=1000):
        yield key


def _kind(key: bytes) -> str:
    rest = key[len(cache_keys.PREFIX) :]
    if rest.startswith(b"merged:"):
        return "merged"
    if rest.startswith(b"gen:"):
        return "gen"
    if rest.startswith(b"user_domain:"):
        return "user_domain"
    return "other"


def _run_stats(args: argparse.Namespace) -> int:
    import asyncio

    client = valkey_client_for(args.valkey_url, socket_timeout=5.0)
    result = asyncio.run(_stats(client, args))
    if args.database_url:
        from .outbox import backlog

        result["outbox"] = asyncio.run(backlog(args.database_url))
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    keys, memory, gens = result["keys"], result["memory_bytes"], result["generations"]
    print(f"keys under {result['prefix']}* in {result['valkey']}:")
    for kind in (*_KINDS, "total"):
        mem = memory.get(kind)
        estimate = "" if mem is None else f"  ~{_human_bytes(mem)}"
        print(f"  {kind:<12}{keys[kind]:>10,}{estimate}")
    if result["memory_sampled_keys"]:
        print(f"  (memory: MEMORY USAGE of {result['memory_sampled_keys']} sampled keys, scaled)")
    print("generations:")
    print(f"  public      {_show(gens['public'])}")
    print(f"  policies    {_show(gens['policies'])}")
    print(f"  domain      {gens['domain']:,} keys")
    print(f"  name        {gens['name']:,} keys")
    print(f"  user        {gens['user']:,} keys")
    if "outbox" in result:
        box = result["outbox"]
        age = box["oldest_age_seconds"]
        oldest = "" if age is None else f", the oldest written {age:.1f} s ago"
        print(f"outbox: {box['rows']:,} rows pending{oldest}")
    return EXIT_OK


def _show(value: int | None) -> str:
    return "(not set)" if value is None else str(value)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


async def _stats(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    async with _valkey_session(client, args.valkey_url):
        counts = dict.fromkeys(_KINDS, 0)
        gen_counts = {"domain": 0, "name": 0, "user": 0}
        # One reservoir sample per kind, so a kind with few keys is still measured.
        samples: dict[str, list[bytes]] = {kind: [] for kind in _KINDS}
        rng = random.Random()
        async for key in scan_cache_keys(client):
            kind = _kind(key)
            counts[kind] += 1
            if kind == "gen":
                rest = key[len(cache_keys.PREFIX) + len(b"gen:") :]
                for prefix in gen_counts:
                    if rest.startswith(prefix.encode() + b":"):
                        gen_counts[prefix] += 1
            reservoir = samples[kind]
            if len(reservoir) < args.sample:
                reservoir.append(key)
            elif args.sample:
                slot = rng.randrange(counts[kind])
                if slot < args.sample:
                    reservoir[slot] = key
        memory: dict[str, int] = {}
        sampled = 0
        if args.sample:
            for kind, keys in samples.items():
                if not keys:
                    memory[kind] = 0
                    continue
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.memory_usage(key)
                sizes = [s for s in await pipe.execute() if isinstance(s, int)]
                sampled += len(sizes)
                memory[kind] = round(sum(sizes) / len(sizes) * counts[kind]) if sizes else 0
            memory["total"] = sum(memory.values())
        public, policies = await client.mget([cache_keys.PUBLIC_GEN, cache_keys.POLICIES_GEN])
    return {
        "valkey": describe_url(args.valkey_url),
        "prefix": cache_keys.PREFIX,
        "keys": {**counts, "total": sum(counts.values())},
        "memory_bytes": memory,
        "memory_sampled_keys": sampled,
        "generations": {
            "public": _int_or_none(public),
            "policies": _int_or_none(policies),
            **gen_counts,
        },
    }


# -- schema create -------------------------------------------------------------------------


def _run_schema_create(args: argparse.Namespace) -> int:
    import asyncio

    url = database_url_for(args.database_url)
    asyncio.run(_schema_create(url, args.database_url))
    tables = "users, app_config_policies, app_config_fragments, app_config_outbox (+ triggers)"
    print(f"schema ready on {describe_url(args.database_url)}: {tables}")
    return EXIT_OK


async def _schema_create(url: str, given: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from ..models import create_schema

    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    try:
        await create_schema(engine)
    except Exception as exc:
        raise database_error(exc, given) from None
    finally:
        await engine.dispose()
