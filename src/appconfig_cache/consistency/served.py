"""What Valkey would serve now, the side ``check`` and the monitor set against the DB view.

A token names what a tier served (the L1 entry itself, the envelope's bytes), so a second
look can tell the very same entry from a replacement (:func:`same_token`).
"""

from __future__ import annotations

from typing import Any, NamedTuple
from uuid import UUID

from ..tiered import keys
from ..tiered.broadcast import is_cluster
from ..tiered.commands import server_epoch_of
from ..tiered.envelope import BadEnvelope, decode_header
from ..types import AppConfigData

TIERS = ("l1", "l2")


class ServedEnvelope(NamedTuple):
    """An envelope a cache source would accept now: its bytes and its view."""

    raw: bytes
    view: AppConfigData


async def served_envelope(client: Any, user_id: UUID, name: str) -> ServedEnvelope | None:
    """The envelope of ``(user_id, name)`` if a cache source would accept it now, else None.

    Its generations and the server epoch are read from Valkey after it (never from a
    local reading), so "current" here is at least as strict as on the read path.
    Valkey errors are raised.
    """
    merged, user_gen = keys.merged_key(user_id, name), keys.user_gen_key(user_id)
    # one slot: the user's keys share the hash tag
    raw, raw_user_gen, raw_domain = await client.execute_command(
        "MGET", merged, user_gen, keys.user_domain_key(user_id)
    )
    if raw is None:
        return None
    try:
        header = decode_header(raw)
    except BadEnvelope:
        return None
    if header.user != str(user_id) or header.name != name:
        return None
    if raw_domain is not None and raw_domain.decode() != header.domain:
        return None  # the user moved domain: the read path rejects it too
    shared = [keys.PUBLIC_GEN, keys.name_gen_key(name)]
    if header.domain != keys.NO_DOMAIN:
        shared.append(keys.domain_gen_key(header.domain))
    pipe = client.pipeline(transaction=False)
    for key in shared:
        pipe.get(key)
    values = await pipe.execute()
    if is_cluster(client):
        info = await client.info("server", target_nodes=client.PRIMARIES)
    else:
        info = await client.info("server")
    current = [_int(v) for v in values]
    domain_gen = current[2] if len(current) > 2 else 0
    expected = [header.gens.public, header.gens.name, header.gens.domain, header.gens.user]
    if [current[0], current[1], domain_gen, _int(raw_user_gen)] != expected:
        return None
    if server_epoch_of(info) != header.epoch:
        return None
    try:
        view = AppConfigData.model_validate_json(raw[header.body :])
    except ValueError:
        return None
    return ServedEnvelope(raw, view)


def _int(raw: Any) -> int | None:
    try:
        return None if raw is None else int(raw)
    except (TypeError, ValueError):
        return None


def same_token(a: object, b: object) -> bool:
    """The same L1 entry (identity) or the same envelope (equal bytes)."""
    if isinstance(a, bytes) and isinstance(b, bytes):
        return a == b
    return a is b
