"""Golden cases: one YAML file per case under tests/golden/<mapping set>/.

A case holds `settings`, `event`, and what must come out: `expect` (the exact requests, as `map`
prints them, secrets masked), or `expect_error` (a substring of the rejection reason). Optional:
`expect_item_errors` (substrings, one per rejected item), `expect_skipped`, `expect_warnings`.
A query parameter holding base64 JSON (a GET's `data=`) is also shown decoded, under `query_decoded`,
so that the expectation can be read; the exact URL is compared too.
`pytest --update-golden` rewrites `expect*` from the current output; review that diff.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

import engine

GOLDEN_ROOT = Path(__file__).resolve().parent / "golden"


@dataclass
class GoldenCase:
    path: Path
    data: dict[str, Any]

    @property
    def mapping_set(self) -> str:
        return self.path.parent.name

    @property
    def id(self) -> str:
        return f"{self.mapping_set}/{self.path.stem}"


def load_cases(set_name: str | None = None) -> list[GoldenCase]:
    folders = [GOLDEN_ROOT / set_name] if set_name else sorted(p for p in GOLDEN_ROOT.iterdir() if p.is_dir())
    cases = []
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")):
            cases.append(GoldenCase(path, yaml.safe_load(path.read_text(encoding="utf-8"))))
    return cases


_SETS: dict[str, engine.MappingSet] = {}


def run_case(case: GoldenCase) -> dict[str, Any]:
    """The case's actual outcome, in the same shape as its expectations."""
    mapping_set = _SETS.get(case.mapping_set) or engine.load_mapping_set(case.mapping_set)
    _SETS[case.mapping_set] = mapping_set
    mapper = engine.Mapper(mapping_set, case.data.get("settings") or {}, mask_secrets=True)
    result = mapper.map(case.data["event"], 0)
    outcome: dict[str, Any] = {}
    if result.rejection is not None:
        outcome["expect_error"] = result.rejection
    else:
        outcome["expect"] = [_without_event(r.to_output()) for r in result.requests]
    if result.item_rejections:
        outcome["expect_item_errors"] = [r.reason for r in result.item_rejections]
    if result.skipped is not None:
        outcome["expect_skipped"] = result.skipped
    if result.warnings:
        outcome["expect_warnings"] = result.warnings
    return outcome


def _without_event(output: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in output.items() if k != "event"}
    decoded = {}
    for key, value in parse_qsl(urlsplit(out["url"]).query):
        try:
            data = json.loads(base64.b64decode(value, validate=True).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if isinstance(data, (dict, list)):
            decoded[key] = data
    if decoded:
        out["query_decoded"] = decoded
    return out


EXPECT_KEYS = ("expect", "expect_error", "expect_item_errors", "expect_skipped", "expect_warnings")


def write_case(case: GoldenCase, outcome: dict[str, Any]) -> None:
    data = {k: v for k, v in case.data.items() if k not in EXPECT_KEYS}
    data.update(outcome)
    case.path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100), encoding="utf-8")
