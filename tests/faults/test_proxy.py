"""The fault proxy itself, against the real Valkey and PostgreSQL.

Latency is checked as a lower bound only: the proxy holds each reply at least
that long by construction, so the check cannot flake on a slow machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio
import valkey.asyncio as valkey_asyncio
import valkey.exceptions as vex
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.polling import wait_for

from .conftest import (
    pg_target,
    pg_url_via,
    valkey_target,
)
from .proxy import FaultProxy, count_resp_commands


@pytest_asyncio.fixture(loop_scope="session")
async def client(valkey_proxy: FaultProxy) -> AsyncIterator[Any]:
    """A client through the proxy (0.3 s timeouts) that has stored ``k`` = ``b"1"``."""
    proxied = _client(valkey_proxy.url)
    try:
        await proxied.set("k", b"1")
        yield proxied
    finally:
        await proxied.aclose()


def _client(url: str, timeout: float = 0.3) -> Any:
    return valkey_asyncio.Valkey.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout
    )


async def test_pass_forwards_both_ways(valkey_proxy: FaultProxy, valkey_url: str) -> None:
    client, direct = _client(valkey_proxy.url), _client(valkey_url)
    try:
        assert await client.set("k", b"v" * 100_000)
        assert await direct.get("k") == b"v" * 100_000
        assert await client.get("k") == b"v" * 100_000
        assert valkey_proxy.stats.accepted == 1
        assert valkey_proxy.stats.bytes_up > 100_000
        assert valkey_proxy.stats.bytes_down > 100_000
    finally:
        await client.aclose()
        await direct.aclose()


async def test_latency_delays_replies(valkey_proxy: FaultProxy) -> None:
    client = _client(valkey_proxy.url, timeout=2.0)
    loop = asyncio.get_running_loop()
    try:
        await client.set("k", b"1")
        valkey_proxy.set_latency(0.15)
        start = loop.time()
        # A pipelined burst pays the latency once, not per command: no throughput cap.
        replies = await asyncio.gather(*(client.get("k") for _ in range(5)))
        assert loop.time() - start >= 0.15
        assert replies == [b"1"] * 5
        # A budget shorter than the latency runs out.
        short = _client(valkey_proxy.url, timeout=0.05)
        try:
            with pytest.raises(vex.TimeoutError):
                await short.get("k")
        finally:
            await short.aclose()
    finally:
        await client.aclose()


async def test_blackhole_accepts_and_never_answers(valkey_proxy: FaultProxy) -> None:
    client = _client(valkey_proxy.url, timeout=0.2)
    try:
        await client.set("k", b"1")
        valkey_proxy.set_blackhole()
        with pytest.raises(vex.TimeoutError):
            await client.get("k")  # the open connection
        fresh = _client(valkey_proxy.url, timeout=0.2)
        try:
            with pytest.raises((vex.TimeoutError, vex.ConnectionError)):
                await fresh.get("k")  # a new one is accepted, then nothing
        finally:
            await fresh.aclose()
        assert valkey_proxy.stats.swallowed_chunks >= 2
        valkey_proxy.set_pass()
        assert await client.get("k") == b"1"
    finally:
        await client.aclose()


async def test_reset_aborts_open_and_new_connections(valkey_proxy: FaultProxy, client: Any) -> None:
    assert valkey_proxy.open_connections == 1
    valkey_proxy.set_reset()
    assert valkey_proxy.open_connections == 0
    with pytest.raises(vex.ConnectionError):
        await client.get("k")
    with pytest.raises(vex.ConnectionError):
        await client.get("k")  # reconnects, and is reset again
    valkey_proxy.set_pass()
    assert await client.get("k") == b"1"
    assert valkey_proxy.stats.aborted >= 2


async def test_fragment_cuts_replies_into_pieces(valkey_proxy: FaultProxy) -> None:
    client = _client(valkey_proxy.url, timeout=5.0)
    value = bytes(range(256)) * 8
    try:
        await client.set("k", value)
        valkey_proxy.set_fragment(97)
        written = valkey_proxy.stats.bytes_down
        assert await client.get("k") == value
        assert await client.mget(["k", "missing", "k"]) == [value, None, value]
        assert valkey_proxy.stats.bytes_down - written > 3 * len(value)
    finally:
        await client.aclose()


async def test_garbage_is_not_resp(valkey_proxy: FaultProxy, client: Any) -> None:
    valkey_proxy.set_garbage()
    with pytest.raises((vex.InvalidResponse, vex.ConnectionError)):
        await client.get("k")
    valkey_proxy.set_pass()
    assert await client.get("k") == b"1"


async def test_answer_replies_to_each_command(valkey_proxy: FaultProxy, client: Any) -> None:
    valkey_proxy.set_answer(b"-ERR injected\r\n")
    with pytest.raises(vex.ResponseError, match="injected"):
        await client.get("k")
    valkey_proxy.set_answer(b":42\r\n")
    pipe = client.pipeline(transaction=False)
    pipe.get("k").get("k").mget(["k"])
    assert await pipe.execute() == [42, 42, 42]
    valkey_proxy.set_pass()
    assert await client.get("k") == b"1"


@pytest.mark.parametrize("action", ["swallow", "reset"])
async def test_drop_matching_loses_only_those_requests(
    valkey_proxy: FaultProxy, valkey_url: str, action: str
) -> None:
    client, direct = _client(valkey_proxy.url), _client(valkey_url)
    try:
        await client.set("gen", 10)
        valkey_proxy.set_drop_matching(b"INCRBY", action=action)
        assert await client.get("gen") == b"10"  # other commands pass
        pipe = client.pipeline(transaction=False)
        pipe.set("gen", 1, nx=True).incr("gen")
        with pytest.raises(vex.TimeoutError if action == "swallow" else vex.ConnectionError):
            await pipe.execute()
        assert valkey_proxy.stats.drops == 1
        assert await direct.get("gen") == b"10"  # the invalidation never reached Valkey
        valkey_proxy.set_pass()
        assert await client.incr("gen") == 11
    finally:
        await client.aclose()
        await direct.aclose()


async def test_proxy_in_front_of_postgresql(database_url: str) -> None:
    target = pg_target(database_url)
    async with FaultProxy(target) as proxy:
        engine = create_async_engine(pg_url_via(database_url, proxy), pool_size=2)
        try:
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 41 + 1"))).scalar_one() == 42
            proxy.set_latency(0.1)
            loop = asyncio.get_running_loop()
            async with engine.connect() as conn:
                start = loop.time()
                assert (await conn.execute(text("SELECT 'slow'"))).scalar_one() == "slow"
                assert loop.time() - start >= 0.1
                proxy.set_reset()
                with pytest.raises(Exception):  # noqa: B017 - the driver's own error type
                    await conn.execute(text("SELECT 1"))
            proxy.set_pass()
            await engine.dispose()
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        finally:
            await engine.dispose()


async def test_proxy_listening_on_a_unix_socket_for_postgresql(
    database_url: str, tmp_path: Path
) -> None:
    listen = str(tmp_path / ".s.PGSQL.5432")
    async with FaultProxy(pg_target(database_url), listen_path=listen) as proxy:
        url = pg_url_via(database_url, proxy)
        assert f"host={quote(str(tmp_path), safe='')}" in url
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 'via unix'"))).scalar_one() == "via unix"
            assert proxy.stats.accepted == 1 and proxy.stats.bytes_down > 0
        finally:
            await engine.dispose()


async def test_aclose_ends_every_connection(valkey_url: str) -> None:
    proxy = await FaultProxy(valkey_target(valkey_url)).start()
    client = _client(proxy.url)
    try:
        await client.ping()
        await proxy.aclose()
        assert proxy.open_connections == 0
        # On Python 3.12+ a write to a reset transport raises AttributeError inside asyncio
        # (CPython gh-136234, writelines() misses write()'s connection-lost check).
        with pytest.raises((vex.ConnectionError, AttributeError)):
            await client.ping()
    finally:
        await client.aclose()
        await proxy.aclose()


def test_count_resp_commands_keeps_incomplete_tail() -> None:
    buf = bytearray(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGE")
    assert count_resp_commands(buf) == 2
    assert bytes(buf) == b"*2\r\n$3\r\nGE"
    buf += b"T\r\n$1\r\nx\r\n"
    assert count_resp_commands(buf) == 1
    assert buf == bytearray()


async def test_wait_for_is_bounded() -> None:
    with pytest.raises(AssertionError, match="never"):
        await wait_for(lambda: False, timeout=0.05, what="never")
