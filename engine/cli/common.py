"""Options shared by the subcommands that load a mapping set and its settings."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..mapping_set import DEFAULT_SET, PROGRAM, MappingSet, load_mapping_set
from ..problems import MappingSetError, SettingsError

if TYPE_CHECKING:
    from ..delivery.config import DeliveryPlan
    from ..tenants import Tenant

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input: exit 2 with this message."""


def add_mapping_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mappings", default=DEFAULT_SET, metavar="NAME|DIR",
                        help=f"a bundled mapping set's name or a folder (default: {DEFAULT_SET})")
    parser.add_argument("--settings", metavar="FILE", help="destination settings, a JSON or YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting; VALUE is read as a YAML scalar (true, 3, text)")


def add_delivery_options(parser: argparse.ArgumentParser, *, concurrency: str) -> None:
    """What `serve` and `worker` deliver with: where, which sets, how many calls at once, how long a bulk
    call waits, and the fake's clock. `concurrency` is the --concurrency help (a worker's is per partition)."""
    parser.add_argument("--base-url", metavar="URL",
                        help="deliver here instead of the mapping set's base URL (also: the environment "
                             f"variable <SET NAME>_BASE_URL, e.g. {DEFAULT_SET.upper()}_BASE_URL)")
    parser.add_argument("--allow-compatibility-only", action="store_true",
                        help="deliver with a mapping set marked compatibility_only (its API may be retired)")
    parser.add_argument("--concurrency", type=int, default=8, metavar="N", help=concurrency)
    parser.add_argument("--linger", type=float, default=0.25, metavar="SECONDS",
                        help="how long a bulk call that is not full waits for more items (default 0.25)")
    parser.add_argument("--time-scale", type=float, default=1.0, metavar="X",
                        help="the API's clock runs X times faster (only for a fake started with the same "
                             "--time-scale)")


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="log internal errors with their tracebacks on stderr (for a bug report)")


def configure_logging(debug: bool) -> None:
    """Warnings and errors on stderr; with --debug, the mapping's internal errors with their tracebacks
    too (only those: delivery's debug lines name URLs, which may carry a secret)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=f"{PROGRAM}: %(levelname)s %(message)s")
    if debug:
        logging.getLogger(f"{PROGRAM}.evaluate").setLevel(logging.DEBUG)


def load_set_or_exit(name: str) -> MappingSet:
    try:
        return load_mapping_set(name)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except MappingSetError as exc:
        lines = "\n".join(str(p) for p in exc.problems)
        raise UsageError(f"mapping set '{name}' is invalid ({len(exc.problems)} problem(s)):\n{lines}") from None


def delivery_plan(mapping_set: MappingSet) -> DeliveryPlan:
    """The set's compiled delivery section; UsageError listing its problems when it is invalid."""
    from ..delivery.config import DeliveryPlan  # (the delivery layer: only the commands that need it)

    try:
        return DeliveryPlan.for_set(mapping_set)
    except MappingSetError as exc:
        raise UsageError("the delivery section is invalid:\n" + "\n".join(map(str, exc.problems))) from None


def read_settings(path: str | None, overrides: list[str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--settings {path}: {exc.strerror}") from None
        try:
            loaded = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--settings {path}: not valid JSON: {exc.msg} (line {exc.lineno}, "
                             f"column {exc.colno})") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"--settings {path}: not valid YAML: {_yaml_problem(exc)}") from None
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


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What is wrong and where, without PyYAML's quote of the line: a settings line may hold a key."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return type(error).__name__


def fail(message: str) -> int:
    print(f"{PROGRAM}: {message}", file=sys.stderr)
    return EXIT_USAGE


@dataclass
class DeliverySetup:
    """What the commands that deliver (send, serve) check before they start."""

    mapping_set: MappingSet
    plan: DeliveryPlan
    given_settings: dict[str, Any]
    settings: dict[str, Any]  # validated, defaults filled in
    base_url: str
    tenants: list[Tenant] | None = None  # --tenants: each with its own settings (the two above are empty)


def add_tenants_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenants", metavar="FILE",
                        help="several destinations in one deployment: a YAML file of tenants, each with the write "
                             "keys that route to it and its own settings (instead of --settings; needs a "
                             "postgresql:// --state; see README, Running on several machines)")


def prepare_delivery(args: argparse.Namespace, verb: str) -> DeliverySetup:
    """Load the set, its delivery plan and the settings; refuse what cannot be delivered (UsageError)."""
    mapping_set = load_set_or_exit(args.mappings)
    if mapping_set.compatibility_only and not args.allow_compatibility_only:
        raise UsageError(f"mapping set '{mapping_set.name}' is for compatibility and comparison only: "
                         f"{mapping_set.compatibility_only}\n(pass --allow-compatibility-only to {verb} anyway)")
    plan = delivery_plan(mapping_set)
    env_name = mapping_set.name.upper().replace("-", "_") + "_BASE_URL"
    base_url = args.base_url or os.environ.get(env_name) or mapping_set.base_url
    if getattr(args, "tenants", None):
        return DeliverySetup(mapping_set, plan, {}, {}, base_url, _read_tenants(args, mapping_set))
    given = read_settings(args.settings, args.overrides)
    try:
        resolved = mapping_set.resolve_settings(dict(given))
    except SettingsError as exc:
        raise UsageError("bad settings:\n" + "\n".join(exc.messages)) from None
    missing = mapping_set.missing_to_send(resolved)
    if missing:
        raise UsageError(f"missing setting(s) needed to send: {', '.join(missing)} "
                         f"(--settings FILE or --set {missing[0]}=…)")
    return DeliverySetup(mapping_set, plan, given, resolved, base_url)


def _read_tenants(args: argparse.Namespace, mapping_set: MappingSet) -> list[Tenant]:
    from ..delivery.stores import is_database_url
    from ..tenants import TenantsError, load_tenants

    if args.settings or args.overrides:
        raise UsageError("--tenants gives each tenant its settings: leave out --settings and --set")
    if not is_database_url(args.state):
        raise UsageError("--tenants needs a shared outbox (--state postgresql://…): the SQLite store in a folder "
                         "holds one destination's events")
    try:
        return load_tenants(args.tenants, mapping_set)
    except TenantsError as exc:
        raise UsageError(f"--tenants {args.tenants}: {len(exc.problems)} problem(s):\n" + "\n".join(exc.problems)) \
            from None
