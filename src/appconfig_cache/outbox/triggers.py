"""The triggers that write the outbox, in the same transaction as the change.

Fragments and policies: one statement-level trigger per operation, reading the
transition tables, so an ``UPDATE`` of 10,000 rows by a migration adds one
outbox row per distinct scope, not 10,000. Users: a row-level trigger that
fires only when a row appears or goes, or its ``uuid`` or ``domain_name``
changes (every view of a user depends on the domain); the manager's other
updates of its users table cost a ``WHEN`` test and nothing else.

What a row names mirrors ``cache_source.invalidation.targets_of``: a public
fragment outdates its name's views (``name``), any other its scope.
Installed idempotently (``CREATE OR REPLACE`` functions, triggers dropped and
created again) by :func:`appconfig_cache.create_schema`.
"""

from __future__ import annotations

_FRAGMENT_TARGET = (
    "SELECT DISTINCT CASE WHEN scope_type = 'public' THEN 'name' ELSE scope_type END,"
    " CASE WHEN scope_type = 'public' THEN name ELSE scope_id END FROM {rows}"
)
_POLICY_TARGET = "SELECT DISTINCT 'policy', config_name FROM {rows}"


def _transition_function(name: str, target: str) -> str:
    """A function for the statement triggers of :func:`_statement_triggers`: it writes
    ``target`` (a ``SELECT`` of ``kind, ident`` from ``{rows}``) of the transition tables."""
    return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO app_config_outbox (kind, ident) {target.format(rows="new_rows")};
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO app_config_outbox (kind, ident) {target.format(rows="old_rows")};
    ELSE
        INSERT INTO app_config_outbox (kind, ident)
        {target.format(rows="old_rows")}
        UNION {target.format(rows="new_rows")};
    END IF;
    RETURN NULL;
END $$
"""


_FRAGMENTS_FUNCTION = _transition_function("app_config_outbox_fragments", _FRAGMENT_TARGET)
_POLICIES_FUNCTION = _transition_function("app_config_outbox_policies", _POLICY_TARGET)

_USERS_FUNCTION = """
CREATE OR REPLACE FUNCTION app_config_outbox_users() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO app_config_outbox (kind, ident) VALUES ('user', CAST(OLD.uuid AS text));
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.uuid IS DISTINCT FROM OLD.uuid) THEN
        INSERT INTO app_config_outbox (kind, ident) VALUES ('user', CAST(NEW.uuid AS text));
    END IF;
    RETURN NULL;
END $$
"""


def _statement_triggers(table: str, function: str) -> list[str]:
    """One trigger per operation: a trigger with transition tables takes one event."""
    out = []
    for op, refs in (
        ("INSERT", "NEW TABLE AS new_rows"),
        ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        ("DELETE", "OLD TABLE AS old_rows"),
    ):
        name = f"{table}_outbox_{op.lower()}"
        out.append(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        out.append(
            f"CREATE TRIGGER {name} AFTER {op} ON {table} REFERENCING {refs} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )
    return out


#: every statement that installs the triggers, in order (idempotent)
TRIGGER_DDL: list[str] = [
    _FRAGMENTS_FUNCTION,
    _POLICIES_FUNCTION,
    _USERS_FUNCTION,
    *_statement_triggers("app_config_fragments", "app_config_outbox_fragments"),
    *_statement_triggers("app_config_policies", "app_config_outbox_policies"),
    "DROP TRIGGER IF EXISTS users_outbox_change ON users",
    "CREATE TRIGGER users_outbox_change AFTER UPDATE OF uuid, domain_name ON users "
    "FOR EACH ROW WHEN (OLD.uuid IS DISTINCT FROM NEW.uuid "
    "OR OLD.domain_name IS DISTINCT FROM NEW.domain_name) "
    "EXECUTE FUNCTION app_config_outbox_users()",
    "DROP TRIGGER IF EXISTS users_outbox_insert_delete ON users",
    "CREATE TRIGGER users_outbox_insert_delete AFTER INSERT OR DELETE ON users "
    "FOR EACH ROW EXECUTE FUNCTION app_config_outbox_users()",
]
