"""The SQL statement counter."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

_LIBRARY_TABLES = re.compile(r"\b(app_config_policies|app_config_fragments|users)\b")


class SqlStatements:
    """The statements an engine sent while :func:`count_sql` was active."""

    def __init__(self, *, library_only: bool) -> None:
        self.library_only = library_only
        self.statements: list[str] = []

    @property
    def count(self) -> int:
        return len(self.statements)

    def reset(self) -> None:
        self.statements.clear()

    def record(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if not self.library_only or _LIBRARY_TABLES.search(statement):
            self.statements.append(statement)


@contextmanager
def count_sql(engine: AsyncEngine, *, library_only: bool = False) -> Iterator[SqlStatements]:
    """Record every statement sent to the driver (``before_cursor_execute``) in the block.

    ``library_only``: only those that name the library's tables (pool chatter left out).
    The listener sits on the engine, so it also sees engines derived with
    ``execution_options()``. Warm the pool up first (one read) when counting a read:
    a new connection runs the dialect's own setup queries.
    """
    log = SqlStatements(library_only=library_only)
    event.listen(engine.sync_engine, "before_cursor_execute", log.record)
    try:
        yield log
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", log.record)
