"""Runs one value tree against one event, inside a minimal mapping set (for the language's tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

import engine

MAPPING = """\
name: language-test
base_url: https://api.example.test
settings:
  flag: {type: boolean, default: false}
  useSegmentSpec: {type: boolean, default: true}
  region: {type: string}
  secret: {type: string, secret: true}
include: [rules.yaml]
"""
RULES_HEAD = """\
values:
  greeting: "Hello {{ traits.firstName }}"
  greeting_name: {select: "first_word(traits.name)"}
tables:
  renames:
    ignore_case: true
    lookup: {"Product Viewed": Viewed Product}
  person:
    cast: string
    fields:
      first_name: [traits.firstName, traits.first_name, "first_word(traits.name)"]
      last_name: [traits.lastName, traits.last_name, "rest_words(traits.name)"]
  employer:
    fields:
      organization: traits.company.name
      city: traits.company.address.city
rules:
  - name: under-test
    request:
      method: POST
      path: /x
      json:
        result: VALUE
"""


def evaluate(value: Any, event: dict[str, Any], settings: dict[str, Any] | None, folder: Path) -> engine.MapResult:
    """Map `event` through a one-rule set whose body is {result: value}; returns the MapResult."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mapping.yaml").write_text(MAPPING, encoding="utf-8")
    flow = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    (folder / "rules.yaml").write_text(RULES_HEAD.replace("VALUE", flow), encoding="utf-8")
    mapper = engine.Mapper(engine.load_mapping_set(folder), settings or {}, mask_secrets=True)
    return mapper.map({"type": "test", **event})


def assert_outcome(result: engine.MapResult, case: dict[str, Any], *, result_key: str, absent_key: str,
                   error_key: str) -> None:
    """Check one case's outcome: the value of `result`, its absence, or a rejection naming the rule."""
    if error_key in case:
        assert result.rejection is not None, f"expected a rejection, got {result.requests}"
        assert case[error_key] in result.rejection
        assert "rule 'under-test'" in result.rejection
        return
    assert result.rejection is None, result.rejection
    body = result.requests[0].body
    if case.get(absent_key):
        assert "result" not in body
    else:
        assert body == {"result": case[result_key]}
