"""Options shared by the subcommands that load a mapping set and its settings."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from ..mapping_set import DEFAULT_SET, PROGRAM, MappingSet, load_mapping_set
from ..problems import MappingSetError

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input: exit 2 with this message."""


def add_mapping_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mappings", default=DEFAULT_SET, metavar="NAME|DIR",
                        help=f"a bundled mapping set's name or a folder (default: {DEFAULT_SET})")
    parser.add_argument("--settings", metavar="FILE", help="destination settings, a JSON or YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting; VALUE is read as a YAML scalar (true, 3, text)")


def load_set_or_exit(name: str) -> MappingSet:
    try:
        return load_mapping_set(name)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except MappingSetError as exc:
        lines = "\n".join(str(p) for p in exc.problems)
        raise UsageError(f"mapping set '{name}' is invalid ({len(exc.problems)} problem(s)):\n{lines}") from None


def read_settings(path: str | None, overrides: list[str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--settings {path}: {exc.strerror}") from None
        try:
            loaded = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise UsageError(f"--settings {path}: not valid JSON/YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UsageError(f"--settings {path}: must hold an object of settings")
        settings.update(loaded)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {override!r}: expected KEY=VALUE")
        try:
            settings[key] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            settings[key] = value
    return settings


def fail(message: str) -> int:
    print(f"{PROGRAM}: {message}", file=sys.stderr)
    return EXIT_USAGE
