"""The ``appconfig-cache`` command: the demo and the operator commands.

Heavy imports (SQLAlchemy, valkey, the embedded servers) happen inside the commands,
so ``--help`` stays fast. Every failure a user can cause ends as one line on stderr:
exit status 2 for a mistake on the command line, 1 for a failure at run time.
Set ``APPCONFIG_CACHE_DEBUG=1`` to see the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ._common import EXIT_FAILURE, EXIT_USAGE, CliError, one_line

__all__ = ["build_parser", "main"]

PROG = "appconfig-cache"

EPILOG = """\
Run '%(prog)s COMMAND --help' for a command's options.
Exit status: 0 success, 1 failure (a server, stale reads), 2 a mistake on the command line.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and the hint to ask for --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import check, demo, ops, outbox

    parser = _Parser(
        prog=PROG,
        description="A two-tier cache (L1 + Valkey) for PostgreSQL-backed app-config fragments.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser, title="commands"
    )
    commands.required = True
    demo.add_parser(commands)
    ops.add_parsers(commands)
    check.add_parser(commands)
    outbox.add_parsers(commands)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    try:
        status: int = args.handler(args)
    except CliError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("APPCONFIG_CACHE_DEBUG"):
            raise
        print(
            f"{PROG}: error: {type(exc).__name__}: {one_line(exc)} "
            "(set APPCONFIG_CACHE_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return status
