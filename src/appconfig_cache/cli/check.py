"""``appconfig-cache check``: compare the envelopes cached in Valkey with PostgreSQL."""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any
from uuid import UUID

from ..errors import AppConfigValidationError
from ..tiered import keys as cache_keys
from ..validation import validate_name
from ._common import (
    EXIT_FAILURE,
    EXIT_OK,
    CliError,
    Progress,
    add_command,
    add_database_url,
    add_valkey_url,
    database_error,
    database_url_for,
    describe_url,
    non_negative_float,
    one_line,
    ping_valkey,
    positive_int,
    valkey_client_for,
)

__all__ = ["add_parser"]

DESCRIPTION = """\
Compare the merged views cached in Valkey with PostgreSQL, and report how consistent the
cache is, as nines.

Envelopes are found with SCAN MATCH app_config:* in batches (the library's fixed prefix,
as 'stats' walks it; never a pattern built from input). A sample of them (--sample, or
--all) is checked: an envelope whose generations and server epoch are current (what a
cache source would serve) is compared with the view read from PostgreSQL. A mismatch is
checked again after --window seconds, and is a confirmed inconsistency only if the very
same envelope is still served and still disagrees; a write in flight is never reported.

Exit status 1 if any inconsistency is confirmed (each is named: user and config name,
never its contents).
"""

_MERGED = cache_keys.PREFIX + "merged:"


def add_parser(commands: Any) -> None:
    p = add_command(
        commands,
        "check",
        summary="compare cached views in Valkey with PostgreSQL and report nines",
        description=DESCRIPTION,
    )
    add_valkey_url(p)
    add_database_url(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--sample",
        type=positive_int,
        default=1000,
        metavar="N",
        help="check N envelopes chosen at random (default 1000)",
    )
    which.add_argument("--all", action="store_true", help="check every envelope")
    p.add_argument(
        "--window",
        type=non_negative_float,
        default=5.0,
        metavar="SECONDS",
        help=(
            "wait this long before checking a mismatch again (default 5: longer than "
            "local_ttl plus the Valkey budget of the cache sources)"
        ),
    )
    p.add_argument("--seed", type=int, default=None, help="random seed of the sample")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument(
        "--progress",
        action="store_true",
        help="draw a progress bar even when stderr is not a terminal (never with --json)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    client = valkey_client_for(args.valkey_url, socket_timeout=5.0)
    url = database_url_for(args.database_url)
    result = asyncio.run(_check(client, url, args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(text_summary(result))
    return EXIT_FAILURE if result["confirmed_inconsistent"] else EXIT_OK


def text_summary(result: dict[str, Any]) -> str:
    nines = result["nines"]
    shown = "n/a (nothing checked)" if nines is None else f"{nines:g}"
    if nines is not None and result["nines_lower_bound"]:
        shown = f">= {shown} (no inconsistency in {result['checked']:,} checks)"
    rows = [
        ("checked", f"{result['checked']:,}"),
        ("consistent", f"{result['consistent']:,}"),
        ("cleared (write in flight)", f"{result['cleared']:,}"),
        ("confirmed inconsistent", f"{result['confirmed_inconsistent']:,}"),
        ("not served (outdated)", f"{result['not_served']:,}"),
        ("nines", shown),
    ]
    lines = [
        f"envelopes in {result['valkey']}: {result['envelopes']:,} (sampled {result['sampled']:,})",
        *(f"  {label:<27}{figure}" for label, figure in rows),
    ]
    for bad in result["inconsistent"]:
        lines.append(f"inconsistent: user {bad['user_id']} name {bad['name']}")
    return "\n".join(lines)


def _parse_merged_key(key: bytes) -> tuple[UUID, str] | None:
    """``app_config:merged:{<uuid>}:<name>`` back to its user and name; None if not one."""
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    if not text.startswith(_MERGED):
        return None
    tag, sep, name = text[len(_MERGED) :].partition(":")
    if not sep or not (tag.startswith("{") and tag.endswith("}")):
        return None
    try:
        user_id = UUID(tag[1:-1])
        validate_name(name)
    except (ValueError, AppConfigValidationError):
        return None
    return user_id, name


async def _check(client: Any, db_url: str, args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    from ..consistency import nines, served_envelope
    from ..repositories.app_config_fragment import AppConfigFragmentRepository
    from .ops import scan_cache_keys

    valkey_where = describe_url(args.valkey_url)

    def valkey_failed(exc: Exception) -> CliError:
        return CliError(f"Valkey at {valkey_where}: {one_line(exc)}")

    engine = create_async_engine(db_url, pool_size=2, max_overflow=0)
    repo = AppConfigFragmentRepository(engine)  # the DB-only path
    bars = (args.progress or sys.stderr.isatty()) and not args.json
    try:
        await ping_valkey(client, args.valkey_url)
        rng = random.Random(args.seed)
        found: list[tuple[UUID, str]] = []
        seen = 0
        try:
            async for key in scan_cache_keys(client):
                parsed = _parse_merged_key(key)
                if parsed is None:
                    continue
                seen += 1
                if args.all or len(found) < args.sample:
                    found.append(parsed)
                else:  # a reservoir sample of the envelopes
                    slot = rng.randrange(seen)
                    if slot < args.sample:
                        found[slot] = parsed
        except Exception as exc:
            raise valkey_failed(exc) from None

        async def served(user_id: UUID, name: str) -> Any:
            try:
                return await served_envelope(client, user_id, name)
            except Exception as exc:
                raise valkey_failed(exc) from None

        async def db_view(user_id: UUID, name: str) -> Any:
            try:
                return await repo.app_config(user_id, name)
            except Exception as exc:
                raise database_error(exc, args.database_url) from None

        figures = {"checked": 0, "consistent": 0, "cleared": 0, "not_served": 0}
        suspects: list[tuple[UUID, str, bytes]] = []
        bar = Progress("checking", len(found), enabled=bars)
        try:
            for user_id, name in found:
                envelope = await served(user_id, name)
                bar.advance()
                if envelope is None:
                    figures["not_served"] += 1
                    continue
                if envelope.view == await db_view(user_id, name):
                    figures["checked"] += 1
                    figures["consistent"] += 1
                else:
                    suspects.append((user_id, name, envelope.raw))
        finally:
            bar.close()
        inconsistent: list[dict[str, str]] = []
        if suspects:
            await asyncio.sleep(args.window)
        for user_id, name, raw in suspects:
            figures["checked"] += 1
            envelope = await served(user_id, name)
            if envelope is None or envelope.raw != raw:
                figures["cleared"] += 1  # replaced within the window: a write in flight
            elif envelope.view == await db_view(user_id, name):
                figures["cleared"] += 1
            else:
                inconsistent.append({"user_id": str(user_id), "name": name})
    finally:
        await client.aclose()
        await engine.dispose()
    value, lower_bound = nines(figures["checked"], len(inconsistent))
    return {
        "valkey": valkey_where,
        "database": describe_url(args.database_url),
        "envelopes": seen,
        "sampled": len(found),
        **figures,
        "confirmed_inconsistent": len(inconsistent),
        "nines": value,
        "nines_lower_bound": lower_bound,
        "window_seconds": args.window,
        "inconsistent": inconsistent,
    }
