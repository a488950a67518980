"""Running a mapping set's test cases: `<set>/tests/*.yaml`, one case a file.

A case holds `settings`, one `event` (or a list, `events`) and what must come out: `expect` (the
exact requests, as `map` prints them without `event`, secrets masked), `expect_error` (a part of the
rejection's reason), `expect_item_errors` and `expect_warnings` (a part of each one, in order) and
`expect_skipped` (the exact reason). With `events`, each request keeps its `event` index, each
reason starts `event N: `, and `expect_error`/`expect_skipped` are lists. The shape is
schema.CASE_SCHEMA. Each difference is reported by field path; `update_case_file` records new
outcomes in the file without touching anything else in it (see write_outcome).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RoundTripError

from .evaluate import Mapper, MapResult, Request
from .mapping_set import MappingSet
from .openapi_check import OpenAPIDocument
from .problems import Position, ProblemList, SettingsError
from .schema import CASE_SCHEMA, check_shape
from .strict_json import NotStrictJSON, strict_dumps, unsendable
from .yaml_loader import YamlError, load_yaml, plain_value

CASES_FOLDER = "tests"
EXPECT_KEYS = ("expect", "expect_error", "expect_item_errors", "expect_skipped", "expect_warnings")
# How much of an object or list a difference line shows: enough to recognise it, not a whole request.
SHOWN_CHARACTERS = 120


@dataclass
class Case:
    path: Path
    shown: str  # the path as messages show it
    data: dict[str, Any]
    problems: list[str] = field(default_factory=list)  # FILE:LINE:COL lines when the file is not a case

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def events(self) -> list[Any] | None:
        """The case's events, or None for a single `event`."""
        events = self.data.get("events")
        return events if isinstance(events, list) else None


@dataclass
class CaseResult:
    case: Case
    outcome: dict[str, Any]  # what came out, in the case's own keys
    differences: list[str]  # expectation → outcome, one line per field path
    spec_problems: list[str]  # requests the set's API spec refuses (not something --update can record)

    @property
    def passed(self) -> bool:
        return not (self.case.problems or self.differences or self.spec_problems)


def shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def case_files(set_folder: Path, pattern: str | None = None) -> list[Path]:
    """The set's case files, by name; `pattern` keeps those whose name contains it (or matches it as
    a glob, when it has `*`, `?` or `[`)."""
    folder = set_folder / CASES_FOLDER
    paths = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    if pattern is None:
        return paths
    if any(c in pattern for c in "*?["):
        return [p for p in paths if p.match(pattern) or Path(p.stem).match(pattern)]
    return [p for p in paths if pattern in p.stem]


def read_case(path: Path) -> Case:
    """A case file, checked against CASE_SCHEMA; a file that is not a case has `problems`."""
    shown = shown_path(path)
    problems = ProblemList()
    try:
        document, duplicates = load_yaml(path.read_text(encoding="utf-8"), shown)
    except OSError as exc:
        return Case(path, shown, {}, [f"{shown}:1:1: cannot read: {exc.strerror}"])
    except UnicodeDecodeError:
        return Case(path, shown, {}, [f"{shown}:1:1: not UTF-8 text"])
    except YamlError as exc:
        return Case(path, shown, {}, [f"{exc.position}: {exc.message}"])
    for position, message in duplicates:
        problems.add(position, message)
    if check_shape(document, CASE_SCHEMA, shown, problems, what="a case"):
        if "event" not in document and "events" not in document:
            problems.add(Position(shown, 1, 1), "a case needs 'event' (one event) or 'events' (a list)")
    data = plain_value(document) if isinstance(document, dict) else {}
    return Case(path, shown, data, [str(p) for p in problems.sorted()])


class CaseRunner:
    """Runs cases against one mapping set; with `spec`, every request is checked against it too."""

    def __init__(self, mapping_set: MappingSet, spec: OpenAPIDocument | None = None):
        self.mapping_set = mapping_set
        self.spec = spec

    def run(self, case: Case) -> CaseResult:
        if case.problems:
            return CaseResult(case, {}, [], [])
        try:
            mapper = Mapper(self.mapping_set, case.data.get("settings") or {}, mask_secrets=True)
        except SettingsError as exc:
            return CaseResult(case, {}, [f"settings: {message}" for message in exc.messages], [])
        events = case.events
        results = [mapper.map(event, index) for index, event in enumerate(events if events is not None
                                                                               else [case.data.get("event")])]
        outcome = self.relative_places(outcome_of(results, several=events is not None))
        expected = {key: case.data[key] for key in EXPECT_KEYS if key in case.data}
        differences = compare(expected, outcome) if expected else \
            ["no expectation recorded yet (record what comes out now with --update)"]
        requests = [request for result in results for request in result.requests]
        return CaseResult(case, outcome, differences, self.spec_problems(requests))

    def relative_places(self, outcome: dict[str, Any]) -> dict[str, Any]:
        """The outcome with the set's rule files named from the set's folder (`rules/track.yaml:29:29`):
        reasons name them as loaded, from the working directory, and a case must pass wherever it is
        run from and in a copy of the set (`init`)."""
        prefix = shown_path(self.mapping_set.folder) + os.sep

        def relative(value: Any) -> Any:
            return value.replace(prefix, "") if isinstance(value, str) else [relative(v) for v in value]

        return {key: relative(value) if key in _REASON_KEYS else value for key, value in outcome.items()}

    def spec_problems(self, requests: list[Request]) -> list[str]:
        if self.spec is None:
            return []
        lines = []
        for number, request in enumerate(requests):
            body = request.body if request.body_kind == "json" else None
            for problem in self.spec.validate_body(request.method, urlsplit(request.url).path, body):
                lines.append(f"expect[{number}] (rule '{request.rule}'): {self.spec.path.name} refuses it: {problem}")
        return lines


