"""Engage audiences delivered (rules/audience.yaml, delivery.yaml's batching.audience_lists): Audience
Entered events merged per list into Bulk Import Profiles jobs with the list relationship, followed to
their end like identify's bulk imports; events without a list rejected and kept; Audience Exited a look-up.
Through `send --fake` (a child process) and in-process to the fake Klaviyo (real socket)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import KLAVIYO_SPEC
from delivery_helpers import (
    SETTINGS,
    deliver,
    outbox_counts,
    run_cli,
    run_send,
    summary_line,
    write_events,
    write_settings,
)

from engine.delivery.sqlite_outbox import SQLiteOutbox
from engine.openapi_check import load_openapi

BULK = "/api/profile-bulk-import-jobs"
NO_LIST = {**SETTINGS, "listId": None}


def entered(n: int, list_id: str | None = None, external_list: str | None = None, **traits: Any) -> dict[str, Any]:
    personas: dict[str, Any] = {"computation_class": "audience", "computation_key": "vip"}
    if list_id is not None:
        personas["audience_settings"] = {"listId": list_id}
    if external_list is not None:
        personas["external_audience_id"] = external_list
    return {"type": "track", "event": "Audience Entered", "userId": f"u{n}", "messageId": f"enter-{n}",
            "timestamp": "2026-11-01T12:00:00Z", "properties": {"audience_key": "vip", "vip": True},
            "context": {"traits": {"email": f"u{n}@example.com", **traits}, "personas": personas}}


def jobs_by_list(calls: list[dict[str, Any]]) -> dict[str, list[list[dict[str, Any]]]]:
    """list id → the profile rows of each audience job sent for it (jobs without a list are left out)."""
    found: dict[str, list[list[dict[str, Any]]]] = {}
    for call in calls:
        lists = call["json"]["data"].get("relationships", {}).get("lists", {}).get("data", [])
        if lists:
            assert len(lists) == 1
            found.setdefault(lists[0]["id"], []).append(
                [row["attributes"] for row in call["json"]["data"]["attributes"]["profiles"]["data"]])
    return found


def test_send_fake_delivers_an_audience_entered_batch_as_one_job_per_list(tmp_path: Path) -> None:
    events = [entered(n, list_id="AudList") for n in range(150)]
    events += [entered(n, external_list="ExtList") for n in range(150, 200)]
    events.append({**entered(900, external_list="ExtList"), "event": "Audience Exited", "messageId": "exit-900"})
    events.append(entered(901))  # no list in the event, none in the settings
    state = tmp_path / "state"
    result = run_send(write_events(tmp_path, events), "--settings", write_settings(tmp_path, listId=None), "--fake",
                      "--state", state, "--time-scale", "50")
    assert result.returncode == 0, result.stderr  # rejected by the mapping: an outcome, not a failure
    assert "201 delivered" in summary_line(result.stderr) and "1 rejected" in summary_line(result.stderr)
    assert outbox_counts(state) == {"pending": 0, "delivered": 201, "rejected": 1, "skipped": 0, "dead": 0}
    received = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    # no track event, no profile-import besides; the exit's look-up (its profile is not known: no removal)
    assert [r["path"] for r in received if r["path"] != BULK] == ["/api/profiles"]
    received = [r for r in received if r["path"] == BULK]
    assert all(r["status"] == 202 for r in received)
    spec = load_openapi(str(KLAVIYO_SPEC))
    assert all(spec.validate_body("POST", BULK, r["json"]) == [] for r in received)
    by_list = jobs_by_list(received)
    assert sorted(by_list) == ["AudList", "ExtList"]
    assert len(by_list["AudList"]) <= 2 and len(by_list["ExtList"]) == 1  # merged, not a call each
    audience_rows = [row for job in by_list["AudList"] for row in job]
    assert sorted(row["external_id"] for row in audience_rows) == sorted(f"u{n}" for n in range(150))
    assert audience_rows[0] == {"email": "u0@example.com", "external_id": "u0"}
    assert sorted(row["email"] for job in by_list["ExtList"] for row in job) == \
        sorted(f"u{n}@example.com" for n in range(150, 200))
    assert "it keeps 200 profiles" in result.stderr
    outbox = SQLiteOutbox(state, exclusive=False, create=False)
    try:
        reasons = sorted(r["reason"] for r in outbox.events("rejected"))
        ended = [r["reason"] for r in outbox.events("delivered") if r["reason"]]
    finally:
        outbox.close()
    assert len(reasons) == 1 and reasons[0].startswith("Audience Entered needs a Klaviyo list")
    assert ended == ["step 2 of rule 'audience/exited' skipped: no Klaviyo profile has u900@example.com"]


def test_audience_rows_wait_for_the_profiles_import_and_a_refused_row_is_dead_lettered(
        tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50, fail_job_rows_matching="refuse-me")
    events: list[dict[str, Any]] = []
    for n in range(120):  # a backlog of identifies: they go as profile_imports' jobs, without a list
        events.append({"type": "identify", "userId": f"u{n}", "messageId": f"id-{n}",
                       "traits": {"email": f"u{n}@example.com", "plan": "pro"}})
    events += [entered(n, external_list="ExtList") for n in range(0, 120, 2)]
    events.append(entered(500, external_list="ExtList", email="refuse-me@example.com"))
    _, counts = deliver(tmp_path / "state", events, fake.url, settings=NO_LIST)
    assert counts == {"pending": 0, "delivered": 180, "rejected": 0, "skipped": 0, "dead": 1}
    log = [r for r in fake.store.requests if r["path"] == BULK]
    imported_at: dict[str, int] = {}
    joined_at: dict[str, int] = {}
    for index, call in enumerate(log):
        lists = call["json"]["data"].get("relationships")
        for row in call["json"]["data"]["attributes"]["profiles"]["data"]:
            (joined_at if lists else imported_at).setdefault(row["attributes"]["external_id"], index)
    assert set(imported_at) == {f"u{n}" for n in range(120)}
    assert set(joined_at) == {f"u{n}" for n in range(0, 120, 2)} | {"u500"}
    assert all(imported_at[user] < joined_at[user] for user in joined_at if user != "u500")
    # the fake keeps both kinds of row as profile imports: one profile per user (not the refused row)
    profiles = fake.store.snapshot()["profiles"].values()
    assert sorted(p["external_id"] for p in profiles) == sorted(f"u{n}" for n in range(120))
    outbox = SQLiteOutbox(tmp_path / "state", exclusive=False, create=False)
    try:
        letters = list(outbox.dead_letters())
    finally:
        outbox.close()
    assert len(letters) == 1 and letters[0]["messageId"] == "enter-500"
    assert "refused this row" in json.dumps(letters[0]) and "refuse-me@example.com" in json.dumps(letters[0])


def test_an_entry_rejected_for_want_of_a_list_is_delivered_after_the_list_is_set(tmp_path: Path) -> None:
    state = tmp_path / "state"
    source = write_events(tmp_path, [entered(n) for n in range(3)])
    first = run_send(source, "--settings", write_settings(tmp_path, listId=None), "--fake", "--state", state)
    assert first.returncode == 0, first.stderr
    assert outbox_counts(state)["rejected"] == 3
    fixed = write_settings(tmp_path, listId="LateList")
    remap = run_cli("outbox", "replay", "--remap", "--rejected", "--state", state, "--settings", fixed)
    assert remap.returncode == 0, remap.stderr
    resumed = run_send("--resume", "--state", state, "--settings", fixed, "--fake", "--time-scale", "50")
    assert resumed.returncode == 0, resumed.stderr
    assert outbox_counts(state) == {"pending": 0, "delivered": 3, "rejected": 0, "skipped": 0, "dead": 0}
    received = [json.loads(line) for line in resumed.stdout.splitlines() if line.startswith("{")]
    assert {n: len(jobs) for n, jobs in jobs_by_list(received).items()} == {"LateList": 1}
