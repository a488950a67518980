"""Entry point of the command line (the console script, and `python -m engine`)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..mapping_set import PROGRAM

# Each module adds one subcommand: `add_parser(subparsers)` and `run(args) -> exit code`.
SUBCOMMAND_MODULES = (
    "engine.cli.map_command",
    "engine.cli.validate_command",
    "engine.cli.send_command",
    "engine.cli.fake_command",
    "engine.cli.outbox_command",
    "engine.cli.serve_command",
    "engine.cli.worker_command",
    "engine.cli.schema_command",
    "engine.cli.check_command",
    "engine.cli.test_command",
    "engine.cli.init_command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Map Segment events to HTTP requests with a declarative YAML mapping set.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