def outcome_of(results: list[MapResult], several: bool) -> dict[str, Any]:
    """The events' outcome in a case's keys (see the module's docstring)."""
    outcome: dict[str, Any] = {}
    requests: list[dict[str, Any]] = []
    errors: list[str] = []
    item_errors: list[str] = []
    skips: list[str] = []
    warnings: list[str] = []
    for result in results:
        prefix = f"event {result.index}: " if several else ""
        for request in result.requests:
            try:  # (the text `map` would print: a value JSON cannot carry rejects the event there too)
                json.loads(strict_dumps(request.to_output()))
            except NotStrictJSON as exc:
                result.reject(unsendable(request.rule, exc))
                break
        if result.rejection is not None:
            errors.append(prefix + result.rejection)
        else:
            requests += [request_output(r, keep_event=several) for r in result.requests]
        item_errors += [prefix + r.reason for r in result.item_rejections]
        if result.skipped is not None:
            skips.append(prefix + result.skipped)
        warnings += [prefix + w for w in result.warnings]
    if not several:
        if errors:
            outcome["expect_error"] = errors[0]
        else:
            outcome["expect"] = requests
        if skips:
            outcome["expect_skipped"] = skips[0]
    else:
        outcome["expect"] = requests
        if errors:
            outcome["expect_error"] = errors
        if skips:
            outcome["expect_skipped"] = skips
    if item_errors:
        outcome["expect_item_errors"] = item_errors
    if warnings:
        outcome["expect_warnings"] = warnings
    return outcome


def request_output(request: Request, keep_event: bool) -> dict[str, Any]:
    """A request as `map` prints it (as JSON reads it back), and a query parameter that holds base64
    JSON shown decoded under `query_decoded`, so that the expectation can be read."""
    out: dict[str, Any] = json.loads(strict_dumps(request.to_output()))
    if not keep_event:
        del out["event"]
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


_REASON_KEYS = ("expect_error", "expect_item_errors", "expect_skipped", "expect_warnings")
# Expectations that hold a part of the text that comes out, not all of it.
_PART_KEYS = ("expect_error", "expect_item_errors", "expect_warnings")


def compare(expected: dict[str, Any], outcome: dict[str, Any]) -> list[str]:
    """One line per difference, `PATH: EXPECTED → ACTUAL`; [] when the outcome meets the expectation."""
    lines: list[str] = []
    for key in EXPECT_KEYS:
        if key not in expected and key not in outcome:
            continue
        if key in expected and key in outcome and key in _PART_KEYS:
            lines += _part_differences(key, expected[key], outcome[key])
        elif key == "expect" and (key not in expected or key not in outcome):
            count = len(expected.get(key) or outcome.get(key) or [])
            if count:  # (an empty list and no list mean the same: no request)
                shown = f"{count} request(s)"
                lines.append(f"expect: {shown} → (none)" if key in expected else f"expect: (none) → {shown}")
        else:
            lines += value_differences(key, expected.get(key, _MISSING), outcome.get(key, _MISSING))
    return lines


def _part_differences(key: str, expected: Any, actual: Any) -> list[str]:
    if isinstance(expected, str) and isinstance(actual, str):
        return [] if expected in actual else [f"{key}: {show(expected)} → {show(actual)} (the expectation is a part "
                                              "of the reason)"]
    if not isinstance(expected, list) or not isinstance(actual, list):
        return value_differences(key, expected, actual)
    return [f"{key}[{index}]: {show(want)} → {show(have)}"
            for index, (want, have) in enumerate(zip_longest(expected, actual, fillvalue=_MISSING))
            if want is _MISSING or have is _MISSING or not isinstance(want, str) or want not in have]


class _Missing:
    def __repr__(self) -> str:
        return "(none)"


_MISSING: Any = _Missing()
_NAME = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*$")


