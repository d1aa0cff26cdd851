"""Key layout: how every key is built, and read back (generation keys).

Every key starts with the fixed prefix ``app_config:``. A user's keys carry
``{<uuid>}``, a Valkey hash tag, so one ``MGET`` over them stays in one slot.
Config names are validated identifiers and user ids are canonical UUIDs, so
no input can name another entry's key or a glob.

Generations come in four kinds, from the widest to the narrowest: ``public``
(every view), ``name`` (every view of one name), ``domain`` (every view of the
users of one domain) and ``user``. A view depends on one of each.
"""

from __future__ import annotations

from typing import NamedTuple
from uuid import UUID

PREFIX = "app_config:"
PUBLIC_GEN = PREFIX + "gen:public"
POLICIES_GEN = PREFIX + "gen:policies"
POLICY_NAMES = PREFIX + "policy_names"
#: the domain of a user who has no users row: no domain scope applies
NO_DOMAIN = ""


class Gens(NamedTuple):
    """The four generations a view depends on (as an envelope states them)."""

    public: int
    name: int
    domain: int  # 0 for a user without a domain
    user: int


def merged_key(user_id: UUID, name: str) -> str:
    return f"{PREFIX}merged:{{{user_id}}}:{name}"


#: every user generation key starts with this (the others are few and shared)
USER_GEN_PREFIX = PREFIX + "gen:user:"


def user_gen_key(user_id: UUID) -> str:
    return f"{USER_GEN_PREFIX}{{{user_id}}}"


def user_domain_key(user_id: UUID) -> str:
    return f"{PREFIX}user_domain:{{{user_id}}}"


DOMAIN_GEN_PREFIX = PREFIX + "gen:domain:"


def domain_gen_key(domain: str) -> str:
    return DOMAIN_GEN_PREFIX + domain


def name_gen_key(name: str) -> str:
    return f"{PREFIX}gen:name:{name}"


class GenKey(NamedTuple):
    """What a generation key names: its kind and, but for ``public``, the target."""

    kind: str  # public | policies | name | domain | user
    ident: str


def parse_gen_key(key: str) -> GenKey | None:
    """The inverse of the ``*_gen_key`` builders; None for anything else."""
    if key == PUBLIC_GEN:
        return GenKey("public", "")
    if key == POLICIES_GEN:
        return GenKey("policies", "")
    kind, _, ident = key.removeprefix(PREFIX + "gen:").partition(":")
    if kind == "user" and ident.startswith("{") and ident.endswith("}"):
        return GenKey("user", ident[1:-1])
    if kind in ("domain", "name") and ident:
        return GenKey(kind, ident)
    return None
