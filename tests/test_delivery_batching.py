"""Batching as delivery.yaml declares it: bodies valid against Klaviyo's spec, caps kept, order kept,
duplicate unique_ids removed. Delivered in-process to the fake Klaviyo (real socket)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import KLAVIYO_SPEC
from delivery_helpers import SETTINGS, corpus, deliver, expected_event_keys, hand_made

from engine.delivery import batching
from engine.delivery.config import DeliveryPlan
from engine.mapping_set import load_mapping_set
from engine.openapi_check import load_openapi


def spec_problems(request: dict[str, Any]) -> list[str]:
    return load_openapi(str(KLAVIYO_SPEC)).validate_body(request["method"], request["path"], request["json"])


def track(user: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "userId": user, "event": "Clicked", "messageId": f"{user}-{n}",
            "timestamp": "2026-11-01T12:00:00Z", "properties": {"n": n, **extra}}


def identify(user: str, n: int, list_id: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "identify", "userId": user, "messageId": f"id-{user}-{n}",
                             "timestamp": "2026-11-01T12:00:00Z", "traits": {"email": f"{user}@example.com", "n": n}}
    if list_id:
        event["integrations"] = {"Klaviyo": {"listId": list_id}}
    return event


def accepted(fake: Any, path: str) -> list[dict[str, Any]]:
    return [r for r in fake.store.requests if r["path"] == path]


def bulk_events(request: dict[str, Any]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    groups = request["json"]["data"]["attributes"]["events-bulk-create"]["data"]
    return [(g["attributes"]["profile"]["data"]["attributes"], g["attributes"]["events"]["data"]) for g in groups]


def test_mapped_events_become_bulk_calls_that_fit_klaviyos_spec(tmp_path: Path, fake_klaviyo: Any) -> None:
    events = corpus(600, seed=3)
    fake = fake_klaviyo(time_scale=50)
    stats, counts = deliver(tmp_path, events, fake.url)
    assert counts["dead"] == 0 and counts["pending"] == 0
    calls = accepted(fake, "/api/event-bulk-create-jobs")
    assert calls and not accepted(fake, "/api/events")  # every event went in a bulk call
    for call in calls:
        assert spec_problems(call) == []
        assert sum(len(evs) for _, evs in bulk_events(call)) <= 1000
    sent = {(e["attributes"]["metric"]["data"]["attributes"]["name"], e["attributes"]["unique_id"])
            for call in calls for _, evs in bulk_events(call) for e in evs}
    assert sent == expected_event_keys(events)
    for call in accepted(fake, "/api/profile-subscription-bulk-create-jobs"):
        assert spec_problems(call) == []


def test_at_most_1000_events_and_5_mb_a_call(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    events = [track(f"u{i % 40}", i) for i in range(2300)]
    events += [track(f"big{i}", i, blob="x" * 90_000) for i in range(120)]  # ~11 MB of events
    _, counts = deliver(tmp_path, events, fake.url)
    assert counts == {"pending": 0, "delivered": 2420, "rejected": 0, "skipped": 0, "dead": 0}
    calls = accepted(fake, "/api/event-bulk-create-jobs")
    sizes = [len(json.dumps(c["json"]).encode()) for c in calls]
    counts_per_call = [sum(len(evs) for _, evs in bulk_events(c)) for c in calls]
    assert max(counts_per_call) == 1000 and sum(counts_per_call) == 2420
    assert max(sizes) <= 5_000_000
    assert any(size > 4_000_000 for size in sizes)  # the byte cap, not the count, closed some calls


def test_one_profiles_events_keep_input_order_across_calls(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    events = []
    for n in range(2600):  # one busy profile among others: it needs three calls
        events.append(track("busy", n))
        if n % 3 == 0:
            events.append(track(f"other{n % 50}", n))
    deliver(tmp_path, events, fake.url, concurrency=4)
    order = [e["attributes"]["properties"]["n"]
             for call in accepted(fake, "/api/event-bulk-create-jobs")
             for profile, evs in bulk_events(call) if profile.get("external_id") == "busy" for e in evs]
    assert order == list(range(2600))


def test_an_import_goes_before_its_subscription_and_subscriptions_merge_per_list(tmp_path: Path,
                                                                               fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    events = [identify(f"u{i}", i, list_id="ListB" if i % 3 == 0 else None) for i in range(300)]
    _, counts = deliver(tmp_path, events, fake.url)
    assert counts["delivered"] == 300
    log = fake.store.requests
    imported_at = {r["json"]["data"]["attributes"]["email"]: i for i, r in enumerate(log)
                   if r["path"] == "/api/profile-import"}
    # 300 waiting imports are a backlog: they go as a Bulk Import Profiles job (followed to its end first)
    imported_at.update({row["attributes"]["email"]: i for i, r in enumerate(log)
                        if r["path"] == "/api/profile-bulk-import-jobs"
                        for row in r["json"]["data"]["attributes"]["profiles"]["data"]})
    assert len(imported_at) == 300
    per_list: dict[str, int] = {}
    calls = 0
    for i, r in enumerate(log):
        if r["path"] != "/api/profile-subscription-bulk-create-jobs":
            continue
        calls += 1
        assert spec_problems(r) == []
        profiles = r["json"]["data"]["attributes"]["profiles"]["data"]
        list_id = r["json"]["data"]["relationships"]["list"]["data"]["id"]
        per_list[list_id] = per_list.get(list_id, 0) + len(profiles)
        for profile in profiles:
            assert imported_at[profile["attributes"]["email"]] < i
    assert per_list == {"ListB": 100, "ListA": 200}
    assert calls < 30  # subscriptions wait a little for each other instead of going one by one


def subscription(email: str, list_id: str) -> dict[str, Any]:
    return {"data": {"type": "profile-subscription-bulk-create-job", "attributes": {"profiles": {"data": [
        {"type": "profile", "attributes": {"email": email,
                                           "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}}}}]}},
        "relationships": {"list": {"data": {"type": "list", "id": list_id}}}}}


def test_subscriptions_go_1000_a_call_one_list_a_call(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    bodies = [subscription(f"u{i}@example.com", "ListC" if i < 2100 else "ListD") for i in range(2150)]
    _, counts = deliver(tmp_path, [], fake.url,
                        units=hand_made("POST", "/api/profile-subscription-bulk-create-jobs", bodies))
    assert counts["delivered"] == 2150
    calls = accepted(fake, "/api/profile-subscription-bulk-create-jobs")
    sizes = sorted((c["json"]["data"]["relationships"]["list"]["data"]["id"],
                    len(c["json"]["data"]["attributes"]["profiles"]["data"])) for c in calls)
    assert sizes == [("ListC", 100), ("ListC", 1000), ("ListC", 1000), ("ListD", 50)]
    assert all(spec_problems(c) == [] for c in calls)


def test_unsubscribes_go_100_a_call(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    bodies = [{"data": {"type": "profile-subscription-bulk-delete-job", "attributes": {"profiles": {"data": [
        {"type": "profile", "attributes": {"email": f"u{i}@example.com",
                                           "subscriptions": {"email": {"marketing": {"consent": "UNSUBSCRIBED"}}}}}]}},
        "relationships": {"list": {"data": {"type": "list", "id": "ListA"}}}}} for i in range(250)]
    _, counts = deliver(tmp_path, [], fake.url,
                        units=hand_made("POST", "/api/profile-subscription-bulk-delete-jobs", bodies))
    assert counts["delivered"] == 250
    calls = accepted(fake, "/api/profile-subscription-bulk-delete-jobs")
    assert sorted(len(c["json"]["data"]["attributes"]["profiles"]["data"]) for c in calls) == [50, 100, 100]
    assert all(spec_problems(c) == [] for c in calls)


def test_repeated_unique_ids_are_sent_once_and_never_twice_in_one_call(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    same = track("dup", 1)
    other_profile = {**track("dup", 1), "traits": {"email": "dup@example.com"}, "context": {"traits": {
        "email": "dup@example.com"}}}
    events = [same, track("dup", 2), same, dict(same), other_profile, track("dup", 3)]
    _, counts = deliver(tmp_path, events, fake.url)
    assert counts["delivered"] == 6 and counts["dead"] == 0
    for call in accepted(fake, "/api/event-bulk-create-jobs"):
        seen = set()
        for _profile, evs in bulk_events(call):
            for e in evs:
                key = (e["attributes"]["metric"]["data"]["attributes"]["name"], e["attributes"]["unique_id"])
                assert key not in seen, "a unique_id twice in one bulk call"
                seen.add(key)
    kept = [r["key"] for r in fake.store.snapshot()["records"]["events"]]
    assert sorted(k[2] for k in kept) == ["dup-1", "dup-2", "dup-3"]


def test_requests_with_different_headers_never_share_a_call(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    state_a, state_b = tmp_path / "a", tmp_path / "b"
    deliver(state_a, [track("u1", 1), track("u2", 2)], fake.url)
    deliver(state_b, [track("u1", 3)], fake.url, settings={**SETTINGS, "revision": "2026-07-15.pre"})
    assert len(accepted(fake, "/api/event-bulk-create-jobs")) == 2


def test_layout_pointers_name_the_items() -> None:
    plan = DeliveryPlan.for_set(load_mapping_set("klaviyo"))
    spec = plan.by_source["create_event"]
    builder = None
    for unit, (user, n) in enumerate([("a", 1), ("b", 2), ("a", 3)]):
        body = {"data": {"type": "event", "attributes": {
            "properties": {}, "unique_id": str(n), "metric": {"data": {"type": "metric", "attributes": {"name": "M"}}},
            "profile": {"data": {"type": "profile", "attributes": {"external_id": user}}}}}}
        prepared = batching.prepare(spec, body, "ctx")
        assert prepared is not None
        builder = builder or batching.BatchBuilder(spec, prepared.partition, prepared.layout)
        builder.add(unit, prepared)
    assert builder is not None
    rendered = builder.render()
    base = "/data/attributes/events-bulk-create/data"
    assert batching.units_named(rendered, [f"{base}/0/attributes/events/data/1/attributes/time"]) == ({2}, True)
    assert batching.units_named(rendered, [f"{base}/1/attributes/profile/data"]) == ({1}, True)
    assert batching.units_named(rendered, ["/data/type"]) == (set(), False)
    singles = batching.split(spec, json.loads(rendered.body))
    assert [s.single["data"]["attributes"]["unique_id"] for s in singles] == ["1", "3", "2"]
