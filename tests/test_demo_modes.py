"""``appconfig-cache demo --modes``: run some of the three modes only."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appconfig_cache.cli import main


@pytest.mark.parametrize("modes", ["bogus", "", "db_only,l2"])
def test_unknown_modes_are_a_usage_error(modes: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--modes", modes])
    assert exited.value.code == 2
    assert "choose from db_only, valkey_only, l1_valkey" in capsys.readouterr().err


@pytest.mark.slow
def test_one_mode_runs_alone_without_speed_ups(
    valkey_url: str, database_url: str, capsys: Any
) -> None:
    servers = ["--valkey-url", valkey_url, "--database-url", database_url]
    status = main(["demo", "--quick", "--json", "--modes", "l1_valkey", *servers])
    summary = json.loads(capsys.readouterr().out)
    assert status == 0
    assert [m["mode"] for m in summary["modes"]] == ["l1_valkey"]
    assert summary["modes"][0]["l1_hit_rate"] > 0
    assert summary["speedup_vs_db_only"] == {}

    status = main(["demo", "--quick", "--modes", "l1_valkey,db_only", *servers])
    out = capsys.readouterr().out
    assert status == 0
    assert "DB only" in out and "L1 + Valkey" in out and "Valkey only" not in out
    assert "speed-up vs DB only (req/s): L1 + Valkey" in out
