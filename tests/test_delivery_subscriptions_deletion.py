"""The lanes of issue 16's events, delivered in-process to the fake Klaviyo (real socket): User
Subscribed / User Unsubscribed merged into subscription jobs as the subscription lanes batch them,
and delete messages delivered as deletion jobs after the same profile's earlier imports."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conftest import KLAVIYO_SPEC
from delivery_helpers import SETTINGS, deliver

from engine.openapi_check import load_openapi

SUBSCRIBE = "/api/profile-subscription-bulk-create-jobs"
UNSUBSCRIBE = "/api/profile-subscription-bulk-delete-jobs"
DELETION = "/api/data-privacy-deletion-jobs"
IMPORT = "/api/profile-import"


def consent_event(name: str, n: int, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "userId": f"u{n}", "messageId": f"{name}-{n}",
            "timestamp": "2026-11-01T12:00:00Z", "properties": properties}


def calls(fake: Any, path: str) -> list[dict[str, Any]]:
    return [r for r in fake.store.requests if r["path"] == path]


def profiles(call: dict[str, Any]) -> list[dict[str, Any]]:
    return [p["attributes"] for p in call["json"]["data"]["attributes"]["profiles"]["data"]]


def spec_problems(call: dict[str, Any]) -> list[str]:
    return load_openapi(str(KLAVIYO_SPEC)).validate_body(call["method"], call["path"], call["json"])


def test_unsubscribes_go_at_most_100_a_job_by_email_and_phone(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    events = [consent_event("User Unsubscribed", n, email=f"u{n}@example.com") for n in range(180)]
    events += [consent_event("User Unsubscribed", n, phone=f"+1201555{n:04d}") for n in range(180, 230)]
    _, counts = deliver(tmp_path, events, fake.url)
    assert counts == {"pending": 0, "delivered": 230, "rejected": 0, "skipped": 0, "dead": 0}
    jobs = calls(fake, UNSUBSCRIBE)
    assert sorted(len(profiles(job)) for job in jobs) == [30, 100, 100]
    assert all(spec_problems(job) == [] for job in jobs)
    assert {job["json"]["data"]["relationships"]["list"]["data"]["id"] for job in jobs} == {"ListA"}
    sent = [p for job in jobs for p in profiles(job)]
    assert sum(1 for p in sent if set(p["subscriptions"]) == {"email"} and "email" in p) == 180
    assert sum(1 for p in sent if set(p["subscriptions"]) == {"sms"} and "phone_number" in p) == 50
    assert len(fake.store.snapshot()["records"]["unsubscriptions"]) == 230
    assert not calls(fake, "/api/event-bulk-create-jobs")  # the consent change is the whole of it


def test_user_subscribed_shares_jobs_with_identifys_list_subscriptions(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    events: list[dict[str, Any]] = []
    for n in range(120):
        events.append(consent_event("User Subscribed", n, email=f"s{n}@example.com"))
        events.append({"type": "identify", "userId": f"i{n}", "messageId": f"id-{n}",
                       "traits": {"email": f"i{n}@example.com"}})
    _, counts = deliver(tmp_path, events, fake.url)
    assert counts["delivered"] == 240 and counts["dead"] == 0
    jobs = calls(fake, SUBSCRIBE)
    assert all(spec_problems(job) == [] for job in jobs)
    emails = [p["email"] for job in jobs for p in profiles(job)]
    assert sorted(emails) == sorted([f"{kind}{n}@example.com" for kind in "si" for n in range(120)])
    assert any({p["email"][0] for p in profiles(job)} == {"s", "i"} for job in jobs)  # both kinds in one job
    assert len(jobs) < 20  # merged, not one call each


def test_a_deletion_waits_for_the_profiles_earlier_import(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    original = fake.handle

    def slow_imports(method: str, target: str, headers: dict[str, str], raw: bytes) -> Any:
        if target.startswith(IMPORT):  # a deletion sent without waiting would overtake its import
            time.sleep(0.2)
        return original(method, target, headers, raw)

    fake.handle = slow_imports  # type: ignore[method-assign]
    events: list[dict[str, Any]] = []
    for n in range(12):
        email = f"gone{n}@example.com"
        events.append({"type": "identify", "userId": f"g{n}", "messageId": f"id-{n}", "traits": {"email": email}})
        events.append({"type": "delete", "userId": f"g{n}", "messageId": f"del-{n}", "traits": {"email": email}})
    # only a userId: a look-up by external_id, which finds no one (delivered with that reason)
    events.append({"type": "delete", "userId": "nobody", "messageId": "del-userid-only"})
    _, counts = deliver(tmp_path, events, fake.url, settings={**SETTINGS, "listId": None})
    assert counts == {"pending": 0, "delivered": 25, "rejected": 0, "skipped": 0, "dead": 0}
    log = fake.store.requests
    imported = {r["json"]["data"]["attributes"]["email"]: i for i, r in enumerate(log) if r["path"] == IMPORT}
    deleted = {r["json"]["data"]["attributes"]["profile"]["data"]["attributes"]["email"]: i
               for i, r in enumerate(log) if r["path"] == DELETION}
    assert set(deleted) == set(imported) == {f"gone{n}@example.com" for n in range(12)}
    assert all(imported[email] < deleted[email] for email in deleted)
    assert all(spec_problems(r) == [] for r in log if r["path"] == DELETION)
    assert len(fake.store.snapshot()["records"]["deletions"]) == 12
