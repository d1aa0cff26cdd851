"""Durable invalidation (I10): the outbox table's triggers, its SQL, and its replayer.

``docs/reliability.rst`` ("Durable invalidation") tells the whole story.
"""
