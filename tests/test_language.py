"""The rule language's semantics, from the data table tests/language/value_cases.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import engine

HERE = Path(__file__).resolve().parent / "language"
CASES: list[dict[str, Any]] = yaml.safe_load((HERE / "value_cases.yaml").read_text(encoding="utf-8"))

MAPPING = """\
name: language-test
base_url: https://api.example.test
settings:
  flag: {type: boolean, default: false}
  region: {type: string}
  secret: {type: string, secret: true}
include: [rules.yaml]
"""
RULES_HEAD = """\
values:
  greeting: "Hello {{ traits.firstName }}"
tables:
  renames:
    ignore_case: true
    lookup: {"Product Viewed": Viewed Product}
  person:
    fields:
      first_name: [traits.firstName, "first_word(traits.name)"]
      last_name: [traits.lastName, "rest_words(traits.name)"]
rules:
  - name: under-test
    request:
      method: POST
      path: /x
      json:
        result: VALUE
"""


def _set_for(value: Any, folder: Path) -> engine.MappingSet:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mapping.yaml").write_text(MAPPING, encoding="utf-8")
    flow = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    (folder / "rules.yaml").write_text(RULES_HEAD.replace("VALUE", flow), encoding="utf-8")
    return engine.load_mapping_set(folder)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_value_case(case: dict[str, Any], tmp_path: Path) -> None:
    mapping_set = _set_for(case["value"], tmp_path / "set")
    mapper = engine.Mapper(mapping_set, case.get("settings") or {}, mask_secrets=True)
    event = {"type": "test", **case["event"]}
    result = mapper.map(event)
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
