"""`init`: start a mapping set of your own from a bundled one: copies its files, its cases
(tests/) included, into a new or empty folder. Then edit it, and run `validate DIR` and `test DIR`."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from ..mapping_set import DEFAULT_SET, PROGRAM, bundled_set_names, bundled_sets_folder
from .common import EXIT_OK, fail


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("init", help="copy a bundled mapping set (with its cases) into a new folder",
                                   description=__doc__)
    parser.add_argument("folder", metavar="DIR", help="the new set's folder (must not exist, or be empty)")
    parser.add_argument("--from", dest="source", default=DEFAULT_SET, metavar="NAME",
                        help=f"the bundled set to start from (default: {DEFAULT_SET})")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    names = bundled_set_names()
    if args.source not in names:
        return fail(f"--from {args.source}: not a bundled set (bundled: {', '.join(names) or 'none'})")
    target = Path(args.folder)
    if target.exists() and not target.is_dir():
        return fail(f"{target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        return fail(f"{target}: not empty; init only writes into a new or empty folder (nothing was copied)")
    try:
        shutil.copytree(bundled_sets_folder() / args.source, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    except OSError as exc:
        return fail(f"{target}: {exc.strerror or exc}")
    cases = len(list((target / "tests").glob("*.yaml")))
    print(f"{target}: a copy of the bundled set '{args.source}' with {cases} case(s); next: "
          f"{PROGRAM} validate {target} && {PROGRAM} test {target}", file=sys.stderr)
    return EXIT_OK
