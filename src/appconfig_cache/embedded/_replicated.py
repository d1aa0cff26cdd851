"""An embedded Valkey Cluster whose primaries each have a replica, for failover drills."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ._base import EmbeddedServerError, admin_clients, poll_nodes
from ._cluster import EmbeddedValkeyCluster, _info_fields
from ._valkey import EmbeddedValkey

# A failover must complete in seconds: the nodes' timeout before a node is failed.
DEFAULT_NODE_TIMEOUT_MS = 1000

_BAD_FLAGS = frozenset({"handshake", "fail", "fail?", "noaddr"})


class EmbeddedValkeyReplicatedCluster(EmbeddedValkeyCluster):
    """``primaries`` primaries with one replica each (3 + 3 by default), on localhost.

    Formed as :class:`EmbeddedValkeyCluster` is (``MEET``, ``ADDSLOTSRANGE``), then
    each replica is told ``CLUSTER REPLICATE``. A short ``cluster-node-timeout``
    (``node_timeout_ms``, 1000 by default) makes the replicas promote themselves
    about 2 s after a primary stops answering. Replicas are always eligible for
    promotion (``cluster-replica-validity-factor 0``) and full syncs start at once.

    Roles change in a failover, so nodes are found by role: :meth:`owner` of a
    slot, :meth:`replica_of` a primary. :meth:`wait_until_ok` waits for every node
    running, one replica in sync per primary, and one slot map on every node;
    :meth:`wait_for_new_owner` for a promotion while the old primary is down.
    """

    def __init__(
        self,
        primaries: int = 3,
        *,
        host: str = "127.0.0.1",
        node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
        **config: Any,
    ) -> None:
        config = {
            "repl_diskless_sync_delay": 0,
            "cluster_replica_validity_factor": 0,
            **config,
        }
        super().__init__(primaries, host=host, node_timeout_ms=node_timeout_ms, **config)

    # -- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start the nodes, form the cluster, attach the replicas, wait until all is ok."""
        self._start(2 * self.primaries, timeout)

    def _form(self, deadline: float) -> None:
        super()._form(deadline)
        self._attach_replicas(max(deadline - time.monotonic(), 1.0))

    def _attach_replicas(self, timeout: float) -> None:
        """Node ``primaries + i`` replicates node ``i``, once it has learnt that node's id."""
        with admin_clients(self.host, self.ports) as clients:
            ids = [client.execute_command("CLUSTER", "MYID") for client in clients]
        n = self.primaries
        pending = list(range(n))

        def attach(clients: list[Any]) -> str | None:
            for i in list(pending):
                known = clients[n + i].execute_command("CLUSTER", "NODES")
                if ids[i] not in known:
                    return f"node {self._nodes[n + i].port} does not know its primary yet"
                clients[n + i].execute_command("CLUSTER", "REPLICATE", ids[i])
                pending.remove(i)
            return None

        poll_nodes(self.host, self.ports, attach, timeout, "Valkey cluster replicas")

    def wait_until_ok(self, timeout: float = 15.0) -> None:
        """Poll until every node runs, is ``cluster_state:ok`` with the same slot map, and
        every primary has one replica whose link is up."""
        if not self._nodes:
            raise EmbeddedServerError("embedded Valkey cluster is not running")
        ranges = [self._slot_range(index) for index in range(self.primaries)]

        def check(clients: list[Any]) -> str | None:
            maps = set()
            for node, client in zip(self._nodes, clients, strict=True):
                info = _info_fields(client.execute_command("CLUSTER", "INFO"))
                if info.get("cluster_state") != "ok":
                    return f"node {node.port}: cluster_state {info.get('cluster_state')}"
                for line in client.execute_command("CLUSTER", "NODES").splitlines():
                    fields = line.split()
                    if _BAD_FLAGS & set(fields[2].split(",")):
                        return f"node {node.port} sees {fields[1]} as {fields[2]}"
                    if fields[7] != "connected":
                        return f"node {node.port}: bus link to {fields[1]} {fields[7]}"
                slot_map = tuple(
                    sorted(
                        (int(e[0]), int(e[1]), int(e[2][1]), tuple(int(r[1]) for r in e[3:]))
                        for e in client.execute_command("CLUSTER", "SLOTS")
                    )
                )
                if [entry[:2] for entry in slot_map] != ranges:
                    return f"node {node.port} has slot ranges {slot_map}"
                if any(len(entry[3]) != 1 for entry in slot_map):
                    return f"node {node.port} sees a primary without one replica: {slot_map}"
                maps.add(slot_map)
                replication = client.info("replication")
                if replication.get("role") == "slave" and (
                    replication.get("master_link_status") != "up"
                    or replication.get("master_sync_in_progress")
                ):
                    return f"replica {node.port}: link {replication.get('master_link_status')}"
            if len(maps) != 1:
                return f"the nodes disagree on the slot map: {maps}"
            return None

        poll_nodes(self.host, self.ports, check, timeout, "Valkey cluster")

    def wait_for_new_owner(self, slot: int, old: EmbeddedValkey, timeout: float = 15.0) -> None:
        """Poll the nodes other than ``old`` until they agree that another node serves
        ``slot`` and say ``cluster_state:ok`` (``old`` may be dead or paused)."""
        others = [node for node in self._nodes if node is not old and not node.paused]
        others = [node for node in others if node.is_running()]

        def check(clients: list[Any]) -> str | None:
            for node, client in zip(others, clients, strict=True):
                info = _info_fields(client.execute_command("CLUSTER", "INFO"))
                if info.get("cluster_state") != "ok":
                    return f"node {node.port}: cluster_state {info.get('cluster_state')}"
                owner = _owner_port(client.execute_command("CLUSTER", "SLOTS"), slot)
                if owner == old.port:
                    return f"node {node.port} still routes slot {slot} to {old.port}"
            return None

        poll_nodes(self.host, [node.port for node in others], check, timeout, "failover")

    # -- roles ---------------------------------------------------------------------

    def owner(self, slot: int) -> EmbeddedValkey:
        """The node that serves ``slot`` now, as the first running node sees it."""
        for node in self._nodes:
            if node.is_running() and not node.paused:
                with admin_clients(self.host, [node.port]) as (client,):
                    port = _owner_port(client.execute_command("CLUSTER", "SLOTS"), slot)
                return self._node(port)
        raise EmbeddedServerError("no cluster node is running")

    def replica_of(self, primary: EmbeddedValkey) -> EmbeddedValkey:
        """The replica of ``primary``, as ``primary`` itself reports it."""
        with admin_clients(self.host, [primary.port]) as (client,):
            replication = client.info("replication")
        replica = replication.get("slave0")
        if not isinstance(replica, dict):
            raise EmbeddedServerError(f"node {primary.port} has no replica: {replication}")
        return self._node(int(replica["port"]))

    def _node(self, port: int | None) -> EmbeddedValkey:
        for node in self._nodes:
            if node.port == port:
                return node
        raise EmbeddedServerError(f"no node of this cluster listens on {port}")

    def __repr__(self) -> str:
        return f"<EmbeddedValkeyReplicatedCluster {self.host} ports={self.ports}>"


def _owner_port(slots: Any, slot: int) -> int | None:
    for entry in slots:
        if int(entry[0]) <= slot <= int(entry[1]):
            return int(entry[2][1])
    return None


@asynccontextmanager
async def embedded_valkey_replicated_cluster(
    primaries: int = 3, **config: Any
) -> AsyncIterator[EmbeddedValkeyReplicatedCluster]:
    """Run a throwaway cluster of primaries with one replica each; yields it."""
    async with EmbeddedValkeyReplicatedCluster(primaries, **config) as cluster:
        yield cluster
