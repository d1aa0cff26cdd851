"""An asyncio TCP proxy that injects faults, switched at run time.

Put it between a client and a real server (Valkey over TCP, PostgreSQL over
TCP or its Unix socket). It listens on ``127.0.0.1:0`` (or on a Unix socket
path) and forwards each accepted connection to the target. Modes:

- ``pass``: forward both ways.
- ``latency(seconds)``: deliver every reply chunk ``seconds`` after it
  arrived (order kept, throughput not capped); ``direction="both"`` delays
  requests too.
- ``blackhole``: accept, never answer; data both ways is swallowed.
- ``reset``: abort every open connection with a TCP RST, and new ones as soon
  as they are accepted.
- ``fragment(size, pause)``: cut replies into ``size``-byte pieces, with a
  short pause between pieces so the client reads them one by one.
- ``garbage(data)``: answer every request chunk with ``data`` (not RESP); the
  server never sees the request.
- ``answer(reply)``: answer every complete RESP command with ``reply`` (for
  example ``b"-ERR injected\\r\\n"`` or a well-formed reply of the wrong type).
- ``hold``: connections already open pass; new ones are accepted but parked,
  unforwarded, until the mode changes (a reconnect held back).
- ``drop(pattern, action)``: a connection whose request bytes contain
  ``pattern`` (``b"INCRBY"``: an invalidation) loses them: ``swallow`` never
  forwards them nor anything after on that connection, ``reset`` aborts it.

A connection that lost data (blackhole, garbage, drop) is out of step with its
server; it is aborted when the mode changes, as a real network partition ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

__all__ = ["FaultProxy", "ProxyStats", "count_resp_commands"]

_CHUNK = 65536
GARBAGE = b"\x00\xff\xfe?? this is not RESP \x01\x02\r\n"

Target = tuple[str, int] | str  # (host, port) or the path of a Unix socket


@dataclass
class ProxyStats:
    accepted: int = 0
    aborted: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    swallowed_chunks: int = 0
    drops: int = 0  # connections that matched the drop pattern
    answered: int = 0  # commands answered by the proxy itself
    modes: list[str] = field(default_factory=list)


def count_resp_commands(buf: bytearray) -> int:
    """Remove the complete RESP commands (arrays of bulk strings) at the head of ``buf``.

    Returns how many there were; an incomplete tail stays in ``buf``. Bytes that
    are not a RESP array (an inline command) count as one command per line.
    """
    count = 0
    while buf:
        if buf[:1] != b"*":
            end = buf.find(b"\r\n")
            if end < 0:
                return count
            del buf[: end + 2]
            count += 1
            continue
        pos = buf.find(b"\r\n")
        if pos < 0:
            return count
        items = int(buf[1:pos])
        pos += 2
        for _ in range(max(items, 0)):
            end = buf.find(b"\r\n", pos)
            if end < 0 or buf[pos : pos + 1] != b"$":
                return count
            size = int(buf[pos + 1 : end])
            pos = end + 2 + size + 2
            if pos > len(buf):
                return count
        del buf[:pos]
        count += 1
    return count


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close at once; on TCP with SO_LINGER 0, which sends a RST."""
    if writer is None or writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    """One client connection and its upstream twin."""

    def __init__(
        self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.c_reader, self.c_writer = reader, writer
        self.s_reader: asyncio.StreamReader | None = None
        self.s_writer: asyncio.StreamWriter | None = None
        self.up: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self.down: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self.tainted = False  # lost data: out of step with the server
        self.dead = False  # swallow every further request (drop/swallow)
        self.resp_buf = bytearray()
        self.tail = b""
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        _abort(self.c_writer)
        _abort(self.s_writer)
        for task in self.tasks:
            task.cancel()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._read_client()),
            loop.create_task(self._deliver(self.up, upstream=True)),
            loop.create_task(self._deliver(self.down, upstream=False)),
        ]
        try:
            await asyncio.gather(*self.tasks)
        except (asyncio.CancelledError, Exception):
            pass  # the connection is over, however it ended
        finally:
            self.abort()
            for task in self.tasks:
                with contextlib.suppress(BaseException):
                    await task

    async def _connect(self) -> None:
        if self.s_writer is not None:
            return
        target = self.proxy.target
        if isinstance(target, str):
            self.s_reader, self.s_writer = await asyncio.open_unix_connection(target)
        else:
            self.s_reader, self.s_writer = await asyncio.open_connection(*target)
        self.tasks.append(asyncio.get_running_loop().create_task(self._read_server()))

    async def _read_client(self) -> None:
        loop = asyncio.get_running_loop()
        proxy = self.proxy
        while True:
            data = await self.c_reader.read(_CHUNK)
            if not data:  # the client left: so does its server connection
                if self.s_writer is None:
                    self.abort()
                else:
                    self.s_writer.close()
                return
            proxy.stats.bytes_up += len(data)
            mode = proxy.mode
            if self.dead or mode == "blackhole":
                self._swallow()
                continue
            if mode == "garbage":
                self._swallow()
                await self.down.put((0.0, proxy.garbage_data))
                continue
            if mode == "answer":
                self.resp_buf += data
                n = count_resp_commands(self.resp_buf)
                proxy.stats.answered += n
                if self.resp_buf:
                    self.tainted = True  # half a command: the server must not see the rest
                if n:
                    await self.down.put((0.0, proxy.answer_reply * n))
                continue
            if mode == "drop":
                pattern = proxy.drop_pattern
                window = self.tail + data
                self.tail = window[-(len(pattern) - 1) :] if len(pattern) > 1 else b""
                if pattern in window:
                    proxy.stats.drops += 1
                    if proxy.drop_action == "reset":
                        self.abort()
                        return
                    self.dead = True
                    self._swallow()
                    continue
            delay = proxy.latency if mode == "latency" and proxy.latency_up else 0.0
            await self.up.put((loop.time() + delay, data))

    async def _read_server(self) -> None:
        assert self.s_reader is not None
        loop = asyncio.get_running_loop()
        proxy = self.proxy
        try:
            while True:
                data = await self.s_reader.read(_CHUNK)
                if not data:
                    await self.down.put(None)
                    return
                proxy.stats.bytes_down += len(data)
                if proxy.mode == "blackhole":
                    self._swallow()
                    continue
                delay = proxy.latency if proxy.mode == "latency" else 0.0
                await self.down.put((loop.time() + delay, data))
        except (OSError, ConnectionError):
            self.abort()

    def _swallow(self) -> None:
        self.tainted = True
        self.proxy.stats.swallowed_chunks += 1

    async def _deliver(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], *, upstream: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await queue.get()
            if item is None:
                self.abort()
                return
            at, data = item
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if upstream:
                await self._connect()
                assert self.s_writer is not None
                self.s_writer.write(data)
                await self.s_writer.drain()
                continue
            size, pause = self.proxy.fragment_size, self.proxy.fragment_pause
            if self.proxy.mode == "fragment" and size > 0:
                for i in range(0, len(data), size):
                    self.c_writer.write(data[i : i + size])
                    await self.c_writer.drain()
                    await asyncio.sleep(pause)
            else:
                self.c_writer.write(data)
                await self.c_writer.drain()


