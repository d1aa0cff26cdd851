"""Seeing what a cache source sends to Valkey.

- :class:`CountingValkey` wraps a client (``Valkey`` or ``ValkeyCluster``) at its API:
  every awaited command, and every pipeline ``execute``, is one :class:`Call` (one round
  trip). Gates (``before`` / ``after``) can park or fail a call.
- :class:`WireRecorder` makes clients whose connections record every command packed for
  the wire, connection set-up (``HELLO``, ``SELECT``) included.
- :func:`commandstats` and :func:`commandstats_delta`: what reached the server, from its
  ``INFO commandstats``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import valkey.asyncio as valkey_asyncio

#: awaitable client methods that are not commands of the cache's traffic
NOT_ROUND_TRIPS = frozenset({"aclose", "close", "initialize"})

#: where the keys of each command a cache source may send are
_KEYS_OF: dict[str, Callable[[tuple[Any, ...]], list[Any]]] = {
    "get": lambda args: [args[0]],
    "set": lambda args: [args[0]],
    "incr": lambda args: [args[0]],
    "mget": lambda args: list(args[0]) if isinstance(args[0], list | tuple) else list(args),
    "ping": lambda args: [],
    "info": lambda args: [],  # the server epoch (run_id)
    "wait": lambda args: [],
    "publish": lambda args: [],
    "spublish": lambda args: [args[0]],  # the shard channel is hashed like a key
}


class Command(NamedTuple):
    """One command: its lower-case name and its arguments."""

    name: str
    args: tuple[Any, ...]

    @property
    def keys(self) -> list[Any]:
        keys_of = _KEYS_OF.get(self.name)
        if keys_of is None:
            raise AssertionError(f"the cache sent {self.name!r}: teach _KEYS_OF where its keys are")
        return keys_of(self.args)


def _command(method: str, args: tuple[Any, ...]) -> Command:
    if method == "execute_command":  # a raw command: ("MGET", key, key, ...)
        return Command(str(args[0]).lower(), tuple(args[1:]))
    return Command(method, tuple(args))


@dataclass(frozen=True)
class Call:
    """One round trip: a command awaited on the client (``call``) or a ``pipeline``."""

    kind: str
    commands: tuple[Command, ...]

    @property
    def names(self) -> list[str]:
        return [command.name for command in self.commands]

    @property
    def shape(self) -> tuple[str, tuple[str, ...]]:
        return self.kind, tuple(self.names)

    @property
    def label(self) -> str:
        """``get`` for a call, ``pipeline[get,set]`` for a pipeline."""
        if self.kind == "pipeline":
            return f"pipeline[{','.join(self.names)}]"
        return self.names[0]

    def has(self, command: str) -> bool:
        return command in self.names

    def keys(self, command: str) -> list[Any]:
        """The keys of this call's ``command`` commands."""
        return [key for c in self.commands if c.name == command for key in c.keys]


Gate = Callable[[Call], Awaitable[None]]


