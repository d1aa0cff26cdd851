"""A Prometheus registry of its own for one cache source (tests and bench)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from appconfig_cache import AppConfigFragmentCacheSource
from appconfig_cache.consistency import ConsistencyMonitor
from appconfig_cache.metrics import AppConfigCacheCollector


def registry_with(
    cache: AppConfigFragmentCacheSource,
    name: str = "main",
    *,
    monitor: ConsistencyMonitor | None = None,
) -> CollectorRegistry:
    """A new registry holding a collector that exports ``cache`` (and ``monitor``) as
    ``cache="<name>"``: the global registry is never touched."""
    collector = AppConfigCacheCollector()
    collector.add(cache, name, monitor=monitor)
    registry = CollectorRegistry()
    registry.register(collector)
    return registry
