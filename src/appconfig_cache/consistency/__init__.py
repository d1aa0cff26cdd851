"""Is the cache consistent with PostgreSQL? The monitor and ``appconfig-cache check``.

After Meta's Polaris: a cached view is *inconsistent* only if it still disagrees
with the database after the invalidation window, so a write in flight is never
reported. A check reads what the cache would serve now (the L1 entry, the
envelope Valkey holds if its generations and server epoch are current) and the
view through the DB-only path. A mismatch is a *suspect*; after the window it
is checked again, and it is *confirmed* only if the very same L1 entry (the
same object) or the very same envelope (the same bytes) is still served and
still disagrees with the database. Any write's invalidation would have replaced
it within the window, so concurrent writes never confirm.

Results are reported as nines: ``-log10(confirmed / checked)`` over a sliding
window of checks (docs/consistency.rst).
"""

from .figures import MonitorFigures, nines
from .monitor import ConsistencyMonitor
from .served import TIERS as TIERS
from .served import ServedEnvelope, served_envelope

__all__ = ["ConsistencyMonitor", "MonitorFigures", "ServedEnvelope", "nines", "served_envelope"]
