"""Worker processes of the multi-process tests: spawned with a role, told ``go`` together.

A worker prints ``ready`` once connected and warmed up, waits for ``go`` on stdin, runs,
and prints its results on stdout.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

STARTUP_GUARD = 60.0  # a hang guard for process start-up, not a timing assertion


async def spawn_worker(script: Path, role: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """``python script role``, with stdin, stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable, str(script), role, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@asynccontextmanager
async def released(procs: Sequence[asyncio.subprocess.Process]) -> AsyncIterator[None]:
    """Wait until every worker is ready, then send each ``go``; on the way out, kill those
    still running. A worker that does not start fails the test with its stderr."""
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_GUARD)
            if line.strip() != b"ready":
                _out, err = await proc.communicate()
                pytest.fail(f"worker did not start: {line!r} {err.decode()[-2000:]}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        yield
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
