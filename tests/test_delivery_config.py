"""The klaviyo set's delivery section: it matches Klaviyo's spec, and a broken one is reported at FILE:LINE:COL."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import FULL_SPEC_VARIABLE, KLAVIYO_SPEC

from engine.delivery.config import DeliveryPlan
from engine.fake.spec_trim import trim_openapi
from engine.mapping_set import load_mapping_set
from engine.problems import MappingSetError

SET = Path(__file__).resolve().parent.parent / "mappings" / "klaviyo"
FULL_SPEC = os.environ.get(FULL_SPEC_VARIABLE, "")
needs_full_spec = pytest.mark.skipif(
    not FULL_SPEC or not Path(FULL_SPEC).is_file(),
    reason=f"Klaviyo's full OpenAPI document is not shipped; set {FULL_SPEC_VARIABLE} to its path to compare the "
           "trimmed copy with it (mappings/klaviyo/openapi/NOTE.md says where it comes from)")


@pytest.fixture(scope="module")
def plan() -> DeliveryPlan:
    return DeliveryPlan.for_set(load_mapping_set("klaviyo"))


@pytest.fixture(scope="module")
def full_spec() -> dict:
    return json.loads(Path(FULL_SPEC).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def shipped_spec() -> dict:
    return json.loads(KLAVIYO_SPEC.read_text(encoding="utf-8"))


@needs_full_spec
def test_the_shipped_spec_is_exactly_the_full_specs_parts(plan: DeliveryPlan, full_spec: dict) -> None:
    assert plan.spec_path is not None
    shipped = json.loads(plan.spec_path.read_text(encoding="utf-8"))
    assert "MIT" in shipped["x-trimmed"]
    assert shipped == trim_openapi(full_spec, list(plan.endpoints), shipped["x-trimmed"])
    # and, spelled out: every operation, schema and response in the copy is the full document's own
    for template, item in shipped["paths"].items():
        for method, operation in item.items():
            assert operation == full_spec["paths"][template][method]
    for section, entries in shipped["components"].items():
        for name, entry in entries.items():
            assert entry == full_spec["components"][section][name], f"{section}/{name}"
    assert {k: v for k, v in shipped.items() if k not in ("paths", "components", "x-trimmed")} == \
        {k: full_spec[k] for k in ("openapi", "info", "servers", "security")}


def test_rate_limits_and_scopes_are_the_published_ones(plan: DeliveryPlan, shipped_spec: dict) -> None:
    # (the shipped copy's operations are the full document's, unchanged: the test above)
    for name, endpoint in plan.endpoints.items():
        operation = shipped_spec["paths"][endpoint.path][endpoint.method.lower()]
        assert operation["operationId"] == name
        published = operation["x-klaviyo-ratelimit"]
        declared = {w.name: f"{w.limit}/{'s' if w.seconds == 1 else 'm'}" for w in endpoint.rate_windows}
        assert declared == published, name
        assert endpoint.scopes == operation["x-klaviyo-scopes"]


def test_batching_caps_are_klaviyos(plan: DeliveryPlan) -> None:
    caps = {spec.name: (spec.source.name, spec.target.name, spec.max_items, spec.max_bytes) for spec in plan.batches}
    assert caps == {
        "events": ("create_event", "bulk_create_events", 1000, 5_000_000),
        "profile_imports": ("create_or_update_profile", "bulk_import_profiles", 10_000, 5_000_000),
        "audience_lists": ("bulk_import_profiles", "bulk_import_profiles", 10_000, 5_000_000),
        "subscribes": ("bulk_subscribe_profiles", "bulk_subscribe_profiles", 1000, 5_000_000),
        "unsubscribes": ("bulk_unsubscribe_profiles", "bulk_unsubscribe_profiles", 100, 5_000_000),
    }
    # the fake splits bulk imports as profile_imports declares (the first batching into the endpoint)
    assert plan.by_target["bulk_import_profiles"].name == "profile_imports"
    assert plan.retry.statuses == {429, 500, 502, 503, 504, 524}
    assert set(plan.stop) == {401, 403}


def _broken_copy(tmp_path: Path, old: str, new: str) -> Path:
    folder = tmp_path / "klaviyo-broken"
    shutil.copytree(SET, folder)
    delivery = folder / "delivery.yaml"
    text = delivery.read_text(encoding="utf-8")
    assert old in text
    delivery.write_text(text.replace(old, new, 1), encoding="utf-8")
    return folder


@pytest.mark.parametrize(("old", "new", "message"), [
    ("max_items: 1000                   # events per call", "max_items: lots", "'max_items' must be a integer"),
    ("rate_limit: {burst: 10/s, steady: 150/m}", "rate_limit: {burst: 10/s, steady: fast}", "does not match"),
    ("from: create_event", "from: create_events", "no endpoint 'create_events'"),
    ("                    data: $items", "                    data: $itemz", "unknown placeholder '$itemz'"),
    ("request: POST /api/profile-import", "request: POST /api/profile-imports",
     "the spec has POST /api/profile-import"),
    ("  statuses: [429", "  status: [429", "unknown key 'status'"),
    ("pointer: source.pointer", "pointer: source[", "not a JMESPath expression"),
    ("  endpoint: get_accounts", "  endpoint: get_account", "check.endpoint: no endpoint 'get_account'"),
    ("  shows: \"data[0]", "  shows: \"data[", "check.shows: not a JMESPath expression"),
    ("    get_accounts:\n      data:", "    get_acounts:\n      data:", "fake.responses: no endpoint 'get_acounts'"),
    ("  partitions: {events: 6}", "  partitions: {event: 6}", "order.partitions: no endpoint is in lane 'event' "
                                                              "(lanes: events, profiles, subscriptions)"),
    ("  partitions: {events: 6}", "  partitions: {events: 11}", "order.partitions.events: 11 partitions would leave "
     "each less than one request of bulk_create_events's burst limit (10); at most 10"),
    ("  partitions: {events: 6}", "  partitions: {profiles: 4}", "order.partitions.profiles: 4 partitions would "
     "leave each less than one request of request_profile_deletion's burst limit (3); at most 3"),
    ("  partitions: {events: 6}", "  partitions: {events: 0}", "'events' must be at least 1"),
    ("    lane: events", "    lane: events#2", "lane 'events#2': a lane's name cannot hold '#'"),
])
def test_a_broken_delivery_section_is_reported_at_its_place(tmp_path: Path, old: str, new: str, message: str) -> None:
    folder = _broken_copy(tmp_path, old, new)
    with pytest.raises(MappingSetError) as raised:
        load_mapping_set(folder)
    problems = [str(p) for p in raised.value.problems]
    hits = [p for p in problems if message in p]
    assert hits, problems
    assert re.match(r".*delivery\.yaml:\d+:\d+: ", hits[0]), hits[0]
    line = int(hits[0].split("delivery.yaml:")[1].split(":")[0])
    assert new.split(":")[0].strip().split()[0] in (folder / "delivery.yaml").read_text().splitlines()[line - 1]


def test_validate_command_reports_delivery_problems(tmp_path: Path) -> None:
    from delivery_helpers import run_cli

    folder = _broken_copy(tmp_path, "max_items: 100 ", "max_items: 0 ")
    result = run_cli("validate", folder)
    assert result.returncode == 1
    assert "delivery.yaml:" in result.stdout and "max_items" in result.stdout
