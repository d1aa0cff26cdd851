"""The demo's ``--metrics-port`` server and the consistency monitor of its L1 + Valkey mode."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from typing import Any

from ._common import CliError, one_line

__all__ = ["DemoMonitor", "serve_metrics"]


def serve_metrics(port: int, stack: AsyncExitStack) -> Any:
    """Serve a registry with one collector on ``127.0.0.1:port`` until the demo ends."""
    from prometheus_client import CollectorRegistry, start_http_server

    from ..metrics import AppConfigCacheCollector

    collector = AppConfigCacheCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        raise CliError(f"--metrics-port {port}: {one_line(exc)}") from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    stack.callback(stop)
    return collector


class DemoMonitor:
    """The consistency monitor of the L1 + Valkey mode, at its default sampling.

    Its clock is the real one plus a shift: when the mode ends every write has
    returned (one process: its invalidations too), so the window has passed for
    every sample, and :meth:`finish` moves the clock on instead of waiting.
    """

    def __init__(self, cache: Any, engine: Any) -> None:
        from ..consistency import ConsistencyMonitor

        self.shift = 0.0
        self.started = time.monotonic()
        self.monitor = ConsistencyMonitor(cache, engine, timer=self._now)

    def _now(self) -> float:
        return time.monotonic() + self.shift

    def start(self) -> None:
        self.monitor.start()

    async def finish(self) -> dict[str, Any]:
        """Check what is pending (the rate limit still holds, in the shifted time); the
        figures, with the DB queries per second of run time that the run's samples cost
        (a long run is capped by ``max_db_loads_per_second``; the excess is dropped)."""
        seconds = time.monotonic() - self.started
        monitor = self.monitor
        during_run = monitor.figures().db_loads
        for _ in range(10_000):
            if not monitor.figures().pending:
                break
            self.shift += 1.0 if self.shift else monitor.window
            await monitor.run_once()
        figures = monitor.figures().as_dict()
        figures["run_seconds"] = seconds
        figures["db_loads_during_run"] = during_run
        figures["db_queries_per_s"] = figures["db_loads"] / seconds if seconds > 0 else 0.0
        figures["sample_fraction"] = monitor.sample_fraction
        return figures

    async def aclose(self) -> None:
        await self.monitor.aclose()
