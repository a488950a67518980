"""The validator: every problem at once, each as FILE:LINE:COL: message, pinned exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import engine

TESTS = Path(__file__).resolve().parent
CASES: list[dict[str, Any]] = yaml.safe_load((TESTS / "language" / "invalid_cases.yaml").read_text(encoding="utf-8"))
DEFAULT_MAPPING = "name: t\nbase_url: https://x.test\nsettings:\n  listId: {type: string}\ninclude: [rules.yaml]\n"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_invalid_rule_file(case: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mapping.yaml").write_text(case.get("mapping", DEFAULT_MAPPING), encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(case["rules"], encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(engine.MappingSetError) as raised:
        engine.load_mapping_set(".")
    assert [str(p) for p in raised.value.problems] == case["expect"]


def test_five_mistakes_give_five_positioned_messages() -> None:
    run = subprocess.run([sys.executable, "-m", "engine", "validate", "tests/fixtures/five-mistakes"],
                         cwd=TESTS.parent, capture_output=True, text=True)
    assert run.returncode == 1
    folder = "tests/fixtures/five-mistakes/rules.yaml"
    assert run.stdout.splitlines() == [
        f"{folder}:4:12: rule 'profile' when: unknown setting 'listID' (declared settings: listId)",
        f"{folder}:9:45: json.email: unknown cast 'email' (casts: number, integer, string, boolean, iso8601, "
        "unix_seconds)",
        f"{folder}:10:16: json.name: invalid template: unexpected '}}'",
        f"{folder}:14:23: json.tags: invalid JMESPath: the expression ends too early",
        f"{folder}:17:5: unknown key 'reqest' (did you mean 'request'?)",
        "tests/fixtures/five-mistakes: invalid, 5 problem(s)",
    ]


def test_bundled_sets_are_valid() -> None:
    run = subprocess.run([sys.executable, "-m", "engine", "validate", "klaviyo"], cwd=TESTS.parent,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    assert run.stdout.startswith("klaviyo: valid (")


def test_map_refuses_an_invalid_set_before_reading_events(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "engine", "map", "--mappings", "tests/fixtures/five-mistakes"],
                         cwd=TESTS.parent, capture_output=True, text=True, input="not even json")
    assert run.returncode == 2
    assert run.stdout == ""
    assert "is invalid (5 problem(s))" in run.stderr
