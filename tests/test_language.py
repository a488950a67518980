"""The rule language's semantics, from the data table tests/language/value_cases.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from language_harness import assert_outcome, evaluate

HERE = Path(__file__).resolve().parent / "language"
CASES: list[dict[str, Any]] = yaml.safe_load((HERE / "value_cases.yaml").read_text(encoding="utf-8"))

@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_value_case(case: dict[str, Any], tmp_path: Path) -> None:
    result = evaluate(case["value"], case["event"], case.get("settings"), tmp_path / "set")
    assert_outcome(result, case, result_key="expect", absent_key="expect_absent", error_key="expect_error")
