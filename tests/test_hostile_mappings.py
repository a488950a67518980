"""Hostile or broken mapping folders are refused in bounded time and memory, never with a traceback.

The cases are tables (tests/language/hostile_cases.yaml): folders with the exact problems `validate`
reports, and templates with the exact reason an event that passes a limit is rejected with. Each
in-process case runs under an alarm, and the CLI cases under a subprocess timeout, so a regression
fails rather than hangs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jmespath
import pytest
import yaml

import engine
from engine.functions import EvalError
from engine.templates import compile_template

TESTS = Path(__file__).resolve().parent
TABLE: dict[str, list[dict[str, Any]]] = yaml.safe_load(
    (TESTS / "language" / "hostile_cases.yaml").read_text(encoding="utf-8"))
DEFAULT_MAPPING = "name: t\nbase_url: https://x.test\nsettings:\n  listId: {type: string}\ninclude: [rules.yaml]\n"
SECONDS = 10  # far above what any case takes (well under a second each)


@contextmanager
def deadline(seconds: int = SECONDS) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def expand(text: str, repeats: dict[str, list[Any]]) -> str:
    """`repeat: {NAME: [TEXT, COUNT]}` writes NAME as TEXT repeated COUNT times (inputs too big to list)."""
    for name, (piece, count) in repeats.items():
        text = text.replace(name, piece * count)
    return text


def build_folder(case: dict[str, Any], folder: Path) -> None:
    repeats = case.get("repeat", {})
    files = {"mapping.yaml": case.get("mapping", DEFAULT_MAPPING), "rules.yaml": case.get("rules", "")}
    files.update(case.get("files", {}))
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, dict):  # {bytes: [BYTE, ...]}: not text at all
            path.write_bytes(bytes(text["bytes"]))
        else:
            path.write_text(expand(text, repeats), encoding="utf-8")
    for name, target in case.get("symlinks", {}).items():
        os.symlink(target, folder / name)
    for name in case.get("fifos", []):
        os.mkfifo(folder / name)


@pytest.mark.parametrize("case", TABLE["folders"], ids=[c["name"] for c in TABLE["folders"]])
def test_hostile_folder_is_refused_with_positioned_problems(case: dict[str, Any], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    build_folder(case, folder)
    monkeypatch.chdir(folder)
    with deadline(), pytest.raises(engine.MappingSetError) as raised:
        engine.load_mapping_set(".")
    assert [str(p) for p in raised.value.problems] == case["expect"]


RULE_WITH_TEMPLATE = """\
rules:
  - name: under-test
    request:
      method: POST
      path: /x
      json: {v: TEMPLATE}
