"""Key layout, generation keys and the JSON envelope.

Every key starts with the fixed prefix ``app_config:``. A user's keys carry
``{<uuid>}``, a Valkey hash tag, so one ``MGET`` over them stays in one slot.
Config names are validated identifiers and user ids are canonical UUIDs, so
no input can name another entry's key or a glob.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from ..types import AppConfigData

PREFIX = "app_config:"
PUBLIC_GEN = PREFIX + "gen:public"
POLICIES_GEN = PREFIX + "gen:policies"
POLICY_NAMES = PREFIX + "policy_names"
#: the domain of a user who has no users row: no domain scope applies
NO_DOMAIN = ""
ENVELOPE_VERSION = 1


def merged_key(user_id: UUID, name: str) -> str:
    return f"{PREFIX}merged:{{{user_id}}}:{name}"


def user_gen_key(user_id: UUID) -> str:
    return f"{PREFIX}gen:user:{{{user_id}}}"


def user_domain_key(user_id: UUID) -> str:
    return f"{PREFIX}user_domain:{{{user_id}}}"


def domain_gen_key(domain: str) -> str:
    return f"{PREFIX}gen:domain:{domain}"


def name_gen_key(name: str) -> str:
    return f"{PREFIX}gen:name:{name}"


def encode_envelope(
    user_id: UUID, name: str, domain: str, gens: tuple[int, int, int, int], data_json: str
) -> bytes:
    """``{"v", "u", "n", "d", "g": [public, name, domain, user], "data"}`` as bytes.

    ``data_json`` is ``AppConfigData.model_dump_json()``, made once by the caller.
    """
    head = json.dumps(
        {"v": ENVELOPE_VERSION, "u": str(user_id), "n": name, "d": domain, "g": list(gens)},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return (head[:-1] + ',"data":' + data_json + "}").encode()


class BadEnvelope(Exception):
    """A payload that is not one of our envelopes. Never leaves the cache source."""


def decode_envelope(raw: bytes) -> tuple[str, str, str, list[Any], AppConfigData]:
    """Return ``(user, name, domain, gens, data)`` or raise :class:`BadEnvelope`."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("v") != ENVELOPE_VERSION:
            raise BadEnvelope("unknown envelope version")
        user, name, domain, gens = doc["u"], doc["n"], doc["d"], doc["g"]
        if not (
            isinstance(user, str)
            and isinstance(name, str)
            and isinstance(domain, str)
            and isinstance(gens, list)
            and len(gens) == 4
        ):
            raise BadEnvelope("malformed envelope header")
        data = AppConfigData.model_validate(doc["data"])
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise BadEnvelope(str(exc)) from None
    return user, name, domain, gens, data
