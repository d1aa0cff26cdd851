"""The JSON envelope a view is stored in, in Valkey, and how it is read back.

An envelope names what it holds (user, name, domain) and the generations and
server epoch it was computed under; a reader accepts it only if those are
current. The header is read without parsing the value, so an outdated
envelope costs no parse.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar
from uuid import UUID

from .failures import Failures
from .keys import Gens
from .stats import CacheStats
from .weights import NO_USAGE, Usage, WeighedLRU, json_weight

ENVELOPE_VERSION = 1

V = TypeVar("V")


def encode_envelope(
    user_id: UUID,
    name: str,
    domain: str,
    gens: Gens,
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
        gens: Gens,
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
    return Header(user, name, domain, Gens(*gens), epoch, end + 1, user_scope)


def decode_body(raw: bytes, header: Header, parse: Callable[[bytes], V]) -> V:
    """Parse the value after the header with ``parse``, or raise :class:`BadEnvelope`.

    ``parse`` validates (a pydantic ``model_validate_json``): its ``ValueError``
    becomes :class:`BadEnvelope`.
    """
    try:
        return parse(raw[header.body :])
    except ValueError as exc:
        raise BadEnvelope(str(exc)) from None


class Candidate(NamedTuple):
    """An envelope whose header names the user and name it was looked up for."""

    name: str
    raw: bytes
    header: Header


class Parsed(Generic[V]):
    """An envelope's bytes and its parsed view, weighed when first asked (``weights``)."""

    __slots__ = ("_body", "_view_weight", "raw", "value")

    def __init__(self, raw: bytes, value: V, body: int, view_weight: int | None = None) -> None:
        self.raw = raw
        self.value = value
        self._body = body
        self._view_weight = view_weight

    @property
    def view_weight(self) -> int:
        """The view's estimated memory, counted once from its JSON in the envelope."""
        if self._view_weight is None:
            self._view_weight = json_weight(self.raw, self._body)
        return self._view_weight

    @property
    def weight(self) -> int:
        """What the memo holds: the bytes, and the view (the memo may be all that keeps it)."""
        return len(self.raw) + self.view_weight


class EnvelopeReader(Generic[V]):
    """Checks the envelopes a lookup returned, and parses their values.

    The *parse memo* keeps, per ``(user, name)``, the last envelope's bytes and
    parsed value, so an envelope fetched again (after its L1 entry expired, or
    with L1 off) is not parsed again. It is not a cache tier: every read still
    fetches the envelope and checks its header; only identical bytes (compared
    in full) skip the parse. It holds at most ``memo_size`` envelopes weighing
    ``memo_maxbytes`` together (bytes and parsed view, see ``weights``); a
    heavier one is parsed each time.
    """

    def __init__(
        self,
        parse: Callable[[bytes], V],
        owner: Callable[[V], tuple[UUID, str]],
        *,
        memo_size: int,
        memo_maxbytes: int,
        failures: Failures,
        stats: CacheStats,
    ) -> None:
        self._parse = parse
        self._owner = owner
        self._memo: WeighedLRU[tuple[UUID, str], Parsed[V]] | None = (
            WeighedLRU(memo_size, memo_maxbytes) if memo_size > 0 and memo_maxbytes > 0 else None
        )
        self._failures = failures
        self._stats = stats

    def candidates(
        self, user_id: UUID, names: list[str], values: list[Any], user_domain: str | None
    ) -> list[Candidate]:
        """The envelopes whose header names this user, name and (if known) domain."""
        uid_text = str(user_id)
        out = []
        for name, raw in zip(names, values, strict=False):
            if raw is None:
                continue
            try:
                header = decode_header(raw)
            except BadEnvelope as exc:
                self._failures.reject("rejected a malformed cache envelope", exc)
                continue
            if header.user != uid_text or header.name != name:
                self._failures.reject("rejected a foreign cache envelope", ValueError(name))
                continue
            if user_domain is not None and header.domain != user_domain:
                self._stats.envelopes_outdated += 1  # the user moved domain
                continue
            out.append(Candidate(name, raw, header))
        return out

    def value(self, user_id: UUID, name: str, raw: bytes, header: Header) -> V | None:
        """The value of a current envelope; the same bytes are parsed once (memo)."""
        parsed = self.parse(user_id, name, raw, header)
        return None if parsed is None else parsed.value

    def parse(self, user_id: UUID, name: str, raw: bytes, header: Header) -> Parsed[V] | None:
        """The parsed envelope, from the memo if it holds these very bytes."""
        memo = self._memo
        key = (user_id, name)
        if memo is not None:
            seen = memo.get(key)
            if seen is not None and seen.raw == raw:
                return seen
        try:
            value = decode_body(raw, header, self._parse)
        except BadEnvelope as exc:
            self._failures.reject("rejected a malformed cache envelope", exc)
            return None
        if self._owner(value) != key:
            self._failures.reject("rejected a foreign cache envelope", ValueError(name))
            return None
        parsed = Parsed(raw, value, header.body)
        if memo is not None:
            memo.put(key, parsed)
        return parsed

    def remember(self, user_id: UUID, name: str, raw: bytes, value: V, view_weight: int) -> None:
        """An envelope this process wrote: its bytes will come back, no need to parse them."""
        if self._memo is not None:
            self._memo.put((user_id, name), Parsed(raw, value, 0, view_weight))

    def memo_usage(self) -> Usage:
        """The memo's weight and what its byte budget turned away."""
        return NO_USAGE if self._memo is None else self._memo.usage()
