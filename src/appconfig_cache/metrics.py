"""Prometheus metrics of cache sources (the ``prometheus`` extra: ``prometheus_client``).

The library registers nothing: the application makes one
:class:`AppConfigCacheCollector`, adds its cache sources (each under a constant
``cache`` label it chooses), and registers the collector in its own registry::

    from prometheus_client import CollectorRegistry
    from appconfig_cache.metrics import AppConfigCacheCollector

    collector = AppConfigCacheCollector()
    collector.add(cache, "main", monitor=monitor)   # monitor is optional
    registry.register(collector)

Counters and gauges are read from ``cache.stats`` at scrape time, so an L1 hit
does no extra work. The two histograms are observed on paths that already wait
for a network round trip (a Valkey call, a DB load). docs/metrics.rst lists
every metric.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .consistency import TIERS, ConsistencyMonitor
from .errors import CacheSettingsError
from .repositories.app_config_fragment import AppConfigFragmentCacheSource
from .tiered.remote import BreakerState

__all__ = ["AppConfigCacheCollector"]

PREFIX = "appconfig_cache_"

#: seconds: a Valkey round trip on a LAN is ~0.1-1 ms; the default budget is 0.5 s
VALKEY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: seconds: one merged-view statement
DB_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_CACHE_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_BROADCAST_STATES = ("off", "connecting", "up", "down")
_GEN_KINDS = ("public", "name", "domain", "user", "policies")


@dataclass(frozen=True, slots=True)
class _Source:
    name: str
    cache: AppConfigFragmentCacheSource
    monitor: ConsistencyMonitor | None


class AppConfigCacheCollector(Collector):
    """A ``prometheus_client`` collector for any number of cache sources in one process."""

    def __init__(self) -> None:
        self._sources: dict[str, _Source] = {}
        # registry=None: these live only in this collector, never in the global registry
        self._valkey_seconds = Histogram(
            PREFIX + "valkey_round_trip_seconds",
            "Time of answered Valkey round trips (one per command or pipeline).",
            ["cache"],
            registry=None,
            buckets=VALKEY_BUCKETS,
        )
        self._db_seconds = Histogram(
            PREFIX + "db_load_seconds",
            "Time of the merged-view DB loads the read path made after a cache miss.",
            ["cache"],
            registry=None,
            buckets=DB_BUCKETS,
        )

    def add(
        self,
        cache: AppConfigFragmentCacheSource,
        name: str = "default",
        *,
        monitor: ConsistencyMonitor | None = None,
    ) -> None:
        """Export ``cache`` under the label ``cache="<name>"`` (a fixed name the application
        chooses: ``[A-Za-z_][A-Za-z0-9_.-]{0,63}``), and ``monitor``'s figures with it."""
        if not isinstance(name, str) or _CACHE_LABEL.fullmatch(name) is None:
            raise CacheSettingsError(
                "a cache's metrics name must match [A-Za-z_][A-Za-z0-9_.-]{0,63}"
            )
        if name in self._sources:
            raise CacheSettingsError(f"a cache source is already exported as {name!r}")
        if monitor is not None and monitor.cache is not cache:
            raise CacheSettingsError("the monitor watches another cache source")
        self._sources[name] = _Source(name, cache, monitor)
        cache.observe_latency(
            valkey_round_trip=self._valkey_seconds.labels(cache=name).observe,
            db_load=self._db_seconds.labels(cache=name).observe,
        )

    def remove(self, name: str) -> None:
        """Stop exporting the cache source added as ``name`` (and stop timing it)."""
        source = self._sources.pop(name)
        source.cache.observe_latency()
        self._valkey_seconds.remove(name)
        self._db_seconds.remove(name)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        families = _Families()
        for source in self._sources.values():
            _cache_samples(families, source)
            if source.monitor is not None:
                _monitor_samples(families, source.name, source.monitor)
        yield from families.all()
        for histogram in (self._valkey_seconds, self._db_seconds):
            yield from histogram.collect()  # type: ignore[misc]


