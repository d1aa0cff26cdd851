"""The demo's summary: a text table, JSON figures and an optional chart."""

from __future__ import annotations

import importlib.util
from typing import Any

from ._common import EXIT_FAILURE, CliError
from .workload import ModeResult

__all__ = ["check_plot_available", "summarize", "text_report", "write_plot"]


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _rate(hits: int, misses: int) -> float | None:
    total = hits + misses
    return None if total == 0 else hits / total


def mode_figures(result: ModeResult, *, l1_enabled: bool) -> dict[str, Any]:
    """The figures of one mode, as the JSON output carries them."""
    latencies = sorted(result.latencies)
    stats = result.cache_stats
    l1 = l2 = None
    if stats is not None:
        if l1_enabled:
            l1 = _rate(stats["l1_hits"], stats["l1_misses"])
        l2 = _rate(stats["l2_hits"], stats["l2_misses"])
    return {
        "mode": result.mode,
        "label": result.label,
        "requests": result.reads,
        "writes": dict(sorted(result.writes.items())),
        "l1_hit_rate": l1,
        "l2_hit_rate": l2,
        "db_queries": result.db_queries,
        "db_queries_per_request": result.db_queries / result.reads if result.reads else 0.0,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "req_per_s": result.reads / result.seconds if result.seconds > 0 else 0.0,
        "seconds": result.seconds,
        "stale_reads": result.stale,
        "checked_reads": result.checked,
        "inconclusive_reads": result.inconclusive,
        "raced_mismatches": result.raced,
        "oracle_db_reads": result.oracle_db_reads,
        "stale_examples": result.stale_examples,
        "cache_stats": stats,
        "monitor": result.monitor,
    }


def summarize(results: list[tuple[ModeResult, bool]], setup: dict[str, Any]) -> dict[str, Any]:
    """Everything the demo reports: setup, per-mode figures, speed-ups, verdict."""
    modes = [mode_figures(result, l1_enabled=l1) for result, l1 in results]
    base = next((m["req_per_s"] for m in modes if m["mode"] == "db_only"), 0.0)
    # without the DB-only mode (demo --modes) there is nothing to compare with
    speedup = {
        m["mode"]: (m["req_per_s"] / base if base else None)
        for m in modes
        if m["mode"] != "db_only" and any(m["mode"] == "db_only" for m in modes)
    }
    stale = sum(m["stale_reads"] for m in modes)
    return {
        **setup,
        "modes": modes,
        "speedup_vs_db_only": speedup,
        "stale_reads": stale,
        "ok": stale == 0,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def text_report(summary: dict[str, Any]) -> str:
    """The human summary: a heading, one row per mode, the speed-ups and the verdict."""
    sizes = summary["sizes"]
    lines = [
        f"appconfig-cache demo: {sizes['domains']} domains, {sizes['users']:,} users, "
        f"{sizes['names']} config names, {sizes['fragments']:,} fragments, seed {summary['seed']}",
        *_setup_lines(summary),
        "",
        f"{'mode':<13}{'requests':>9}{'L1 hit':>8}{'L2 hit':>8}{'DB queries':>12}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'req/s':>9}{'stale':>7}",
    ]
    for m in summary["modes"]:
        lines.append(
            f"{m['label']:<13}{m['requests']:>9,}{_pct(m['l1_hit_rate']):>8}"
            f"{_pct(m['l2_hit_rate']):>8}{m['db_queries']:>12,}{m['p50_ms']:>8.2f}"
            f"{m['p99_ms']:>8.2f}{m['req_per_s']:>9,.0f}{m['stale_reads']:>7}"
        )
    labels = {m["mode"]: m["label"] for m in summary["modes"]}
    ups = [
        f"{labels[mode]} {value:.1f}x"
        for mode, value in summary["speedup_vs_db_only"].items()
        if value is not None
    ]
    if ups:
        lines += ["", "speed-up vs DB only (req/s): " + ", ".join(ups)]
    checked = sum(m["checked_reads"] for m in summary["modes"])
    unsure = sum(m["inconclusive_reads"] for m in summary["modes"])
    lines.append(
        f"oracle: {checked:,} reads checked against DB-only reads, "
        f"{summary['stale_reads']} stale; {unsure:,} overlapped a write"
    )
    for m in summary["modes"]:
        for example in m["stale_examples"]:
            lines.append(f"  STALE in {m['label']}: {example}")
    for m in summary["modes"]:
        if m.get("monitor"):
            lines.append(_monitor_line(m["label"], m["monitor"]))
    lines.append("OK: 0 stale reads" if summary["ok"] else "FAIL: stale reads were served")
    return "\n".join(lines)


def _monitor_line(label: str, m: dict[str, Any]) -> str:
    nines = m["nines"]
    shown = "n/a" if nines is None else (">= " if m["nines_lower_bound"] else "") + f"{nines:g}"
    return (
        f"consistency monitor ({label}, {m['sample_fraction']:g} sampled): "
        f"{m['checked']:,} checked, {m['confirmed']} confirmed inconsistent, {shown} nines; "
        f"{m['db_loads']:,} DB queries for the run's samples, "
        f"{m['db_queries_per_s']:.2f}/s of run time"
    )


def _setup_lines(summary: dict[str, Any]) -> list[str]:
    cache = summary["cache_settings"]
    writes = summary["modes"][0]["writes"] if summary["modes"] else {}
    events = summary["admin_events"]
    admin = "no admin change" if events == 0 else f"{events} domain/public/policy change"
    return [
        f"per mode: {summary['requests_per_mode']:,} requests (75% logins), "
        f"{summary['concurrency']} sessions, {writes.get('user_save', 0)} user saves, "
        f"{admin}{'s each' if events > 1 else ''}",
        f"L1: {cache['local_maxsize']:,} entries, {cache['local_ttl']:g} s TTL; cached modes "
        "start with a warm Valkey and L1 filled once",
    ]


def check_plot_available() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise CliError(
            "--plot needs matplotlib, which is not installed: python -m pip install matplotlib",
            EXIT_FAILURE,
        )


def write_plot(summary: dict[str, Any], path: str) -> None:
    """Requests per second and p50/p99 latency per mode, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = summary["modes"]
    labels = [m["label"] for m in modes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    colours = {"db_only": "#888888", "valkey_only": "#cc6633", "l1_valkey": "#3366cc"}
    left.bar(labels, [m["req_per_s"] for m in modes], color=[colours[m["mode"]] for m in modes])
    left.set_title("requests per second (higher is better)")
    positions = range(len(labels))
    right.bar([p - 0.2 for p in positions], [m["p50_ms"] for m in modes], 0.4, label="p50")
    right.bar([p + 0.2 for p in positions], [m["p99_ms"] for m in modes], 0.4, label="p99")
    right.set_xticks(list(positions), labels)
    right.set_yscale("log")
    top = max([m["p99_ms"] for m in modes] + [1.0])
    right.set_ylim(top=top * 30)  # room for the legend above the bars
    right.set_title("latency, ms (log scale, lower is better)")
    right.legend(loc="upper right", ncols=2)
    fig.suptitle(
        f"appconfig-cache demo: {summary['sizes']['users']:,} users, "
        f"{summary['concurrency']} concurrent sessions"
    )
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise CliError(f"cannot write the plot to {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
