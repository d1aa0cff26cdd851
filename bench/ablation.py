"""What each speed mechanism gains on the demo's L1 + Valkey rate (the ablation table).

Runs the default demo's L1 + Valkey mode (``appconfig-cache demo --modes l1_valkey``)
in rounds: each round runs it once with every mechanism, then once without each
one (``APPCONFIG_CACHE_ABLATE=<mechanism>``), so a mechanism's runs with and
without sit side by side in time and share the machine's noise. Prints the table
in reST, and every run as JSON lines on ``--log`` if given::

    python bench/ablation.py                      # 3 rounds, every mechanism
    python bench/ablation.py --rounds 1 --mechanisms parse_memo -- --quick

Arguments after ``--`` go to the demo. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from appconfig_cache.repositories.app_config_fragment.cache_source.ablation import ENV, MECHANISMS


def run_demo(ablate: str, demo_args: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "appconfig_cache", "demo", "--json", "--modes", "l1_valkey"]
    env = {**os.environ, ENV: ablate}
    started = time.monotonic()
    done = subprocess.run(
        [*command, *demo_args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode not in (0, 1):
        raise SystemExit(f"the demo failed ({done.returncode}):\n{done.stderr[-2000:]}")
    mode = json.loads(done.stdout)["modes"][0]
    return {
        "ablate": ablate,
        "req_per_s": mode["req_per_s"],
        "stale": mode["stale_reads"],
        "db_queries": mode["db_queries"],
        "seconds": round(time.monotonic() - started, 1),
        "load": os.getloadavg()[0],
        "stats": mode.get("cache_stats", {}),
    }


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
    parser.add_argument("demo_args", nargs="*", help="after --: arguments for the demo")
    args = parser.parse_args()
    mechanisms = [m for m in args.mechanisms.split(",") if m]
    if unknown := set(mechanisms) - set(MECHANISMS):
        parser.error(f"unknown mechanisms {sorted(unknown)}; know {', '.join(MECHANISMS)}")
    runs = []
    for round_no in range(1, args.rounds + 1):
        for ablate in ["", *mechanisms]:
            run = run_demo(ablate, args.demo_args)
            run["round"] = round_no
            runs.append(run)
            print(
                f"round {round_no}: {ablate or 'all on':<20} {run['req_per_s']:>9,.0f} req/s "
                f"stale {run['stale']} ({run['seconds']} s, load {run['load']:.1f})",
                file=sys.stderr,
            )
            if args.log:
                with open(args.log, "a") as log:
                    log.write(json.dumps(run) + "\n")
            if run["stale"]:
                raise SystemExit(f"stale reads with {ablate or 'every mechanism'} on")
    print(table(runs, mechanisms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
