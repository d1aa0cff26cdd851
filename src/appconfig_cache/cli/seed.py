"""A realistic organisation: domains, users, policies and fragments at every scope.

Everything is drawn from one ``random.Random(seed)``, so a seed gives the same org.
Users are inserted with plain SQL (the ``users`` table is the manager's); policies
and fragments go through the repositories, like an admin's and users' saves would.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ..models import outbox, users
from ..repositories.app_config_fragment import AppConfigFragmentRepository
from ..repositories.app_config_policy import AppConfigPolicyRepository
from ..types import AppConfigFragmentKey, AppConfigScopeType, FragmentInput

__all__ = ["POLICIES", "Org", "plan_org", "seed_org"]

P = AppConfigScopeType.PUBLIC
D = AppConfigScopeType.DOMAIN
DUD = AppConfigScopeType.DOMAIN_USER_DEFAULTS
U = AppConfigScopeType.USER

#: config name -> merge chain (low to high priority); eight names, eight different chains
POLICIES: dict[str, tuple[AppConfigScopeType, ...]] = {
    "theme": (P, D, U),
    "menu": (P, D, DUD),
    "dashboard": (P, DUD, U),
    "notifications": (DUD, U),
    "editor": (P, U),
    "locale": (P, D, DUD, U),
    "announcements": (P, D),
    "shortcuts": (U,),
}

#: the policy the demo's policy change flips to and back: admin defaults now win over users
POLICY_CHANGE = ("dashboard", (P, U, DUD))

#: the share of users who saved a fragment of each user-scoped name
USER_SHARE = {
    "theme": 0.6,
    "dashboard": 0.35,
    "notifications": 0.25,
    "editor": 0.3,
    "locale": 0.1,
    "shortcuts": 0.4,
}

_DOMAIN_NAMES = (
    "research",
    "engineering",
    "design",
    "sales",
    "operations",
    "finance",
    "support",
    "marketing",
)
_ACCENTS = ("#0055aa", "#2e7d32", "#c62828", "#6a1b9a", "#ef6c00", "#00838f", "#37474f")
_LANGUAGES = (("en", "UTC"), ("ko", "Asia/Seoul"), ("de", "Europe/Berlin"), ("ja", "Asia/Tokyo"))
_WIDGETS = ("sessions", "gpu-usage", "storage", "models", "pipelines", "quota", "news")


@dataclass
class Org:
    """The seeded organisation, as the workload needs to know it."""

    domains: list[str]
    user_ids: list[uuid.UUID]
    user_domain: dict[uuid.UUID, str]
    #: user -> the names that user has a ``user``-scope fragment of
    user_names: dict[uuid.UUID, list[str]]
    fragments: list[FragmentInput] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(POLICIES)


def user_config(name: str, rng: random.Random, rev: int = 0) -> dict[str, Any]:
    """What a user saves for ``name``: small, nested, realistic."""
    if name == "theme":
        return {
            "mode": rng.choice(("dark", "light", "system")),
            "accent": rng.choice(_ACCENTS),
            "font_size": rng.choice((12, 13, 14, 16)),
            "rev": rev,
        }
    if name == "dashboard":
        return {
            "widgets": rng.sample(_WIDGETS, 3),
            "layout": {"columns": rng.choice((2, 3, 4)), "compact": rng.random() < 0.5},
            "rev": rev,
        }
    if name == "notifications":
        return {
            "email": rng.random() < 0.3,
            "desktop": {"enabled": rng.random() < 0.7, "sound": rng.choice(("chime", "none"))},
        }
    if name == "editor":
        return {"tab_size": rng.choice((2, 4)), "keymap": rng.choice(("default", "vim", "emacs"))}
    if name == "locale":
        language, tz = rng.choice(_LANGUAGES)
        return {"language": language, "timezone": tz}
    return {"open_terminal": "ctrl+`", "new_session": rng.choice(("ctrl+n", "alt+n"))}


def domain_theme(domain: str, rng: random.Random, rev: int = 0) -> dict[str, Any]:
    return {"accent": rng.choice(_ACCENTS), "logo": f"/static/logos/{domain}.svg", "rev": rev}


def public_announcement(rev: int) -> dict[str, Any]:
    return {
        "banner": {"text": f"Maintenance window #{rev} on Sunday 02:00 UTC", "level": "info"},
        "rev": rev,
    }


def _admin_fragments(domains: list[str], rng: random.Random) -> list[FragmentInput]:
    def frag(scope: AppConfigScopeType, scope_id: str, name: str, config: dict[str, Any]) -> Any:
        key = AppConfigFragmentKey(scope_type=scope, scope_id=scope_id, name=name)
        return FragmentInput(key=key, config=config)

    out = [
        frag(P, "public", "theme", {"mode": "light", "accent": "#0055aa", "font_size": 13}),
        frag(P, "public", "menu", {"items": ["sessions", "data", "models", "settings"]}),
        frag(
            P, "public", "dashboard", {"widgets": ["sessions", "quota"], "layout": {"columns": 2}}
        ),
        frag(P, "public", "editor", {"tab_size": 4, "keymap": "default", "word_wrap": True}),
        frag(P, "public", "locale", {"language": "en", "timezone": "UTC"}),
        frag(P, "public", "announcements", public_announcement(0)),
    ]
    for d in domains:
        out += [
            frag(D, d, "theme", domain_theme(d, rng)),
            frag(D, d, "menu", {"items": ["sessions", "data", "pipelines"], "brand": d}),
            frag(D, d, "locale", {"timezone": rng.choice(_LANGUAGES)[1]}),
            frag(D, d, "announcements", {"banner": {"text": f"Welcome to {d}"}}),
            frag(DUD, d, "menu", {"collapsed": rng.random() < 0.5}),
            frag(DUD, d, "dashboard", {"layout": {"columns": 3, "compact": False}}),
            frag(DUD, d, "notifications", {"email": True, "desktop": {"enabled": True}}),
            frag(DUD, d, "locale", {"language": rng.choice(_LANGUAGES)[0]}),
        ]
    return out


def plan_org(n_domains: int, n_users: int, rng: random.Random) -> Org:
    """Draw the organisation; nothing is written yet."""
    domains = [
        _DOMAIN_NAMES[i] if i < len(_DOMAIN_NAMES) else f"domain-{i + 1}" for i in range(n_domains)
    ]
    # Some domains are much bigger than others.
    weights = [1.0 / (i + 1) for i in range(n_domains)]
    user_ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(n_users)]
    user_domain = dict(zip(user_ids, rng.choices(domains, weights, k=n_users), strict=True))
    fragments = _admin_fragments(domains, rng)
    user_names: dict[uuid.UUID, list[str]] = {}
    for uid in user_ids:
        names = [name for name, share in USER_SHARE.items() if rng.random() < share]
        user_names[uid] = names
        for name in names:
            key = AppConfigFragmentKey(scope_type=U, scope_id=str(uid), name=name)
            fragments.append(FragmentInput(key=key, config=user_config(name, rng)))
    return Org(domains, user_ids, user_domain, user_names, fragments)


async def seed_org(
    engine: AsyncEngine,
    org: Org,
    *,
    on_progress: Callable[[int], None] = lambda n: None,
    chunk: int = 250,
    parallel: int = 4,
) -> None:
    """Write the org through the repositories (DB only: the caches start empty).

    The outbox rows the seed's writes leave are deleted at the end: no cache holds a
    view yet, so they invalidate nothing, and a replay in the middle of a timed mode
    would flush every view the mode had cached.
    """
    rows = [{"uuid": uid, "domain_name": org.user_domain[uid]} for uid in org.user_ids]
    async with engine.begin() as conn:
        for start in range(0, len(rows), 1000):
            await conn.execute(sa.insert(users), rows[start : start + 1000])
    on_progress(len(rows))

    policies = AppConfigPolicyRepository(engine)
    for name, chain in POLICIES.items():
        await policies.create(name, list(chain))
    on_progress(len(POLICIES))

    repo = AppConfigFragmentRepository(engine)
    limit = asyncio.Semaphore(parallel)

    async def write(items: list[FragmentInput]) -> None:
        async with limit:
            result = await repo.admin_bulk_create(items)
        if result.failures:
            first = result.failures[0]
            raise RuntimeError(f"seeding failed: {first.code}: {first.message}")
        on_progress(len(items))

    chunks = [org.fragments[i : i + chunk] for i in range(0, len(org.fragments), chunk)]
    await asyncio.gather(*(write(items) for items in chunks))
    async with engine.begin() as conn:
        await conn.execute(sa.delete(outbox))


def seed_size(org: Org) -> int:
    """The number of progress steps :func:`seed_org` reports."""
    return len(org.user_ids) + len(POLICIES) + len(org.fragments)
