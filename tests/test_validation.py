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


SHOWN_RULE = """\
rules:
  - name: greet
    request:
      method: POST
      path: /x
      json: {who: {select: [traits.name, userId], cast: string}}
"""


def test_show_code_prints_a_rules_generated_python_with_its_places(tmp_path: Path) -> None:
    (tmp_path / "mapping.yaml").write_text(DEFAULT_MAPPING, encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(SHOWN_RULE, encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "engine", "validate", ".", "--show-code", "greet"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "def run(scope, event_type, event_name, result):"
    # each part's lines follow the rule file's place they were written for
    assert [line for line in lines if line.lstrip().startswith("#")] == [
        "    # rules.yaml:2:5 rule 'greet'",
        "        # rules.yaml:6:13 json",
        "        # rules.yaml:6:19 json.who",
        "        # rules.yaml:6:13 json",
        "        # rules.yaml:2:5 rule 'greet'",
    ]
    assert "            t9 = t10.get('name') if isinstance(t10, dict) else None" in lines
    assert lines[-1] == "t: valid (1 rules in 2 files, 1 settings, 0 named values)"
    # the library call shows the same text
    mapper = engine.Mapper(engine.load_mapping_set(tmp_path))
    assert mapper.source("greet").replace(str(tmp_path / "rules.yaml"), "rules.yaml") == "\n".join(lines[:-1])


def test_show_code_of_an_unknown_rule_names_the_rules(tmp_path: Path) -> None:
    (tmp_path / "mapping.yaml").write_text(DEFAULT_MAPPING, encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(SHOWN_RULE, encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "engine", "validate", ".", "--show-code", "gret"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stderr) == (1, "segment-klaviyo: no rule 'gret' (rules: greet)\n")


def test_show_code_ends_with_a_legend_of_the_names_it_binds(tmp_path: Path) -> None:
    (tmp_path / "mapping.yaml").write_text(DEFAULT_MAPPING, encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(SHOWN_RULE, encoding="utf-8")
    source = engine.Mapper(engine.load_mapping_set(tmp_path)).source("greet")
    legend = source.replace(str(tmp_path / "rules.yaml"), "rules.yaml").split("\n\nwhere:\n")[1].splitlines()
    assert legend == [
        "    rule = rule 'greet' at rules.yaml:2:5",
        "    k2 = 'https://x.test/x'",
        "    ABSENT = ABSENT",
        "    k11 = function engine.functions.to_string",
        "    k12 = class engine.functions.EvalError",
        "    k14 = class engine.runtime.FieldError",
        "    k13 = 'cannot cast to string: '",
        "    k15 = 'json.who'",
        "    k16 = place rules.yaml:6:57",
        "    k18 = 'cannot cast to string: '",
        "    k19 = function engine.runtime.locate",
        "    k20 = place rules.yaml:6:28",
        "    k5 = class engine.evaluate.Request",
        "    k6 = 'POST'",
        "    k21 = 'json'",
        "    EvalError = class engine.functions.EvalError",
        "    _reason = function engine.evaluate._reason",
        "    final = False",
    ]


SECRET_MAPPING = """\
name: t
base_url: https://x.test
settings:
  key: {type: string, secret: true}
defaults:
  headers: {Authorization: "Basic {{ settings.key }}"}
include: [rules.yaml]
"""


def test_show_code_never_shows_a_secret_setting(tmp_path: Path) -> None:
    (tmp_path / "mapping.yaml").write_text(SECRET_MAPPING, encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - name: r\n    request: {method: POST, path: /x, json: {k: {select: settings.key}}}\n",
        encoding="utf-8")
    mapper = engine.Mapper(engine.load_mapping_set(tmp_path), {"key": "sk_live_abc123"})
    assert mapper.map({"type": "track"}).requests[0].headers == {"Authorization": "Basic sk_live_abc123"}
    source = mapper.source("r")
    assert "sk_live_abc123" not in source
    assert "{'Authorization': 'Basic ***'}" in source and "'***'" in source  # the header, the select
