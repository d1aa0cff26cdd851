"""``appconfig-cache check`` end to end: a subprocess against the session's servers."""

from __future__ import annotations

import json
import uuid

import valkey.asyncio as valkey_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    MyFragmentInput,
)
from tests.support.consistency import change_behind_the_cache, theme_org
from tests.test_cli import assert_one_line_error, closed_port, run_cli, run_cli_sync

NAMES = ("theme", "menu")


async def cached_org(engine: AsyncEngine, client: valkey_asyncio.Valkey) -> list[uuid.UUID]:
    """Four users of one domain, each with a theme of their own, every view cached in Valkey."""
    users = await theme_org(engine, 4, NAMES, {"size": 1})
    # Twice, as two processes: the first pass learns the domain's generation (created by
    # its first miss), the second fills every envelope.
    for _ in range(2):
        cache = AppConfigFragmentCacheSource(client)
        repo = AppConfigFragmentRepository(engine, cache_source=cache)
        for uid in users:
            await repo.app_configs(uid, list(NAMES))
        await cache.drain()
        await cache.aclose()
    return users


async def test_check_passes_on_a_consistent_cache(
    engine: AsyncEngine,
    valkey_client: valkey_asyncio.Valkey,
    valkey_url: str,
    database_url: str,
) -> None:
    users = await cached_org(engine, valkey_client)
    # a write through the library: its envelope is outdated at once, never inconsistent
    cache = AppConfigFragmentCacheSource(valkey_client)
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    await repo.bulk_update_my(users[0], [MyFragmentInput(name="theme", config={"size": 2})])
    await cache.drain()
    await cache.aclose()

    args = ("check", "--valkey-url", valkey_url, "--database-url", database_url, "--all")
    proc = await run_cli(*args, "--json", "--window", "0")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["envelopes"] == len(users) * len(NAMES)
    assert result["confirmed_inconsistent"] == 0 and result["inconsistent"] == []
    assert result["checked"] == result["consistent"] >= len(users) * len(NAMES) - 1
    assert result["checked"] + result["not_served"] == result["sampled"]
    assert result["nines_lower_bound"] is True

    text = await run_cli(*args, "--window", "0", "--progress")
    assert text.returncode == 0, text.stderr
    assert "confirmed inconsistent" in text.stdout and "nines" in text.stdout
    assert "checking" in text.stderr and "100.0%" in text.stderr  # the progress bar


async def test_check_confirms_a_view_changed_behind_the_cache_and_exits_1(
    engine: AsyncEngine,
    valkey_client: valkey_asyncio.Valkey,
    valkey_url: str,
    database_url: str,
) -> None:
    users = await cached_org(engine, valkey_client)
    victim = users[2]
    await change_behind_the_cache(engine, victim)  # no generation bump
    args = ("check", "--valkey-url", valkey_url, "--database-url", database_url)
    proc = await run_cli(*args, "--all", "--json", "--window", "0")
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["confirmed_inconsistent"] == 1
    assert result["inconsistent"] == [{"user_id": str(victim), "name": "theme"}]
    assert result["nines"] is not None and result["nines_lower_bound"] is False
    assert "secret-value" not in proc.stdout + proc.stderr

    text = await run_cli(*args, "--sample", "100", "--window", "0")
    assert text.returncode == 1
    assert f"inconsistent: user {victim} name theme" in text.stdout


def test_check_unreachable_valkey_is_one_line() -> None:
    url = f"redis://127.0.0.1:{closed_port()}"
    db = f"postgresql://postgres@127.0.0.1:{closed_port()}/nothing"
    line = assert_one_line_error(
        run_cli_sync("check", "--valkey-url", url, "--database-url", db), 1
    )
    assert "cannot reach Valkey" in line


def test_check_help() -> None:
    proc = run_cli_sync("check", "--help")
    assert proc.returncode == 0
    assert "never a pattern built from input" in " ".join(proc.stdout.split())
