"""`validate`: check mapping sets; print every problem as FILE:LINE:COL: message."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..evaluate import UNCHECKED_DEFAULTS, Mapper
from ..mapping_set import DEFAULT_SET, PROGRAM, MappingSet, load_mapping_set
from ..problems import MappingSetError, Problem
from ..spec_check import spec_problems


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("validate", help="check mapping sets without mapping anything",
                                   description=__doc__)
    parser.add_argument("sets", nargs="*", metavar="DIR", help=f"mapping set folders or names (default: {DEFAULT_SET})")
    parser.add_argument("--show-code", metavar="RULE", action="append", default=[],
                        help="print the Python generated for RULE (under the default settings), each line's "
                             "rule-file place as a comment; may be given more than once")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    code = 0
    for name in args.sets or [DEFAULT_SET]:
        try:
            mapping_set = load_mapping_set(name)
            # Compiled for the default settings: every rule's code is generated (and compiled) now.
            mapper = Mapper(mapping_set, UNCHECKED_DEFAULTS)
            problems = _against_spec(mapping_set)
            if problems:
                raise MappingSetError(problems)
        except FileNotFoundError as exc:
            print(f"{PROGRAM}: {exc}", file=sys.stderr)
            code = 1
            continue
        except MappingSetError as exc:
            for problem in exc.problems:
                print(problem)
            print(f"{name}: invalid, {len(exc.problems)} problem(s)")
            code = 1
            continue
        for rule_name in args.show_code:
            try:
                print(mapper.source(rule_name))
            except KeyError as exc:
                print(f"{PROGRAM}: {exc.args[0]}", file=sys.stderr)
                code = 1
        rule_count = _count_rules(mapping_set.rules)
        print(f"{mapping_set.name}: valid ({rule_count} rules in {len(mapping_set.files)} files, "
              f"{len(mapping_set.settings)} settings, {len(mapping_set.values)} named values)")
    return code


def _against_spec(mapping_set: MappingSet) -> list[Problem]:
    """When the set's delivery section names an API spec: each rule's request against it."""
    from ..delivery.config import DeliveryPlan  # (only validate reads the spec: other commands load less)
    from ..openapi_check import load_openapi

    spec_path = DeliveryPlan.for_set(mapping_set).spec_path
    if spec_path is None:
        return []
    return sorted(spec_problems(mapping_set.rules, load_openapi(str(spec_path))))


def _count_rules(rules: list[Any]) -> int:
    return sum(1 + _count_rules(rule.children) for rule in rules)
