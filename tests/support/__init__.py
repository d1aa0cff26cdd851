"""What tests/ and bench/ share, one small module a topic.

- ``clock``: the fake clock injected as ``timer=``;
- ``valkey``: the client wrapper that counts round trips, the wire recorder, INFO counters;
- ``sql``: the SQL statement counter;
- ``scopes``: the scope types by name, and the scope id a user reads;
- ``fragments``: fragment keys and inputs;
- ``data``: rows in the tables (users, policies), table snapshots;
- ``envelopes``: reading and rewriting the envelopes the cache source stores in Valkey;
- ``stats``: changes of a cache source's statistics;
- ``internals``: every reach into a cache source's private state, one line each.

Import from the module: ``from tests.support.clock import FakeClock``.
"""
