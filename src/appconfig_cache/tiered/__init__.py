"""The two-tier machinery the cache source composes: keys, L1, Valkey calls, flights."""
