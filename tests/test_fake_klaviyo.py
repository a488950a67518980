"""The fake Klaviyo on its own: what it checks, how it answers, what it keeps (plain httpx calls)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

KEY = "pk_fake_test"
HEADERS = {"Authorization": f"Klaviyo-API-Key {KEY}", "revision": "2026-07-15",
           "Content-Type": "application/vnd.api+json", "Accept": "application/vnd.api+json"}


def event(user: str, unique_id: str, metric: str = "Clicked") -> dict[str, Any]:
    return {"type": "event", "attributes": {"properties": {}, "unique_id": unique_id,
                                            "metric": {"data": {"type": "metric", "attributes": {"name": metric}}}}}


def bulk(groups: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    return {"data": {"type": "event-bulk-create-job", "attributes": {"events-bulk-create": {"data": [
        {"type": "event-bulk-create", "attributes": {
            "profile": {"data": {"type": "profile", "attributes": {"external_id": user}}},
            "events": {"data": events}}} for user, events in groups]}}}}


def single(user: str, unique_id: str) -> dict[str, Any]:
    body = event(user, unique_id)
    body["attributes"]["profile"] = {"data": {"type": "profile", "attributes": {"external_id": user}}}
    return {"data": body}


@pytest.fixture
def fake(fake_klaviyo: Any) -> Any:
    return fake_klaviyo(api_keys=[KEY])


def post(fake: Any, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(fake.url + path, json=body, headers=headers if headers is not None else HEADERS)


def test_auth_revision_content_type_and_paths_are_checked(fake: Any) -> None:
    body = single("u1", "a")
    assert post(fake, "/api/events", body, {**HEADERS, "Authorization": "Klaviyo-API-Key nope"}).status_code == 401
    without_key = {k: v for k, v in HEADERS.items() if k != "Authorization"}
    assert post(fake, "/api/events", body, without_key).status_code == 401
    missing = post(fake, "/api/events", body, {k: v for k, v in HEADERS.items() if k != "revision"})
    assert missing.status_code == 400 and missing.json()["errors"][0]["source"] == {"parameter": "revision"}
    assert post(fake, "/api/events", body, {**HEADERS, "revision": "July"}).status_code == 400
    assert post(fake, "/api/events", body, {**HEADERS, "Content-Type": "text/plain"}).status_code == 415
    assert post(fake, "/api/nowhere", body).status_code == 404
    assert post(fake, "/api/events", body).status_code == 202


def test_scopes_are_checked_per_operation(fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(scopes=["events:write"])
    assert post(fake, "/api/events", single("u1", "a")).status_code == 202
    refused = post(fake, "/api/profile-import", {"data": {"type": "profile", "attributes": {"email": "a@b.co"}}})
    assert refused.status_code == 403 and "profiles:write" in refused.json()["errors"][0]["detail"]


def test_bodies_are_validated_against_the_spec_with_pointers(fake: Any) -> None:
    body = bulk([("u1", [event("u1", "a"), {"type": "evnt", "attributes": {"properties": {}, "time": "noon"}}])])
    answer = post(fake, "/api/event-bulk-create-jobs", body)
    assert answer.status_code == 400
    pointers = {e["source"]["pointer"] for e in answer.json()["errors"]}
    assert "/data/attributes/events-bulk-create/data/0/attributes/events/data/1/type" in pointers
    assert "/data/attributes/events-bulk-create/data/0/attributes/events/data/1/attributes/time" in pointers
    assert fake.store.snapshot()["records"] == {}


def test_events_are_kept_once_per_profile_metric_and_unique_id(fake: Any) -> None:
    assert post(fake, "/api/events", single("u1", "a")).status_code == 202
    assert post(fake, "/api/events", single("u1", "a")).status_code == 202  # a resend: ignored, like Klaviyo
    assert post(fake, "/api/event-bulk-create-jobs", bulk([("u1", [event("u1", "a"), event("u1", "b")]),
                                                          ("u2", [event("u2", "a")])])).status_code == 202
    kept = sorted((r["key"][1], r["key"][2], r["request"]["data"]["attributes"]["profile"]["data"]["attributes"][
        "external_id"]) for r in fake.store.snapshot()["records"]["events"])
    assert kept == [("Clicked", "a", "u1"), ("Clicked", "a", "u2"), ("Clicked", "b", "u1")]
    assert fake.store.snapshot()["counters"]["events_repeats_ignored"] == 2


def test_a_bulk_call_repeating_a_unique_id_fails_whole_and_caps_hold(fake: Any) -> None:
    repeated = post(fake, "/api/event-bulk-create-jobs", bulk([("u1", [event("u1", "a"), event("u1", "a")])]))
    assert repeated.status_code == 400
    assert repeated.json()["errors"][0]["source"]["pointer"].endswith("/events/data/1")
    too_many = bulk([("u1", [event("u1", str(i)) for i in range(1001)])])
    assert post(fake, "/api/event-bulk-create-jobs", too_many).status_code == 400
    assert fake.store.snapshot()["records"] == {}


def test_profile_import_answers_201_then_200_with_the_id(fake: Any) -> None:
    body = {"data": {"type": "profile", "attributes": {"email": "ada@example.com", "first_name": "Ada"}}}
    first, second = post(fake, "/api/profile-import", body), post(fake, "/api/profile-import", body)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["data"]["id"] == second.json()["data"]["id"]
    assert post(fake, "/api/events", {"data": {**single("x", "e")["data"], "attributes": {
        **single("x", "e")["data"]["attributes"],
        "profile": {"data": {"type": "profile", "attributes": {"email": "ada@example.com"}}}}}}).status_code == 202
    assert len(fake.store.snapshot()["profiles"]) == 1  # the event found the imported profile by email


def test_rate_limits_answer_429_with_retry_after(fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(api_keys=[KEY], time_scale=0.2)  # a slow clock: a burst window of 5 s
    answers = [post(fake, "/api/event-bulk-create-jobs", bulk([("u", [event("u", str(i))])])) for i in range(12)]
    codes = [a.status_code for a in answers]
    assert codes[:10] == [202] * 10 and codes[10:] == [429, 429]
    assert 1 <= int(answers[10].headers["Retry-After"]) <= 5


def test_injected_failures_and_control_endpoints(fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(api_keys=[KEY], error_rate=1.0)
    answer = post(fake, "/api/events", single("u1", "a"))
    assert answer.status_code in (500, 502, 503, 504, 524)
    dropping = fake_klaviyo(api_keys=[KEY], drop_rate=1.0, seed=3)
    with pytest.raises(httpx.TransportError):
        for _ in range(5):
            post(dropping, "/api/events", single("u1", "a"))
    assert httpx.get(fake.url + "/_fake/received").json()["counters"]["injected_errors"] == 1
    assert httpx.post(fake.url + "/_fake/reset").json() == {"reset": True}
    assert httpx.get(fake.url + "/_fake/received").json()["counters"] == {}
