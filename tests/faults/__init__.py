"""Fault injection: a TCP proxy and the tests that break Valkey under load."""
