"""Golden-file regression tests: every case of the bundled sets (mappings/<set>/tests/) maps exactly
as recorded, through the runner of `segment-klaviyo test` (record new outcomes with its --update)."""

from __future__ import annotations

from functools import cache

import pytest
from golden_cases import case_id, load_cases

from engine.case_runner import Case, CaseRunner
from engine.cli.test_command import spec_of
from engine.mapping_set import load_mapping_set

CASES = load_cases()


@cache
def runner(set_name: str) -> CaseRunner:
    mapping_set = load_mapping_set(set_name)
    return CaseRunner(mapping_set, spec_of(mapping_set))


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_golden_case(case: Case) -> None:
    result = runner(case.path.parent.parent.name).run(case)
    assert case.problems + result.differences + result.spec_problems == []


def test_there_are_golden_cases() -> None:
    assert {case.path.parent.parent.name for case in CASES} == {"klaviyo", "klaviyo-classic"}
    assert len(CASES) >= 120
