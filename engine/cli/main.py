"""Entry point of the command line (the console script, and `python -m engine`)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..mapping_set import DEFAULT_SET, PROGRAM

# Each module adds one subcommand: `add_parser(subparsers)` and `run(args) -> exit code`. Keyed by
# the command's name, so that a run imports only its own command's module (and what that imports):
# `map` never loads the HTTP server, the OpenAPI checker or the database drivers the others need.
SUBCOMMAND_MODULES = {
    "map": "engine.cli.map_command",
    "validate": "engine.cli.validate_command",
    "send": "engine.cli.send_command",
    f"fake-{DEFAULT_SET}": "engine.cli.fake_command",
    "outbox": "engine.cli.outbox_command",
    "serve": "engine.cli.serve_command",
    "worker": "engine.cli.worker_command",
    "schema": "engine.cli.schema_command",
    "check": "engine.cli.check_command",
    "test": "engine.cli.test_command",
    "init": "engine.cli.init_command",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line's parser; with `command` (one of SUBCOMMAND_MODULES), a parser that
    knows that command only, which parses its arguments exactly as the whole one does."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Map Segment events to HTTP requests with a declarative YAML mapping set.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = [command] if command in SUBCOMMAND_MODULES else list(SUBCOMMAND_MODULES)
    for name in names:
        importlib.import_module(SUBCOMMAND_MODULES[name]).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    # The top-level parser has no option but --help, so a command's name can only come first; any
    # other first word (--help, a typo) gets the whole parser, its help and its error message.
    parser = build_parser(arguments[0] if arguments else None)
    args = parser.parse_args(arguments)
    code: int = args.run(args)
    return code


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
