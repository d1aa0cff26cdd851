"""The envelopes a cache source stores in Valkey: a header line, then the view."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from appconfig_cache import AppConfigData
from appconfig_cache.tiered import keys as cache_keys
from appconfig_cache.tiered.commands import server_epoch_of


def split_envelope(raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(header, view)`` of an envelope."""
    head, _, body = raw.partition(b"\n")
    return json.loads(head), json.loads(body)


def join_envelope(header: dict[str, Any], view: dict[str, Any] | bytes) -> bytes:
    """An envelope from a header and a view (a dict, or JSON bytes kept as they are)."""
    compact = (",", ":")
    body = view if isinstance(view, bytes) else json.dumps(view, separators=compact).encode()
    return json.dumps(header, separators=compact).encode() + b"\n" + body


async def servable_envelope(valkey: Any, uid: UUID, name: str, domain: str) -> AppConfigData | None:
    """The view in Valkey's envelope if its generations match Valkey's current ones, else None.

    This is what any process with a fresh generation cache would serve.
    """
    raw = await valkey.get(cache_keys.merged_key(uid, name))
    if raw is None:
        return None
    header, view = split_envelope(raw)
    gen_keys = [
        cache_keys.PUBLIC_GEN,
        cache_keys.name_gen_key(name),
        cache_keys.domain_gen_key(domain),
        cache_keys.user_gen_key(uid),
    ]
    gens = [await valkey.get(key) for key in gen_keys]  # four slots on a cluster
    current = [None if g is None else int(g) for g in gens]
    if domain == "":
        current[2] = 0
    if header["g"] != current or header["u"] != str(uid) or header["n"] != name:
        return None
    if header["e"] != server_epoch_of(await _server_info(valkey)):
        return None
    return AppConfigData.model_validate(view)


async def _server_info(valkey: Any) -> Any:
    if hasattr(valkey, "get_nodes"):  # ValkeyCluster: the epoch covers every primary
        return await valkey.info("server", target_nodes=valkey.PRIMARIES)
    return await valkey.info("server")
