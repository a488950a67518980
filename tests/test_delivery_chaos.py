"""Chaos: 2,000 events, a fake Klaviyo that fails 20% of requests with 5xx, drops 5% of connections and
throttles in bursts, and the sender killed with SIGKILL twice mid-run and started again on the same state.

Afterwards the fake holds every expected event exactly once, every profile and subscription, and the
outbox accounts for every input event (delivered + rejected + skipped, none dead, none pending)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from delivery_helpers import (
    PROJECT_ROOT,
    SECRET,
    SETTINGS,
    corpus,
    expected_event_keys,
    expected_requests,
    outbox_counts,
    send_command,
    set_without_bulk_imports,
    summary_line,
    write_events,
    write_settings,
)

SCALE = "20"


def accepted(fake: Any) -> int:
    return int(fake.store.snapshot()["counters"].get("accepted", 0))


def start_sender(source: Path, settings: Path, url: str, state: Path, log: Path,
                 *more: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(send_command(source, "--settings", settings, "--base-url", url, "--state", state,
                                         "--time-scale", SCALE, *more),
                            cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True)


def kill_after(process: subprocess.Popen[str], fake: Any, more: int, timeout: float = 60) -> bool:
    """SIGKILL the sender once the fake has accepted `more` requests more; False if it finished first."""
    target = accepted(fake) + more
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if accepted(fake) >= target:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            return True
        time.sleep(0.005)
    raise AssertionError("the sender made no progress")


def test_chaos_two_kills_nothing_lost_nothing_doubled(tmp_path: Path, fake_klaviyo: Any) -> None:
    started = time.monotonic()
    fake = fake_klaviyo(time_scale=float(SCALE), error_rate=0.2, drop_rate=0.05, slow_rate=0.02, slow_seconds=0.2,
                        burst_429_every=20.0, burst_429_length=2.0, seed=1234)
    events = corpus(2000, seed=99)
    events += [dict(events[i]) for i in range(0, 60, 6)]  # a few repeated messages, as at-least-once sources do
    source = write_events(tmp_path, events)
    settings = write_settings(tmp_path)
    state = tmp_path / "state"
    # Profile imports one by one (not in bulk jobs, the next test): hundreds of requests to fail.
    singles = set_without_bulk_imports(tmp_path)

    kills = 0
    for attempt, more in enumerate((40, 120)):
        process = start_sender(source, settings, fake.url, state, tmp_path / f"run{attempt}.log", "--mappings", singles)
        if kill_after(process, fake, more):
            kills += 1
    assert kills == 2, "the sender finished before it could be killed twice"

    final = subprocess.run(send_command(source, "--settings", settings, "--base-url", fake.url, "--state", state,
                                        "--time-scale", SCALE, "--mappings", singles),
                           cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert final.returncode == 0, final.stderr[-3000:]

    # The outbox accounts for every input event.
    counts = outbox_counts(state)
    assert counts["pending"] == 0 and counts["dead"] == 0, counts
    assert sum(counts.values()) == len(events)
    assert f"{len(events)} events: {counts['delivered']} delivered" in summary_line(final.stderr)

    # The fake holds every expected event exactly once.
    snapshot = fake.store.snapshot()
    kept = snapshot["records"]["events"]
    keys = Counter((r["key"][1], r["key"][2]) for r in kept)
    assert set(keys) == expected_event_keys(events)
    assert max(keys.values()) == 1
    assert all(r["times"] == 1 for r in kept)

    # Every profile import and subscription arrived (they are upserts: repeats are harmless).
    requests = expected_requests(events)
    emails = {r.body["data"]["attributes"]["email"] for r in requests if r.url.endswith("/api/profile-import")}
    assert emails <= {p.get("email") for p in snapshot["profiles"].values()}
    subscribed = {r.body["data"]["attributes"]["profiles"]["data"][0]["attributes"]["email"] for r in requests
                  if r.url.endswith("/api/profile-subscription-bulk-create-jobs")}
    assert subscribed == {r["request"]["data"]["attributes"]["profiles"]["data"][0]["attributes"]["email"]
                          for r in snapshot["records"]["subscriptions"]}
    assert SETTINGS["listId"] in {r["key"][1] for r in snapshot["records"]["subscriptions"]}

    # The chaos really happened, and the secret never showed.
    counters = snapshot["counters"]
    assert counters["injected_errors"] > 0 and counters["burst_429"] > 0
    assert counters.get("dropped", 0) + counters.get("dropped_after_processing", 0) > 0
    for log in tmp_path.glob("run*.log"):
        assert SECRET not in log.read_text()
    assert SECRET not in final.stderr + final.stdout
    assert time.monotonic() - started < 120
