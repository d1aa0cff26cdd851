"""Turn a pytest-benchmark JSON into ``docs/benchmarks.rst`` and ``docs/_static/benchmarks.png``.

Usage::

    python bench/report.py [RUN.json] [--rst PATH] [--png PATH] [--pytest-args ...]

Without a path it reads the newest ``.benchmarks/**/*.json``. ``tox -e bench``
passes its pytest arguments after ``--pytest-args``: when they disable the
benchmarks, or run them without saving, there is no new run and nothing is
written.

The figures must describe committed code: it refuses to write when the run was
made at another commit than HEAD, or when the work tree has changes other than
the files it writes, unless given ``--allow-dirty`` (the Machine table then says
"with uncommitted changes").

Every benchmark stores ``extra_info["key"]`` and ``extra_info["ops_per_round"]``;
a per-op time is the round's median divided by ``ops_per_round``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

TIMES = "\u00d7"  # the multiplication sign, for ratios
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RST = ROOT / "docs" / "benchmarks.rst"
DEFAULT_PNG = ROOT / "docs" / "_static" / "benchmarks.png"

# (key, label) in display order
LATENCY_ROWS: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "floors",
        "Floors",
        [
            ("floor.ttlcache", "raw ``cachetools.TTLCache`` hit"),
            ("floor.ttlcache_awaited", "raw ``TTLCache`` hit behind one ``await``"),
            ("floor.valkey_get", "raw valkey-py ``GET`` of the envelope"),
            ("floor.sql_sqlalchemy", "merged-view SQL through SQLAlchemy"),
            ("floor.sql_asyncpg", "merged-view SQL, asyncpg prepared statement"),
        ],
    ),
    (
        "ours",
        "Our read path: ``repo.app_config(user_id, name)``",
        [
            ("ours.l1_hit", "L1 hit"),
            ("ours.l2_hit", "L2 hit (``local_maxsize=0``)"),
            ("ours.l2_hit_no_memo", "L2 hit, parse memo off (``parse_memo_size=0``)"),
            ("ours.miss_returning", "full miss, returning user (both tiers cold), one read"),
            ("ours.miss_new_user", "full miss, user never read before, one read"),
            ("ours.db_only", "DB-only repository, one read"),
            (
                "ours.miss_returning.with_fill",
                "full miss, returning user, 20 back to back, fills drained in the round",
            ),
            (
                "ours.miss_new_user.with_fill",
                "full miss, new user, 20 back to back, fills drained in the round",
            ),
            ("ours.db_only.back_to_back", "DB-only repository, 20 back to back"),
            ("bootstrap.cold.my", "cold ``my_app_configs`` (8 documents), one bootstrap"),
            ("bootstrap.db_only.my", "DB-only ``my_app_configs``, one bootstrap"),
            (
                "bootstrap.cold.my.with_fill",
                "cold ``my_app_configs``, 10 back to back, fills drained in the round",
            ),
        ],
    ),
    (
        "legacy",
        "Legacy cache-aside (``bench/legacy.py``)",
        [
            ("legacy.hit", "legacy hit: one ``GET``, JSON, no L1"),
            ("legacy.miss", "legacy miss: ``GET``, SQL, ``SET EX``"),
        ],
    ),
    (
        "peers",
        "Peers, same server and payload",
        [
            ("cashews.mem_get", "cashews ``get``, ``mem://``"),
            ("cashews.client_side_get", "cashews ``get``, ``client_side=True`` (local copy)"),
            ("cashews.redis_get", "cashews ``get``, redis"),
            ("cashews.cache_mem", "cashews ``@cache`` loader, ``mem://``"),
            ("cashews.cache_redis", "cashews ``@cache`` loader, redis"),
            ("aiocache.redis_get", "aiocache ``get``, redis"),
            ("aiocache.cached_mem", "aiocache ``@cached`` loader, memory"),
            ("aiocache.cached_redis", "aiocache ``@cached`` loader, redis (pickle)"),
        ],
    ),
]

CHART_ROWS = [
    ("floor.ttlcache", "TTLCache hit (floor)", "floor"),
    ("ours.l1_hit", "L1 hit", "ours"),
    ("cashews.client_side_get", "cashews client_side get", "peer"),
    ("aiocache.cached_mem", "aiocache @cached (mem)", "peer"),
    ("cashews.cache_mem", "cashews @cache (mem)", "peer"),
    ("floor.valkey_get", "valkey-py GET (floor)", "floor"),
    ("legacy.hit", "legacy hit", "legacy"),
    ("ours.l2_hit", "L2 hit", "ours"),
    ("aiocache.redis_get", "aiocache redis get", "peer"),
    ("cashews.redis_get", "cashews redis get", "peer"),
    ("floor.sql_asyncpg", "asyncpg prepared SQL (floor)", "floor"),
    ("floor.sql_sqlalchemy", "SQLAlchemy SQL (floor)", "floor"),
    ("ours.db_only", "DB-only repository", "ours"),
    ("ours.miss_returning", "full miss, returning user", "ours"),
    ("ours.miss_new_user", "full miss, new user", "ours"),
    ("legacy.miss", "legacy miss", "legacy"),
]


class Run:
    """The benchmarks of one JSON file, by ``extra_info["key"]``."""

    def __init__(self, data: dict[str, Any], path: Path) -> None:
        self.data = data
        self.path = path
        self.by_key: dict[str, dict[str, Any]] = {}
        for bench in data.get("benchmarks", []):
            key = bench.get("extra_info", {}).get("key")
            if key:
                self.by_key[key] = bench

    def has(self, key: str) -> bool:
        return key in self.by_key

    def info(self, key: str) -> dict[str, Any]:
        return self.by_key[key]["extra_info"] if key in self.by_key else {}

    def per_op(self, key: str, stat: str = "median") -> float | None:
        """Seconds per operation (the round's ``stat`` / ``ops_per_round``)."""
        bench = self.by_key.get(key)
        if bench is None:
            return None
        ops = bench["extra_info"].get("ops_per_round", 1)
        return float(bench["stats"][stat]) / ops

    def rate(self, key: str) -> float | None:
        t = self.per_op(key)
        return None if not t else 1.0 / t


# -- formatting ----------------------------------------------------------------------------


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs" if seconds < 1e-5 else f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}{TIMES}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(header: list[str], rows: list[list[str]]) -> str:
    """A reST grid table."""
    cells = [header, *rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(header))]

    def line(char: str) -> str:
        return "+" + "+".join(char * (w + 2) for w in widths) + "+"

    def fmt(row: list[str]) -> str:
        return "|" + "|".join(f" {c!s:<{w}} " for c, w in zip(row, widths, strict=True)) + "|"

    out = [line("-"), fmt(header), line("=")]
    for row in rows:
        out += [fmt(row), line("-")]
    return "\n".join(out)


