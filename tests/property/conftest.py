"""The data set the hostile-input properties share (``harness``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import AppConfigFragmentRepository
from tests.support.data import add_policy, add_user
from tests.support.fragments import (
    domain_defaults_fragment,
    domain_fragment,
    public_fragment,
    user_fragment,
)
from tests.support.outbox import clear_outbox
from tests.support.scopes import ALL_SCOPES
from tests.support.valkey import WireRecorder, direct_client

from .hostile import MENU, POLICY_NAMES, REF_DOMAINS, THEME, WRITER_DOMAIN, IsolationHarness


@pytest_asyncio.fixture(loop_scope="session")
async def harness(engine: AsyncEngine, valkey_url: str) -> AsyncIterator[IsolationHarness]:
    for name in POLICY_NAMES:
        await add_policy(engine, name, ALL_SCOPES)
    refs = {domain: await add_user(engine, domain=domain) for domain in REF_DOMAINS}
    writer_uid = await add_user(engine, domain=WRITER_DOMAIN)
    db_only = AppConfigFragmentRepository(engine)
    items = [public_fragment(THEME, {"color": "grey", "ref": "public"})]
    for domain, uid in refs.items():
        items += [
            domain_fragment(domain, THEME, {"domain": domain}),
            domain_defaults_fragment(domain, THEME, {"defaults": domain}),
            user_fragment(uid, THEME, {"user": str(uid)}),
            user_fragment(uid, MENU, {"menu": domain}),
        ]
    items.append(user_fragment(writer_uid, THEME, {"initial": True}))
    created = await db_only.admin_bulk_create(items)
    assert not created.failures
    await clear_outbox(engine)
    recorder = WireRecorder()
    client = recorder.client(valkey_url, timeout=2.0)
    direct = direct_client(valkey_url)
    w = IsolationHarness(engine, valkey_url, recorder, client, direct, db_only, refs, writer_uid)
    # Prime Valkey once: the users' domains are known there, so any later fresh
    # process fills envelopes on its first miss.
    primer = w.cache()
    await w.warm(primer)
    await primer.aclose()
    try:
        yield w
    finally:
        await client.aclose()
        await direct.aclose()
