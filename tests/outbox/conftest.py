"""The outbox tests' fixtures (defined in ``tests.support.outbox``)."""

from tests.support.outbox import make_reader

__all__ = ["make_reader"]
