"""`segment-klaviyo schema`: JSON Schemas for editors, made from the validator's own shapes. The shipped
copies (mappings/schemas/) are what the command prints; every bundled file validates against its
kind's schema and names it in a yaml-language-server modeline; a mistake the validator refuses is
refused by the schema too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import PROJECT_ROOT
from golden_cases import load_cases

from engine.json_schema import KINDS, UntranslatableShape, _field, json_schema, schema_text

MAPPINGS = PROJECT_ROOT / "mappings"
SCHEMAS = MAPPINGS / "schemas"


def bundled_files() -> list[tuple[str, Path]]:
    """(kind, path) of every file of the bundled sets, their cases included."""
    files: list[tuple[str, Path]] = []
    for set_dir in sorted(p for p in MAPPINGS.iterdir() if (p / "mapping.yaml").is_file()):
        mapping = yaml.safe_load((set_dir / "mapping.yaml").read_text(encoding="utf-8"))
        files.append(("mapping", set_dir / "mapping.yaml"))
        files += [("rules", set_dir / name) for name in mapping.get("include", [])]
        if isinstance(mapping.get("delivery"), str):
            files.append(("delivery", set_dir / mapping["delivery"]))
    files += [("case", case.path) for case in load_cases()]
    return files


def as_json(value: Any) -> Any:
    """A YAML document as an editor's JSON view of it: keys are strings (`401:` is "401")."""
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return value


def problems(kind: str, document: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(json_schema(kind))
    return sorted(error.message for error in validator.iter_errors(as_json(document)))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_shipped_schema_is_what_the_command_prints(kind: str) -> None:
    jsonschema.Draft202012Validator.check_schema(json_schema(kind))
    assert (SCHEMAS / f"{kind}.schema.json").read_text(encoding="utf-8") == schema_text(kind)
    run = subprocess.run([sys.executable, "-m", "engine", "schema", kind], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    assert run.stdout == schema_text(kind)


FILES = bundled_files()


@pytest.mark.parametrize("kind,path", FILES, ids=[str(p.relative_to(PROJECT_ROOT)) for _, p in FILES])
def test_every_bundled_file_fits_its_schema(kind: str, path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert problems(kind, yaml.safe_load(text)) == []
    if kind != "case":  # (a case names its schema if its author wants: most were written before `schema`)
        depth = len(path.relative_to(MAPPINGS).parts) - 1
        assert text.endswith(f"\n# yaml-language-server: $schema={'../' * depth}schemas/{kind}.schema.json\n")


@pytest.mark.parametrize("kind,document,expected", [
    ("rules", {"rules": [{"name": "r", "request": {"methd": "POST", "path": "/x"}}]},
     ["'method' is a required property", "Additional properties are not allowed ('methd' was unexpected)"]),
    ("rules", {"rules": [{"name": "r", "request": {"method": "FETCH", "path": "/x", "url": "https://x"}}]},
     ["'FETCH' is not one of ['GET', 'POST', 'PUT', 'PATCH', 'DELETE']",
      "{'method': 'FETCH', 'path': '/x', 'url': 'https://x'} should not be valid under {'required': ['path', 'url']}"]),
    ("rules", {"rules": [{"name": "outer", "rules": [{"name": "inner", "skip": 3}]}]}, ["3 is not of type 'string'"]),
    ("mapping", {"name": "Bad Name", "base_url": "ftp://x"},
     ["'Bad Name' does not match '^[a-z0-9][a-z0-9_-]*$'", "'ftp://x' does not match '^(?:^https?://.+)$'"]),
    ("delivery", {"stop": {"200": "ok"}, "retry": {"backoff": {"jitter": 2}}},
     ["'200' does not match '^4\\\\d\\\\d$'", "2 is greater than the maximum of 1"]),
    ("case", {"event": {}, "events": []},
     ["{'event': {}, 'events': []} should not be valid under {'required': ['event', 'events']}"]),
    ("rules", {"rules": [{"name": "a", "match": {"type": "trak"}, "skip": "x"},
                         {"name": "b", "match": {"type": ["track", "pag"]}, "skip": "y"}]},
     ["'pag' is not one of ['identify', 'track', 'page', 'screen', 'group', 'alias', 'delete']",
      "'trak' is not one of ['identify', 'track', 'page', 'screen', 'group', 'alias', 'delete']"]),
], ids=["unknown-key", "excluded-and-not-allowed", "nested-rule", "name-and-url", "delivery", "case", "match-type"])
def test_the_schema_refuses_mistakes(kind: str, document: Any, expected: list[str]) -> None:
    assert problems(kind, document) == sorted(expected)


def test_a_cerberus_rule_without_a_translation_is_an_error() -> None:
    with pytest.raises(UntranslatableShape, match="'coerce'"):
        _field({"type": "string", "coerce": int})


def test_write_all(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "engine", "schema", "--write", str(tmp_path)], cwd=PROJECT_ROOT,
                   check=True, timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{kind}.schema.json" for kind in KINDS)
    assert json.loads((tmp_path / "case.schema.json").read_text(encoding="utf-8")) == json_schema("case")
