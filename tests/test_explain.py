"""`map --explain`: each rule's outcome and why, per event, through the CLI; README's example runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import load_mapping_set
from engine.evaluate import Mapper

ROOT = Path(__file__).resolve().parent.parent
DEMO = "tests/fixtures/explain-demo"

# A set with every outcome: a group, a requirement, a fan-out, a warning, a reject, a final rule.
RULES = """\
rules:
  - name: reject/banned
    match: {type: identify}
    when: "traits.banned"
    reject: "user {{ userId }} is banned"
  - name: order
    match: {type: track, event: [Order Completed, checkout_*]}
    final: true
    require:
      - check: "properties.total != `null`"
        reason: an order needs a total
    rules:
      - name: placed
        warn:
          - {when: "properties.total > `1000`", message: a large order}
        request:
          method: POST
          path: /orders
          json:
            total: {select: properties.total, default: 0}
            currency: {select: [properties.currency, context.currency]}
      - name: items
        for_each: properties.items
        require:
          - one_of: [item.sku]
        request: {method: POST, path: /items, json: {sku: {select: item.sku}}}
  - name: identify
    match: {type: identify}
    request: {method: POST, path: /people, json: {email: {select: traits.email}}}
  - name: page
    match: {type: page}
    skip: pages are not sent
"""


@pytest.fixture(scope="module")
def outcome_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("outcomes")
    (folder / "mapping.yaml").write_text("name: outcomes\nbase_url: https://api.example.test\ninclude: [rules.yaml]\n")
    (folder / "rules.yaml").write_text(RULES)
    return folder


def explain(folder: str | Path, events: list[Any], *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "map", "--mappings", str(folder), *options],
                          cwd=ROOT, input="\n".join(json.dumps(event) for event in events),
                          capture_output=True, text=True)


def not_run(*names: str, ender: str = "order") -> list[dict[str, str]]:
    return [{"rule": name, "outcome": "not run", "why": f"rule '{ender}' ended the event"} for name in names]


BANNED = {"rule": "reject/banned", "outcome": "not matched", "why": "type is track; the rule matches identify"}
NOT_IDENTIFY = {"rule": "identify", "outcome": "not matched", "why": "type is track; the rule matches identify"}
NOT_PAGE = {"rule": "page", "outcome": "not matched", "why": "type is track; the rule matches page"}
PLACED = "POST https://api.example.test/orders"

CASES: list[tuple[str, Any, list[dict[str, Any]], str]] = [
    ("misspelled name", {"type": "track", "event": "Order Complted"}, [
        BANNED,
        {"rule": "order", "outcome": "not matched", "why": "event name 'Order Complted' is not one of "
         "'order completed', 'checkout *'; a near miss of 'order completed': misspelled?"},
        NOT_IDENTIFY, NOT_PAGE], "skipped"),
    ("no event name", {"type": "track"}, [
        BANNED, {"rule": "order", "outcome": "not matched",
                 "why": "the event has no name; the rule matches 'order completed', 'checkout *'"},
        NOT_IDENTIFY, NOT_PAGE], "skipped"),
    ("requirement fails", {"type": "track", "event": "Checkout-1", "properties": {}}, [
        BANNED, {"rule": "order", "outcome": "rejected", "why": "an order needs a total (rule 'order')",
                 "ended": "the event ends here"}, *not_run("identify", "page")], "rejected"),
    ("group, warning, fan-out with a rejected item", {"type": "track", "event": "Order Completed", "context": {
        "currency": "EUR"}, "properties": {"total": 2000, "items": [{"sku": "a"}, {}]}}, [
        BANNED,
        {"rule": "order", "outcome": "matched: its rules follow", "ended": "final: the rules after it do not run"},
        {"rule": "order/placed", "outcome": "request built", "requests": [{"request": PLACED, "fields": {
            "json.total": "properties.total", "json.currency": "context.currency"}}],
         "warnings": ["a large order (rule 'order/placed')"]},
        {"rule": "order/items", "outcome": "request built", "requests": [
            {"request": "POST https://api.example.test/items", "fields": {"json.sku": "item.sku"}}],
         "items rejected": [{"item": 1, "why": "needs one of item.sku; none is present (rule 'order/items')"}]},
        *not_run("identify", "page")], "2 requests, 1 item rejected"),
    ("fan-out with no items", {"type": "track", "event": "checkout_2", "properties": {"total": 1}}, [
        BANNED,
        {"rule": "order", "outcome": "matched: its rules follow", "ended": "final: the rules after it do not run"},
        {"rule": "order/placed", "outcome": "request built", "requests": [{"request": PLACED, "fields": {
            "json.total": "properties.total", "json.currency": None}}]},
        {"rule": "order/items", "outcome": "nothing built", "why": "for_each properties.items: no items"},
        *not_run("identify", "page")], "1 request"),
    ("reject", {"type": "identify", "userId": "u-9", "traits": {"banned": True}}, [
        {"rule": "reject/banned", "outcome": "rejected", "why": "user u-9 is banned (rule 'reject/banned')",
         "ended": "the event ends here"},
        *not_run("order", "identify", "page", ender="reject/banned")], "rejected"),
    ("condition false, no source present", {"type": "identify", "traits": {}}, [
        {"rule": "reject/banned", "outcome": "condition false", "why": "when: traits.banned (RULES:4:11)"},
        {"rule": "order", "outcome": "not matched", "why": "type is identify; the rule matches track"},
        {"rule": "identify", "outcome": "request built", "requests": [
            {"request": "POST https://api.example.test/people", "fields": {"json.email": None}}]},
        {"rule": "page", "outcome": "not matched", "why": "type is identify; the rule matches page"}], "1 request"),
    ("skip", {"type": "page"}, [
        {"rule": "reject/banned", "outcome": "not matched", "why": "type is page; the rule matches identify"},
        {"rule": "order", "outcome": "not matched", "why": "type is page; the rule matches track"},
        {"rule": "identify", "outcome": "not matched", "why": "type is page; the rule matches identify"},
        {"rule": "page", "outcome": "skipped", "why": "pages are not sent", "ended": "the event ends here"}],
     "skipped"),
    ("not an object", "junk", [], "rejected"),
    ("no type", {"event": "x"}, [], "rejected"),
]


@pytest.mark.parametrize(("event", "explained", "result"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_each_outcome_is_explained(outcome_set: Path, event: Any, explained: list[dict[str, Any]],
                                   result: str) -> None:
    run = explain(outcome_set, [event], "--explain")
    expected = json.loads(json.dumps(explained).replace("RULES", str(outcome_set / "rules.yaml")))
    assert json.loads(run.stderr.splitlines()[-1]) == {"event": 0, "explain": expected, "result": result}


def test_explain_to_a_file_leaves_the_errors_stream_as_it_was(outcome_set: Path, tmp_path: Path) -> None:
    events = [{"type": "page"}, {"type": "identify", "traits": {"email": "a@example.com"}}]
    plain = explain(outcome_set, events)
    run = explain(outcome_set, events, "--explain", str(tmp_path / "why.ndjson"))
    assert (run.stdout, run.stderr, run.returncode) == (plain.stdout, plain.stderr, plain.returncode)
    lines = [json.loads(line) for line in (tmp_path / "why.ndjson").read_text().splitlines()]
    assert [(line["event"], line["result"]) for line in lines] == [(0, "skipped"), (1, "1 request")]
    assert lines[1]["explain"][2]["requests"][0]["fields"] == {"json.email": "traits.email"}


def test_a_line_that_is_not_json_is_explained_too(outcome_set: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "engine", "map", "--mappings", str(outcome_set), "--explain"],
                         cwd=ROOT, input='{"type": "page"}\nnot json\n', capture_output=True, text=True)
    explained = [json.loads(line) for line in run.stderr.splitlines() if '"explain"' in line]
    assert [(line["event"], line["explain"], line["result"]) for line in explained] == [
        (0, explained[0]["explain"], "skipped"), (1, [], "rejected")]


def test_readme_example_is_what_map_explain_prints() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Explaining an event"):]
    command = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    shown = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert command is not None and shown is not None
    script = command.group(1).replace("segment-klaviyo ", f"{sys.executable} -m engine ")
    run = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    assert [json.loads(line) for line in run.stdout.splitlines()] == [json.loads(shown.group(1))]


def test_a_normal_mapper_records_nothing() -> None:
    """Explaining costs nothing when off: a normal Mapper's generated code binds no recorder, and
    its runners are the generated functions themselves (no wrapper)."""
    mapping_set = load_mapping_set("klaviyo")
    normal = Mapper(mapping_set, {"privateKey": "pk"})
    explaining = Mapper(mapping_set, {"privateKey": "pk"}, explain=True)
    for rule in mapping_set.rules:
        assert "RuleRecorder" not in normal.source(rule.name)
    recorded = [rule.name for rule in mapping_set.rules if normal.source(rule.name) != explaining.source(rule.name)]
    assert "track/event" in recorded
    assert all(run.__name__ == "run" for run in normal._runners.values())
    with pytest.raises(ValueError, match="explain=True"):
        normal.explanation(normal.map({"type": "page"}))