class FaultProxy:
    """The proxy. ``async with FaultProxy(("127.0.0.1", 6379)) as proxy: proxy.url``."""

    def __init__(self, target: Target, *, listen_path: str | None = None) -> None:
        self.target = target
        self.listen_path = listen_path
        self.stats = ProxyStats()
        self.mode = "pass"
        self.latency = 0.0
        self.latency_up = False
        self.fragment_size = 0
        self.fragment_pause = 0.0
        self.garbage_data = GARBAGE
        self.answer_reply = b"-ERR injected by the proxy\r\n"
        self.drop_pattern = b""
        self.drop_action = "swallow"
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self.host = "127.0.0.1"
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> Self:
        if self.listen_path is not None:
            self._server = await asyncio.start_unix_server(self._accept, path=self.listen_path)
        else:
            self._server = await asyncio.start_server(self._accept, self.host, 0)
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for _reader, writer in self._held:
            _abort(writer)
        self._held.clear()
        self.abort_all()
        for task in list(self._handlers):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT``: a Valkey URL through the proxy."""
        return f"redis://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # -- modes -------------------------------------------------------------------------

    def _set(self, mode: str, **settings: object) -> None:
        if self.mode in ("blackhole", "garbage", "drop", "answer") or mode == "reset":
            for conn in list(self._conns):
                if conn.tainted or mode == "reset":
                    self._abort(conn)
        for key, value in settings.items():
            setattr(self, key, value)
        self.mode = mode
        self.stats.modes.append(mode)
        held, self._held = self._held, []
        if mode != "hold":
            for reader, writer in held:
                self._accept(reader, writer)

    def set_pass(self) -> None:
        self._set("pass")

    def set_latency(self, seconds: float, *, direction: str = "down") -> None:
        if direction not in ("down", "both"):
            raise ValueError("direction is 'down' (replies) or 'both'")
        self._set("latency", latency=seconds, latency_up=direction == "both")

    def set_blackhole(self) -> None:
        self._set("blackhole")

    def set_hold(self) -> None:
        self._set("hold")

    def set_reset(self) -> None:
        self._set("reset")

    def set_fragment(self, size: int, pause: float = 0.0002) -> None:
        if size < 1:
            raise ValueError("fragment size must be >= 1")
        self._set("fragment", fragment_size=size, fragment_pause=pause)

    def set_garbage(self, data: bytes = GARBAGE) -> None:
        self._set("garbage", garbage_data=data)

    def set_answer(self, reply: bytes) -> None:
        self._set("answer", answer_reply=reply)

    def set_drop_matching(self, pattern: bytes, *, action: str = "swallow") -> None:
        if not pattern or action not in ("swallow", "reset"):
            raise ValueError("a non-empty pattern, and action 'swallow' or 'reset'")
        self._set("drop", drop_pattern=pattern, drop_action=action)

    def abort_all(self) -> None:
        """RST every open connection now, whatever the mode."""
        for conn in list(self._conns):
            self._abort(conn)

    def _abort(self, conn: _Conn) -> None:
        self.stats.aborted += 1
        conn.abort()
        self._conns.discard(conn)

    # -- connections -------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "hold":
            self._held.append((reader, writer))
            return
        self.stats.accepted += 1
        if self.mode == "reset":
            self.stats.aborted += 1
            _abort(writer)
            return
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(self, reader, writer)
        self._conns.add(conn)
        task = asyncio.get_running_loop().create_task(conn.run())
        self._handlers.add(task)
        task.add_done_callback(self._done(conn))

    def _done(self, conn: _Conn) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._handlers.discard(task)
            self._conns.discard(conn)

        return done