class _Families:
    """Metric families by name, made on first use, in a fixed order."""

    def __init__(self) -> None:
        self._by_name: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}

    def counter(self, name: str, doc: str, labels: dict[str, str], value: float) -> None:
        family = self._by_name.get(name)
        if family is None:
            family = self._by_name[name] = CounterMetricFamily(
                PREFIX + name, doc, labels=list(labels)
            )
        family.add_metric(list(labels.values()), value)

    def gauge(self, name: str, doc: str, labels: dict[str, str], value: float) -> None:
        family = self._by_name.get(name)
        if family is None:
            family = self._by_name[name] = GaugeMetricFamily(
                PREFIX + name, doc, labels=list(labels)
            )
        family.add_metric(list(labels.values()), value)

    def all(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        return self._by_name.values()


def _cache_samples(f: _Families, source: _Source) -> None:
    cache, c = source.cache, {"cache": source.name}
    s = cache.stats  # refreshes the breaker, pending bumps, renewals and broadcast state
    reads = "Reads by tier and result (l2 skipped: Valkey not asked)."
    f.counter("reads_total", reads, {**c, "tier": "l1", "result": "hit"}, s.l1_hits)
    f.counter("reads_total", reads, {**c, "tier": "l1", "result": "miss"}, s.l1_misses)
    f.counter("reads_total", reads, {**c, "tier": "l2", "result": "hit"}, s.l2_hits)
    f.counter("reads_total", reads, {**c, "tier": "l2", "result": "miss"}, s.l2_misses)
    f.counter("reads_total", reads, {**c, "tier": "l2", "result": "skipped"}, s.l2_skipped)
    f.counter("db_loads_total", "DB queries made by the cache source's reads.", c, s.db_loads)
    f.counter(
        "db_shared_loads_total",
        "DB queries for the shared part of views (also in db_loads_total).",
        c,
        s.shared_loads,
    )
    errors = "Valkey failures by kind (unavailable: refused, reset, garbage or a confirmed hang)."
    f.counter("valkey_errors_total", errors, {**c, "kind": "unavailable"}, s.valkey_errors)
    f.counter("valkey_errors_total", errors, {**c, "kind": "timeout"}, s.valkey_timeouts)
    f.counter("valkey_errors_total", errors, {**c, "kind": "refused"}, s.valkey_refusals)
    f.counter(
        "valkey_timeouts_forgiven_total",
        "Timeouts the health probe showed were this process's load, not Valkey's.",
        c,
        s.timeouts_forgiven,
    )
    for state in BreakerState:
        f.gauge(
            "breaker_state",
            "1 for the circuit breaker's current state, 0 for the others.",
            {**c, "state": state.value},
            1.0 if s.breaker_state == state.value else 0.0,
        )
    f.counter("breaker_opens_total", "Transitions of the breaker to open.", c, s.breaker_opens)
    f.gauge(
        "pending_bumps",
        "Generation bumps that did not reach Valkey and wait to be replayed.",
        c,
        s.pending_bumps,
    )
    for kind in _GEN_KINDS:
        f.counter(
            "invalidations_total",
            "Generation bumps by the kind of generation.",
            {**c, "kind": kind},
            getattr(s, f"invalidations_{kind}"),
        )
    fills = "Envelopes written to Valkey, or refused (Valkey unusable, oversize, no domain)."
    f.counter("fills_total", fills, {**c, "result": "written"}, s.fills)
    f.counter("fills_total", fills, {**c, "result": "skipped"}, s.fills_skipped)
    f.counter(
        "oversize_values_total",
        "Views over max_value_bytes: served, not cached.",
        c,
        s.oversize_values,
    )
    rejected = "Envelopes not used: malformed or foreign, or outdated generations."
    f.counter(
        "envelopes_rejected_total", rejected, {**c, "reason": "malformed"}, s.envelopes_rejected
    )
    f.counter(
        "envelopes_rejected_total", rejected, {**c, "reason": "outdated"}, s.envelopes_outdated
    )
    f.gauge("l1_entries", "Entries in L1 now.", c, cache.local_size())
    f.gauge("l1_max_entries", "L1's bound (local_maxsize).", c, cache.local_maxsize)
    f.gauge("l1_bytes", "L1's weight: the estimated memory of its views.", c, s.l1_bytes)
    f.gauge("memo_bytes", "The parse memo's weight in bytes.", c, s.memo_bytes)
    refused = "Values served but not kept: heavier than an eighth of the tier's byte budget."
    f.counter("weight_refused_total", refused, {**c, "store": "l1"}, s.l1_refused)
    f.counter("weight_refused_total", refused, {**c, "store": "memo"}, s.memo_refused)
    evicted = "Entries evicted to stay under the tier's byte budget (count evictions aside)."
    f.counter("weight_evicted_total", evicted, {**c, "store": "l1"}, s.l1_evicted_for_weight)
    f.counter("weight_evicted_total", evicted, {**c, "store": "memo"}, s.memo_evicted_for_weight)
    f.counter(
        "l1_renewals_total",
        "L1 entries kept past local_ttl by fresh generation readings.",
        c,
        s.l1_renewals,
    )
    f.counter(
        "generation_refreshes_total",
        "Background round trips reading the generations of hot L1 entries.",
        c,
        s.gen_refreshes,
    )
    recomposed = "Views rebuilt from a held user part and a fresh shared part."
    f.counter("recomposed_total", recomposed, {**c, "source": "envelope"}, s.recomposed)
    f.counter("recomposed_total", recomposed, {**c, "source": "l1"}, s.l1_recomposed)
    f.counter(
        "flights_joined_total",
        "Reads that joined another read's in-flight load.",
        c,
        s.flights_joined,
    )
    for broadcast in _BROADCAST_STATES:
        f.gauge(
            "broadcast_state",
            "1 for the invalidation broadcast's current state, 0 for the others.",
            {**c, "state": broadcast},
            1.0 if s.broadcast == broadcast else 0.0,
        )
    f.counter(
        "broadcast_received_total",
        "Invalidation messages received from other processes.",
        c,
        s.broadcast_received,
    )
    f.counter(
        "broadcast_gaps_total",
        "Subscriptions lost or (re)confirmed: each one dropped L1 and the generation readings.",
        c,
        s.broadcast_gaps,
    )
    f.gauge(
        "outbox_backlog",
        "Due outbox rows the replayer's last poll left in place (a lower bound; 0: caught up).",
        c,
        s.outbox_backlog,
    )
    f.counter(
        "outbox_replayed_total", "Outbox rows this replayer bumped and deleted.", c,
        s.outbox_replayed,
    )  # fmt: skip
    f.counter(
        "outbox_double_bumps_total",
        "Targets bumped twice (harmless: costs misses, never correctness).",
        c,
        s.outbox_double_bumps,
    )
    f.counter(
        "outbox_errors_total", "Outbox polls, replays or deletes that PostgreSQL failed.", c,
        s.outbox_errors,
    )  # fmt: skip


def _monitor_samples(f: _Families, name: str, monitor: ConsistencyMonitor) -> None:
    m, c = monitor.figures(), {"cache": name}
    checks = "Consistency monitor verdicts (cleared: a mismatch that did not persist)."
    f.counter("monitor_checks_total", checks, {**c, "result": "consistent"}, m.consistent)
    f.counter("monitor_checks_total", checks, {**c, "result": "cleared"}, m.cleared)
    f.counter("monitor_checks_total", checks, {**c, "result": "inconsistent"}, m.confirmed)
    for tier in TIERS:
        f.counter(
            "monitor_inconsistencies_total",
            "Confirmed inconsistencies by the tier that served the value.",
            {**c, "tier": tier},
            m.confirmed_by_tier[tier],
        )
    for reason, count in m.skipped.items():
        f.counter(
            "monitor_skipped_total",
            "Samples not judged, by reason.",
            {**c, "reason": reason},
            count,
        )
    f.counter("monitor_sampled_total", "Views sampled for a check.", c, m.sampled)
    f.counter("monitor_db_loads_total", "DB-only reads made by the monitor.", c, m.db_loads)
    f.gauge("monitor_pending", "Samples waiting for a check.", c, m.pending)
    f.gauge(
        "monitor_window_checks",
        "Verdicts in the sliding window.",
        c,
        m.window_checked,
    )
    f.gauge(
        "monitor_window_inconsistencies",
        "Confirmed inconsistencies in the sliding window.",
        c,
        m.window_confirmed,
    )
    f.gauge(
        "monitor_window_seconds", "Length of the nines' sliding window.", c, m.nines_window_seconds
    )
    if m.nines is not None:
        f.gauge(
            "monitor_nines",
            "Consistency as nines over the window: -log10(inconsistent/checked); "
            "with none inconsistent, log10(checked), a lower bound.",
            c,
            m.nines,
        )
