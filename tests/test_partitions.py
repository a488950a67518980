"""Split lanes (order.partitions): which partition a request is recorded in, and each worker's part of
the lane's rate limits. The PostgreSQL side (leases of the parts, their takeover) is in
test_postgres_delivery.py; the multi-process order check in test_postgres_chaos.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from delivery_helpers import PROJECT_ROOT

import engine
from engine.delivery.config import DeliveryPlan, RateWindow
from engine.delivery.outbox import NewUnit
from engine.delivery.partitions import lane_share, partition_name, stable_index
from engine.delivery.ratelimit import RateLimiter


@pytest.fixture(scope="module")
def plan() -> DeliveryPlan:
    return DeliveryPlan.for_set(engine.load_mapping_set("klaviyo"))


def event_unit(profile: dict[str, str], metric: str = "Viewed") -> NewUnit:
    body = {"data": {"type": "event", "attributes": {
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
        "profile": {"data": {"type": "profile", "attributes": profile}}, "properties": {}}}}
    return NewUnit(0, "track", "POST", "/api/events", "{}", "json", json.dumps(body))


def test_the_klaviyo_set_splits_the_events_lane_only(plan: DeliveryPlan) -> None:
    assert plan.lane_partitions == {"events": 6}
    profile = NewUnit(0, "identify", "POST", "/api/profile-import", "{}", "json",
                      json.dumps({"data": {"type": "profile", "attributes": {"email": "ada@example.com"}}}))
    assert plan.lane_of("POST", "/api/profile-import", profile) == "profiles"
    assert plan.lane_of("POST", "/api/events") == "events"  # without the request: its lane
    assert plan.lane_of("GET", "/api/accounts", NewUnit(0, "r", "GET", "/api/accounts", "{}", None, None)) == ""


def test_the_ordering_key_is_the_first_identifier_in_declared_order(plan: DeliveryPlan) -> None:
    endpoint = plan.endpoints["create_event"]
    assert plan.subject_identifiers[:3] == ["id", "email", "phone_number"]
    both = event_unit({"external_id": "user-1", "email": "ada@example.com"})
    assert plan.ordering_key(endpoint, both) == "email=ada@example.com"
    assert plan.ordering_key(endpoint, event_unit({"external_id": "user-1", "email": ""})) == "external_id=user-1"
    assert plan.ordering_key(endpoint, event_unit({})) == ""  # no identified subject: one shared key
    chained = NewUnit(0, "r", "POST", "/api/events", "{}", "json", None,
                      chain=json.dumps({"subject": {"lane": "events", "identifiers": {"external_id": "u9"}}}))
    assert plan.ordering_key(endpoint, chained) == "external_id=u9"


def test_one_ordering_key_always_maps_to_one_partition(plan: DeliveryPlan) -> None:
    # Known values: CRC-32 of the key, modulo the parts. A change here re-partitions every database
    # whose workers run two releases at once, so it must be deliberate.
    assert [stable_index(key, 6) for key in ("email=ada@example.com", "external_id=user-1", "")] == [4, 1, 0]
    first = plan.lane_of("POST", "/api/events", event_unit({"email": "ada@example.com"}, "Viewed"))
    assert first == "events#4/6"
    # the same person, another event, other attributes beside the email: the same partition
    again = event_unit({"email": "ada@example.com", "first_name": "Ada", "external_id": "u3"}, "Ordered")
    assert plan.lane_of("POST", "/api/events", again) == first
    # what the split cannot order: known by external_id alone, the same person may be elsewhere
    assert plan.lane_of("POST", "/api/events", event_unit({"external_id": "u3"})) == "events#0/6"
    spread = {plan.lane_of("POST", "/api/events", event_unit({"email": f"user{n}@example.com"})) for n in range(200)}
    assert spread == {partition_name("events", index, 6) for index in range(6)}


def test_partitions_are_the_same_in_every_process(plan: DeliveryPlan) -> None:
    """Python's hash() of a str is salted per process: a partition must not depend on it."""
    emails = [f"user{n}@example.com" for n in range(50)]
    here = [plan.lane_of("POST", "/api/events", event_unit({"email": email})) for email in emails]
    script = ("import json, sys; import engine; from engine.delivery.config import DeliveryPlan; "
              "from test_partitions import event_unit; "
              "plan = DeliveryPlan.for_set(engine.load_mapping_set('klaviyo')); "
              "print(json.dumps([plan.lane_of('POST', '/api/events', event_unit({'email': e})) "
              "for e in json.loads(sys.argv[1])]))")
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(PROJECT_ROOT / "tests")}
        other = subprocess.run([sys.executable, "-c", script, json.dumps(emails)], cwd=PROJECT_ROOT, env=env,
                               capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(other.stdout) == here


def test_a_partition_names_its_lane_and_share() -> None:
    assert partition_name("events", 2, 6) == "events#2/6" and partition_name("events", 0, 1) == "events"
    assert lane_share("events#2/6") == ("events", 1 / 6)
    assert lane_share("events") == ("events", 1.0) and lane_share("") == ("", 1.0)
    assert lane_share("odd#name") == ("odd#name", 1.0)  # not a part's name: a whole lane


def test_a_worker_holding_m_of_k_partitions_keeps_to_m_over_k_of_the_limits() -> None:
    windows = [RateWindow("burst", 10, 1.0), RateWindow("steady", 150, 60.0)]
    limiter = RateLimiter(windows)
    assert limiter.limits == [10, 150]
    limiter.set_share(2 / 6)
    assert limiter.limits == [3, 50]  # 10 × 2/6 = 3.3 → 3; 150 × 2/6 = 50
    limiter.set_share(1 / 6)
    assert limiter.limits == [1, 25]
    # three workers holding 2 of 6 each: together at most the published limits
    assert 3 * (150 * 2 // 6) == 150 and 3 * (10 * 2 // 6) <= 10
    assert limiter.delay(0.0) == 0.0
    limiter.record(0.0)
    assert limiter.delay(0.2) == pytest.approx(0.8)  # its one request a second is used: wait for the window
    limiter.set_share(1.0)  # one worker holding every part: the whole budget again
    assert limiter.limits == [10, 150] and limiter.delay(0.2) == 0.0
