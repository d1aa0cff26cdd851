"""Hostile input (I7): tampered and foreign envelopes in a user's merged key.

They are read as misses, counted (``envelopes_rejected``, or ``envelopes_outdated``
for a well-formed old one), and the read returns the DB-only repository's answer; the
read repairs Valkey.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from appconfig_cache.tiered import envelope
from appconfig_cache.tiered import keys as cache_keys
from tests.support.envelopes import join_envelope, split_envelope
from tests.support.scopes import USER

from .hostile import MENU, PROPERTY, THEME, IsolationHarness, valid_names

# -- 6. tampered and foreign envelopes ----------------------------------------------------

REJECTED, OUTDATED, EITHER = "rejected", "outdated", "either"


@dataclass
class Tamper:
    """A way to spoil the victim's envelope; ``make`` gets the genuine bytes and context."""

    label: str
    expect: str
    make: Callable[[bytes, dict[str, Any]], bytes]
    #: the user_domain key is spoiled instead of the envelope (no repair expected then)
    domain_value: bytes | None = None


def _with_head(**changes: Any) -> Callable[[bytes, dict[str, Any]], bytes]:
    def make(raw: bytes, _ctx: dict[str, Any]) -> bytes:
        head, body = split_envelope(raw)
        return join_envelope({**head, **changes}, body)

    return make


def _gens_changed(index: int, delta: int) -> Callable[[bytes, dict[str, Any]], bytes]:
    def make(raw: bytes, _ctx: dict[str, Any]) -> bytes:
        head, body = split_envelope(raw)
        gens = list(head["g"])
        gens[index] += delta
        return join_envelope({**head, "g": gens}, body)

    return make


def _with_head_delta(delta: int) -> Callable[[bytes, dict[str, Any]], bytes]:
    def make(raw: bytes, _ctx: dict[str, Any]) -> bytes:
        head, body = split_envelope(raw)
        return join_envelope({**head, "e": head["e"] ^ delta}, body)

    return make


def _body_user(other: UUID) -> Callable[[bytes, dict[str, Any]], bytes]:
    def make(raw: bytes, _ctx: dict[str, Any]) -> bytes:
        head, body = split_envelope(raw)
        return join_envelope(head, {**body, "user_id": str(other)})

    return make


def _foreign_envelope(other: UUID) -> Callable[[bytes, dict[str, Any]], bytes]:
    """A whole, current-looking envelope of another user (header and body agree)."""

    def make(raw: bytes, _ctx: dict[str, Any]) -> bytes:
        head, body = split_envelope(raw)
        return join_envelope({**head, "u": str(other)}, {**body, "user_id": str(other)})

    return make


def _flip_header(position: int, value: int) -> Callable[[bytes, dict[str, Any]], bytes]:
    def make(raw: bytes, _ctx: dict[str, Any]) -> bytes:
        end = raw.index(b"\n")
        at = position % (end + 1)  # anywhere in the header, its newline included
        new = value if value != raw[at] else (value + 1) % 256
        return raw[:at] + bytes([new]) + raw[at + 1 :]

    return make


def _truncate(fraction: float) -> Callable[[bytes, dict[str, Any]], bytes]:
    return lambda raw, _ctx: raw[: int(len(raw) * fraction)]


def _from_ctx(key: str) -> Callable[[bytes, dict[str, Any]], bytes]:
    return lambda _raw, ctx: ctx[key]


tampers = st.one_of(
    st.binary(max_size=300).map(lambda b: Tamper("random bytes", REJECTED, lambda _r, _c: b)),
    st.uuids().map(lambda u: Tamper("header names another user", REJECTED, _with_head(u=str(u)))),
    valid_names.filter(lambda n: n != THEME).map(
        lambda n: Tamper("header names another name", REJECTED, _with_head(n=n))
    ),
    st.uuids().map(lambda u: Tamper("body names another user", REJECTED, _body_user(u))),
    st.uuids().map(lambda u: Tamper("another user's envelope", REJECTED, _foreign_envelope(u))),
    st.just(Tamper("reference user's real envelope", REJECTED, _from_ctx("other_user"))),
    st.just(Tamper("own envelope of another name", REJECTED, _from_ctx("other_name"))),
    st.just(Tamper("own envelope, outdated", OUTDATED, _from_ctx("old"))),
    st.tuples(st.integers(0, 3), st.integers(-3, 3).filter(bool)).map(
        lambda t: Tamper("generations changed", OUTDATED, _gens_changed(*t))
    ),
    st.integers(1, 2**40).map(lambda e: Tamper("epoch changed", OUTDATED, _with_head_delta(e))),
    st.sampled_from(["ref:x", "ref*", "other"]).map(
        lambda d: Tamper("header names another domain", OUTDATED, _with_head(d=d))
    ),
    st.sampled_from([0, 2, "1", None]).map(
        lambda v: Tamper("unknown version", REJECTED, _with_head(v=v))
    ),
    st.sampled_from([[1, 2, 3], "g", None, [1, 2, 3, 4, 5]]).map(
        lambda g: Tamper("malformed generations", REJECTED, _with_head(g=g))
    ),
    st.floats(0.0, 0.99).map(lambda f: Tamper("truncated", REJECTED, _truncate(f))),
    st.tuples(st.integers(0, 10_000), st.integers(0, 255)).map(
        lambda t: Tamper("header byte flipped", EITHER, _flip_header(*t))
    ),
    st.sampled_from([b"ref:x", b"ref*", b"\xff\xfe", b"", b"other"]).map(
        lambda d: Tamper("user_domain names another domain", EITHER, lambda r, _c: r, d)
    ),
)


