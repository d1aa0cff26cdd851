"""``appconfig-cache demo --metrics-port``: /metrics is served while the demo runs."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.polling import wait_for
from tests.test_cli import _env, assert_one_line_error, closed_port, run_cli_sync


def fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


@pytest.mark.slow
async def test_demo_serves_metrics_while_it_runs(valkey_url: str, database_url: str) -> None:
    port = closed_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appconfig_cache", "demo", "--quick", "--json",
        "--modes", "l1_valkey", "--metrics-port", str(port),
        "--valkey-url", valkey_url, "--database-url", database_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip
    output = asyncio.ensure_future(proc.communicate())
    scrapes: list[str] = []

    async def scrape() -> None:
        try:
            scrapes.append(await asyncio.to_thread(fetch, port))
        except OSError:
            await asyncio.sleep(0.05)  # not listening yet: poll again

    def reads_seen() -> bool:
        return output.done() or any('cache="l1_valkey"' in text for text in scrapes)

    await wait_for(reads_seen, timeout=240, step=scrape, what="a scrape with the cache's reads")
    stdout, stderr = await output
    assert proc.returncode == 0, stderr.decode()
    served = [text for text in scrapes if 'cache="l1_valkey"' in text]
    assert served, "the demo ended before /metrics showed its cache source"
    families = {f.name: f for f in text_string_to_metric_families(served[0])}
    reads = families["appconfig_cache_reads"]
    assert {s.labels["cache"] for s in reads.samples} == {"l1_valkey"}
    assert "appconfig_cache_monitor_checks" in families
    summary = json.loads(stdout)
    (mode,) = summary["modes"]
    assert mode["monitor"]["confirmed"] == 0


def test_demo_metrics_port_must_be_a_port() -> None:
    assert_one_line_error(run_cli_sync("demo", "--metrics-port", "70000"), 2)
