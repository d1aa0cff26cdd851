"""Shared helpers of the repositories: :func:`suppress_with_log` (defined in ``logs``)."""

from __future__ import annotations

from ..logs import LogThrottle, suppress_with_log

__all__ = ["LogThrottle", "suppress_with_log"]
