"""Golden-file regression tests: every case under tests/golden/ maps exactly as recorded."""

from __future__ import annotations

import pytest
from golden_cases import EXPECT_KEYS, GoldenCase, load_cases, run_case, write_case

CASES = load_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_golden_case(case: GoldenCase, update_golden: bool) -> None:
    actual = run_case(case)
    if update_golden:
        write_case(case, actual)
        return
    assert any(key in case.data for key in EXPECT_KEYS), f"{case.path}: no expectation"
    if "expect_error" in case.data:
        assert "expect_error" in actual, f"expected a rejection, got {actual}"
        assert case.data["expect_error"] in actual["expect_error"]
    else:
        assert actual.get("expect") == case.data["expect"]
        assert "expect_error" not in actual
    for key in ("expect_item_errors", "expect_warnings"):
        expected = case.data.get(key, [])
        got = actual.get(key, [])
        assert len(got) == len(expected), f"{key}: {got}"
        for want, have in zip(expected, got, strict=True):
            assert want in have
    assert case.data.get("expect_skipped") == actual.get("expect_skipped")


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 1
