"""`segment-klaviyo send` end to end, as a process, against the fake Klaviyo on a loopback port:
the fake mode, partial 400s, 401/403, rate limits, the outbox commands, secrets kept out of every output."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from delivery_helpers import (
    SECRET,
    corpus,
    expected_event_keys,
    outbox_counts,
    run_cli,
    run_send,
    set_without_bulk_imports,
    summary_line,
    write_events,
    write_settings,
)

ROOT = Path(__file__).resolve().parent.parent


def assert_no_secret(*texts: str | bytes) -> None:
    for text in texts:
        data = text.encode() if isinstance(text, str) else text
        assert SECRET.encode() not in data


def kept_event_keys(fake: Any) -> list[tuple[str, str]]:
    return [(r["key"][1], r["key"][2]) for r in fake.store.snapshot()["records"].get("events", [])]


def test_send_fake_runs_the_whole_pipeline_on_a_fresh_machine() -> None:
    result = run_send("examples/events.ndjson", "--settings", "examples/settings.yaml", "--fake")
    assert result.returncode == 0, result.stderr
    received = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["path"] for r in received} >= {"/api/profile-import", "/api/event-bulk-create-jobs"}
    assert all(200 <= r["status"] < 300 for r in received)
    line = summary_line(result.stderr)
    assert "dead-lettered" in line and "0 dead-lettered" in line
    assert "pk_example_not_a_real_key" not in result.stdout + result.stderr


def test_send_to_a_running_fake_by_base_url_or_environment(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(api_keys=[SECRET], time_scale=20)
    events = corpus(120, seed=11)
    source = write_events(tmp_path, events)
    settings = write_settings(tmp_path)
    result = run_send(source, "--settings", settings, "--base-url", fake.url, "--state", tmp_path / "s1",
                      "--time-scale", "20")
    assert result.returncode == 0, result.stderr
    assert set(kept_event_keys(fake)) == expected_event_keys(events)
    counts = outbox_counts(tmp_path / "s1")
    assert counts["pending"] == counts["dead"] == 0
    assert sum(counts.values()) == 120
    assert_no_secret(result.stdout, result.stderr, (tmp_path / "s1" / "outbox.sqlite3").read_bytes())

    fake.store.reset()
    again = run_send(source, "--settings", settings, "--state", tmp_path / "s2", "--time-scale", "20",
                     env={"KLAVIYO_BASE_URL": fake.url})
    assert again.returncode == 0, again.stderr
    assert set(kept_event_keys(fake)) == expected_event_keys(events)

    # the same input with the same state again: everything is recorded and delivered already
    fake.store.reset()
    third = run_send(source, "--settings", settings, "--base-url", fake.url, "--state", tmp_path / "s1")
    assert third.returncode == 0
    assert "· 0 requests" in summary_line(third.stderr)
    assert fake.store.snapshot()["counters"].get("requests", 0) == 0


def poisoned(count: int) -> tuple[list[dict[str, Any]], set[str]]:
    events = corpus(count, seed=5, mix={"track": 0.7, "order": 0.2, "identify": 0.1})
    poisoned_ids = set()
    for event in events[::9]:
        if event["type"] == "track" and event.get("event") != "Order Completed":
            event["properties"]["note"] = "poison-pill"
            poisoned_ids.add(event["messageId"])
    return events, poisoned_ids


def test_a_400_naming_items_dead_letters_only_those(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(fail_items_matching="poison-pill", time_scale=20)
    events, poisoned_ids = poisoned(300)
    source = write_events(tmp_path, events)
    dead_file = tmp_path / "dead.ndjson"
    result = run_send(source, "--settings", write_settings(tmp_path), "--base-url", fake.url, "--state",
                      tmp_path / "state", "--dead-letter", dead_file, "--time-scale", "20")
    assert result.returncode == 1, result.stderr
    letters = [json.loads(line) for line in dead_file.read_text().splitlines()]
    assert {letter["messageId"] for letter in letters} == poisoned_ids
    for letter in letters:
        assert letter["response"]["status"] == 400
        errors = json.loads(letter["response"]["body"])  # the errors of the answer that name this item
        assert errors and all(e["source"]["pointer"].startswith("/data/attributes/events-bulk-create/data/")
                              for e in errors)
        assert letter["headers"]["Authorization"] == "Klaviyo-API-Key ***"
    counts = outbox_counts(tmp_path / "state")
    assert counts["dead"] == len(poisoned_ids) and counts["pending"] == 0
    assert counts["delivered"] + counts["dead"] + counts["rejected"] + counts["skipped"] == 300
    clean = [e for e in events if e["messageId"] not in poisoned_ids]
    assert set(kept_event_keys(fake)) == expected_event_keys(clean)
    assert f"{len(poisoned_ids)} dead-lettered" in summary_line(result.stderr)
    assert_no_secret(result.stdout, result.stderr, dead_file.read_bytes())

    # the outbox commands: status, dead letters, rejections; replay, then deliver to a healthy fake
    status = run_cli("outbox", "status", "--state", tmp_path / "state")
    total = json.loads(status.stdout.splitlines()[-1])
    assert total["events"]["dead"] == len(poisoned_ids)
    listed = run_cli("outbox", "dead-letters", "--state", tmp_path / "state")
    assert len(listed.stdout.splitlines()) == len(poisoned_ids)
    assert_no_secret(listed.stdout)
    rejected = run_cli("outbox", "rejected", "--state", tmp_path / "state")
    assert all(json.loads(line)["reason"] for line in rejected.stdout.splitlines())
    replay = run_cli("outbox", "replay", "--state", tmp_path / "state")
    assert replay.returncode == 0 and f"{len(poisoned_ids)} dead request(s) back to pending" in replay.stderr
    healthy = fake_klaviyo(time_scale=20)
    resumed = run_send("--resume", "--settings", write_settings(tmp_path), "--base-url", healthy.url, "--state",
                       tmp_path / "state", "--time-scale", "20")
    assert resumed.returncode == 0, resumed.stderr
    assert outbox_counts(tmp_path / "state")["dead"] == 0
    assert len(kept_event_keys(healthy)) == len(poisoned_ids)


@pytest.mark.parametrize("case", ["401", "403"])
def test_401_and_403_stop_the_run_at_once_and_lose_nothing(tmp_path: Path, fake_klaviyo: Any, case: str) -> None:
    if case == "401":
        fake = fake_klaviyo(api_keys=["pk_some_other_key"], time_scale=20)
    else:  # a key that may write events and import profiles (in bulk too), but not subscribe them
        fake = fake_klaviyo(api_keys=[SECRET], time_scale=20,
                            scopes=["events:write", "profiles:write", "profiles:read", "lists:write", "lists:read"])
    events = corpus(200, seed=2, mix={"identify": 1.0})
    source = write_events(tmp_path, events)
    settings = write_settings(tmp_path)
    result = run_send(source, "--settings", settings, "--base-url", fake.url, "--state", tmp_path / "state",
                      "--time-scale", "20")
    assert result.returncode == 2
    if case == "401":
        assert "HTTP 401" in result.stderr and "privateKey" in result.stderr
    else:
        assert "HTTP 403" in result.stderr and "subscriptions:write" in result.stderr
        assert "lists:write, profiles:write, subscriptions:write" in result.stderr
    counters = fake.store.snapshot()["counters"]
    # stopped at once: only the calls already in flight were refused, nothing was tried after them
    assert counters[f"status_{case}"] <= 8
    assert counters["requests"] - counters.get("accepted", 0) == counters[f"status_{case}"]
    counts = outbox_counts(tmp_path / "state")
    assert counts["dead"] == 0 and counts["pending"] > 0
    assert_no_secret(result.stdout, result.stderr)

    working = fake_klaviyo(api_keys=[SECRET], time_scale=20)  # the key fixed: the same state delivers all
    again = run_send(source, "--settings", settings, "--base-url", working.url, "--state", tmp_path / "state",
                     "--time-scale", "20")
    assert again.returncode == 0, again.stderr
    counts = outbox_counts(tmp_path / "state")
    assert counts == {"pending": 0, "delivered": 200, "rejected": 0, "skipped": 0, "dead": 0}


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    source = write_events(tmp_path, corpus(3))
    no_key = tmp_path / "nokey.json"
    no_key.write_text(json.dumps({"listId": "L"}))
    result = run_send(source, "--settings", no_key, "--fake")
    assert result.returncode == 2 and "privateKey" in result.stderr
    classic = run_send(source, "--mappings", "klaviyo-classic", "--set", "apiKey=abcdef", "--fake")
    assert classic.returncode == 2 and "--allow-compatibility-only" in classic.stderr
    missing = run_send(tmp_path / "nope.ndjson", "--settings", write_settings(tmp_path), "--fake")
    assert missing.returncode == 2


def test_a_run_at_the_published_limits_gets_almost_no_429(tmp_path: Path, fake_klaviyo: Any) -> None:
    # 900 profile imports: more than the 750 a steady window allows, so the sender must wait for the
    # next window. With a time scale of 20 the fake's minute lasts 3 s (and so does the sender's).
    # (A backlog of 900 would go as a Bulk Import Profiles job: a copy of the set keeps them single.)
    fake = fake_klaviyo(time_scale=20)
    events = [{"type": "identify", "userId": f"u{i}", "messageId": f"rl-{i}", "traits": {"email": f"u{i}@x.io"}}
              for i in range(900)]
    source = write_events(tmp_path, events)
    settings = write_settings(tmp_path, listId=None)
    singles = set_without_bulk_imports(tmp_path)
    started = time.monotonic()
    result = run_send(source, "--settings", settings, "--base-url", fake.url, "--state", tmp_path / "state",
                      "--time-scale", "20", "--concurrency", "16", "--mappings", singles)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    counters = fake.store.snapshot()["counters"]
    accepted, throttled = counters.get("accepted", 0), counters.get("rate_limited", 0)
    assert accepted == 900
    assert throttled / (accepted + throttled) < 0.01, counters
    assert elapsed >= 60 / 20  # it did wait for the next steady window
    assert "answered 429" in summary_line(result.stderr)


def test_delivering_collects_less_and_leaves_the_collector_as_it_found_it() -> None:
    import gc

    from engine.cli.send_command import fewer_collections

    before = gc.get_threshold()
    with fewer_collections():
        assert gc.get_threshold() == (before[0], before[1], 100)
        assert gc.get_freeze_count() > 0  # what existed before delivery is not walked again
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