class CountingValkey:
    """A proxy of a Valkey client: every awaited call is one counted round trip.

    ``before`` / ``after`` are optional async gates run around each round trip (``after``
    sees the reply already read from the socket but not yet handed to the caller).
    """

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[Call] = []
        self.before: Gate | None = None
        self.after: Gate | None = None

    @property
    def round_trips(self) -> int:
        return len(self.calls)

    @property
    def data_round_trips(self) -> int:
        """Round trips other than ``PING`` (the breaker's health probe)."""
        return sum(1 for call in self.calls if call.names != ["ping"])

    def reset(self) -> None:
        self.calls.clear()

    def take(self) -> list[Call]:
        """The calls so far; the list starts again empty."""
        calls, self.calls = self.calls, []
        return calls

    def commands(self, name: str) -> list[Any]:
        """Keys of every ``name`` command sent so far (``incr``, ``mget``, ``set`` ...)."""
        return [key for call in self.calls for key in call.keys(name)]

    async def _round_trip(self, call: Call, reply: Awaitable[Any]) -> Any:
        self.calls.append(call)
        if self.before is not None:
            try:
                await self.before(call)
            except BaseException:
                if inspect.iscoroutine(reply):
                    reply.close()  # never sent
                raise
        result = await reply
        if self.after is not None:
            await self.after(call)
        return result

    def pipeline(self, *args: Any, **kwargs: Any) -> _CountingPipeline:
        return _CountingPipeline(self, self.real.pipeline(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if not callable(attr) or name.startswith("_") or name in NOT_ROUND_TRIPS:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            reply = attr(*args, **kwargs)
            if not inspect.isawaitable(reply):
                return reply  # keyslot(), get_node_from_key(), pubsub() ...
            return self._round_trip(Call("call", (_command(name, args),)), reply)

        return call


class _CountingPipeline:
    def __init__(self, owner: CountingValkey, real: Any) -> None:
        self._owner = owner
        self._real = real
        self._commands: list[Command] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if not callable(attr):
            return attr

        def queue(*args: Any, **kwargs: Any) -> _CountingPipeline:
            self._commands.append(_command(name, args))
            attr(*args, **kwargs)
            return self

        return queue

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        call = Call("pipeline", tuple(self._commands))
        self._commands = []
        return await self._owner._round_trip(call, self._real.execute(*args, **kwargs))


class PauseAt:
    """A gate that parks the first matching round trip until ``release()``."""

    def __init__(self, match: Callable[[Call], bool]) -> None:
        self.match = match
        self.reached = asyncio.Event()
        self._go = asyncio.Event()
        self.armed = True

    async def __call__(self, call: Call) -> None:
        if self.armed and self.match(call):
            self.armed = False
            self.reached.set()
            await self._go.wait()

    def release(self) -> None:
        self._go.set()


class RaiseOnCall:
    """A gate that fails every round trip but ``PING`` (the health probe) with ``make()``."""

    def __init__(self, make: Callable[[], BaseException]) -> None:
        self.make = make
        self.raised = 0

    async def __call__(self, call: Call) -> None:
        if call.names != ["ping"]:
            self.raised += 1
            raise self.make()


# -- the wire ---------------------------------------------------------------------------


class WireRecorder:
    """Every command its clients packed for the wire, as ``(NAME, arg, ...)`` strings."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, ...]] = []

    def reset(self) -> None:
        self.commands.clear()

    def names(self) -> list[str]:
        return [command[0] for command in self.commands]

    def of(self, name: str) -> list[tuple[str, ...]]:
        return [command for command in self.commands if command[0] == name]

    def client(self, url: str, *, timeout: float) -> valkey_asyncio.Valkey:
        """A client whose connections record here (``timeout``: socket and connect)."""
        recorder = self

        class RecordingConnection(valkey_asyncio.Connection):
            def pack_command(self, *args: Any) -> Any:
                recorder.commands.append(tuple(_text(a) for a in args))
                return super().pack_command(*args)

        return valkey_asyncio.Valkey.from_url(
            url,
            connection_class=RecordingConnection,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )


def _text(arg: Any) -> str:
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)


def direct_client(url: str, timeout: float = 2.0) -> valkey_asyncio.Valkey:
    """An unwrapped client for the test's own look-ups (nothing counts or records it)."""
    return valkey_asyncio.Valkey.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout
    )


# -- INFO commandstats -------------------------------------------------------------------


async def commandstats(client: Any) -> dict[str, int]:
    """``INFO commandstats`` as ``{command: calls}`` (lower-case command names), summed
    over every primary on a cluster."""
    if hasattr(client, "get_nodes"):  # ValkeyCluster: one reply per node
        replies = await client.info("commandstats", target_nodes=client.PRIMARIES)
        infos = list(replies.values())
    else:
        infos = [await client.info("commandstats")]
    out: dict[str, int] = {}
    for info in infos:
        for key, value in info.items():
            name = key.removeprefix("cmdstat_")
            out[name] = out.get(name, 0) + (int(value["calls"]) if isinstance(value, dict) else 0)
    return out


def commandstats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands run between two :func:`commandstats` snapshots, INFO itself left out."""
    names = set(before) | set(after)
    delta = {n: after.get(n, 0) - before.get(n, 0) for n in names if n != "info"}
    return {n: d for n, d in delta.items() if d}


def incr_calls(delta: dict[str, int]) -> int:
    """INCR commands in a :func:`commandstats_delta` (Valkey 8+ files INCR under ``incrby``)."""
    return delta.get("incr", 0) + delta.get("incrby", 0)
