"""Opt-in cross-process L1 invalidation over Valkey pub/sub.

An invalidation publishes the generations it bumped, in the same pipeline as
the ``INCR`` (no extra round trip). Every cache instance with the option on
keeps one dedicated connection subscribed: plain ``SUBSCRIBE`` on a
standalone server, sharded ``SSUBSCRIBE`` on the node that owns the channel's
slot on a cluster. A message drops the matching L1 entries and updates the
local generation cache, so other processes stop serving the old value within
milliseconds instead of ``local_ttl``.

Pub/sub is best effort, and a dropped subscription loses the messages published
meanwhile. So :attr:`Broadcast.on_gap` is called when the subscription is lost
and again each time it is confirmed (the first time included): the cache
source then drops every L1 entry and every generation reading taken before, so
nothing cached before a gap is served until Valkey confirms it again. While
the subscription is down, what is cached anew is bounded by ``local_ttl``, and
dropped again once the subscription is back. A subscription that stops
answering (the node hangs, the network drops packets) is a lost one too: it
is sent a ``PING`` every ``ping_interval`` seconds, and a silence of that long
ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

_logger = logging.getLogger("appconfig_cache.cache")

CHANNEL = "app_config:invalidate"


def is_cluster(client: Any) -> bool:
    """A ``ValkeyCluster``, or a wrapper around one (instrumentation proxies delegate)."""
    from valkey.asyncio.cluster import ValkeyCluster

    return isinstance(client, ValkeyCluster) or callable(getattr(client, "get_node_from_key", None))


class Broadcast:
    """Publishes this instance's bumps and applies the others'."""

    def __init__(
        self,
        client: Any,
        *,
        reconnect_delay: float = 0.5,
        ping_interval: float = 1.0,
    ) -> None:
        self.client = client
        self.instance = uuid.uuid4().hex
        self.state = "stopped"  # stopped | connecting | up | down
        self.received = 0
        self.reconnects = 0
        #: what a message from another instance calls with the generation keys it names
        self.on_message: Callable[[list[str]], None] = lambda keys: None
        #: what a lost subscription and every confirmed one call: messages may be missed
        self.on_gap: Callable[[], None] = lambda: None
        self.gaps = 0
        self._reconnect_delay = reconnect_delay
        self._ping_interval = ping_interval
        self._awaiting_reply = False  # a command was sent and nothing came back since
        self._cluster = is_cluster(client)
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    # -- publishing -----------------------------------------------------------------

    def publish_command(self, bumped_keys: list[str]) -> tuple[str, str, str]:
        """The command that announces a bump, sent in the bump's pipeline (no extra round trip).

        The message names the bumped generation keys only; receivers mark those
        generations unknown, so their next read fetches them in its usual round trip.
        """
        message = json.dumps({"i": self.instance, "k": bumped_keys}, separators=(",", ":"))
        return ("SPUBLISH" if self._cluster else "PUBLISH", CHANNEL, message)

    # -- subscribing ----------------------------------------------------------------

    def ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self.state = "connecting"
            self._task = asyncio.get_running_loop().create_task(self._listen_forever())

    async def wait_subscribed(self) -> None:
        """Wait until the subscription is live (tests, start-up)."""
        self.ensure_started()
        await self._subscribed.wait()

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.state == "up":  # once per loss, not at every failed reconnect
                    _logger.warning(
                        "invalidation broadcast lost (%s: %s): L1 dropped, resubscribing",
                        type(exc).__name__,
                        exc,
                    )
                    self._gap()
                self.state = "down"
                self._subscribed.clear()
                self.reconnects += 1
            await asyncio.sleep(self._reconnect_delay)  # back-off between reconnects

    async def _listen_once(self) -> None:
        connection, verb, kind = await self._subscriber()
        reader: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(2 * self._ping_interval):
                await connection.connect()
            await connection.send_command(verb, CHANNEL)
            self._awaiting_reply = True
            reader = asyncio.get_running_loop().create_task(self._read(connection, kind))
            await self._watch(connection, reader)
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
            await connection.disconnect()

    async def _read(self, connection: Any, kind: bytes) -> None:
        while True:
            reply = await connection.read_response(timeout=None)
            self._on_reply(reply, kind)

    async def _watch(self, connection: Any, reader: asyncio.Task[None]) -> None:
        """PING every ``ping_interval``: a node that hangs (``SIGSTOP``, a partition)
        never closes the connection, and its silence must count as a lost subscription."""
        while True:
            done, _ = await asyncio.wait([reader], timeout=self._ping_interval)
            if done:
                reader.result()  # raises what ended the subscription
                return
            if self._awaiting_reply:
                raise ConnectionError(f"no reply within {self._ping_interval}s")
            self._awaiting_reply = True
            await connection.send_command("PING")

    async def _subscriber(self) -> tuple[Any, str, bytes]:
        """A dedicated connection (same settings as the client's, TLS included), the verb
        and the message kind. On a cluster, to the primary that owns the channel's slot."""
        if not self._cluster:
            pool = self.client.connection_pool
            kwargs = {**pool.connection_kwargs, "socket_timeout": None}
            return pool.connection_class(**kwargs), "SUBSCRIBE", b"message"
        await self.client.initialize()  # a fresh client does not know the slots yet
        node = self.client.get_node_from_key(CHANNEL)
        kwargs = {**node.connection_kwargs, "socket_timeout": None}
        return node.connection_class(**kwargs), "SSUBSCRIBE", b"smessage"

    def _on_reply(self, reply: Any, kind: bytes) -> None:
        self._awaiting_reply = False
        if not isinstance(reply, list) or not reply:
            return
        head = reply[0]
        if head in (b"subscribe", b"ssubscribe"):
            # Messages published before now reached no one here: drop what they may
            # have outdated, before anyone sees the state "up".
            self._gap()
            self.state = "up"
            self._subscribed.set()
            return
        if head in (b"unsubscribe", b"sunsubscribe"):
            # The server dropped us (on a cluster: the channel's slot moved).
            raise ConnectionError("the server ended the subscription")
        if head != kind or len(reply) < 3:
            return
        try:
            doc = json.loads(reply[2])
            keys = doc["k"]
            if doc["i"] == self.instance or not isinstance(keys, list):
                return
        except (ValueError, KeyError, TypeError):
            return
        self.received += 1
        self.on_message([k for k in keys if isinstance(k, str)])

    def _gap(self) -> None:
        self.gaps += 1
        self.on_gap()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.state = "stopped"
