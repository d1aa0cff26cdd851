"""What each speed mechanism gains on the demo's L1 + Valkey rate (the ablation table).

Starts the default demo's servers and organisation once (``demo_session``), then
runs its L1 + Valkey mode in rounds: each round once with every mechanism, then
once without each one (``APPCONFIG_CACHE_ABLATE=<mechanism>``, read when the
mode's cache source is made), so a mechanism's runs with and without sit side
by side in time and share the machine's noise. Each run starts cold, as every
demo mode does. Prints the table in reST, and every run as JSON lines on
``--log`` if given::

    python bench/ablation.py                       # 3 rounds, every mechanism
    python bench/ablation.py --rounds 1 --mechanisms parse_memo --demo-args=--quick

Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import time
from typing import Any

from appconfig_cache.cli import build_parser
from appconfig_cache.cli.demo import demo_session
from appconfig_cache.cli.report import mode_figures
from appconfig_cache.repositories.app_config_fragment.cache_source.ablation import ENV, MECHANISMS


async def run_rounds(
    demo_args: list[str], mechanisms: list[str], rounds: int, log: str | None
) -> list[dict[str, Any]]:
    args = build_parser().parse_args(["demo", "--json", "--modes", "l1_valkey", *demo_args])
    runs: list[dict[str, Any]] = []
    async with demo_session(args) as session:
        for round_no in range(1, rounds + 1):
            for ablate in ["", *mechanisms]:
                os.environ[ENV] = ablate
                started = time.monotonic()
                figures = mode_figures(
                    await session.run("l1_valkey", "L1 + Valkey"), l1_enabled=True
                )
                run = {
                    "round": round_no,
                    "ablate": ablate,
                    "req_per_s": figures["req_per_s"],
                    "stale": figures["stale_reads"],
                    "db_queries": figures["db_queries"],
                    "seconds": round(time.monotonic() - started, 1),
                    "load": os.getloadavg()[0],
                    "stats": figures["cache_stats"],
                }
                runs.append(run)
                print(
                    f"round {round_no}: {ablate or 'all on':<20} {run['req_per_s']:>9,.0f} req/s "
                    f"stale {run['stale']} ({run['seconds']} s, load {run['load']:.1f})",
                    file=sys.stderr,
                    flush=True,
                )
                if log:
                    with open(log, "a") as out:
                        out.write(json.dumps(run) + "\n")
                if run["stale"]:
                    raise SystemExit(f"stale reads with {ablate or 'every mechanism'} on")
        os.environ.pop(ENV, None)
    return runs


def table(runs: list[dict[str, Any]], mechanisms: list[str]) -> str:
    base = [r["req_per_s"] for r in runs if r["ablate"] == ""]
    rows = [("mechanism off", "req/s without (runs)", "req/s with (same rounds)", "gain")]
    for mechanism in mechanisms:
        off = [r["req_per_s"] for r in runs if r["ablate"] == mechanism]
        gain = statistics.median(base) / statistics.median(off) - 1
        rows.append(
            (
                f"``{mechanism}``",
                ", ".join(f"{v:,.0f}" for v in off),
                ", ".join(f"{v:,.0f}" for v in base),
                f"{gain:+.0%}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows[1:]]
    return "\n".join([*lines, rule])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mechanisms", default=",".join(MECHANISMS))
    parser.add_argument("--log", help="append every run as a JSON line to this file")
    parser.add_argument("--demo-args", default="", help="more demo arguments, one string")
    args = parser.parse_args()
    mechanisms = [m for m in args.mechanisms.split(",") if m]
    if unknown := set(mechanisms) - set(MECHANISMS):
        parser.error(f"unknown mechanisms {sorted(unknown)}; know {', '.join(MECHANISMS)}")
    demo_args = shlex.split(args.demo_args)
    runs = asyncio.run(run_rounds(demo_args, mechanisms, args.rounds, args.log))
    print(table(runs, mechanisms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
