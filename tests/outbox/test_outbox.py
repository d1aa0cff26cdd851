"""I10: every committed change reaches Valkey through the outbox, whoever made it.

Each reader is a cache source with its own client, L1 and clock (another
process, as far as the cache can tell). Replayers are driven explicitly
(``replay_outbox(grace=0)``), never by waiting for their poll.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigError,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    create_schema,
)
from appconfig_cache.tiered import keys
from tests.support.data import add_policy, add_users
from tests.support.fragments import (
    domain_fragment,
    fragment_key,
    my_fragment,
    public_fragment,
    user_fragment,
)
from tests.support.outbox import ReaderFactory, add_outbox_rows, outbox_rows, sql
from tests.support.polling import wait_for
from tests.support.scopes import DOMAIN, PUBLIC, USER
from tests.support.valkey import direct_client

NAME = "theme"


async def _seed(engine: AsyncEngine) -> uuid.UUID:
    """A user of d1 reading ``theme`` (public + domain + user scopes), an empty outbox."""
    uid = uuid.uuid4()
    await add_policy(engine, NAME, [PUBLIC, DOMAIN, USER])
    await add_users(engine, {uid: "d1"})
    admin = AppConfigFragmentRepository(engine)
    done = await admin.admin_bulk_create(
        [
            public_fragment(NAME, {"a": 0}),
            domain_fragment("d1", NAME, {"color": "red"}),
            domain_fragment("d2", NAME, {"color": "blue"}),
        ]
    )
    assert not done.failures
    await sql(engine, "DELETE FROM app_config_outbox")
    return uid


#: changes made with plain SQL, no library call: (statement, what the outbox must name)
CHANGES = {
    "insert": (
        "INSERT INTO app_config_fragments (id, scope_type, scope_id, name, config) "
        "VALUES (gen_random_uuid(), 'user', :uid, 'theme', '{\"own\": 1}')",
        [("user", "{uid}")],
    ),
    "update": (
        'UPDATE app_config_fragments SET config = \'{"color": "green"}\' '
        "WHERE scope_type = 'domain' AND scope_id = 'd1'",
        [("domain", "d1")],
    ),
    "delete": (
        "DELETE FROM app_config_fragments WHERE scope_type = 'public'",
        [("name", "theme")],
    ),
    "policy": (
        "UPDATE app_config_policies SET scope_sources = ARRAY['public', 'user'] "
        "WHERE config_name = 'theme'",
        [("policy", "theme")],
    ),
    "user-moved": ("UPDATE users SET domain_name = 'd2' WHERE uuid = :uid", [("user", "{uid}")]),
    "user-deleted": ("DELETE FROM users WHERE uuid = :uid", [("user", "{uid}")]),
}


@pytest.mark.parametrize("change", list(CHANGES))
async def test_a_plain_sql_change_reaches_cached_readers(
    engine: AsyncEngine, make_reader: ReaderFactory, change: str
) -> None:
    uid = await _seed(engine)
    oracle = AppConfigFragmentRepository(engine)
    reader, replayer = await make_reader(), await make_reader()
    before = await reader.read_until_cached(uid, NAME)

    statement, named = CHANGES[change]
    await sql(engine, statement, uid=str(uid))
    want = await oracle.app_config(uid, NAME)
    assert want != before
    assert await outbox_rows(engine) == [(k, i.format(uid=uid)) for k, i in named]
    # Nothing has told Valkey yet: a fresh cache source still gets the old view.
    unaware = await make_reader()
    assert await unaware.repo.app_config(uid, NAME) == before

    assert await replayer.cache.replay_outbox(grace=0) == len(named)
    assert replayer.cache.stats.outbox_replayed == len(named)
    assert await outbox_rows(engine) == []
    reader.expire_l1()
    assert await reader.repo.app_config(uid, NAME) == want
    fresh = await make_reader()
    assert await fresh.repo.app_config(uid, NAME) == want


async def test_a_bulk_sql_update_adds_one_row_per_scope(engine: AsyncEngine) -> None:
    await add_policy(engine, NAME, [PUBLIC, DOMAIN, USER])
    users = {uuid.uuid4(): "d1" for _ in range(50)}
    await add_users(engine, users)
    await AppConfigFragmentRepository(engine).admin_bulk_create(
        [user_fragment(uid, NAME, {"v": 0}) for uid in users]
        + [domain_fragment("d1", NAME, {"v": 0})]
    )
    await sql(engine, "DELETE FROM app_config_outbox")
    await sql(engine, "UPDATE app_config_fragments SET config = '{\"v\": 1}'")
    rows = await outbox_rows(engine)
    assert sorted(rows) == sorted([("user", str(u)) for u in users] + [("domain", "d1")])
    # The users table: only a change of domain (or id) is recorded, not any update.
    await sql(engine, "UPDATE users SET domain_name = domain_name")
    assert len(await outbox_rows(engine)) == len(rows)


async def test_a_refused_write_leaves_no_outbox_row(engine: AsyncEngine) -> None:
    uid = await _seed(engine)
    # A plain SQL insert the foreign key refuses: neither the fragment nor a row.
    with pytest.raises(IntegrityError):
        await sql(
            engine,
            "INSERT INTO app_config_fragments (id, scope_type, scope_id, name, config) "
            "VALUES (gen_random_uuid(), 'user', :uid, 'no_policy', '{}')",
            uid=str(uid),
        )
    repo = AppConfigFragmentRepository(engine)
    # Invalid input: refused before any I/O.
    with pytest.raises(AppConfigError):
        await repo.app_config(uid, "bad name!")
    result = await repo.bulk_create_my(uid, [my_fragment("bad name!", {})])
    assert [f.code for f in result.failures] == ["invalid_name"]
    # An item that fails in the DB (the key exists) beside one that commits.
    result = await repo.admin_bulk_create(
        [domain_fragment("d1", NAME, {"x": 1}), user_fragment(uid, NAME, {"own": 2})]
    )
    assert [f.index for f in result.failures] == [0]
    assert await outbox_rows(engine) == [("user", str(uid))]
    updated = await repo.admin_bulk_update([domain_fragment("nowhere", NAME, {"x": 1})])
    assert [f.code for f in updated.failures] == ["not_found"]
    assert await outbox_rows(engine) == [("user", str(uid))]


async def test_writes_through_the_library_leave_the_outbox_empty(
    engine: AsyncEngine, make_reader: ReaderFactory
) -> None:
    uid = await _seed(engine)
    writer = await make_reader()
    policies = AppConfigPolicyRepository(engine, cache_source=writer.cache)
    await writer.repo.bulk_create_my(uid, [my_fragment(NAME, {"n": 0})])
    for n in range(1, 151):
        if n % 3 == 0:
            done = await writer.repo.admin_bulk_update([domain_fragment("d1", NAME, {"n": n})])
        else:
            done = await writer.repo.bulk_update_my(uid, [my_fragment(NAME, {"n": n})])
        assert not done.failures
        if n % 50 == 0:
            await policies.update(NAME, [PUBLIC, DOMAIN, USER])
    await writer.cache.drain()  # the deletes run after the bumps, off the write's latency
    assert await outbox_rows(engine) == []
    stats = writer.cache.stats
    assert stats.outbox_double_bumps == 0 and stats.outbox_errors == 0
    assert stats.pending_bumps == 0


async def test_rows_younger_than_the_grace_are_left_to_their_writer(
    engine: AsyncEngine, make_reader: ReaderFactory
) -> None:
    await add_outbox_rows(engine, [("domain", "d1")])
    replayer = await make_reader()
    assert await replayer.cache.replay_outbox(grace=3600) == 0
    assert await outbox_rows(engine) == [("domain", "d1")]
    assert await replayer.cache.replay_outbox(grace=0) == 1


async def test_rows_no_view_depends_on_are_dropped(
    engine: AsyncEngine, make_reader: ReaderFactory, valkey_url: str
) -> None:
    await add_outbox_rows(
        engine, [("user", "not-a-uuid"), ("name", "bad name!"), ("spam", "x"), ("domain", "d 1")]
    )
    replayer = await make_reader()
    assert await replayer.cache.replay_outbox(grace=0) == 4
    direct = direct_client(valkey_url)
    try:
        assert await direct.exists(keys.domain_gen_key("d 1")) == 1
        assert await direct.exists(keys.name_gen_key("bad name!")) == 0
    finally:
        await direct.aclose()


async def test_two_replayers_share_a_backlog(
    engine: AsyncEngine, make_reader: ReaderFactory, valkey_url: str
) -> None:
    """Several batches each; the 10,000-row race of two processes is in tests/faults."""
    users = [uuid.uuid4() for _ in range(1_800)]
    domains = [f"d{i}" for i in range(200)]
    await add_outbox_rows(
        engine, [("user", str(u)) for u in users] + [("domain", d) for d in domains]
    )
    first, second = await make_reader(), await make_reader()
    done = await asyncio.gather(
        first.cache.replay_outbox(grace=0), second.cache.replay_outbox(grace=0)
    )
    assert sum(done) == 2_000
    assert await outbox_rows(engine) == []
    for reader in (first, second):
        assert reader.cache.stats.outbox_errors == 0
        assert reader.cache.stats.pending_bumps == 0
    direct = direct_client(valkey_url)
    try:
        gen_keys = [keys.user_gen_key(u) for u in users] + [keys.domain_gen_key(d) for d in domains]
        applied = 0
        for start in range(0, len(gen_keys), 1000):
            applied += await direct.exists(*gen_keys[start : start + 1000])
        assert applied == 2_000  # every row bumped its generation at least once
    finally:
        await direct.aclose()


async def test_create_schema_is_idempotent_and_upgrades_an_earlier_database(
    engine: AsyncEngine,
) -> None:
    async def triggers() -> set[str]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text("SELECT tgname FROM pg_trigger WHERE tgname LIKE '%outbox%'")
            )
            return {name for (name,) in rows}

    # A database made by an earlier version: the three tables, no outbox, no trigger.
    async with engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE app_config_outbox"))
        for table, name in [
            ("users", "users_outbox_change"),
            ("users", "users_outbox_insert_delete"),
            *[
                (t, f"{t}_outbox_{op}")
                for t in ("app_config_fragments", "app_config_policies")
                for op in ("insert", "update", "delete")
            ],
        ]:
            await conn.execute(sa.text(f"DROP TRIGGER {name} ON {table}"))
    assert await triggers() == set()
    await create_schema(engine)
    installed = await triggers()
    assert len(installed) == 8
    await create_schema(engine)  # again: nothing changes, nothing fails
    assert await triggers() == installed
    await add_policy(engine, NAME, [PUBLIC])
    assert await outbox_rows(engine) == [("policy", NAME)]


def test_the_fragment_trigger_names_what_the_library_invalidates() -> None:
    """The trigger's mapping and targets_of agree: public -> the name, else the scope."""
    from appconfig_cache.repositories.app_config_fragment.cache_source.invalidation import (
        targets_of,
    )

    uid = uuid.uuid4()
    assert targets_of(
        [
            fragment_key(PUBLIC, "public", NAME),
            fragment_key(DOMAIN, "d1", NAME),
            fragment_key(USER, str(uid), NAME),
        ]
    ) == [("name", NAME), ("domain", "d1"), ("user", str(uid))]


async def test_the_replayer_polls_in_the_background(
    engine: AsyncEngine, make_reader: ReaderFactory
) -> None:
    await add_outbox_rows(engine, [("domain", "d1"), ("policy", NAME)])
    replayer = await make_reader(outbox_interval=0.01, outbox_grace=0.0)
    await replayer.cache.start()
    await wait_for(lambda: replayer.cache.stats.outbox_replayed == 2, what="the poll loop")
    assert await outbox_rows(engine) == []


async def test_without_the_outbox_table_a_write_fails_whole(engine: AsyncEngine) -> None:
    uid = await _seed(engine)
    repo = AppConfigFragmentRepository(engine)
    try:
        await sql(engine, "DROP TABLE app_config_outbox")
        result = await repo.bulk_create_my(uid, [my_fragment(NAME, {"own": 1})])
        assert [f.code for f in result.failures] == ["storage_error"]
        assert (await repo.app_config(uid, NAME)).config == {"a": 0, "color": "red"}
    finally:
        await create_schema(engine)
    assert await outbox_rows(engine) == []
    result = await repo.bulk_create_my(uid, [my_fragment(NAME, {"own": 1})])
    assert not result.failures
    assert await outbox_rows(engine) == [("user", str(uid))]
