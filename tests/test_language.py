"""The rule language's semantics, from the data table tests/language/value_cases.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from language_harness import evaluate

HERE = Path(__file__).resolve().parent / "language"
CASES: list[dict[str, Any]] = yaml.safe_load((HERE / "value_cases.yaml").read_text(encoding="utf-8"))

@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_value_case(case: dict[str, Any], tmp_path: Path) -> None:
    result = evaluate(case["value"], case["event"], case.get("settings"), tmp_path / "set")
    if "expect_error" in case:
        assert result.rejection is not None, f"expected a rejection, got {result.requests}"
        assert case["expect_error"] in result.rejection
        assert "rule 'under-test'" in result.rejection
        return
    assert result.rejection is None, result.rejection
    body = result.requests[0].body
    if case.get("expect_absent"):
        assert "result" not in body
    else:
        assert body == {"result": case["expect"]}
