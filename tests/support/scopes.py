"""The scope types by name, in the usual chain order, and the scope id a user reads."""

from __future__ import annotations

import uuid

from appconfig_cache import AppConfigScopeType

PUBLIC = AppConfigScopeType.PUBLIC
DOMAIN = AppConfigScopeType.DOMAIN
DOMAIN_USER_DEFAULTS = AppConfigScopeType.DOMAIN_USER_DEFAULTS
USER = AppConfigScopeType.USER
#: every scope type, low to high priority in the usual chain
ALL_SCOPES: tuple[AppConfigScopeType, ...] = (PUBLIC, DOMAIN, DOMAIN_USER_DEFAULTS, USER)


def scope_id_of(scope_type: AppConfigScopeType, uid: uuid.UUID, domain: str) -> str:
    """The scope id a user in ``domain`` reads at ``scope_type``."""
    if scope_type is PUBLIC:
        return "public"
    if scope_type is USER:
        return str(uid)
    return domain
