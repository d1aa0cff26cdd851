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
        self._add(CounterMetricFamily, name, doc, labels, value)

    def gauge(self, name: str, doc: str, labels: dict[str, str], value: float) -> None:
        self._add(GaugeMetricFamily, name, doc, labels, value)

    def one_hot(
        self, name: str, doc: str, labels: dict[str, str], states: Iterable[str], current: str
    ) -> None:
        """A gauge per state: 1 for ``current``, 0 for the others."""
        for state in states:
            self.gauge(name, doc, {**labels, "state": state}, 1.0 if current == state else 0.0)

    def fields(self, table: Iterable[_Fields], labels: dict[str, str], figures: object) -> None:
        """The families of ``table``, each sample read from a field of ``figures``."""
        for metric in table:
            for extra, field in metric.samples:
                value = getattr(figures, field)
                self._add(metric.family, metric.name, metric.doc, {**labels, **extra}, value)

    def _add(
        self,
        family_type: type[CounterMetricFamily] | type[GaugeMetricFamily],
        name: str,
        doc: str,
        labels: dict[str, str],
        value: float,
    ) -> None:
        family = self._by_name.get(name)
        if family is None:
            family = self._by_name[name] = family_type(PREFIX + name, doc, labels=list(labels))
        family.add_metric(list(labels.values()), value)

    def all(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        return self._by_name.values()


#: a sample: its labels (besides ``cache``) and the field that holds its value
_Sample = tuple[dict[str, str], str]


@dataclass(frozen=True, slots=True)
class _Fields:
    """A counter or gauge family whose samples are fields of one figures object."""

    family: type[CounterMetricFamily] | type[GaugeMetricFamily]
    name: str
    doc: str
    samples: tuple[_Sample, ...]


def _counter(name: str, doc: str, *samples: str | _Sample) -> _Fields:
    """A counter family; a sample given as a bare field name has no label but ``cache``."""
    return _Fields(CounterMetricFamily, name, doc, _samples(samples))


def _gauge(name: str, doc: str, *samples: str | _Sample) -> _Fields:
    """A gauge family; a sample given as a bare field name has no label but ``cache``."""
    return _Fields(GaugeMetricFamily, name, doc, _samples(samples))


def _samples(samples: tuple[str | _Sample, ...]) -> tuple[_Sample, ...]:
    return tuple(({}, sample) if isinstance(sample, str) else sample for sample in samples)


# The tables below hold the families read from ``cache.stats``, in the order they are
# scraped; _cache_samples adds the few that are not plain fields between them.

_READS = (
    _counter(
        "reads_total",
        "Reads by tier and result (l2 skipped: Valkey not asked).",
        ({"tier": "l1", "result": "hit"}, "l1_hits"),
        ({"tier": "l1", "result": "miss"}, "l1_misses"),
        ({"tier": "l2", "result": "hit"}, "l2_hits"),
        ({"tier": "l2", "result": "miss"}, "l2_misses"),
        ({"tier": "l2", "result": "skipped"}, "l2_skipped"),
    ),
    _counter("db_loads_total", "DB queries made by the cache source's reads.", "db_loads"),
    _counter(
        "db_shared_loads_total",
        "DB queries for the shared part of views (also in db_loads_total).",
        "shared_loads",
    ),
    _counter(
        "valkey_errors_total",
        "Valkey failures by kind (unavailable: refused, reset, garbage or a confirmed hang).",
        ({"kind": "unavailable"}, "valkey_errors"),
        ({"kind": "timeout"}, "valkey_timeouts"),
        ({"kind": "refused"}, "valkey_refusals"),
    ),
    _counter(
        "valkey_timeouts_forgiven_total",
        "Timeouts the health probe showed were this process's load, not Valkey's.",
        "timeouts_forgiven",
    ),
)

_WRITES = (
    _counter("breaker_opens_total", "Transitions of the breaker to open.", "breaker_opens"),
    _gauge(
        "pending_bumps",
        "Generation bumps that did not reach Valkey and wait to be replayed.",
        "pending_bumps",
    ),
    _counter(
        "invalidations_total",
        "Generation bumps by the kind of generation.",
        *(({"kind": kind}, f"invalidations_{kind}") for kind in _GEN_KINDS),
    ),
    _counter(
        "fills_total",
        "Envelopes written to Valkey, or refused (Valkey unusable, oversize, no domain).",
        ({"result": "written"}, "fills"),
        ({"result": "skipped"}, "fills_skipped"),
    ),
    _counter(
        "oversize_values_total",
        "Views over max_value_bytes: served, not cached.",
        "oversize_values",
    ),
    _counter(
        "envelopes_rejected_total",
        "Envelopes not used: malformed or foreign, or outdated generations.",
        ({"reason": "malformed"}, "envelopes_rejected"),
        ({"reason": "outdated"}, "envelopes_outdated"),
    ),
)

_MEMORY = (
    _gauge("l1_bytes", "L1's weight: the estimated memory of its views.", "l1_bytes"),
    _gauge("memo_bytes", "The parse memo's weight in bytes.", "memo_bytes"),
    _counter(
        "weight_refused_total",
        "Values served but not kept: heavier than an eighth of the tier's byte budget.",
        ({"store": "l1"}, "l1_refused"),
        ({"store": "memo"}, "memo_refused"),
    ),
    _counter(
        "weight_evicted_total",
        "Entries evicted to stay under the tier's byte budget (count evictions aside).",
        ({"store": "l1"}, "l1_evicted_for_weight"),
        ({"store": "memo"}, "memo_evicted_for_weight"),
    ),
    _counter(
        "l1_renewals_total",
        "L1 entries kept past local_ttl by fresh generation readings.",
        "l1_renewals",
    ),
    _counter(
        "generation_refreshes_total",
        "Background round trips reading the generations of hot L1 entries.",
        "gen_refreshes",
    ),
    _counter(
        "recomposed_total",
        "Views rebuilt from a held user part and a fresh shared part.",
        ({"source": "envelope"}, "recomposed"),
        ({"source": "l1"}, "l1_recomposed"),
    ),
    _counter(
        "flights_joined_total", "Reads that joined another read's in-flight load.", "flights_joined"
    ),
)

_BROADCAST_AND_OUTBOX = (
    _counter(
        "broadcast_received_total",
        "Invalidation messages received from other processes.",
        "broadcast_received",
    ),
    _counter(
        "broadcast_gaps_total",
        "Subscriptions lost or (re)confirmed: each one dropped L1 and the generation readings.",
        "broadcast_gaps",
    ),
    _gauge(
        "outbox_backlog",
        "Due outbox rows the replayer's last poll left in place (a lower bound; 0: caught up).",
        "outbox_backlog",
    ),
    _counter(
        "outbox_replayed_total", "Outbox rows this replayer bumped and deleted.", "outbox_replayed"
    ),
    _counter(
        "outbox_double_bumps_total",
        "Targets bumped twice (harmless: costs misses, never correctness).",
        "outbox_double_bumps",
    ),
    _counter(
        "outbox_errors_total",
        "Outbox polls, replays or deletes that PostgreSQL failed.",
        "outbox_errors",
    ),
)

_MONITOR_CHECKS = (
    _counter(
        "monitor_checks_total",
        "Consistency monitor verdicts (cleared: a mismatch that did not persist).",
        ({"result": "consistent"}, "consistent"),
        ({"result": "cleared"}, "cleared"),
        ({"result": "inconsistent"}, "confirmed"),
    ),
)

_MONITOR_WORK = (
    _counter("monitor_sampled_total", "Views sampled for a check.", "sampled"),
    _counter("monitor_db_loads_total", "DB-only reads made by the monitor.", "db_loads"),
    _gauge("monitor_pending", "Samples waiting for a check.", "pending"),
    _gauge("monitor_window_checks", "Verdicts in the sliding window.", "window_checked"),
    _gauge(
        "monitor_window_inconsistencies",
        "Confirmed inconsistencies in the sliding window.",
        "window_confirmed",
    ),
    _gauge(
        "monitor_window_seconds", "Length of the nines' sliding window.", "nines_window_seconds"
    ),
)


def _cache_samples(f: _Families, source: _Source) -> None:
    cache, c = source.cache, {"cache": source.name}
    s = cache.stats  # refreshes the breaker, pending bumps, renewals and broadcast state
    f.fields(_READS, c, s)
    f.one_hot(
        "breaker_state",
        "1 for the circuit breaker's current state, 0 for the others.",
        c,
        (state.value for state in BreakerState),
        s.breaker_state,
    )
    f.fields(_WRITES, c, s)
    f.gauge("l1_entries", "Entries in L1 now.", c, cache.local_size())
    f.gauge("l1_max_entries", "L1's bound (local_maxsize).", c, cache.local_maxsize)
    f.fields(_MEMORY, c, s)
    f.one_hot(
        "broadcast_state",
        "1 for the invalidation broadcast's current state, 0 for the others.",
        c,
        _BROADCAST_STATES,
        s.broadcast,
    )
    f.fields(_BROADCAST_AND_OUTBOX, c, s)


def _monitor_samples(f: _Families, name: str, monitor: ConsistencyMonitor) -> None:
    m, c = monitor.figures(), {"cache": name}
    f.fields(_MONITOR_CHECKS, c, m)
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
    f.fields(_MONITOR_WORK, c, m)
    if m.nines is not None:
        f.gauge(
            "monitor_nines",
            "Consistency as nines over the window: -log10(inconsistent/checked); "
            "with none inconsistent, log10(checked), a lower bound.",
            c,
            m.nines,
        )
