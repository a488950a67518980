"""The fake API's configuration: the `fake:` part of a mapping set's delivery section.

What the fake checks (auth header, required headers, content types, body size), the answers it
gives (canned responses, 5xx statuses), the records it keeps and the bulk jobs it runs. Parsed here,
not by the delivery layer: the fake is a product feature (`fake-<default set>`, `send --fake`,
`check --fake`) that production delivery never reads. The part is registered with the delivery section,
so it is checked at load, at its FILE:LINE:COL, and compiled once per set.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..delivery.config import (
    DeliveryPlan,
    Endpoint,
    compile_selector,
    key_at,
    register_delivery_part,
    value_at,
)
from ..problems import ProblemList
from ..yaml_loader import PosDict, plain_value

FAKE_PART = "fake"

RECORD_SHAPE: dict[str, Any] = {
    "kind": {"type": "string", "required": True, "empty": False},
    "key": {"type": "list", "schema": {"type": "string"}},
    "repeat": {"type": "string", "allowed": ["ignore", "update"]},
    "duplicates_in_one_call": {"type": "string", "allowed": ["reject", "allow"]},
    "status": {"type": "dict", "schema": {"created": {"type": "integer"}, "updated": {"type": "integer"}}},
    "response": {"type": "dict"},
}
FAKE_SHAPE: dict[str, Any] = {
    "auth": {"type": "dict", "schema": {"header": {"type": "string", "required": True},
                                        "prefix": {"type": "string"},
                                        "setting": {"type": "string"}}},
    "headers": {"type": "dict", "valuesrules": {"type": "string"}},
    "content_types": {"type": "list", "schema": {"type": "string"}},
    "max_body_bytes": {"type": "integer", "min": 1},
    "error_statuses": {"type": "list", "schema": {"type": "integer", "min": 500, "max": 599}},
    "records": {"type": "dict", "valuesrules": {"type": "dict", "schema": RECORD_SHAPE}},
    "responses": {"type": "dict"},
    "lookups": {"type": "dict", "valuesrules": {"type": "dict", "schema": {
        "parameter": {"type": "string", "required": True, "empty": False},
        "match": {"type": "string", "required": True, "empty": False},
        "response": {"type": "dict", "required": True},
        "item": {"type": "dict", "required": True},
    }}},
    "jobs": {"type": "dict", "valuesrules": {"type": "dict", "schema": {
        "states": {"type": "list", "required": True, "minlength": 1, "schema": {"type": "string"}},
        "seconds": {"type": "number", "min": 0},
        "response": {"type": "dict", "required": True},
        "errors_response": {"type": "dict", "required": True},
        "error": {"type": "dict", "required": True},
        "page_size": {"type": "integer", "min": 1},
    }}},
}


@dataclass
class RecordSpec:
    endpoint: str
    kind: str
    key: list[Any]  # compiled JMESPath expressions over the single request body
    repeat: str  # ignore (first wins) | update (last wins)
    duplicates_in_one_call: str  # reject | allow
    status_created: int | None
    status_updated: int | None
    response: Any


@dataclass
class FakeConfig:
    auth_header: str | None = None
    auth_prefix: str = ""
    auth_setting: str | None = None
    headers: dict[str, re.Pattern[str]] = field(default_factory=dict)
    content_types: list[str] = field(default_factory=list)
    max_body_bytes: int | None = None
    error_statuses: list[int] = field(default_factory=lambda: [500, 502, 503, 504])
    records: dict[str, RecordSpec] = field(default_factory=dict)
    responses: dict[str, Any] = field(default_factory=dict)  # endpoint name -> canned answer body
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    lookups: dict[str, FakeLookup] = field(default_factory=dict)


@dataclass
class FakeLookup:
    """An endpoint that finds profiles the fake has seen: its query `parameter` must match `match`
    (named groups `name`, an identifier, and `value`); the answer is `response` with $found the
    profiles found, each shaped as `item` ($id, $attributes)."""

    endpoint: str
    parameter: str
    match: re.Pattern[str]
    response: Any
    item: Any


@dataclass
class FakeJob:
    """How the fake runs a bulk endpoint's jobs: the states a job passes through (`seconds` of API
    time in each), and the answers' shapes (placeholders: $job_id, $status, $total, $completed,
    $failed, $created_at, $completed_at; $errors, $next; $error_id, $detail, $pointer, $item)."""

    endpoint: str
    states: list[str]
    seconds: float
    response: Any
    errors_response: Any
    error: Any
    page_size: int


def compile_fake(node: Any, endpoints: dict[str, Endpoint], problems: ProblemList) -> FakeConfig:
    fake = FakeConfig()
    if not isinstance(node, PosDict):
        return fake
    if "auth" in node:
        auth = node["auth"]
        fake.auth_header = str(auth["header"])
        fake.auth_prefix = str(auth.get("prefix", ""))
        fake.auth_setting = str(auth["setting"]) if "setting" in auth else None
    for header, pattern in (node.get("headers") or {}).items():
        try:
            fake.headers[str(header)] = re.compile(str(pattern))
        except re.error as exc:
            problems.add(value_at(node["headers"], header), f"fake.headers.{header}: not a regular expression: {exc}")
    fake.content_types = [str(c) for c in node.get("content_types") or []]
    if "max_body_bytes" in node:
        fake.max_body_bytes = int(node["max_body_bytes"])
    if "error_statuses" in node:
        fake.error_statuses = [int(s) for s in node["error_statuses"]]
    def by_endpoint(section: str) -> Iterator[tuple[str, Any]]:
        """The section's entries for the endpoints there are (a problem for each other name)."""
        entries = node.get(section) or PosDict()
        for endpoint_name, raw in entries.items():
            if endpoint_name in endpoints:
                yield endpoint_name, raw
            else:
                problems.add(key_at(entries, endpoint_name), f"fake.{section}: no endpoint {endpoint_name!r}")

    for endpoint_name, body in by_endpoint("responses"):
        fake.responses[endpoint_name] = plain_value(body)
    for endpoint_name, raw in by_endpoint("records"):
        keys = [compile_selector(text, raw["key"].item_places[i].position, f"fake.records.{endpoint_name}.key",
                                 problems) for i, text in enumerate(raw.get("key") or [])]
        status = raw.get("status") or {}
        fake.records[endpoint_name] = RecordSpec(
            endpoint=endpoint_name, kind=str(raw["kind"]), key=keys, repeat=str(raw.get("repeat", "update")),
            duplicates_in_one_call=str(raw.get("duplicates_in_one_call", "allow")),
            status_created=int(status["created"]) if "created" in status else None,
            status_updated=int(status["updated"]) if "updated" in status else None,
            response=plain_value(raw.get("response")),
        )
    for endpoint_name, raw in by_endpoint("lookups"):
        try:
            match = re.compile(str(raw["match"]))
        except re.error as exc:
            problems.add(value_at(raw, "match"), f"fake.lookups.{endpoint_name}.match: not a regular expression: {exc}")
            continue
        if not {"name", "value"} <= set(match.groupindex):
            problems.add(value_at(raw, "match"), f"fake.lookups.{endpoint_name}.match: needs the named groups "
                                                 "(?P<name>…) and (?P<value>…)")
            continue
        fake.lookups[endpoint_name] = FakeLookup(endpoint_name, str(raw["parameter"]), match,
                                                 plain_value(raw["response"]), plain_value(raw["item"]))
    for endpoint_name, raw in by_endpoint("jobs"):
        fake.jobs[endpoint_name] = FakeJob(
            endpoint=endpoint_name, states=[str(s) for s in raw["states"]], seconds=float(raw.get("seconds", 1.0)),
            response=plain_value(raw["response"]), errors_response=plain_value(raw["errors_response"]),
            error=plain_value(raw["error"]), page_size=int(raw.get("page_size", 100)))
    return fake


def fake_config(plan: DeliveryPlan) -> FakeConfig:
    """The fake's configuration of a compiled delivery section (defaults when it has no `fake:`)."""
    compiled = plan.parts.get(FAKE_PART)
    return compiled if isinstance(compiled, FakeConfig) else FakeConfig()


register_delivery_part(FAKE_PART, FAKE_SHAPE, compile_fake)
