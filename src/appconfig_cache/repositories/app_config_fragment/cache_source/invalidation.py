"""Invalidation: what a write outdates, dropped from L1 first and then bumped in Valkey.

A *target* is a scope ``(scope_type, scope_id)`` or ``("name", config_name)``;
each maps to one generation key (USER: the user's; DOMAIN and
DOMAIN_USER_DEFAULTS: the domain's; PUBLIC: the public one, or the name's
when a public fragment of one name changed). The broadcast of another process
names generation keys; they map back to the same local records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from ....tiered import keys
from ....tiered.bumps import Bumps
from ....tiered.local import LocalTier
from ....tiered.readings import Readings
from ....types import AppConfigData, AppConfigFragmentKey, AppConfigScopeType
from ....validation import validate_name
from .policy_names import PolicyNames

NAME = "name"  # an invalidation target that is a config name, not a scope

Target = tuple[str, str]


def targets_of(fragment_keys: Iterable[AppConfigFragmentKey]) -> list[Target]:
    """What a write to each fragment key invalidates: its scope, or its name if public."""
    return [
        (NAME, key.name)
        if key.scope_type is AppConfigScopeType.PUBLIC
        else (key.scope_type, key.scope_id)
        for key in fragment_keys
    ]


@dataclass(eq=False)
class Invalidation:
    """Local records first, then the bumps; and the other processes' bumps, applied here."""

    local: LocalTier[AppConfigData]
    readings: Readings
    bumps: Bumps
    policy_names: PolicyNames

    async def targets(self, targets: list[Target]) -> bool:
        """Returns whether Valkey acknowledged the bumps."""
        gen_keys = self._drop_local(targets)
        if not gen_keys:
            return True
        acked = await self.bumps.bump(gen_keys)
        # A read that began while the INCR was in flight ran under the new version
        # but saw the old generations: invalidate locally once more, so nothing
        # it stored outlives this call (I2).
        self._drop_local(targets)
        return acked

    def targets_nowait(self, targets: list[Target]) -> None:
        """L1 now; the bumps stay pending until the next read replays them."""
        self.bumps.later(self._drop_local(targets))

    async def policy(self, config_name: str) -> bool:
        acked = await self.bumps.bump(self._drop_policy_local(config_name))
        self._drop_policy_local(config_name)  # as in targets()
        return acked

    async def replay(self, targets: list[Target], policy_names: list[str]) -> bool:
        """What outbox rows name (checked already): L1, then one bump for all of it."""
        gen_keys = self._drop_local(targets)
        for name in policy_names:
            gen_keys += self._drop_policy_local(name)
        if not gen_keys:
            return True
        acked = await self.bumps.bump(list(dict.fromkeys(gen_keys)))
        self._drop_local(targets)  # as in targets()
        for name in policy_names:
            self._drop_policy_local(name)
        return acked

    def policy_nowait(self, config_name: str) -> None:
        self.bumps.later(self._drop_policy_local(config_name))

    def _drop_policy_local(self, config_name: str) -> list[str]:
        validate_name(config_name)
        self.local.invalidate_name(config_name)
        self.policy_names.changed()
        return [keys.name_gen_key(config_name), keys.POLICIES_GEN]

    def _drop_local(self, targets: Iterable[Target]) -> list[str]:
        """Record each target's invalidation in L1; return the generation keys, each once."""
        gen_keys: dict[str, None] = {}
        local = self.local
        for kind, ident in targets:
            if kind == AppConfigScopeType.USER:
                uid = UUID(ident)
                local.invalidate_user(uid)
                gen_keys[keys.user_gen_key(uid)] = None
            elif kind == AppConfigScopeType.PUBLIC:
                local.invalidate_public()
                gen_keys[keys.PUBLIC_GEN] = None
            elif kind == NAME:
                local.invalidate_name(ident)
                gen_keys[keys.name_gen_key(ident)] = None
            else:
                local.invalidate_domain(ident)
                gen_keys[keys.domain_gen_key(ident)] = None
        return list(gen_keys)

    def apply_remote(self, gen_keys: list[str]) -> None:
        """Another process bumped these generations: drop what they cover here."""
        local = self.local
        request = self.readings.next_request()
        for key in gen_keys:
            parsed = keys.parse_gen_key(key)
            if parsed is None:
                continue
            kind, ident = parsed
            if kind == "user":
                try:
                    local.invalidate_user(UUID(ident))
                except ValueError:
                    continue
            elif kind == "domain":
                local.invalidate_domain(ident)
            elif kind == "name":
                local.invalidate_name(ident)
            elif kind == "public":
                local.invalidate_public()
            else:  # policies
                self.policy_names.changed()
            self.readings.forget(key, request)

    def apply_gap(self) -> None:
        """The broadcast may have missed messages: nothing cached before is served until
        Valkey confirms it (every L1 entry dropped, every generation read again)."""
        self.local.invalidate_all()
        self.readings.forget_all()
        self.policy_names.changed()
