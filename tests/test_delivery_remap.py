"""Fix and resend: the outbox keeps each undelivered event's input, `outbox replay --remap` maps
dead-lettered (and, with --rejected, rejected) events again with the current mapping and settings,
and `send` names the most common dead-letter reasons; skip lines never land inside the progress bar."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from conftest import PROJECT_ROOT
from delivery_helpers import (
    SECRET,
    corpus,
    outbox_counts,
    run_cli,
    run_send,
    send_command,
    summary_line,
    write_events,
    write_settings,
)

BROKEN = "Poison Pill"  # an event name the (fake) API refuses; the fixed mapping renames it


def events_with_broken_names() -> tuple[list[dict[str, Any]], list[int]]:
    events = corpus(60, seed=3, mix={"track": 0.8, "screen": 0.2})
    broken = [i for i, e in enumerate(events) if e["type"] == "track"][::4]
    for index in broken:
        events[index]["event"] = BROKEN
    return events, broken


def fixed_set(folder: Path) -> Path:
    """A copy of the klaviyo set whose event_renames table renames the broken name."""
    run = run_cli("init", folder / "fixed")
    assert run.returncode == 0, run.stderr
    tables = folder / "fixed" / "tables.yaml"
    text = tables.read_text(encoding="utf-8")
    assert text.count("  event_renames:\n    ignore_case: true\n    lookup: {}\n") == 1
    tables.write_text(text.replace("  event_renames:\n    ignore_case: true\n    lookup: {}\n",
                                   f"  event_renames:\n    ignore_case: true\n    lookup: {{{BROKEN}: Antidote}}\n"),
                      encoding="utf-8")
    return folder / "fixed"


def stored(state: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(state / "outbox.sqlite3") as db:
        return list(db.execute(query))


def metric_names(fake: Any) -> list[str]:
    return [record["key"][1] for record in fake.store.snapshot()["records"].get("events", [])]


def test_fix_the_mapping_then_remap_and_resend_the_dead_events(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(fail_items_matching=BROKEN, time_scale=20)
    events, broken = events_with_broken_names()
    settings = write_settings(tmp_path)
    state = tmp_path / "state"
    first = run_send(write_events(tmp_path, events), "--settings", settings, "--base-url", fake.url, "--state", state,
                     "--time-scale", "20")
    assert first.returncode == 1, first.stderr
    assert f"{len(broken)} dead-lettered" in summary_line(first.stderr)
    reasons = [line for line in first.stderr.splitlines() if line.startswith("most common dead-letter reasons: ")]
    assert reasons == [f"most common dead-letter reasons: {len(broken)} × HTTP 400: the API refused this item"]
    # The input is kept for the dead events (and nothing else: delivered ones let it go, skips never had it).
    kept = stored(state, "SELECT idx, status FROM events WHERE raw IS NOT NULL ORDER BY idx")
    assert kept == [(index, "dead") for index in broken]
    assert SECRET.encode() not in (state / "outbox.sqlite3").read_bytes()

    remap = run_cli("outbox", "replay", "--remap", "--state", state, "--mappings", fixed_set(tmp_path),
                    "--settings", settings)
    assert remap.returncode == 0, remap.stderr
    source = stored(state, "SELECT DISTINCT source FROM events")[0][0]
    assert [json.loads(line) for line in remap.stdout.splitlines()] == [
        {"source": source, "event": index, "was": "dead", "now": "pending", "requests": 1} for index in broken]
    assert remap.stderr == (f"mapped again: {len(broken)} pending; deliver the pending ones with: segment-klaviyo "
                            f"send --resume --state {state} --settings …\n")
    resumed = run_send("--resume", "--settings", settings, "--base-url", fake.url, "--state", state,
                       "--time-scale", "20")
    assert resumed.returncode == 0, resumed.stderr
    assert outbox_counts(state)["dead"] == 0
    assert metric_names(fake).count("Antidote") == len(broken)
    assert BROKEN not in metric_names(fake)
    assert stored(state, "SELECT count(*) FROM events WHERE raw IS NOT NULL") == [(0,)]


def test_remap_rejected_events_with_new_settings(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=20)
    events = [{"type": "track", "userId": f"u-{i}", "messageId": f"m-{i}", "event": "Signed In",
               "timestamp": "2026-11-01T12:00:00Z"} for i in range(3)]
    events[1]["properties"] = {"email": "a@example.com"}
    state = tmp_path / "state"
    first = run_send(write_events(tmp_path, events), "--settings", write_settings(tmp_path, enforceEmail=True),
                     "--base-url", fake.url, "--state", state, "--time-scale", "20")
    assert first.returncode == 0, first.stderr
    assert outbox_counts(state)["rejected"] == 2
    # an event recorded by an older version kept no input: it says so and stays rejected
    with sqlite3.connect(state / "outbox.sqlite3") as db:
        db.execute("UPDATE events SET raw = NULL WHERE idx = 2")

    plain = run_cli("outbox", "replay", "--remap", "--state", state, "--settings", write_settings(tmp_path))
    assert (plain.returncode, plain.stdout) == (0, "")  # no dead events; rejected ones only with --rejected
    assert plain.stderr.startswith("mapped again: none;")
    remap = run_cli("outbox", "replay", "--remap", "--rejected", "--state", state, "--settings",
                    write_settings(tmp_path))
    assert remap.returncode == 1
    lines = [json.loads(line) for line in remap.stdout.splitlines()]
    assert [(line["event"], line["was"], line["now"], line["requests"]) for line in lines] == \
        [(0, "rejected", "pending", 1), (2, "rejected", "rejected", 0)]
    assert lines[1]["reason"] == ("its input was not kept (recorded by an older version, or already delivered): "
                                  "cannot map it again")
    assert remap.stderr.startswith("mapped again: 1 pending, 1 rejected;")
    resumed = run_send("--resume", "--settings", write_settings(tmp_path), "--base-url", fake.url, "--state", state,
                       "--time-scale", "20")
    assert resumed.returncode == 0, resumed.stderr
    assert outbox_counts(state) == {"pending": 0, "delivered": 2, "rejected": 1, "skipped": 0, "dead": 0}


def test_replay_usage_errors(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert run_send(write_events(tmp_path, corpus(3)), "--settings", write_settings(tmp_path), "--fake", "--state",
                    state).returncode == 0
    for args, message in ((["--rejected"], "--rejected needs --remap"),
                          (["--remap", "--unit", "1"], "--remap maps whole events again: leave out --unit"),
                          (["--remap", "--mappings", "klaviyo-classic"],
                           f"--state {state} holds events of mapping set 'klaviyo', not 'klaviyo-classic'")):
        run = run_cli("outbox", "replay", "--state", state, *args)
        assert (run.returncode, run.stdout, run.stderr) == (2, "", f"segment-klaviyo: {message}\n")


def test_skip_and_rejection_lines_never_land_inside_the_progress_bar(tmp_path: Path) -> None:
    events = write_events(tmp_path, corpus(400, seed=8))
    plain = run_send(events, "--settings", write_settings(tmp_path), "--fake")
    assert plain.returncode == 0, plain.stderr
    expected = [line for line in plain.stderr.splitlines() if line.startswith('{"event"')]
    bar = subprocess.run([*send_command(events, "--settings", write_settings(tmp_path), "--fake")[:-2],
                          "--progress", "always"], cwd=PROJECT_ROOT, capture_output=True, timeout=120)
    assert bar.returncode == 0
    stderr = bar.stderr.decode("utf-8")  # (bytes: text mode would turn the bar's \r into line ends)
    assert "\r[" in stderr
    # On a terminal, each line shows alone: no bar before it, in it or after it.
    shown = [line for line in terminal_lines(stderr) if '{"event"' in line]
    assert shown == expected
    assert len(expected) > 20


def terminal_lines(text: str) -> list[str]:
    """What a terminal shows for `text`: a carriage return goes back to the line's start and
    overwrites what is there."""
    shown = []
    for line in text.split("\n"):
        screen: list[str] = []
        for piece in line.split("\r"):
            screen[:len(piece)] = piece
        shown.append("".join(screen).rstrip(" "))
    return shown
