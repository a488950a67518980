"""Engine features added for the klaviyo-classic set; each is general and tested here on a neutral set.

- time casts read ISO-8601 dates of reduced precision ("2014", "2014-05");
- `rest` takes `keys: loose` (the source and the `except` keys ignore case and punctuation);
- `rest` takes `keep_null: true` (keys whose value is null are copied as null).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import engine
from engine.functions import EvalError, to_iso8601, to_unix_seconds

MAPPING = """\
name: features-test
base_url: https://api.example.test
include: [rules.yaml]
"""


def _map(tmp_path: Path, value: Any, event: dict[str, Any]) -> Any:
    """Build a one-rule set whose request body is {result: VALUE}; map the event; return result."""
    folder = tmp_path / "set"
    folder.mkdir(exist_ok=True)
    (folder / "mapping.yaml").write_text(MAPPING, encoding="utf-8")
    rules = {"rules": [{"name": "under-test", "request": {"method": "POST", "path": "/x",
                                                          "json": {"result": value}}}]}
    (folder / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    result = engine.Mapper(engine.load_mapping_set(folder), {}).map({"type": "test", **event})
    assert result.rejection is None, result.rejection
    return result.requests[0].body.get("result")


def _problems(tmp_path: Path, value: Any) -> list[str]:
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    (folder / "mapping.yaml").write_text(MAPPING, encoding="utf-8")
    rules = {"rules": [{"name": "under-test", "request": {"method": "POST", "path": "/x",
                                                          "json": {"result": value}}}]}
    (folder / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    with pytest.raises(engine.MappingSetError) as caught:
        engine.load_mapping_set(folder)
    return [p.message for p in caught.value.problems]


# -- reduced-precision ISO-8601 dates --------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("2014", 1388534400),               # a year: its first instant, UTC
    ("2016", 1451606400),
    ("2014-05", 1398902400),            # a year and month: the month's first day
    ("2014-05-02", 1398988800),         # full dates keep working
    ("2014-05-02T10:00:00Z", 1399024800),
])
def test_reduced_precision_dates(text: str, seconds: int) -> None:
    assert to_unix_seconds(text) == seconds


def test_reduced_precision_iso8601_cast() -> None:
    assert to_iso8601("2014") == "2014-01-01T00:00:00+00:00"
    assert to_iso8601("2014-05") == "2014-05-01T00:00:00+00:00"


@pytest.mark.parametrize("text", ["201", "2014-13", "2014-5", "14", "20145"])
def test_not_dates_still_fail(text: str) -> None:
    with pytest.raises(EvalError):
        to_unix_seconds(text)


def test_unix_seconds_cast_in_a_rule(tmp_path: Path) -> None:
    assert _map(tmp_path, {"select": "timestamp", "cast": "unix_seconds"}, {"timestamp": "2014"}) == 1388534400


# -- rest: keys: loose ------------------------------------------------------------------------------

PROPS = {"Order_ID": "o1", "item names": ["a"], "Revenue": 5, "custom": 1, "$value": 9}


def test_rest_exact_keys_by_default(tmp_path: Path) -> None:
    value = {"rest": "properties", "except": ["orderId", "itemNames", "revenue"]}
    assert _map(tmp_path, value, {"properties": PROPS}) == PROPS


def test_rest_loose_except_ignores_case_and_punctuation(tmp_path: Path) -> None:
    value = {"rest": "properties", "keys": "loose", "except": ["orderId", "itemNames", "revenue", "value"]}
    assert _map(tmp_path, value, {"properties": PROPS}) == {"custom": 1}


def test_rest_loose_finds_the_source_loosely(tmp_path: Path) -> None:
    value = {"rest": "context.Traits", "keys": "loose", "except": ["b"]}
    assert _map(tmp_path, value, {"context": {"traits": {"a": 1, "B": 2}}}) == {"a": 1}


def test_rest_loose_with_except_fields(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "mapping.yaml").write_text(MAPPING, encoding="utf-8")
    (folder / "rules.yaml").write_text(yaml.safe_dump({
        "tables": {"person": {"fields": {"first_name": "traits.firstName"}}},
        "rules": [{"name": "under-test", "request": {"method": "POST", "path": "/x", "json": {
            "result": {"rest": "traits", "keys": "loose", "except_fields": "person"}}}}],
    }), encoding="utf-8")
    result = engine.Mapper(engine.load_mapping_set(folder), {}).map(
        {"type": "test", "traits": {"first_name": "Ada", "plan": "pro"}})
    assert result.requests[0].body == {"result": {"plan": "pro"}}


def test_rest_keys_must_be_exact_or_loose(tmp_path: Path) -> None:
    problems = _problems(tmp_path, {"rest": "traits", "keys": "fuzzy"})
    assert any("keys must be exact or loose" in p for p in problems)


# -- rest: keep_null ---------------------------------------------------------------------------------

def test_rest_drops_nulls_by_default(tmp_path: Path) -> None:
    assert _map(tmp_path, {"rest": "properties"}, {"properties": {"a": None, "b": 1}}) == {"b": 1}


def test_rest_keep_null(tmp_path: Path) -> None:
    value = {"rest": "properties", "keep_null": True, "except": ["c"]}
    assert _map(tmp_path, value, {"properties": {"a": None, "b": 1, "c": None}}) == {"a": None, "b": 1}


def test_rest_keep_null_must_be_boolean(tmp_path: Path) -> None:
    problems = _problems(tmp_path, {"rest": "traits", "keep_null": "yes"})
    assert any("keep_null must be true or false" in p for p in problems)


def test_rest_unknown_option_is_still_a_problem(tmp_path: Path) -> None:
    problems = _problems(tmp_path, {"rest": "traits", "keys_loose": True})
    assert any("unknown option 'keys_loose' for rest" in p for p in problems)
