"""The mapping author's loop through the command line: `init` copies a bundled set with its cases,
`test` runs them and shows each difference by field path, `test --update` records new outcomes and
keeps the rest of the case file as its author wrote it."""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT

from engine.case_runner import value_differences

KEPT_CASES = ("order-product-without-id.yaml", "seed-track.yaml")


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def my_set(tmp_path: Path) -> Path:
    """A copy of the klaviyo set (made by `init`) with two of its cases."""
    run = cli(tmp_path, "init", "myset")
    assert (run.returncode, run.stdout) == (0, "")
    for case in (tmp_path / "myset" / "tests").iterdir():
        if case.name not in KEPT_CASES:
            case.unlink()
    return tmp_path / "myset"


def test_init_copies_a_bundled_set_with_its_cases(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    run = cli(tmp_path, "init", "empty", "--from", "klaviyo-classic")
    cases = len(list((PROJECT_ROOT / "mappings" / "klaviyo-classic" / "tests").glob("*.yaml")))
    assert run.returncode == 0
    assert run.stderr == (f"empty: a copy of the bundled set 'klaviyo-classic' with {cases} case(s); next: "
                          "segment-klaviyo validate empty && segment-klaviyo test empty\n")
    comparison = filecmp.dircmp(PROJECT_ROOT / "mappings" / "klaviyo-classic", tmp_path / "empty")
    assert (comparison.left_only, comparison.right_only, comparison.diff_files) == ([], [], [])
    assert cli(tmp_path, "test", "empty").stdout == f"{cases} passed, 0 failed\n"


@pytest.mark.parametrize("prepare,args,message", [
    ("folder-with-a-file", ["init", "target"],
     "target: not empty; init only writes into a new or empty folder (nothing was copied)"),
    ("file", ["init", "target"], "target: exists and is not a folder"),
    ("nothing", ["init", "target", "--from", "klavyo"],
     "--from klavyo: not a bundled set (bundled: klaviyo, klaviyo-classic)"),
], ids=["not-empty", "a-file", "unknown-set"])
def test_init_refuses(tmp_path: Path, prepare: str, args: list[str], message: str) -> None:
    target = tmp_path / "target"
    if prepare == "folder-with-a-file":
        target.mkdir()
        (target / "notes.txt").write_text("mine\n")
    elif prepare == "file":
        target.write_text("mine\n")
    run = cli(tmp_path, *args)
    assert (run.returncode, run.stdout, run.stderr) == (2, "", f"segment-klaviyo: {message}\n")
    assert sorted(p.name for p in tmp_path.rglob("*")) == \
        ({"folder-with-a-file": ["notes.txt", "target"], "file": ["target"], "nothing": []}[prepare])


# The kept case, as its author annotated it: a comment inside the expectation, one at the end of a
# line, and flow style; `--update` must keep all three.
ANNOTATED = {
    "settings:\n  privateKey: pk_live_4f9a2c\n  apiKey: AbC123\n":
        "settings: {privateKey: pk_live_4f9a2c, apiKey: AbC123}  # flow style, kept\n",
    "- rule: order/ordered-product\n":
        "# the product that has an id goes out on its own\n- rule: order/ordered-product\n",
    "              name: Ordered Product\n": "              name: Ordered Product        # the metric we rename\n",
}

NEW_CASE = """\
# A case the author adds: no expectation yet; `test --update` records one.
description: One product, one Ordered Product event.
settings: {privateKey: pk_test}
event:
  type: track
  userId: u-1
  messageId: m-1
  timestamp: '2026-11-01T12:00:00.000Z'
  event: Order Completed
  properties: {orderId: o-1, revenue: 5, products: [{id: p-1, price: 5}]}
"""


def test_rename_an_event_see_the_case_fail_and_update_it(my_set: Path) -> None:
    work = my_set.parent
    case = my_set / "tests" / "order-product-without-id.yaml"
    text = case.read_text(encoding="utf-8")
    for old, new in ANNOTATED.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    case.write_text(text, encoding="utf-8")
    assert (cli(work, "test", "myset").stdout, cli(work, "test", "myset").returncode) == ("2 passed, 0 failed\n", 0)

    rules = my_set / "rules" / "order.yaml"
    rules.write_text(rules.read_text(encoding="utf-8").replace("name: Ordered Product", "name: Product Was Ordered"),
                     encoding="utf-8")
    (my_set / "tests" / "one-product.yaml").write_text(NEW_CASE, encoding="utf-8")
    run = cli(work, "test", "myset")
    assert run.returncode == 1
    assert run.stdout == (
        "FAIL myset/tests/one-product.yaml\n"
        "  no expectation recorded yet (record what comes out now with --update)\n"
        "FAIL myset/tests/order-product-without-id.yaml\n"
        '  expect[1].json.data.attributes.metric.data.attributes.name: "Ordered Product" → "Product Was Ordered"\n'
        "1 passed, 2 failed\n")
    only = cli(work, "test", "myset", "-k", "product-without")
    assert (only.returncode, only.stdout.splitlines()[-1]) == (1, "0 passed, 1 failed")

    run = cli(work, "test", "myset", "--update")
    assert (run.returncode, run.stdout) == (0, "updated myset/tests/one-product.yaml\n"
                                               "updated myset/tests/order-product-without-id.yaml\n"
                                               "1 passed, 2 updated, 0 failed\n")
    # Only the changed value changed: the comments, the flow style and every other line are as written.
    renamed = text.replace("name: Ordered Product        #", "name: Product Was Ordered    #")
    assert case.read_text(encoding="utf-8") == renamed
    added = (my_set / "tests" / "one-product.yaml").read_text(encoding="utf-8")
    assert added.startswith(NEW_CASE + "expect:\n- rule: order/placed\n")
    recorded = yaml.safe_load(added)["expect"]
    assert [r["rule"] for r in recorded] == ["order/placed", "order/ordered-product"]
    assert recorded[1]["json"]["data"]["attributes"]["metric"]["data"]["attributes"]["name"] == "Product Was Ordered"
    assert recorded[1]["headers"]["Authorization"] == "Klaviyo-API-Key ***"
    assert (cli(work, "test", "myset").stdout) == "3 passed, 0 failed\n"


def test_a_request_the_api_spec_refuses_fails_and_is_not_recorded(my_set: Path) -> None:
    rules = my_set / "rules" / "track.yaml"
    text = rules.read_text(encoding="utf-8")
    assert text.count("      type: event\n") == 1
    rules.write_text(text.replace("      type: event\n", "      type: evnt\n"), encoding="utf-8")
    case = my_set / "tests" / "seed-track.yaml"
    before = case.read_text(encoding="utf-8")
    for args in (["test", "myset", "-k", "seed"], ["test", "myset", "-k", "seed", "--update"]):
        run = cli(my_set.parent, *args)
        assert run.returncode == 1
        assert run.stdout.splitlines() == [
            "FAIL myset/tests/seed-track.yaml",
            '  expect[0].json.data.type: "event" → "evnt"',
            "  expect[0] (rule 'track/event'): klaviyo-openapi-stable-2026-07-15.trimmed.json refuses it: "
            "/data/type: 'evnt' is not one of ['event']",
            "0 passed, 1 failed" if "--update" not in args else "0 passed, 0 updated, 1 failed"]
    assert case.read_text(encoding="utf-8") == before


BAD_CASES = [
    ("expct: []\nevent: {type: track}\n", "myset/tests/bad.yaml:1:1: unknown key 'expct' (did you mean 'expect'?)"),
    ("event: {type: track}\nevents: []\nexpect: []\n", "myset/tests/bad.yaml:1:8: 'event' cannot be used together "
     "with 'events'"),
    ("description: nothing to map\nexpect: []\n", "myset/tests/bad.yaml:1:1: a case needs 'event' (one event) or "
     "'events' (a list)"),
    ("event: {type: track\n", "myset/tests/bad.yaml:2:1: not valid YAML: expected ',' or '}', but got '<stream end>'"),
    ("event: {type: track}\nexpect_error: 3\n", "myset/tests/bad.yaml:2:15: 'expect_error' must be a string or list"),
    ("- event: {}\n", "myset/tests/bad.yaml:1:1: a case must be a mapping (key: value pairs)"),
    ("settings: {privateKey: 3}\nevent: {type: track}\nexpect: []\n", "settings: setting 'privateKey': must be of "
     "string type"),
]


@pytest.mark.parametrize("text,line", BAD_CASES, ids=["unknown-key", "event-and-events", "no-event", "not-yaml",
                                                      "wrong-type", "not-a-mapping", "bad-settings"])
def test_a_bad_case_file_is_a_failure_that_says_where(my_set: Path, text: str, line: str) -> None:
    (my_set / "tests" / "bad.yaml").write_text(text, encoding="utf-8")
    for args in (["test", "myset"], ["test", "myset", "--update"]):
        run = cli(my_set.parent, *args)
        assert run.returncode == 1
        assert run.stdout.splitlines()[:2] == ["FAIL myset/tests/bad.yaml", f"  {line}"]
        assert run.stdout.splitlines()[-1] == ("2 passed, 1 failed" if "--update" not in args
                                               else "2 passed, 0 updated, 1 failed")
    assert (my_set / "tests" / "bad.yaml").read_text(encoding="utf-8") == text


def test_an_invalid_set_or_an_unknown_name_exits_2(my_set: Path) -> None:
    (my_set / "rules" / "track.yaml").write_text("rules:\n  - nam: x\n", encoding="utf-8")
    run = cli(my_set.parent, "test", "myset")
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.splitlines()[0] == "segment-klaviyo: mapping set 'myset' is invalid (2 problem(s)):"
    assert "myset/rules/track.yaml:2:5: unknown key 'nam' (did you mean 'name'?)" in run.stderr.splitlines()
    unknown = cli(my_set.parent, "test", "nosuchset")
    assert (unknown.returncode, unknown.stderr) == (2, "segment-klaviyo: no mapping set 'nosuchset': not a folder "
                                                       "with mapping.yaml, nor a bundled set (klaviyo, "
                                                       "klaviyo-classic)\n")


EVENTS_CASE = """\
description: Several events in one case.
settings: {privateKey: pk_test}
events:
- {type: screen, name: Home, userId: u-1, messageId: m-0}
- {type: track, userId: u-1, messageId: m-1, event: Clicked, timestamp: yesterday}
- {type: track, userId: u-1, messageId: m-2, event: Clicked, timestamp: '2026-11-01T12:00:00Z'}
"""


def test_a_case_of_several_events(my_set: Path) -> None:
    path = my_set / "tests" / "several.yaml"
    path.write_text(EVENTS_CASE, encoding="utf-8")
    run = cli(my_set.parent, "test", "myset", "-k", "several", "--update")
    assert (run.returncode, run.stdout) == (0, "updated myset/tests/several.yaml\n0 passed, 1 updated, 0 failed\n")
    recorded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert [(r["event"], r["rule"]) for r in recorded["expect"]] == [(2, "track/event")]
    assert recorded["expect_error"] == ["event 1: values.time: cannot cast to iso8601: \"yesterday\" is not an "
                                        "ISO-8601 date-time (rule 'track/event', values.yaml:28:76)"]
    assert recorded["expect_skipped"] == ["event 0: screen calls are not sent to Klaviyo"]
    assert cli(my_set.parent, "test", "myset", "-k", "several").stdout == "1 passed, 0 failed\n"
    path.write_text(path.read_text(encoding="utf-8").replace("event 0: screen", "event 0: page"), encoding="utf-8")
    run = cli(my_set.parent, "test", "myset", "-k", "several")
    assert run.stdout.splitlines() == [
        "FAIL myset/tests/several.yaml",
        '  expect_skipped[0]: "event 0: page calls are not sent to Klaviyo" → "event 0: screen calls are not sent '
        'to Klaviyo"',
        "0 passed, 1 failed"]


@pytest.mark.parametrize("expected,actual,lines", [
    ({"a": {"b": 1}}, {"a": {"b": 2}}, ["x.a.b: 1 → 2"]),
    ({"a": 1}, {"a": 1, "b": "new"}, ['x.b: (none) → "new"']),
    ({"a.b": True}, {"a.b": 1}, ['x["a.b"]: true → 1']),
    ([1, 2], [1], ["x[1]: 2 → (none)"]),
    ({"n": 8}, {"n": 8.0}, []),
    ({"long": "s"}, {"long": {"k": "v" * 200}}, ['x.long: "s" → {"k": "' + "v" * 112 + "…"]),
], ids=["nested", "added-key", "odd-key-and-bool", "shorter-list", "int-float", "long-value"])
def test_differences_by_field_path(expected: object, actual: object, lines: list[str]) -> None:
    assert value_differences("x", expected, actual) == lines


README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
TESTING = README[README.index("### Testing your mapping"):README.index("## The `klaviyo` mapping set")]


def test_the_readme_walkthrough_prints_what_it_says(tmp_path: Path) -> None:
    commands, printed = re.findall(r"```sh\n(.*?)```\n\n```text\n(.*?)```", TESTING, re.DOTALL)[0]
    script = f'segment-klaviyo() {{ "{sys.executable}" -m engine "$@"; }}\n{commands}'
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert run.stdout == printed, run.stderr
    case = (tmp_path / "my-klaviyo" / "tests" / "one-product.yaml").read_text(encoding="utf-8")
    assert case.startswith(commands.split("<<'CASE'\n")[1].split("CASE\n")[0] + "expect:\n")


def test_the_readme_cases_pass(my_set: Path) -> None:
    cases = [text for text in re.findall(r"```yaml\n(.*?)```", TESTING, re.DOTALL) if "description:" in text]
    assert len(cases) == 2
    for number, text in enumerate(cases):
        (my_set / "tests" / f"readme-{number}.yaml").write_text(text, encoding="utf-8")
    run = cli(my_set.parent, "test", "myset", "-k", "readme-")
    assert (run.returncode, run.stdout) == (0, "2 passed, 0 failed\n")
