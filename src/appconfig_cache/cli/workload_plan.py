"""The workload every demo mode replays: rounds of reads, with writes in some of them.

In the timed part of a round, ``concurrency`` sessions each make a few requests, one
after the other: a login reads every document of a user (``my_app_configs``, the batch
bootstrap read), a page reads one (``app_config``). Users are drawn from a Zipf
distribution. Every ``WRITE_EVERY``-th round also holds writes, each followed by a
login of a user it affects (read-your-writes). The warm-up is one login per user.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from ..types import AppConfigScopeType
from .seed import POLICIES, POLICY_CHANGE, Org, domain_theme, public_announcement, user_config

__all__ = ["WARMUP_PASSES", "Read", "Round", "Workload", "Write", "plan_workload"]

#: how popular each name is for single-document reads (a page opens one document)
_NAME_WEIGHTS = {
    "theme": 30,
    "menu": 20,
    "dashboard": 15,
    "notifications": 10,
    "editor": 10,
    "locale": 5,
    "announcements": 5,
    "shortcuts": 5,
}
LOGIN_SHARE = 0.75
ZIPF_S = 1.1
#: user saves per 1000 reads; the admin events (a policy change, a domain theme change,
#: a public change) come a fixed number of times per run
USER_SAVES_PER_1000 = 5.0
#: writes go into every WRITE_EVERY-th round; the others are free of writes
WRITE_EVERY = 4
MAX_READS_PER_SESSION = 16
MIN_ROUNDS = 12
WARMUP_PASSES = 2


@dataclass(frozen=True, slots=True)
class Read:
    kind: str  # "login" or "single"
    user_id: UUID
    name: str = ""


@dataclass(frozen=True, slots=True)
class Write:
    kind: str  # "user_save", "domain_theme", "public", "policy"
    #: a user the write affects: the writer logs in as them right after the write
    probe: UUID
    user_id: UUID | None = None
    target: str = ""  # the name, or the domain of a domain write
    config: dict[str, Any] | None = None
    #: a policy write sets ``chain``, or ``other_chain`` if ``chain`` is already set
    chain: tuple[AppConfigScopeType, ...] = ()
    other_chain: tuple[AppConfigScopeType, ...] = ()


@dataclass(slots=True)
class Round:
    #: one list of reads per concurrent session, made one after the other
    sessions: list[list[Read]]
    writes: list[Write] = field(default_factory=list)

    @property
    def reads(self) -> int:
        return sum(map(len, self.sessions))


@dataclass(slots=True)
class Workload:
    #: one login per user, least popular first (played WARMUP_PASSES times)
    warmup: list[Round]
    #: the measured rounds
    rounds: list[Round]

    @property
    def warmup_reads(self) -> int:
        return (WARMUP_PASSES + 1) * sum(r.reads for r in self.warmup)

    @property
    def reads(self) -> int:
        return sum(r.reads for r in self.rounds)


class Zipf:
    """Draws indexes 0..n-1 with probability proportional to ``1 / (rank + 1) ** s``."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        self._cum = list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))
        self._rng = rng

    def __call__(self) -> int:
        return bisect.bisect_left(self._cum, self._rng.random() * self._cum[-1])


def plan_workload(
    org: Org, requests: int, concurrency: int, rng: random.Random, *, admin_events: int = 1
) -> Workload:
    """What every mode replays: the same reads and the same writes, in the same order."""
    ranked = list(org.user_ids)
    rng.shuffle(ranked)  # popularity rank is independent of domain and creation order
    pick_user = Zipf(len(ranked), ZIPF_S, rng)
    names, weights = list(_NAME_WEIGHTS), list(_NAME_WEIGHTS.values())
    # Sessions of up to MAX_READS_PER_SESSION reads; fewer in a small run, so that it
    # still has MIN_ROUNDS rounds.
    per_session = max(1, min(MAX_READS_PER_SESSION, requests // (concurrency * MIN_ROUNDS)))
    rounds: list[Round] = []
    left = requests
    while left > 0:
        sessions: list[list[Read]] = []
        while left > 0 and len(sessions) < concurrency:
            reads = []
            for _ in range(min(per_session, left)):
                uid = ranked[pick_user()]
                if rng.random() < LOGIN_SHARE:
                    reads.append(Read("login", uid))
                else:
                    reads.append(Read("single", uid, rng.choices(names, weights)[0]))
            sessions.append(reads)
            left -= len(reads)
        rounds.append(Round(sessions))

    write_rounds = rounds[WRITE_EVERY - 1 :: WRITE_EVERY] or rounds[-1:]

    def at(fraction: float) -> Round:
        return write_rounds[min(int(fraction * len(write_rounds)), len(write_rounds) - 1)]

    revision = itertools.count(1)
    savers = [uid for uid in ranked if org.user_names[uid]]
    for _ in range(round(requests * USER_SAVES_PER_1000 / 1000) if savers else 0):
        uid = savers[min(pick_user(), len(savers) - 1)]  # active users save more
        name = rng.choice(org.user_names[uid])
        config = user_config(name, rng, next(revision))
        write = Write("user_save", uid, user_id=uid, target=name, config=config)
        rng.choice(write_rounds).writes.append(write)
    by_domain: dict[str, list[UUID]] = {}
    for uid in ranked:
        by_domain.setdefault(org.user_domain[uid], []).append(uid)
    name, changed = POLICY_CHANGE
    for k in range(admin_events):
        # Each admin event kind once per 1/admin_events of the run, at different points.
        start = k / admin_events
        policy = Write(
            "policy", rng.choice(ranked), target=name, chain=changed, other_chain=POLICIES[name]
        )
        at(start + 0.3 / admin_events).writes.append(policy)
        domain = rng.choice(org.domains)
        config = domain_theme(domain, rng, next(revision))
        probe = rng.choice(by_domain.get(domain) or ranked)
        write = Write("domain_theme", probe, target=domain, config=config)
        at(start + 0.45 / admin_events).writes.append(write)
        config = public_announcement(next(revision))
        write = Write("public", rng.choice(ranked), target="announcements", config=config)
        at(start + 0.6 / admin_events).writes.append(write)

    warmup_reads = [Read("login", uid) for uid in reversed(ranked)]
    size = concurrency * MAX_READS_PER_SESSION
    warmup = []
    for start in range(0, len(warmup_reads), size):
        chunk = warmup_reads[start : start + size]
        warmup.append(Round([chunk[i::concurrency] for i in range(min(concurrency, len(chunk)))]))
    return Workload(warmup, rounds)
