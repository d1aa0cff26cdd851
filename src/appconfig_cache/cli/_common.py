"""What every command shares: exit codes, one-line errors, URLs, a progress bar."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "Progress",
    "add_command",
    "add_command_group",
    "add_database_url",
    "add_valkey_url",
    "database_url_for",
    "describe_url",
    "valkey_client_for",
]

EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime failure (server unreachable, stale reads, ...)
EXIT_USAGE = 2  # a mistake on the command line, as argparse uses it

_VALKEY_SCHEMES = ("redis", "rediss", "valkey", "valkeys", "unix")


class CliError(Exception):
    """A failure to report as one line on stderr, with an exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


_N = TypeVar("_N", int, float)
_V = TypeVar("_V")


def number_arg(convert: Callable[[str], _N], minimum: _N) -> Callable[[str], _N]:
    """An argparse ``type=`` for a number of at least ``minimum``."""
    what = "a whole number" if convert is int else "a number"

    def parse(text: str) -> _N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {text}")
        return value

    return parse


positive_int = number_arg(int, 1)
non_negative_int = number_arg(int, 0)
non_negative_float = number_arg(float, 0.0)


def checked_arg(check: Callable[[str], _V]) -> Callable[[str], _V]:
    """An argparse ``type=`` from a library validator: its error becomes the usage error."""
    from ..errors import AppConfigValidationError

    def parse(text: str) -> _V:
        try:
            return check(text)
        except AppConfigValidationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_command(
    commands: Any, name: str, *, summary: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand whose ``description`` keeps its own line breaks."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def add_command_group(commands: Any, name: str, *, summary: str, description: str) -> Any:
    """A command made of subcommands (``NAME COMMAND``, one required): add them to the result."""
    group = commands.add_parser(name, help=summary, description=description)
    subcommands = group.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
    subcommands.required = True
    return subcommands


def add_valkey_url(parser: argparse.ArgumentParser) -> None:
    """The required ``--valkey-url`` of a command that works on the cache's Valkey."""
    parser.add_argument("--valkey-url", metavar="URL", required=True, help="the cache's Valkey")


def add_database_url(
    parser: argparse.ArgumentParser, help: str = "postgresql://user:password@host:port/database"
) -> None:
    """The required ``--database-url`` of a command that works on the PostgreSQL."""
    parser.add_argument("--database-url", metavar="URL", required=True, help=help)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, with its type when the message is empty."""
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    return first or type(exc).__name__


def describe_url(url: str) -> str:
    """``scheme://host:port/path`` of a URL, without credentials or query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    if not host and parts.query:  # a Unix socket: postgresql://user@/db?host=/tmp/...
        return f"{parts.scheme}://{parts.path or '/'} (Unix socket)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def valkey_client_for(url: str, **kwargs: Any) -> Any:
    """A bounded, short-timeout client for ``url``; a bad URL is a usage error."""
    from ..valkey_client import make_valkey_client

    scheme = urlsplit(url).scheme
    if scheme not in _VALKEY_SCHEMES:
        raise CliError(
            f"--valkey-url must start with one of {', '.join(s + '://' for s in _VALKEY_SCHEMES)}"
            f", got {scheme + '://' if scheme else repr(url[:40])}",
            EXIT_USAGE,
        )
    try:
        return make_valkey_client(url, **kwargs)
    except ValueError as exc:
        raise CliError(f"--valkey-url is not usable: {one_line(exc)}", EXIT_USAGE) from None


async def ping_valkey(client: Any, url: str) -> None:
    """Fail with one line if Valkey does not answer."""
    try:
        await client.ping()
    except Exception as exc:
        raise CliError(f"cannot reach Valkey at {describe_url(url)}: {one_line(exc)}") from None


def database_url_for(url: str) -> str:
    """The SQLAlchemy asyncpg form of a PostgreSQL URL; a bad URL is a usage error."""
    from ..embedded import EmbeddedServerError, to_asyncpg_url

    try:
        return to_asyncpg_url(url)
    except (EmbeddedServerError, ValueError) as exc:
        raise CliError(f"--database-url: {one_line(exc)}", EXIT_USAGE) from None


def database_error(exc: BaseException, url: str) -> CliError:
    """One line for a database that refused, is missing or is unreachable."""
    cause = exc.__cause__ if exc.__cause__ is not None and str(exc).startswith("(") else exc
    return CliError(f"database {describe_url(url)} failed: {one_line(cause)}")


class Progress:
    """A small text progress bar on stderr, redrawn at most ten times a second.

    Disabled, every method is a no-op, so callers need no ``if``.
    """

    WIDTH = 28

    def __init__(
        self,
        label: str,
        total: int,
        *,
        enabled: bool,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = max(total, 1)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._started = time.monotonic()
        self._drawn_at = 0.0
        if enabled:
            self._draw()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.enabled:
            now = time.monotonic()
            if now - self._drawn_at >= 0.1 or self.done >= self.total:
                self._draw(now)

    def close(self) -> None:
        if self.enabled:
            self.done = min(self.done, self.total)
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
            self.enabled = False

    def _draw(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._drawn_at = now
        fraction = min(self.done / self.total, 1.0)
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        elapsed = now - self._started
        self.stream.write(
            f"\r{self.label:<22} [{bar}] {fraction * 100:5.1f}% "
            f"{self.done:>7}/{self.total:<7} {elapsed:6.1f}s"
        )
        self.stream.flush()
