"""Every Valkey command the cache sends, one typed method each.

This is the only module that builds pipelines. Each method is one round trip
under the :class:`~appconfig_cache.tiered.remote.Remote` budget, and raises
what the call raises (a failure, or a reply of another shape); callers turn
that into a miss.

The server epoch rides along when it is due: ``INFO server`` in the same
pipeline on a standalone server; on a cluster, from every primary, in
parallel with the pipeline.

On a cluster, the client learns a failover (``MOVED``, a lost connection) and
then sends a slot's commands to another node. From then on the generations it
reads are the promoted replica's, which may lack the last bumps. So after every
call the client's set of primaries is compared with the one the epoch was read
from: if it changed, the epoch is forgotten and read again, and nothing
computed under the old one can match (see docs/reliability.rst).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from .broadcast import is_cluster
from .readings import Readings
from .remote import Remote


class BadReply(Exception):
    """Valkey answered something of another shape. Never leaves the cache source."""


class BumpReply(NamedTuple):
    """The generations after the ``INCR`` of each key, and how many replicas took them."""

    gens: list[int | None]
    replicas: int | None


class LookupReply(NamedTuple):
    """A lookup's ``MGET`` values, the user generation, and each generation asked for
    (read, or created at its base)."""

    values: list[Any]
    user_gen: int | None
    gens: list[int | None]


def _or_base(raw: Any, base: int) -> int | None:
    """The value a ``SET key base NX GET`` leaves: the old one, or ``base`` if absent."""
    return base if raw is None else as_int(raw)


def as_int(raw: Any) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def server_epoch_of(info: Any) -> int:
    """A 62-bit identity of the server(s) from ``INFO server``: one node's or a cluster's."""
    if isinstance(info, dict) and isinstance(info.get("run_id"), str):
        run_ids = [info["run_id"]]
    elif isinstance(info, dict):  # a cluster: {node: {... "run_id": ...}}
        run_ids = sorted(
            str(node.get("run_id")) for node in info.values() if isinstance(node, dict)
        )
    else:
        raise BadReply(f"unexpected INFO reply: {type(info).__name__}")
    if not run_ids:
        raise BadReply("INFO named no run_id")
    digest = hashlib.blake2b(",".join(run_ids).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


class Commands:
    """Typed Valkey round trips; the server epoch they read goes into ``readings``."""

    def __init__(self, client: Any, remote: Remote, readings: Readings, *, ttl: int) -> None:
        self.client = client
        self.remote = remote
        self.cluster = is_cluster(client)
        self._readings = readings
        self._ttl = ttl
        #: the cluster's primaries when the epoch was last read (None: standalone)
        self._epoch_primaries: frozenset[str] | None = None

    async def lookup(
        self,
        user_keys: list[str],
        user_gen: tuple[str, int | None],
        gens: dict[str, int],
        now: float,
        request: int,
    ) -> LookupReply:
        """``MGET`` of one user's keys (one slot), their user generation, and ``gens``.

        ``user_gen`` is the key and, to read *or create* it (``SET NX GET``), a base
        (None: read it with the ``MGET``). Each of ``gens`` is read or created at its
        base: a miss then has every generation its fill needs, read (or made) before
        the DB query, from this one round trip.
        """
        user_key, user_base = user_gen
        if user_base is None and not gens and self._readings.epoch(now) is not None:
            client = self.client
            values = await self._call(lambda: client.mget([*user_keys, user_key]))
            return LookupReply(values[:-1], as_int(values[-1]), [])

        def queue(pipe: Any) -> None:
            # execute_command: a cluster pipeline blocks .mget(), though one slot is legal
            if user_base is None:
                pipe.execute_command("MGET", *user_keys, user_key)
            else:
                pipe.execute_command("MGET", *user_keys)
                pipe.set(user_key, user_base, nx=True, get=True)
            for key, base in gens.items():
                pipe.set(key, base, nx=True, get=True)

        reply = await self._pipelined(queue, now, request)
        values, rest = reply[0], reply[1:]
        if not isinstance(values, list):
            raise BadReply(f"MGET answered {type(values).__name__}")
        if user_base is None:
            user_value = as_int(values[-1]) if values else None
            values = values[:-1]
        else:
            user_value = _or_base(rest[0], user_base)
            rest = rest[1:]
        created = [_or_base(raw, base) for raw, base in zip(rest, gens.values(), strict=True)]
        return LookupReply(values, user_value, created)

    async def read_gens(
        self,
        gen_keys: list[str],
        now: float,
        request: int,
        *,
        epoch: bool = False,
        bases: list[int] | None = None,
    ) -> list[int | None]:
        """The generations of ``gen_keys`` (None: absent); ``epoch``: read the epoch too;
        ``bases``: create absent ones at these (``SET NX GET``)."""

        def queue(pipe: Any) -> None:
            if bases is None:
                for key in gen_keys:
                    pipe.get(key)
            else:
                for key, base in zip(gen_keys, bases, strict=True):
                    pipe.set(key, base, nx=True, get=True)

        reply = await self._pipelined(queue, now, request, epoch=epoch)
        if bases is not None:
            return [_or_base(raw, base) for raw, base in zip(reply, bases, strict=True)]
        return [as_int(raw) for _key, raw in zip(gen_keys, reply, strict=True)]

    async def create_gens(self, bases: dict[str, int]) -> list[int | None]:
        """Create absent generations at their bases; the value of each afterwards."""

        def queue(pipe: Any) -> None:
            for key, base in bases.items():
                pipe.set(key, base, nx=True, get=True)

        reply = await self._call(self._run(queue))
        return [_or_base(raw, base) for base, raw in zip(bases.values(), reply, strict=True)]

    async def bump(
        self,
        bases: dict[str, int],
        *,
        publish: Sequence[Any] | None,
        wait_replicas: int,
        wait_ms: int,
    ) -> BumpReply:
        """``INCR`` each key (created at its base if absent), publish, then ``WAIT``."""

        def queue(pipe: Any) -> None:
            for key, base in bases.items():
                pipe.set(key, base, nx=True)
                pipe.incr(key)
            if publish is not None:
                pipe.execute_command(*publish)
            if wait_replicas:
                pipe.execute_command("WAIT", wait_replicas, wait_ms)

        # WAIT blocks up to wait_ms on the server: the budget must cover it.
        reply = await self._call(self._run(queue), extra_time=wait_ms / 1000)
        gens = [as_int(raw) for raw in reply[1 : 2 * len(bases) : 2]]
        if len(gens) != len(bases):
            raise BadReply(f"{len(reply)} replies to {len(bases)} bumps")
        return BumpReply(gens, int(reply[-1]) if wait_replicas else None)

    async def fill(self, sets: list[tuple[str, bytes]]) -> None:
        """``SET … EX ttl`` of each envelope."""

        def queue(pipe: Any) -> None:
            for key, payload in sets:
                pipe.set(key, payload, ex=self._ttl)

        await self._call(self._run(queue))

    async def read_listed(
        self, list_key: str, gen_key: str, base: int, now: float, request: int
    ) -> tuple[Any, int | None]:
        """A list cached under a generation, and that generation (created at ``base``:
        then None, as nothing cached can match a generation just created)."""

        def queue(pipe: Any) -> None:
            pipe.get(list_key)
            pipe.set(gen_key, base, nx=True, get=True)

        raw, raw_gen = await self._pipelined(queue, now, request)
        return raw, as_int(raw_gen)

    def _run(self, queue: Callable[[Any], None]) -> Callable[[], Any]:
        async def run() -> Any:
            pipe = self.client.pipeline(transaction=False)
            queue(pipe)
            return await pipe.execute()

        return run

    async def _pipelined(
        self, queue: Callable[[Any], None], now: float, request: int, *, epoch: bool = False
    ) -> list[Any]:
        """One round trip: the commands ``queue`` adds, plus the server epoch when it is due
        (or ``epoch``). Returns the replies of ``queue``'s commands."""
        epoch_due = epoch or self._readings.epoch(now) is None
        info_in_pipe = epoch_due and not self.cluster

        async def run() -> Any:
            pipe = self.client.pipeline(transaction=False)
            queue(pipe)
            if info_in_pipe:
                pipe.execute_command("INFO", "server")
            if not epoch_due or info_in_pipe:
                return await pipe.execute(), None
            return await asyncio.gather(pipe.execute(), self._cluster_info())

        if not epoch_due:
            reply, _ = await self._call(run)
            return list(reply)
        primaries = self._primaries()
        try:
            reply, cluster_info = await self.remote.call(run)
        finally:
            changed = primaries != self._primaries()
            if changed:  # the map moved while INFO was on its way: read it again
                self._readings.forget_epoch()
        info = reply[-1] if info_in_pipe else cluster_info
        if not changed:
            self._readings.put_epoch(server_epoch_of(info), now, request)
            self._epoch_primaries = primaries
        return list(reply[:-1] if info_in_pipe else reply)

    async def _call(self, run: Callable[[], Any], *, extra_time: float = 0.0) -> Any:
        """One call under the budget; then, on a cluster, the failover check."""
        try:
            return await self.remote.call(run, extra_time=extra_time)
        finally:
            if self.cluster and self._primaries() != self._epoch_primaries:
                self._readings.forget_epoch()

    def _primaries(self) -> frozenset[str] | None:
        """The names of the nodes the client takes for primaries now (None: standalone)."""
        if not self.cluster:
            return None
        return frozenset(node.name for node in self.client.get_primaries())

    async def _cluster_info(self) -> Any:
        return await self.client.info("server", target_nodes=self.client.PRIMARIES)