def _same_checked_fields(genuine: bytes, spoiled: bytes) -> bool:
    try:
        a, b = envelope.decode_header(genuine), envelope.decode_header(spoiled)
    except envelope.BadEnvelope:
        return False
    fields = ("user", "name", "domain", "gens", "epoch", "body")
    return all(getattr(a, f) == getattr(b, f) for f in fields) and (
        genuine[a.body :] == spoiled[b.body :]
    )


@PROPERTY
@given(tamper=tampers)
async def test_tampered_envelopes_are_counted_misses(
    harness: IsolationHarness, tamper: Tamper
) -> None:
    w = harness
    victim, other = w.refs["ref"], w.refs["ref:x"]
    merged = cache_keys.merged_key(victim, THEME)
    writer = w.cache()
    try:
        # Current envelopes for the victim's theme and menu and another user's theme.
        wrepo = w.repo(writer)
        for uid, name in ((victim, THEME), (victim, MENU), (other, THEME)):
            await wrepo.app_config(uid, name)
        await writer.drain()
        genuine = await w.direct.get(merged)
        assert genuine is not None and genuine.startswith(b'{"v":1,')
        ctx: dict[str, Any] = {
            "other_user": await w.direct.get(cache_keys.merged_key(other, THEME)),
            "other_name": await w.direct.get(cache_keys.merged_key(victim, MENU)),
        }
        if tamper.label == "own envelope, outdated":
            await writer.invalidate_for_scope(USER, str(victim))
            ctx["old"] = genuine
        assert ctx["other_user"] is not None and ctx["other_name"] is not None
        harmless = False
        if tamper.domain_value is not None:
            await w.direct.set(cache_keys.user_domain_key(victim), tamper.domain_value)
        else:
            spoiled = tamper.make(genuine, ctx)
            # A flip inside the optional "c" member (say, its key) can leave every
            # field that is checked as it was: then the envelope is still current.
            harmless = tamper.expect == EITHER and _same_checked_fields(genuine, spoiled)
            await w.direct.set(merged, spoiled)

        view, stats = await w.fresh_read(victim, THEME)
        assert view == await w.db_only.app_config(victim, THEME)
        if harmless:
            assert stats.l2_hits == 1 and stats.db_loads == 0, (tamper.label, stats)
            return
        # Loaded from the DB in full, or recomposed (an outdated envelope whose user
        # generation holds) from the shared part; a recomposition that finds it cannot
        # be done (a flipped chain flag) falls back to the full load.
        full_loads = stats.db_loads - stats.shared_loads
        assert stats.l2_hits == 0 and full_loads + stats.recomposed == 1, (tamper.label, stats)
        counted = (stats.envelopes_rejected, stats.envelopes_outdated)
        if tamper.expect == REJECTED:
            assert counted == (1, 0), (tamper.label, stats)
        elif tamper.expect == OUTDATED:
            assert counted == (0, 1), (tamper.label, stats)
        else:
            assert sum(counted) == 1, (tamper.label, stats)
        assert stats.valkey_errors == 0

        if tamper.domain_value is None:
            # The read repaired Valkey: the next fresh process hits a current envelope.
            again, again_stats = await w.fresh_read(victim, THEME)
            assert again == view
            assert again_stats.l2_hits == 1, (tamper.label, again_stats)
        else:
            # Put the truth back for the next example.
            await w.direct.set(cache_keys.user_domain_key(victim), b"ref")
    finally:
        await writer.aclose()
