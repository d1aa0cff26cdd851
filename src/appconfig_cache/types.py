"""Pydantic data types of the public API (frozen, JSON round-trippable)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict

__all__ = [
    "AppConfigData",
    "AppConfigFragmentData",
    "AppConfigFragmentKey",
    "AppConfigPolicyData",
    "AppConfigScopeType",
    "BulkFailure",
    "BulkResult",
    "FragmentInput",
    "MyFragmentInput",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class AppConfigScopeType(enum.StrEnum):
    """Where a fragment lives. ``scope_id`` is ``"public"``, a domain name or a user UUID."""

    PUBLIC = "public"
    DOMAIN = "domain"
    DOMAIN_USER_DEFAULTS = "domain_user_defaults"
    USER = "user"


class AppConfigFragmentKey(BaseModel):
    """The unique address of one fragment."""

    model_config = _FROZEN

    scope_type: AppConfigScopeType
    scope_id: str
    name: str


class AppConfigFragmentData(BaseModel):
    """One stored fragment."""

    model_config = _FROZEN

    id: UUID
    scope_type: AppConfigScopeType
    scope_id: str
    name: str
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @property
    def key(self) -> AppConfigFragmentKey:
        return AppConfigFragmentKey(
            scope_type=self.scope_type, scope_id=self.scope_id, name=self.name
        )


class AppConfigData(BaseModel):
    """The merged view of one document for one user.

    ``fragments`` are the contributing fragments in chain order (low to high
    priority); ``config`` is their deep merge, or ``None`` when nothing but
    empty objects contributed. Treat instances as read-only: the cache hands
    the same object to every reader.
    """

    model_config = _FROZEN

    user_id: UUID
    name: str
    fragments: tuple[AppConfigFragmentData, ...] = ()
    config: dict[str, Any] | None = None


class AppConfigPolicyData(BaseModel):
    """The policy of one document name: its merge chain, low to high priority."""

    model_config = _FROZEN

    id: UUID
    config_name: str
    scope_sources: tuple[AppConfigScopeType, ...]
    created_at: datetime
    updated_at: datetime


class MyFragmentInput(BaseModel):
    """A fragment in the caller's own ``user`` scope."""

    model_config = _FROZEN

    name: str
    config: dict[str, Any]


class FragmentInput(BaseModel):
    """A fragment at any scope (admin writes)."""

    model_config = _FROZEN

    key: AppConfigFragmentKey
    config: dict[str, Any]


class BulkFailure(BaseModel):
    """One failed bulk item: its input ``index``, a stable ``code`` and a message."""

    model_config = _FROZEN

    index: int
    code: str
    message: str


T = TypeVar("T")


class BulkResult(BaseModel, Generic[T]):
    """Partial-success result of a bulk call."""

    model_config = _FROZEN

    successes: list[T] = []
    failures: list[BulkFailure] = []
