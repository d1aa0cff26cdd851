"""Counters of one cache-source instance (never module state)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class CacheStats:
    """What one :class:`AppConfigFragmentCacheSource` has done since it was made."""

    l1_hits: int = 0
    l1_misses: int = 0
    l2_hits: int = 0
    l2_misses: int = 0
    #: reads that did not ask Valkey (breaker open, pending bumps, L2 off)
    l2_skipped: int = 0
    db_loads: int = 0
    fills: int = 0
    fills_skipped: int = 0
    oversize_values: int = 0
    #: envelopes that failed to decode or named another user/name
    envelopes_rejected: int = 0
    #: envelopes that decoded but whose generations no longer match
    envelopes_outdated: int = 0
    invalidations: int = 0
    #: generation bumps that could not reach Valkey and wait to be replayed
    pending_bumps: int = 0
    #: failures that are Valkey's fault: unreachable, garbage, a confirmed hang
    valkey_errors: int = 0
    #: calls that ran out of time (each one is checked by a health probe)
    valkey_timeouts: int = 0
    #: timeouts that the health probe showed were this process's load, not Valkey's
    timeouts_forgiven: int = 0
    #: replies that refused a command while Valkey was up (OOM, WRONGTYPE)
    valkey_refusals: int = 0
    breaker_state: str = "closed"
    breaker_opens: int = 0
    flights_joined: int = 0
    #: L1 entries kept past local_ttl because fresh generation readings confirmed them
    l1_renewals: int = 0
    #: background round trips that read the generations of hot L1 entries
    gen_refreshes: int = 0
    #: views rebuilt from an outdated envelope's user part and fresh shared fragments
    recomposed: int = 0
    #: views rebuilt from a live L1 entry that only a shared write made stale (no round trip)
    l1_recomposed: int = 0
    #: DB queries for shared parts (one per domain and generation; in db_loads too)
    shared_loads: int = 0
    #: the invalidation broadcast: off, connecting, up, down (then local_ttl bounds staleness)
    broadcast: str = "off"
    broadcast_received: int = 0
    #: generation bumps (in ``invalidations`` too) by the kind of generation
    invalidations_public: int = 0
    invalidations_name: int = 0
    invalidations_domain: int = 0
    invalidations_user: int = 0
    invalidations_policies: int = 0
    #: L1's weight: the estimated memory of its views, in bytes (bounded by local_maxbytes)
    l1_bytes: int = 0
    #: views served but not kept in L1: heavier than an eighth of local_maxbytes
    l1_refused: int = 0
    #: L1 entries evicted to stay under local_maxbytes (those evicted for local_maxsize aside)
    l1_evicted_for_weight: int = 0
    #: the parse memo's weight in bytes (bounded by parse_memo_maxbytes)
    memo_bytes: int = 0
    #: envelopes not memoized: heavier than an eighth of parse_memo_maxbytes
    memo_refused: int = 0
    #: memoized envelopes evicted to stay under parse_memo_maxbytes
    memo_evicted_for_weight: int = 0
    #: outbox rows this cache source's replayer bumped and deleted
    outbox_replayed: int = 0
    #: targets bumped twice: a writer found its rows already replayed, or a replayed
    #: batch's delete did not commit (harmless: it costs misses, never correctness)
    outbox_double_bumps: int = 0
    #: due rows the last poll left in place (0: caught up); a lower bound
    outbox_backlog: int = 0
    #: polls, replays or deletes of the outbox that PostgreSQL failed (retried later)
    outbox_errors: int = 0
    #: subscriptions lost or (re)confirmed: each one dropped L1 and the generation readings
    broadcast_gaps: int = 0
    #: bootstraps that read the views of an expired names list, then found it changed
    bootstrap_list_changed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
