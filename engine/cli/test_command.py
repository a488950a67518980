"""`test`: run mapping sets' cases (SET/tests/*.yaml); print each failure as the case file and its
differences by field path, then `N passed, M failed`. With --update, record what comes out now in
the cases that differ, keeping the rest of each file as it was written.

Exit codes: 0 all passed (or were updated), 1 some failed, 2 a set is invalid or a name is unknown.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..case_runner import CASES_FOLDER, CaseResult, CaseRunner, case_files, read_case, summary, update_case_file
from ..mapping_set import DEFAULT_SET, MappingSet
from ..openapi_check import OpenAPIDocument, load_openapi
from .common import EXIT_OK, EXIT_REJECTED, UsageError, delivery_plan, fail, load_set_or_exit


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("test", help="run a mapping set's test cases (SET/tests/*.yaml)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sets", nargs="*", metavar="SET", help=f"mapping set folders or names (default: {DEFAULT_SET})")
    parser.add_argument("-k", dest="pattern", metavar="PATTERN",
                        help="only the cases whose file name contains PATTERN (or matches it, with * ? [)")
    parser.add_argument("--update", action="store_true",
                        help="record what comes out now in the cases that differ (review the diff!)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    runners = []
    try:
        for name in args.sets or [DEFAULT_SET]:
            mapping_set = load_set_or_exit(name)
            runners.append(CaseRunner(mapping_set, spec_of(mapping_set)))
    except UsageError as exc:
        return fail(str(exc))
    results: list[CaseResult] = []
    updated = 0
    for runner in runners:
        paths = case_files(runner.mapping_set.folder, args.pattern)
        if not paths:
            print(f"{runner.mapping_set.name}: no case{' matches' if args.pattern else ''} in "
                  f"{runner.mapping_set.folder / CASES_FOLDER}", file=sys.stderr)
        for path in paths:
            result = runner.run(read_case(path))
            results.append(result)
            if args.update and not result.spec_problems and update_case_file(result):
                updated += 1
                print(f"updated {result.case.shown}")
            elif not result.passed:
                report(result)
    print(summary(results, updated if args.update else None))
    failed = sum(not r.passed for r in results) - updated
    return EXIT_REJECTED if failed else EXIT_OK


def spec_of(mapping_set: MappingSet) -> OpenAPIDocument | None:
    """The API spec the set's delivery section names, which every request of a case must fit."""
    plan = delivery_plan(mapping_set)
    return load_openapi(str(plan.spec_path)) if plan.spec_path is not None else None


def report(result: CaseResult) -> None:
    print(f"FAIL {result.case.shown}")
    for line in result.case.problems + result.differences + result.spec_problems:
        print(f"  {line}")
