"""A Valkey client with the settings a cache wants: short timeouts, a bounded pool."""

from __future__ import annotations

from typing import Any


def make_valkey_client(
    url: str,
    *,
    socket_timeout: float = 0.5,
    socket_connect_timeout: float = 0.5,
    max_connections: int = 64,
    cluster: bool = False,
    **kwargs: Any,
) -> Any:
    """``valkey.asyncio.Valkey`` (or ``ValkeyCluster``) from a URL, with explicit limits.

    - socket timeouts bound every round trip; the cache source adds its own budget;
    - the pool is bounded, and a caller waits for a free connection (no unbounded growth);
    - one immediate retry on a connection error, on a fresh connection: a pooled
      connection that a network blip or a server restart reset fails once, and
      must not count as Valkey being down; a timeout is never retried, so a
      failed call becomes a cache miss at once instead of a retry storm.

    TLS and ACL pass through: a ``rediss://`` URL turns TLS on, and this function
    turns hostname checking on with it (valkey-py's own default is off),
    ``username=``/``password=``, ``ssl_ca_certs=`` and the other valkey-py keywords.
    """
    from valkey.asyncio import BlockingConnectionPool, Valkey
    from valkey.asyncio.cluster import ValkeyCluster
    from valkey.asyncio.retry import Retry
    from valkey.backoff import NoBackoff
    from valkey.exceptions import ConnectionError as ValkeyConnectionError

    if url.startswith(("rediss://", "valkeys://")):
        kwargs.setdefault("ssl_check_hostname", True)
    if cluster:
        # One retry lets the client refresh its slot map after a failover; the
        # default (3 attempts, with sleeps in pipelines) would hold requests up.
        kwargs.setdefault("cluster_error_retry_attempts", 1)
        return ValkeyCluster.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            max_connections=max_connections,
            **kwargs,
        )
    kwargs.setdefault("retry", Retry(NoBackoff(), 1))
    kwargs.setdefault("retry_on_error", [ValkeyConnectionError])
    pool = BlockingConnectionPool.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        max_connections=max_connections,
        timeout=socket_connect_timeout,
        **kwargs,
    )
    return Valkey.from_pool(pool)  # aclose() closes the pool too
