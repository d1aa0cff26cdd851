"""Operator commands on the outbox (I10): ``outbox drain``, and the backlog for ``stats``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from ._common import (
    EXIT_OK,
    CliError,
    Progress,
    add_command,
    add_command_group,
    add_database_url,
    add_valkey_url,
    database_error,
    database_url_for,
    describe_url,
    one_line,
    ping_valkey,
    valkey_client_for,
)

__all__ = ["add_parsers", "backlog"]

#: seconds ``outbox drain`` keeps looking for rows left by a pass (held by another
#: replayer's batch, or refused by Valkey) before it gives up with exit status 1
DRAIN_PATIENCE = 10.0

DRAIN_DESCRIPTION = """\
Replay every row of the outbox now, whatever its age, and delete it.

The outbox (app_config_outbox) records what each committed change to fragments,
policies or users' domains invalidates; every running cache source replays the rows
older than its outbox_grace on its own. This command is for when none runs, or to
empty it at once: it bumps the rows' generations in Valkey, then deletes them, one
transaction per batch, and shows its progress. Rows another replayer is replaying
are waited for; rows whose bump Valkey did not take within 10 s stay (exit status 1).
"""


def add_parsers(commands: Any) -> None:
    outbox_commands = add_command_group(
        commands,
        "outbox",
        summary="see and drain the invalidation outbox",
        description="The outbox of durable invalidation (I10) in PostgreSQL.",
    )
    drain = add_command(
        outbox_commands,
        "drain",
        summary="replay and delete every outbox row now",
        description=DRAIN_DESCRIPTION,
    )
    add_database_url(drain, help="the PostgreSQL")
    add_valkey_url(drain)
    drain.add_argument("--json", action="store_true", help="print the result as JSON")
    drain.set_defaults(handler=_run_drain)


def _run_drain(args: argparse.Namespace) -> int:
    url = database_url_for(args.database_url)
    client = valkey_client_for(args.valkey_url)
    result = asyncio.run(_drain(url, client, args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"outbox of {result['database']}: {result['replayed']:,} rows replayed, "
              f"{result['left']:,} left")  # fmt: skip
    if result["left"]:
        raise CliError(
            f"{result['left']:,} outbox rows are left after {DRAIN_PATIENCE:g} s: Valkey did "
            "not take them, or another replayer still holds them"
        )
    return EXIT_OK


async def _drain(url: str, client: Any, args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy.ext.asyncio import create_async_engine

    from ..outbox.store import OutboxStore
    from ..repositories.app_config_fragment.cache_source import AppConfigFragmentCacheSource

    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    store = OutboxStore(engine)
    cache = AppConfigFragmentCacheSource(client, timeout=5.0, outbox_interval=3600.0)
    cache.use_outbox(store)
    try:
        await ping_valkey(client, args.valkey_url)
        try:
            total = (await store.backlog()).rows
        except Exception as exc:
            raise database_error(exc, args.database_url) from None
        bar = Progress("replaying the outbox", total, enabled=sys.stderr.isatty())
        replayed, shown = 0, 0

        def progress(in_pass: int) -> None:
            nonlocal shown
            bar.advance(replayed + in_pass - shown)
            shown = replayed + in_pass

        # Rows another replayer holds (SKIP LOCKED) are skipped by a pass; they are
        # deleted when its batch commits, so look again until none is left or time is up.
        deadline = time.monotonic() + DRAIN_PATIENCE
        while True:
            replayed += await cache.replay_outbox(grace=0, progress=progress)
            if cache.stats.outbox_errors:
                raise CliError(
                    f"database {describe_url(args.database_url)} failed during the drain"
                )
            left = (await store.backlog()).rows
            if not left or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
        bar.close()
    except CliError:
        raise
    except Exception as exc:
        raise CliError(f"outbox drain failed: {one_line(exc)}") from None
    finally:
        await cache.aclose()
        await client.aclose()
        await engine.dispose()
    return {"database": describe_url(args.database_url), "replayed": replayed, "left": left}


async def backlog(database_url: str) -> dict[str, Any]:
    """The outbox's rows and the oldest one's age, for ``stats --database-url``."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from ..outbox.store import OutboxStore

    engine = create_async_engine(database_url_for(database_url), pool_size=1, max_overflow=0)
    try:
        found = await OutboxStore(engine).backlog()
    except Exception as exc:
        raise database_error(exc, database_url) from None
    finally:
        await engine.dispose()
    return {"rows": found.rows, "oldest_age_seconds": found.oldest_age}