def heading(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def trips(run: Run, key: str) -> tuple[str, str]:
    t = run.info(key).get("trips")
    if not t:
        return "", ""
    return str(t["valkey_round_trips"]), str(t["sql_statements"])


# -- the targets -----------------------------------------------------------------------------


#: (label, numerator, denominator, "le" or "ge", bound): ratio = per-op(num) / per-op(den)
RATIO_TARGETS: list[tuple[str, str, str, str, float]] = [
    ("L1 hit / raw TTLCache hit", "ours.l1_hit", "floor.ttlcache", "le", 1.6),
    ("cashews ``@cache`` (mem) / L1 hit", "cashews.cache_mem", "ours.l1_hit", "ge", 10),
    ("aiocache ``@cached`` (mem) / L1 hit", "aiocache.cached_mem", "ours.l1_hit", "ge", 10),
    ("L2 hit / raw valkey-py GET", "ours.l2_hit", "floor.valkey_get", "le", 1.4),
    ("L2 hit, parse memo off / raw GET", "ours.l2_hit_no_memo", "floor.valkey_get", "le", 1.4),
    # what one caller waits for (one read per round, background work drained untimed)
    ("full miss (returning user) / DB-only", "ours.miss_returning", "ours.db_only", "le", 1.5),
    ("full miss (new user) / DB-only", "ours.miss_new_user", "ours.db_only", "le", 1.6),
    # requests/s of L1 + Valkey over requests/s of DB only
    ("throughput L1 + Valkey / DB only", "throughput.db_only", "throughput.l1_valkey", "ge", 8),
    *[
        (
            f"{kind} invalidation, 100,000 / 10 entries",
            f"invalidation.{kind}.100000",
            f"invalidation.{kind}.10",
            "le",
            1.5,
        )
        for kind in ("public", "domain", "policy")
    ],
    (
        "bootstrap of 8 at L2: 8 single calls / ``app_configs``",
        "bootstrap.l2.singles",
        "bootstrap.l2.batched",
        "ge",
        4,
    ),
    (
        "cold bootstrap of 8 (``my_app_configs``) / DB-only",
        "bootstrap.cold.my",
        "bootstrap.db_only.my",
        "le",
        1.3,
    ),
]


def targets(run: Run) -> list[list[str]]:
    """The targets (issue 17's "must" bounds, issue 8's bootstrap one, issue 4's others):
    measured, goal, met or missed.

    The status is decided on the medians; the ratio of the minimums is shown
    beside it because the machine is shared and the medians carry its noise.
    """
    rows: list[list[str]] = []

    def status(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**missed**")

    for label, num, den, op, bound in RATIO_TARGETS:
        med = ratio(run.per_op(num), run.per_op(den))
        low = ratio(run.per_op(num, "min"), run.per_op(den, "min"))
        goal = f"{'≤' if op == 'le' else '≥'} {bound:g}{TIMES}"
        ok = None if med is None else (med <= bound if op == "le" else med >= bound)
        rows.append([label, fmt_ratio(med), fmt_ratio(low), goal, status(ok)])
    for key, label in (("stampede.l1_valkey", "L1 + Valkey"), ("stampede.valkey_only", "Valkey")):
        queries = run.info(key).get("db_loads")
        rows.append(
            [
                f"stampede ({label}): DB queries for 1,000 cold reads",
                "n/a" if queries is None else str(queries),
                "",
                "1",
                status(None if queries is None else queries == 1),
            ]
        )
    for key, label, rt_goal, sql_goal in (
        ("bootstrap.l2.batched", "warm L2", 1, 0),
        ("bootstrap.cold.batched", "cold", None, 1),
        ("bootstrap.after_local_ttl.my", "after local_ttl", 1, 0),
    ):
        t = run.info(key).get("trips")
        goal = ", ".join(
            ([f"{rt_goal} Valkey RT"] if rt_goal is not None else []) + [f"{sql_goal} SQL"]
        )
        if not t:
            rows.append([f"bootstrap of 8 ({label}): round trips", "n/a", "", goal, "n/a"])
            continue
        rt, sql = t["valkey_round_trips"], t["sql_statements"]
        ok = (rt_goal is None or rt <= rt_goal) and sql <= sql_goal
        rows.append(
            [
                f"bootstrap of 8 ({label}): round trips",
                f"{rt} Valkey RT, {sql} SQL",
                "",
                goal,
                status(ok),
            ]
        )
    return rows


# -- the document ------------------------------------------------------------------------------


def machine_section(run: Run, uncommitted: bool = False) -> str:
    m = run.data.get("machine_info", {})
    versions = m.get("package_versions", {})
    servers = m.get("server_versions", {})
    external = m.get("external_servers", {})
    when = run.data.get("datetime", "")
    with contextlib.suppress(ValueError):
        when = datetime.fromisoformat(when).strftime("%Y-%m-%d %H:%M UTC")
    commit = run.data.get("commit_info", {})
    rows = [
        ["Date", when],
        ["CPU", f"{m.get('cpu_model', m.get('cpu', {}).get('brand_raw', '?'))}"],
        ["Cores", str(m.get("cpu_count", "?"))],
        ["Python", f"{m.get('python_implementation', '')} {m.get('python_version', '')}".strip()],
        ["OS", f"{m.get('system', '')} {m.get('release', '')}".strip()],
    ]
    loads = [m.get("load_average_start"), m.get("load_average_end")]
    if any(loads):
        shown = " → ".join(f"{la[0]:.2f}" for la in loads if la)
        rows.append(["Load average (1 min)", f"{shown} (start → end of the run)"])
    for name, version in sorted(servers.items()):
        where = (
            "external"
            if external.get("postgresql" if name == "postgresql" else "valkey")
            else "embedded"
        )
        rows.append([f"{name} server", f"{version} ({where}, same machine)"])
    if commit.get("id"):
        dirty = " (with uncommitted changes)" if uncommitted else ""
        rows.append(["Commit", f"{commit['id'][:12]}{dirty}"])
    rows.append(["Packages", ", ".join(f"{k} {v}" for k, v in versions.items())])
    return table(["Item", "Value"], rows)


def latency_section(run: Run) -> str:
    parts = []
    # each row's baseline: the floor or tier it is compared with
    ref = {
        "ours.l1_hit": "floor.ttlcache",
        "ours.l2_hit": "floor.valkey_get",
        "ours.l2_hit_no_memo": "floor.valkey_get",
        "ours.miss_returning": "ours.db_only",
        "ours.miss_new_user": "ours.db_only",
        "ours.db_only": "floor.sql_sqlalchemy",
        "ours.miss_returning.with_fill": "ours.db_only.back_to_back",
        "ours.miss_new_user.with_fill": "ours.db_only.back_to_back",
        "ours.db_only.back_to_back": "floor.sql_sqlalchemy",
        "bootstrap.cold.my": "bootstrap.db_only.my",
        "bootstrap.cold.my.with_fill": "bootstrap.db_only.my",
        "floor.ttlcache_awaited": "floor.ttlcache",
        "floor.sql_asyncpg": "floor.sql_sqlalchemy",
        "legacy.hit": "floor.valkey_get",
        "legacy.miss": "ours.db_only",
        "cashews.mem_get": "ours.l1_hit",
        "cashews.client_side_get": "ours.l1_hit",
        "cashews.cache_mem": "ours.l1_hit",
        "aiocache.cached_mem": "ours.l1_hit",
        "cashews.redis_get": "ours.l2_hit",
        "cashews.cache_redis": "ours.l2_hit",
        "aiocache.redis_get": "ours.l2_hit",
        "aiocache.cached_redis": "ours.l2_hit",
    }
    names = {k: label for _, _, rows in LATENCY_ROWS for k, label in rows}
    header = [
        "Operation",
        "per op (median)",
        "per op (min)",
        "vs.",
        "ratio",
        "Valkey RT",
        "SQL",
        "request latency (median)",
    ]
    for _, title, rows in LATENCY_ROWS:
        body = []
        for key, label in rows:
            if not run.has(key):
                continue
            other = ref.get(key)
            rt, sql = trips(run, key)
            body.append(
                [
                    label,
                    fmt_time(run.per_op(key)),
                    fmt_time(run.per_op(key, "min")),
                    names.get(other, "") if other and run.has(other) else "",
                    fmt_ratio(ratio(run.per_op(key), run.per_op(other))) if other else "",
                    rt,
                    sql,
                    fmt_time(run.info(key).get("latency_median"))
                    if "latency_median" in run.info(key)
                    else "",
                ]
            )
        if body:
            parts.append(heading(title, "~") + "\n" + table(header, body) + "\n")
    return "\n".join(parts)


def bootstrap_section(run: Run) -> str:
    rows = []
    for tier, label in (
        ("l1", "L1"),
        ("l2", "L2 (``local_maxsize=0``)"),
        ("cold", "cold (both tiers)"),
        ("db_only", "DB only"),
    ):
        b, s = f"bootstrap.{tier}.batched", f"bootstrap.{tier}.singles"
        if not (run.has(b) or run.has(s)):
            continue
        brt, bsql = trips(run, b)
        srt, ssql = trips(run, s)
        rows.append(
            [
                label,
                fmt_time(run.per_op(b)),
                fmt_time(run.per_op(s)),
                fmt_ratio(ratio(run.per_op(s), run.per_op(b))),
                f"{brt} / {bsql}" if brt else "0 / 1" if tier == "db_only" else "",
                f"{srt} / {ssql}" if srt else "0 / 8" if tier == "db_only" else "",
            ]
        )
    if not rows:
        return ""
    header = [
        "Tier",
        "``app_configs`` (8 names)",
        f"8 {TIMES} ``app_config``",
        "singles / batched",
        "batched: RT / SQL",
        "singles: RT / SQL",
    ]
    return table(header, rows)


def throughput_section(run: Run) -> str:
    rows = []
    db = run.rate("throughput.db_only")
    for key, label in (
        ("throughput.db_only", "DB only"),
        ("throughput.valkey_only", "Valkey only (``local_maxsize=0``)"),
        ("throughput.l1_valkey", "L1 + Valkey (defaults: 8,192 entries, 160 MiB)"),
        ("throughput.l1_size.4096.64", "L1 + Valkey, 4,096 entries, 64 MiB (earlier defaults)"),
        ("throughput.l1_size.8192.128", "L1 + Valkey, 8,192 entries, 128 MiB"),
        ("throughput.l1_size.8192.192", "L1 + Valkey, 8,192 entries, 192 MiB"),
    ):
        if not run.has(key):
            continue
        stats = run.info(key).get("stats") or {}
        hits = ""
        if stats:
            reads = stats.get("l1_hits", 0) + stats.get("l1_misses", 0)
            hits = (
                f"L1 {stats.get('l1_hits', 0) / reads:.0%}, "
                f"L2 {stats.get('l2_hits', 0)}, misses {stats.get('l2_misses', 0)}, "
                f"DB loads {stats.get('db_loads', 0)}"
                if reads
                else ""
            )
        rows.append(
            [
                label,
                f"{run.rate(key):,.0f}",
                fmt_ratio(ratio(run.rate(key), db)),
                str(run.info(key).get("ops_per_round", "")),
                hits,
                _gc_cell(run.info(key)),
            ]
        )
    if not rows:
        return ""
    return table(
        [
            "Configuration",
            "requests/s",
            "vs. DB only",
            "requests/round",
            "cache counters (all rounds)",
            "full GCs while timing (longest)",
        ],
        rows,
    )


def _gc_cell(info: dict[str, Any]) -> str:
    if "gc_full_collections" not in info:
        return ""
    return f"{info['gc_full_collections']} ({info['gc_full_max_ms']:.0f} ms)"


def stampede_section(run: Run) -> str:
    rows = []
    for key, label in (
        ("stampede.l1_valkey", "L1 + Valkey"),
        ("stampede.valkey_only", "Valkey only"),
        ("stampede.legacy", "legacy cache-aside"),
        ("stampede.db_only", "DB only"),
    ):
        if not run.has(key):
            continue
        info = run.info(key)
        rows.append(
            [
                label,
                str(info.get("db_queries", "")),
                fmt_time(run.per_op(key)),
                fmt_time(run.per_op(key, "min")),
            ]
        )
    if not rows:
        return ""
    return table(["Configuration", "SQL statements", "total (median)", "total (min)"], rows)


def invalidation_section(run: Run) -> str:
    rows = []
    labels = {
        "public": "PUBLIC",
        "domain": "DOMAIN",
        "policy": "policy",
        "floor": "floor: raw pipelined ``SET NX`` + ``INCR``",
    }
    for kind, label in labels.items():
        small, big = f"invalidation.{kind}.10", f"invalidation.{kind}.100000"
        if not (run.has(small) or run.has(big)):
            continue
        rows.append(
            [
                label,
                fmt_time(run.per_op(small)),
                fmt_time(run.per_op(big)),
                fmt_ratio(ratio(run.per_op(big), run.per_op(small))),
            ]
        )
    small, big = "legacy.invalidation.public.10", "legacy.invalidation.public.100000"
    if run.has(small) or run.has(big):
        rows.append(
            [
                "legacy PUBLIC (``SCAN`` + ``UNLINK``)",
                fmt_time(run.per_op(small)),
                fmt_time(run.per_op(big)),
                fmt_ratio(ratio(run.per_op(big), run.per_op(small))),
            ]
        )
    if not rows:
        return ""
    return table(["Invalidation", "10 entries", "100,000 entries", "100,000 / 10"], rows)


def chart(run: Run, png: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(label, run.per_op(key), kind) for key, label, kind in CHART_ROWS if run.has(key)]
    if not rows:
        return False
    colors = {"ours": "#1f6feb", "floor": "#8b949e", "peer": "#d29922", "legacy": "#cf222e"}
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.4))
    labels = [r[0] for r in rows][::-1]
    values = [r[1] * 1e6 for r in rows][::-1]  # type: ignore[operator]
    bars = ax.barh(labels, values, color=[colors[r[2]] for r in rows][::-1])
    ax.set_xscale("log")
    ax.set_xlabel("time per read, µs (median, log scale)")
    ax.set_title("appconfig-cache: per-tier read latency beside floors, legacy and peers")
    for bar, value in zip(bars, values, strict=True):
        ax.text(
            value * 1.08,
            bar.get_y() + bar.get_height() / 2,
            f"{value:,.1f}",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(right=max(values) * 4)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, ["ours", "floor", "peer", "legacy"], loc="upper right", fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def render(run: Run, png: Path, rst: Path, uncommitted: bool = False) -> str:
    has_chart = chart(run, png)
    image = ""
    if has_chart:
        rel = Path("_static") / png.name if png.parent.name == "_static" else png
        image = f".. image:: {rel.as_posix()}\n   :alt: per-tier read latency\n\n"
    sections = [
        (
            "Targets",
            "Ratios from the same run. Issue 17's bounds (\"must\"), issue 8's and issue 4's.",
            table(["Target", "Measured (medians)", "(minimums)", "Goal", "Status"], targets(run)),
        ),
        (
            "Per-op latency",
            "One read of one document (``theme``, a three-scope chain; the cached view is "
            "about 4 KB of JSON: the merged config plus its three fragments). "
            "*Valkey RT* and *SQL* are counted for one op on a counting client, untimed.",
            latency_section(run),
        ),
        (
            "Bootstrap of 8 documents (issue 8)",
            "``app_configs(user, 8 names)`` against 8 sequential ``app_config`` calls. "
            "Cold: the user scope is invalidated before each round (untimed). "
            "RT / SQL: Valkey round trips and SQL statements of one bootstrap.",
            bootstrap_section(run),
        ),
        (
            "Throughput",
            "WebUI bootstrap (``my_app_configs``), users drawn from a Zipf distribution "
            "(s = 1.1) over 2,000 users, 64 concurrent requests, 1% of them "
            "``bulk_update_my`` writes. With a cache, Valkey first holds every user's "
            "envelopes (the steady state), and each round follows an untimed warm-up.",
            throughput_section(run),
        ),
        (
            "Stampede",
            "1,000 concurrent ``app_config`` reads of one key, both tiers cold "
            "(a user nobody has read yet).",
            stampede_section(run),
        ),
        (
            "Invalidation cost",
            "Per invalidation call, with 10 and with 100,000 live envelopes in Valkey "
            "(real key layout) and L1 full. The legacy shape deletes keys by ``SCAN``.",
            invalidation_section(run),
        ),
    ]
    out = [
        ".. This file is generated by bench/report.py from a pytest-benchmark run; do not edit.\n",
        heading("Benchmarks", "="),
        "Produced by ``tox -e bench`` (pytest-benchmark, then ``bench/report.py``) on one "
        "machine, in one run: every figure sits beside its baseline from the same run.\n"
        "A benchmark round runs one coroutine doing *N* operations on a persistent event "
        "loop; a per-op time is the round's time divided by *N*. Floors, our read path "
        "and the peers use the same loop shape.\n",
        heading("Machine", "-"),
        machine_section(run, uncommitted) + "\n",
        image,
    ]
    for title, intro, body in sections:
        if body:
            out += [heading(title, "-"), intro + "\n", body + "\n"]
    out += [
        heading("Notes", "-"),
        "- The L1 benchmarks use ``local_ttl=60`` so that every timed read is an L1 hit; "
        "with the default 2 s a hot key stays an L1 hit too, renewed by a background read of "
        "its generations (batched with every other hot user's) once a second.\n"
        "- The floors do less than our path: the raw ``GET`` returns bytes, our L2 hit "
        "also decodes and validates the envelope (the legacy hit shows that cost alone).\n"
        "- Peers' plain ``get`` store the view's JSON document (as a dict); their decorated "
        "loaders cache the ``AppConfigData`` returned by the DB-only repository.\n"
        "- The machine may be shared with other work (see the load average): the status "
        "is decided on medians, and the ratio of minimums (least interference) is shown "
        "beside it.\n"
        "- *Request latency* is what one caller waits for; the per-op time also counts the "
        "background Valkey fill that a miss starts (each round waits for it).\n"
        f"- Source: ``{run.path.name}``.\n",
    ]
    text = "\n".join(out)
    rst.parent.mkdir(parents=True, exist_ok=True)
    rst.write_text(text, encoding="utf-8")
    return text


# -- the source of the run -----------------------------------------------------------------


def _git(*args: str) -> str | None:
    """The output of ``git args`` in this repository; None without git or a work tree."""
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def uncommitted_files(outputs: list[Path]) -> list[str] | None:
    """Files that differ from HEAD (tracked ones, and new ones under src/ and bench/),
    except ``outputs``; None outside a git work tree.

    The outputs are left out because a report not committed yet would otherwise
    make every later run "dirty" (pytest-benchmark asks ``git describe --dirty``).
    """
    tracked = _git("diff", "--name-only", "HEAD", "--")
    new = _git("ls-files", "--others", "--exclude-standard", "--", "src", "bench")
    if tracked is None or new is None:
        return None
    ours = {path.resolve() for path in outputs}
    names = [*tracked.splitlines(), *new.splitlines()]
    return [name for name in names if name and (ROOT / name).resolve() not in ours]


def source_problems(run: Run, outputs: list[Path]) -> list[str]:
    """Why the run may not stand for the committed code; empty when it does."""
    head = _git("rev-parse", "HEAD")
    changed = uncommitted_files(outputs)
    if head is None or changed is None:
        return ["this is not a git work tree (or git is missing): the run's source is unknown"]
    problems = []
    made_at = run.data.get("commit_info", {}).get("id") or "unknown"
    if made_at != head:
        problems.append(f"the run was made at commit {made_at[:12]}, HEAD is {head[:12]}")
    if changed:
        shown = ", ".join(changed[:8]) + (
            f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        )
        problems.append(f"the work tree has uncommitted changes: {shown}")
    return problems


def newest_json() -> Path | None:
    files = sorted((ROOT / ".benchmarks").glob("**/*.json"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="?", type=Path, help="a pytest-benchmark JSON file")
    parser.add_argument("--rst", type=Path, default=DEFAULT_RST)
    parser.add_argument("--png", type=Path, default=DEFAULT_PNG)
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="write even if the run does not come from the committed code at HEAD",
    )
    parser.add_argument(
        "--pytest-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="the arguments the benches ran with (tox passes its posargs)",
    )
    args = parser.parse_args(argv)
    given = args.pytest_args
    if "--benchmark-disable" in given or (
        given and not any(a.startswith(("--benchmark-save", "--benchmark-autosave")) for a in given)
    ):
        print("report.py: the benches ran without saving a run; no report written")
        return 0
    path = args.json or newest_json()
    if path is None:
        print("report.py: no .benchmarks/**/*.json found; run tox -e bench", file=sys.stderr)
        return 1
    run = Run(json.loads(path.read_text(encoding="utf-8")), path)
    problems = source_problems(run, [args.rst, args.png])
    if problems and not args.allow_dirty:
        print(
            f"report.py: not writing {args.rst}: published figures must come from a run of "
            "the committed code, and this one does not:",
            *(f"  - {problem}" for problem in problems),
            "Commit (or stash) the changes and run `tox -e bench` again, or run "
            f"`python bench/report.py {path} --allow-dirty` to write it anyway "
            '(the Machine table then says "with uncommitted changes").',
            sep="\n",
            file=sys.stderr,
        )
        return 1
    uncommitted = bool(problems) and bool(run.data.get("commit_info", {}).get("dirty", True))
    render(run, args.png, args.rst, uncommitted=uncommitted)
    print(f"report.py: wrote {args.rst} and {args.png} from {path}")
    for row in targets(run):
        print("  " + " | ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
