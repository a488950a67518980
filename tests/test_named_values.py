"""Named values in generated code: each one's code written once per Mapper, computed at most once
per event (however many reads and rules), and never when nothing reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import engine
from engine import functions

MAPPING = "name: t\nbase_url: https://x.test\nsettings:\n  listId: {type: string}\ninclude: [rules.yaml]\n"
RULES = """\
values:
  email: {select: "lower(traits.email)"}
  risky: {select: properties.amount, cast: number}
rules:
  - name: first
    match: {type: identify}
    request:
      method: POST
      path: /a
      json:
        email: {select: vars.email}
        again: {select: vars.email}
        shout: "{{ vars.email }}!"
        maybe: {if: "vars.email", then: {select: vars.email}, else: none}
  - name: second
    match: {type: identify}
    request:
      method: POST
      path: /b
      json: {email: {select: vars.email}}
  - name: guarded
    match: {type: track}
    request:
      method: POST
      path: /c
      json:
        amount: {if: properties.go, then: {select: vars.risky}}
"""


def _mapper(tmp_path: Path) -> engine.Mapper:
    (tmp_path / "mapping.yaml").write_text(MAPPING, encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(RULES, encoding="utf-8")
    return engine.Mapper(engine.load_mapping_set(tmp_path))


def test_a_named_value_is_computed_once_per_event_whatever_reads_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    lower = functions.FUNCTIONS["lower"]

    def counted(value: Any) -> Any:
        calls.append(value)
        return lower[0](value)

    monkeypatch.setitem(functions.FUNCTIONS, "lower", (counted, 1, 1))
    mapper = _mapper(tmp_path)
    result = mapper.map({"type": "identify", "traits": {"email": "Ann@X.test"}})
    assert [(r.rule, r.body) for r in result.requests] == [
        ("first", {"email": "ann@x.test", "again": "ann@x.test", "shout": "ann@x.test!", "maybe": "ann@x.test"}),
        ("second", {"email": "ann@x.test"}),
    ]
    assert calls == ["Ann@X.test"]  # five reads in two rules: one computation
    mapper.map({"type": "identify", "traits": {"email": "Bob@X.test"}})
    assert calls == ["Ann@X.test", "Bob@X.test"]  # once per event, not once per Mapper


def test_a_rules_code_calls_the_named_value_and_tests_it_once_on_a_straight_path(tmp_path: Path) -> None:
    source = _mapper(tmp_path).source("first")
    assert "lower" not in source and "'traits'" not in source  # the value's own code is elsewhere
    assert source.count("if var_email is UNSET:") == 1  # later reads are known to follow the first
    assert source.count("var_email = V0['email'] if 'email' in V0 else ") == 1


def test_a_named_value_read_only_under_a_false_condition_is_not_computed(tmp_path: Path) -> None:
    mapper = _mapper(tmp_path)
    untouched = mapper.map({"type": "track", "properties": {"amount": "lots"}})
    assert (untouched.rejection, untouched.requests[0].body) == (None, {})
    read = mapper.map({"type": "track", "properties": {"amount": "lots", "go": True}})
    assert read.rejection == (
        "values.risky: cannot cast to number: \"lots\" is not a number (rule 'guarded', "
        f"{tmp_path / 'rules.yaml'}:3:44)")


def test_a_named_value_failing_in_a_message_names_its_own_place(tmp_path: Path) -> None:
    (tmp_path / "mapping.yaml").write_text(MAPPING, encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(
        "values:\n  n: {select: properties.n, cast: integer}\nrules:\n  - name: r\n"
        "    reject: \"n is {{ vars.n }}\"\n", encoding="utf-8")
    mapper = engine.Mapper(engine.load_mapping_set(tmp_path))
    assert mapper.map({"type": "track", "properties": {"n": "7"}}).rejection == "n is 7 (rule 'r')"
    assert mapper.map({"type": "track", "properties": {"n": "x"}}).rejection == (
        f'values.n: cannot cast to integer: "x" is not a number (rule \'r\', {tmp_path / "rules.yaml"}:2:35)')


def test_a_read_after_a_branch_that_read_first_still_computes_the_value(tmp_path: Path) -> None:
    (tmp_path / "mapping.yaml").write_text(MAPPING, encoding="utf-8")
    (tmp_path / "rules.yaml").write_text("""\
values:
  email: {select: traits.email}
rules:
  - name: r
    request:
      method: POST
      path: /x
      json:
        one: {if: properties.go, then: {select: vars.email}}
        two: {select: vars.email}
""", encoding="utf-8")
    mapper = engine.Mapper(engine.load_mapping_set(tmp_path))
    for go, body in ((False, {"two": "a@x.test"}), (True, {"one": "a@x.test", "two": "a@x.test"})):
        result = mapper.map({"type": "identify", "traits": {"email": "a@x.test"}, "properties": {"go": go}})
        assert result.requests[0].body == body
    assert mapper.source("r").count("if var_email is UNSET:") == 2  # the branch may not have run


def test_a_bug_inside_a_named_value_names_the_named_values_line(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(value: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setitem(functions.FUNCTIONS, "lower", (explode, 1, 1))
    result = _mapper(tmp_path).map({"type": "identify", "traits": {"email": "a@x.test"}})
    assert result.rejection == ("internal error while mapping (please report it): RuntimeError: boom "
                                f"(at {tmp_path / 'rules.yaml'}:2:10, values.email)")