"""


def traits_of(case: dict[str, Any]) -> dict[str, Any]:
    def value(raw: Any) -> Any:
        if isinstance(raw, dict) and "repeat" in raw:
            return raw["repeat"] * raw["times"]
        return raw

    return {key: value(raw) for key, raw in case.get("traits", {}).items()}


@pytest.mark.parametrize("case", TABLE["templates"], ids=[c["name"] for c in TABLE["templates"]])
def test_template_past_a_limit_rejects_its_event_and_the_next_maps(case: dict[str, Any], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mapping.yaml").write_text(DEFAULT_MAPPING, encoding="utf-8")
    flow = json.dumps(case["template"])
    (tmp_path / "rules.yaml").write_text(RULE_WITH_TEMPLATE.replace("TEMPLATE", flow), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    mapper = engine.Mapper(engine.load_mapping_set("."), {})
    with deadline():
        hostile = mapper.map({"type": "identify", "userId": "u", "traits": traits_of(case)}, 0)
        normal = mapper.map({"type": "identify", "userId": "u", "traits": case["normal"]}, 1)
    if "expect_rejection" in case:
        assert hostile.rejection == f"json.v: {case['expect_rejection']} (rule 'under-test', rules.yaml:6:17)"
    else:
        assert hostile.rejection is None
        assert len(hostile.requests[0].body["v"]) == case["expect_length"]
    assert normal.rejection is None
    assert normal.requests[0].body == {"v": case["expect_normal"]}


@pytest.mark.parametrize("name", ["alias bomb", "500 nested parentheses", "repetition folded at load"])
def test_validate_ends_quickly_with_the_problems_and_no_traceback(name: str, tmp_path: Path) -> None:
    case = next(c for c in TABLE["folders"] if c["name"].startswith(name))
    folder = tmp_path / "set"
    folder.mkdir()
    build_folder(case, folder)
    run = subprocess.run([sys.executable, "-m", "engine", "validate", "."], cwd=folder, capture_output=True,
                         text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(TESTS.parent)})
    assert run.returncode == 1
    assert run.stderr == ""
    assert run.stdout.splitlines() == [*case["expect"], f".: invalid, {len(case['expect'])} problem(s)"]


def test_deep_chains_and_nesting_generate_code_python_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated code stays under Python's limits (100 indentation levels, 20 nested blocks): a chain
    of 200 `a[0]` steps, a 2000-step path, 2000 indexes and 21 nested `each` map, as jmespath says,
    instead of an IndentationError or a SyntaxError from the generated code."""
    chain, path, indexes = ".".join(["a[0]"] * 200), ".".join(["b"] * 2000), "c" + "[0]" * 2000
    each = "{select: it0}"
    for level in range(1, 22):
        each = f"{{each: it{level}, as: it{level - 1}, value: {each}}}"
    each = each.replace("each: it21,", "each: traits.l,")
    values = f"{{chain: {{select: '{chain}'}}, path: {{select: '{path}'}}, indexes: {{select: '{indexes}'}}, " \
             f"nested: {each}}}"
    (tmp_path / "mapping.yaml").write_text(DEFAULT_MAPPING, encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(RULE_WITH_TEMPLATE.replace("{v: TEMPLATE}", values), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    event: dict[str, Any] = {"type": "identify", "userId": "u"}
    for key, wrap in (("a", lambda inner: {"a": [inner]}), ("b", lambda inner: {"b": inner}),
                      ("c", lambda inner: [inner]), ("l", lambda inner: [inner])):
        nested: Any = key
        for _ in range({"a": 200, "b": 2000, "c": 2000, "l": 21}[key]):
            nested = wrap(nested)
        if key == "l":
            event["traits"] = {"l": nested}
        else:
            event.update(nested if key != "c" else {"c": nested})
    with deadline():
        result = engine.Mapper(engine.load_mapping_set("."), {}).map(event)
    assert result.rejection is None
    assert [jmespath.search(expression, event) for expression in (chain, path, indexes)] == ["a", "b", "c"]
    assert result.requests[0].body == {"chain": "a", "path": "b", "indexes": "c", "nested": event["traits"]["l"]}


@pytest.mark.parametrize(("found", "expected"), [
    ({"f149": 1, "g149": 2}, {"v": 1, "w": 2}),  # only the last option is there
    ({"f3": 1, "f149": 3, "g2": None, "g7": 2, "g140": 7}, {"v": 1, "w": 2}),  # the first present wins
    ({}, {}),  # none: absent
])
def test_a_long_select_or_first_list_compiles_and_picks_the_first_present(
        found: dict[str, Any], expected: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """150 options nest deeper than Python allows if each is tried inside the one before: `validate`
    used to accept such a set and mapping raised IndentationError from the generated code."""
    selects = ", ".join(f"traits.f{i}" for i in range(150))
    firsts = ", ".join(f"{{select: traits.g{i}}}" for i in range(150))
    values = f"{{v: {{select: [{selects}]}}, w: {{first: [{firsts}]}}}}"
    (tmp_path / "mapping.yaml").write_text(DEFAULT_MAPPING, encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(RULE_WITH_TEMPLATE.replace("{v: TEMPLATE}", values), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = engine.Mapper(engine.load_mapping_set("."), {}).map({"type": "identify", "userId": "u", "traits": found})
    assert result.rejection is None
    assert result.requests[0].body == expected


@pytest.mark.parametrize("case", [c for c in TABLE["templates"] if c["name"].startswith(("plain reads", "one plain"))],
                         ids=lambda c: c["name"])
def test_the_fast_path_outside_generated_code_has_the_same_outcome(case: dict[str, Any]) -> None:
    """A template's own render (named values and fallbacks call it) agrees with the rule's code."""
    template = compile_template(case["template"])
    assert template.fast_pieces is not None  # (a template the fast path handles)
    scope = {"traits": traits_of(case)}
    if "expect_rejection" in case:
        with pytest.raises(EvalError) as raised:
            template.render(scope)
        assert str(raised.value) == case["expect_rejection"]
    else:
        assert len(template.render(scope)) == case["expect_length"]


def test_the_readme_states_every_limit_as_it_is() -> None:
    from engine import limits

    readme = (TESTS.parent / "README.md").read_text(encoding="utf-8")
    stated = dict(re.findall(r"^\| `(MAX_[A-Z_]+)` \| (\d+) \|", readme, re.MULTILINE))
    defined = {name: str(getattr(limits, name)) for name in dir(limits) if name.startswith("MAX_")}
    assert stated == defined
