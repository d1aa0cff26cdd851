"""Key layout, generation keys and the JSON envelope.

Every key starts with the fixed prefix ``app_config:``. A user's keys carry
``{<uuid>}``, a Valkey hash tag, so one ``MGET`` over them stays in one slot.
Config names are validated identifiers and user ids are canonical UUIDs, so
no input can name another entry's key or a glob.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from ..types import AppConfigData

PREFIX = "app_config:"
PUBLIC_GEN = PREFIX + "gen:public"
POLICIES_GEN = PREFIX + "gen:policies"
POLICY_NAMES = PREFIX + "policy_names"
#: a pseudo generation in the local cache (never stored): the server's identity
EPOCH = PREFIX + "epoch"
#: the domain of a user who has no users row: no domain scope applies
NO_DOMAIN = ""
ENVELOPE_VERSION = 1


def merged_key(user_id: UUID, name: str) -> str:
    return f"{PREFIX}merged:{{{user_id}}}:{name}"


#: every user generation key starts with this (the others are few and shared)
USER_GEN_PREFIX = PREFIX + "gen:user:"


def user_gen_key(user_id: UUID) -> str:
    return f"{USER_GEN_PREFIX}{{{user_id}}}"


def user_domain_key(user_id: UUID) -> str:
    return f"{PREFIX}user_domain:{{{user_id}}}"


def domain_gen_key(domain: str) -> str:
    return f"{PREFIX}gen:domain:{domain}"


def name_gen_key(name: str) -> str:
    return f"{PREFIX}gen:name:{name}"


def encode_envelope(
    user_id: UUID,
    name: str,
    domain: str,
    gens: tuple[int, int, int, int],
    epoch: int,
    data_json: bytes,
    user_scope: bool | None = None,
) -> bytes:
    """A header line, then the view: two compact JSON documents.

    ``{"v": 1, "u": user, "n": name, "d": domain, "g": [public, name, domain, user],
    "e": epoch}``, a newline, then ``AppConfigData`` as JSON (made once by the
    caller, as bytes). Compact JSON never holds a raw newline, so the header is read, and
    an outdated envelope rejected, without parsing the view. ``e`` is the
    server's identity (from its ``run_id``): a restart, a restore or a failover
    changes it, and no envelope from before can match again. ``c`` (optional)
    says whether the policy chain the view was merged under had the user
    scope: then the view's fragments tell the user's own fragment, or its
    absence, and an outdated envelope whose user generation still holds can be
    recomposed with fresh shared fragments instead of a per-user query.
    """
    doc: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "u": str(user_id),
        "n": name,
        "d": domain,
        "g": list(gens),
        "e": epoch,
    }
    if user_scope is not None:
        doc["c"] = int(user_scope)
    head = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return head.encode() + b"\n" + data_json


class BadEnvelope(Exception):
    """A payload that is not one of our envelopes. Never leaves the cache source."""


class Header:
    """An envelope's header; ``body`` is where the view's JSON starts."""

    __slots__ = ("body", "domain", "epoch", "gens", "name", "user", "user_scope")

    def __init__(
        self,
        user: str,
        name: str,
        domain: str,
        gens: list[Any],
        epoch: int,
        body: int,
        user_scope: bool | None = None,
    ) -> None:
        self.user = user
        self.name = name
        self.domain = domain
        self.gens = gens
        self.epoch = epoch
        self.body = body
        #: did the view's chain have the user scope (None: not said)
        self.user_scope = user_scope


def decode_header(raw: bytes) -> Header:
    """Read the header line of an envelope, or raise :class:`BadEnvelope`."""
    end = raw.find(b"\n")
    if end < 0:
        raise BadEnvelope("no header line")
    try:
        doc = json.loads(raw[:end])
    except ValueError as exc:
        raise BadEnvelope(str(exc)) from None
    if not isinstance(doc, dict) or doc.get("v") != ENVELOPE_VERSION:
        raise BadEnvelope("unknown envelope version")
    user, name, domain, gens = doc.get("u"), doc.get("n"), doc.get("d"), doc.get("g")
    epoch = doc.get("e")
    if not (
        isinstance(user, str)
        and isinstance(name, str)
        and isinstance(domain, str)
        and isinstance(gens, list)
        and len(gens) == 4
        and isinstance(epoch, int)
    ):
        raise BadEnvelope("malformed envelope header")
    flag = doc.get("c")
    user_scope = bool(flag) if type(flag) is int and flag in (0, 1) else None
    return Header(user, name, domain, gens, epoch, end + 1, user_scope)


def epoch_of(info: Any) -> int:
    """A 62-bit identity of the server(s) from ``INFO server``: one node's or a cluster's."""
    if isinstance(info, dict) and isinstance(info.get("run_id"), str):
        run_ids = [info["run_id"]]
    elif isinstance(info, dict):  # a cluster: {node: {... "run_id": ...}}
        run_ids = sorted(
            str(node.get("run_id")) for node in info.values() if isinstance(node, dict)
        )
    else:
        raise BadEnvelope(f"unexpected INFO reply: {type(info).__name__}")
    if not run_ids:
        raise BadEnvelope("INFO named no run_id")
    digest = hashlib.blake2b(",".join(run_ids).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


def decode_body(raw: bytes, header: Header) -> AppConfigData:
    """Parse and validate the view after the header, or raise :class:`BadEnvelope`."""
    try:
        return AppConfigData.model_validate_json(raw[header.body :])
    except ValidationError as exc:
        raise BadEnvelope(str(exc)) from None