def value_differences(path: str, expected: Any, actual: Any) -> list[str]:
    """The leaves where two JSON values differ, by field path (`a.b[0].c`)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        lines = []
        for key in [*expected, *(k for k in actual if k not in expected)]:
            step = f".{key}" if _NAME.match(str(key)) else f"[{json.dumps(str(key))}]"
            lines += value_differences(path + step, expected.get(key, _MISSING), actual.get(key, _MISSING))
        return lines
    if isinstance(expected, list) and isinstance(actual, list):
        return [line for index, (want, have) in enumerate(zip_longest(expected, actual, fillvalue=_MISSING))
                for line in value_differences(f"{path}[{index}]", want, have)]
    if _same(expected, actual):
        return []
    return [f"{path}: {show(expected)} → {show(actual)}"]


def _same(a: Any, b: Any) -> bool:
    # (True == 1 in Python; in a request they are different values)
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def show(value: Any) -> str:
    if value is _MISSING:
        return "(none)"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if isinstance(value, str) or len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS - 1] + "…"


# --- recording new outcomes ---------------------------------------------------------------------

def _round_trip_yaml() -> YAML:
    yaml = YAML(typ="rt")  # round-trip: keeps comments, key order, flow style and quotes
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=2, offset=0)
    yaml.width = 4096  # (ruamel moves a long scalar to a line of its own otherwise)
    return yaml


def update_case_file(result: CaseResult) -> bool:
    """Record the outcome of a case that did not pass; True when the file changed. Only the
    expectations that differ are rewritten, and only their own lines: everything else in the file
    stays as the author wrote it (comments, key order, flow style, quotes, line breaks)."""
    if result.case.problems or not result.differences:
        return False
    expected = {key: result.case.data[key] for key in EXPECT_KEYS if key in result.case.data}
    stale = [key for key in EXPECT_KEYS if key in result.outcome] if not expected else \
        [key for key in EXPECT_KEYS if compare({key: expected[key]} if key in expected else {},
                                                  {key: result.outcome[key]} if key in result.outcome else {})]
    if not stale:
        return False
    path = result.case.path
    text = path.read_text(encoding="utf-8")
    path.write_text(write_outcome(text, {key: result.outcome.get(key, _MISSING) for key in stale}), encoding="utf-8")
    return True


def write_outcome(text: str, changes: dict[str, Any]) -> str:
    """`text` (a case file) with each top-level key of `changes` set to its value (or removed, for
    _MISSING). ruamel.yaml re-emits the whole document in its own way (long lines folded or joined),
    so only the changed keys' lines are taken from it; a value is merged into the old one in place,
    so comments and flow style inside it survive where its shape is unchanged."""
    yaml = _round_trip_yaml()
    try:
        document = yaml.load(text)
    except RoundTripError as exc:  # (read_case accepted the file, so this is not expected)
        raise ValueError(f"not valid YAML: {exc}") from None
    lines = text.splitlines(keepends=True)
    keys = list(document)
    starts = [document.lc.key(key)[0] for key in keys]
    regions = {key: (start, starts[i + 1] if i + 1 < len(keys) else len(lines)) for i, (key, start)
               in enumerate(zip(keys, starts, strict=True))}
    replaced: dict[int, tuple[int, str]] = {}  # start line → (end line, new text)
    added = []
    for key, value in changes.items():
        if value is _MISSING:
            if key in regions:
                replaced[regions[key][0]] = (regions[key][1], "")
            continue
        single = CommentedMap()
        if key in document:
            single[key] = _merged(document[key], value)
            if key in document.ca.items:
                single.ca.items[key] = document.ca.items[key]
        else:
            single[key] = value
        stream = io.StringIO()
        yaml.dump(single, stream)
        if key in regions:
            replaced[regions[key][0]] = (regions[key][1], stream.getvalue())
        else:
            added.append(stream.getvalue())
    out = []
    number = 0
    while number < len(lines):
        if number in replaced:
            end, new_text = replaced[number]
            out.append(new_text)
            number = end
        else:
            out.append(lines[number])
            number += 1
    if added and out and not out[-1].endswith("\n"):
        out.append("\n")
    return "".join(out + added)


def _merged(old: Any, new: Any) -> Any:
    """`new`, built into `old` where both have the same shape (so that old's comments stay)."""
    if isinstance(old, CommentedMap) and isinstance(new, dict):
        for key in [k for k in old if k not in new]:
            del old[key]
        for key, value in new.items():
            old[key] = _merged(old[key], value) if key in old else value
        return old
    if isinstance(old, CommentedSeq) and isinstance(new, list):
        del old[len(new):]
        for index, value in enumerate(new):
            if index < len(old):
                old[index] = _merged(old[index], value)
            else:
                old.append(value)
        return old
    if not isinstance(new, (dict, list)) and _same(old, new):
        return old  # (ruamel's scalar kinds: a quoted string keeps its quotes, a float its digits)
    return new


def summary(results: Iterable[CaseResult], updated: int | None = None) -> str:
    results = list(results)
    passed = sum(result.passed for result in results)
    if updated is None:
        return f"{passed} passed, {len(results) - passed} failed"
    return f"{passed} passed, {updated} updated, {len(results) - passed - updated} failed"
