"""`schema`: the JSON Schema of a kind of mapping-set file, for editors (see README, Editor support)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..json_schema import KINDS, schema_text
from .common import EXIT_OK, fail


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("schema", description=__doc__,
                                   help="print the JSON Schema of mapping.yaml, rule, delivery, case or tenants files")
    parser.add_argument("kind", nargs="?", choices=sorted(KINDS), help="which kind of file (with --write: all)")
    parser.add_argument("--write", metavar="DIR",
                        help="write every kind's schema as DIR/<kind>.schema.json instead of printing one")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.write:
        folder = Path(args.write)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for kind in KINDS:
                (folder / f"{kind}.schema.json").write_text(schema_text(kind), encoding="utf-8")
        except OSError as exc:
            return fail(f"--write {folder}: {exc.strerror}")
        return EXIT_OK
    if args.kind is None:
        return fail(f"name a kind of file ({', '.join(KINDS)}) or give --write DIR")
    sys.stdout.write(schema_text(args.kind))
    return EXIT_OK
