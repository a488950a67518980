"""Delivery throughput: `segment-klaviyo send` against the fake Klaviyo enforcing the published limits.

Klaviyo's events are delivered in Bulk Create Events calls, limited per account to a burst per
second and a steady rate per minute, with at most max_items events a call (all read from the
mapping set's delivery section). The ceiling is therefore min(burst/s, steady/s) x max_items
events per second (150/min x 1,000 = 2,500 events/s for Klaviyo today): no sender can do better
over a minute. This measures how close `send` gets:

- the fake Klaviyo (engine/fake/server.py) runs in this process, on a loopback socket,
  enforcing the published limits with fixed windows; its clock runs --time-scale times faster
  (1: real time, the default);
- `send` runs as a subprocess with the same --time-scale, on a corpus of track and Order Completed
  events (the ones that become Klaviyo events), enough to keep it busy for `windows` full steady
  windows and part of another;
- every 0.1 s the fake's count of accepted events is sampled against its clock; the fraction of
  the ceiling is the events accepted in the full windows during which `send` still had events to
  deliver, over what the ceiling allows in those windows. The share of 429s is send's own count of
  requests answered 429 over its requests (its summary line).
"""

from __future__ import annotations

import bisect
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import corpus

SUMMARY = re.compile(r"(\d+) events: (\d+) delivered.*?· (\d+) requests, (\d+) retried, (\d+) answered 429")
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _per_second(limit: str) -> float:
    count, _, unit = str(limit).partition("/")
    return float(count) / UNITS[unit.strip()[:1] or "s"]


def ceiling(delivery: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Events/s the bulk-event limits allow: min(burst, steady) per second x events per call."""
    batch = delivery["batching"]["events"]
    limits = delivery["endpoints"][batch["to"]]["rate_limit"]
    calls_per_s = min(_per_second(limits["burst"]), _per_second(limits["steady"]))
    steady_window = 60.0 if str(limits["steady"]).endswith("/m") else 1.0
    return calls_per_s * int(batch["max_items"]), {"endpoint": batch["to"], "burst": limits["burst"],
                                                   "steady": limits["steady"], "max_items": batch["max_items"],
                                                   "window_s": steady_window}


def _write_corpus(path: Path, events_wanted: int, seed: int, mixed: bool = False) -> int:
    """Track and Order Completed events with a userId (delivered as Klaviyo events); with `mixed`,
    the whole corpus (identifies with subscriptions, pages, groups… too)."""
    written = 0
    with path.open("w", encoding="utf-8") as out:
        for event in corpus.generate(events_wanted * 4, seed):
            if mixed or (event["type"] == "track" and "userId" in event):
                out.write(json.dumps(event, separators=(",", ":")) + "\n")
                written += 1
                if written == events_wanted:
                    break
    return written


def run_send(root: Path, source: Path, settings_path: Path, url: str,
             time_scale: float) -> tuple[subprocess.CompletedProcess[str], float]:
    """`send` as a subprocess to the fake, its output discarded: (the process, wall seconds)."""
    command = [sys.executable, "-m", "engine", "send", str(source), "--settings", str(settings_path),
               "--base-url", url, "--time-scale", str(time_scale), "--errors", os.devnull,
               "--progress", "never"]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    process = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                             cwd=str(root))
    return process, time.perf_counter() - started


# Klaviyo events per input event: ~1.5 for tracks and orders (orders become one event per product
# too), ~0.69 for the whole corpus (identifies, pages and groups make none).
EVENTS_PER_INPUT = {False: 1.5, True: 0.69}


def fraction_over_windows(samples: list[tuple[float, int]], total: int, finished_api: float, window: float,
                          rate: float) -> tuple[float | None, list[float]]:
    """From (API time, accepted items) samples: the items accepted in each full window during which
    the sender still had items to deliver, and their sum over what the ceiling allows in them."""
    times = [t for t, _ in samples]

    def accepted_at(api_time: float) -> float:
        i = bisect.bisect_left(times, api_time)
        if i == 0:
            return float(samples[0][1])
        if i >= len(samples):
            return float(samples[-1][1])
        (t0, a0), (t1, a1) = samples[i - 1], samples[i]
        return a0 + (a1 - a0) * (api_time - t0) / (t1 - t0) if t1 > t0 else float(a1)

    last_busy = next((t for t, a in samples if a >= total), finished_api)  # when the last item was accepted
    full = [k for k in range(int(last_busy // window)) if (k + 1) * window <= last_busy]
    per_window = [accepted_at((k + 1) * window) - accepted_at(k * window) for k in full]
    return (sum(per_window) / (len(full) * rate * window) if full else None), per_window


def measure(root: Path, workdir: Path, seed: int = 7, windows: int = 2, time_scale: float = 1.0,
            mixed: bool = False) -> dict[str, Any]:
    """With `mixed`, the whole corpus goes (profiles and subscriptions flow too) and only the events
    lane's accepted items are counted against its ceiling."""
    try:
        from engine.delivery.config import DeliveryPlan
        from engine.fake.server import FakeOptions, FakeServer
        from engine.mapping_set import load_mapping_set
    except ImportError as exc:
        return {"fraction_of_ceiling": None, "fraction_429": None,
                "message": f"not measured: `send` and the fake Klaviyo are not available ({exc})"}
    mapping_set = load_mapping_set("klaviyo")
    rate, limits = ceiling(mapping_set.delivery)
    window = limits["window_s"]
    # Enough input for `windows` full windows at the ceiling and half of one more.
    wanted = int(rate * window * (windows + 0.5) / EVENTS_PER_INPUT[mixed])
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"delivery-{'mixed-' if mixed else ''}{wanted}-{seed}.ndjson"
    count = _write_corpus(source, wanted, seed, mixed)
    counter = f"accepted_items:{limits['endpoint']}"
    settings = dict(corpus.PROFILES[0])
    settings_path = workdir / "delivery-settings.json"
    settings_path.write_text(json.dumps(settings), encoding="utf-8")

    plan = DeliveryPlan.for_set(mapping_set)
    fake = FakeServer(plan, FakeOptions(api_keys=[settings["privateKey"]], time_scale=time_scale)).start()
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with fake.store.lock:
                accepted = fake.store.counters.get(counter, 0)
            samples.append((fake.api_now(), accepted))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    print(f"  delivering {count:,} {'events of every kind' if mixed else 'events'} with `send` to the fake Klaviyo "
          f"(time scale {time_scale:g}, "
          f"ceiling {rate:,.0f} events/s) …", file=sys.stderr, flush=True)
    try:
        process, elapsed = run_send(root, source, settings_path, fake.url, time_scale)
        finished_api = fake.api_now()
    finally:
        done.set()
        sampler.join()
        with fake.store.lock:
            counters = dict(fake.store.counters)
        fake.stop()
    summary = SUMMARY.search(process.stderr)
    if process.returncode != 0 or summary is None:
        return {"fraction_of_ceiling": None, "fraction_429": None,
                "message": f"not measured: send exited {process.returncode}: {process.stderr.strip()[-500:]}"}
    events, delivered, requests, retried, answered_429 = (int(g) for g in summary.groups())

    total = counters.get(counter, 0)
    fraction, per_window = fraction_over_windows(samples, total, finished_api, window, rate)
    return {
        "fraction_of_ceiling": round(fraction, 4) if fraction is not None else None,
        "fraction_429": round(answered_429 / requests, 4) if requests else None,
        "ceiling_events_per_s": rate,
        "limits": limits,
        "time_scale": time_scale,
        "input_events": events,
        "delivered_input_events": delivered,
        "klaviyo_events_accepted": total,
        "requests": requests,
        "retried": retried,
        "answered_429": answered_429,
        "full_windows": len(per_window),
        "events_per_window": [round(x) for x in per_window],
        "wall_seconds": round(elapsed, 1),
        # All accepted events over the whole run: start-up counts against it, but the last, partial
        # window can run above the steady rate (nothing is left to wait for), so this is only a hint.
        "end_to_end_fraction": round(total / (elapsed * time_scale * rate), 4),
        "message": None if per_window else "the run was shorter than one full window",
    }


# -- identify-heavy traffic: profiles in bulk --------------------------------------------------------------
def profile_ceiling(delivery: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Profiles/s the profile lane's limits allow: the single endpoint's min(burst, steady) per second
    plus the bulk endpoint's min(burst, steady) per second x profiles per job."""
    batch = next(b for b in delivery["batching"].values() if b.get("job") and b.get("when_backlog"))
    single = delivery["endpoints"][batch["from"]]["rate_limit"]
    bulk = delivery["endpoints"][batch["to"]]["rate_limit"]
    single_per_s = min(_per_second(single["burst"]), _per_second(single["steady"]))
    jobs_per_s = min(_per_second(bulk["burst"]), _per_second(bulk["steady"]))
    return single_per_s + jobs_per_s * int(batch["max_items"]), {
        "single": batch["from"], "single_limits": single, "bulk": batch["to"], "bulk_limits": bulk,
        "max_items": batch["max_items"], "when_backlog": batch["when_backlog"]}


def _write_identifies(path: Path, wanted: int, seed: int) -> int:
    """The corpus's identifies only (with a userId), each for its own user: one profile each."""
    written = 0
    with path.open("w", encoding="utf-8") as out:
        for event in corpus.generate(wanted * 4, seed):
            if event["type"] == "identify" and "userId" in event:
                event["userId"] = f"bench-{written}"
                traits = event.setdefault("traits", {})
                traits["email"] = f"bench-{written}@example.com"
                out.write(json.dumps(event, separators=(",", ":")) + "\n")
                written += 1
                if written == wanted:
                    break
    return written


def measure_profiles(root: Path, workdir: Path, seed: int = 7, identifies: int = 100_000,
                     time_scale: float = 1.0) -> dict[str, Any]:
    """`send` of identifies only (no list: profile imports alone) against the fake at the published
    limits: profiles imported per second, end to end, over the profile lane's ceiling."""
    try:
        from engine.delivery.config import DeliveryPlan
        from engine.fake.server import FakeOptions, FakeServer
        from engine.mapping_set import load_mapping_set
    except ImportError as exc:
        return {"profiles_per_s": None, "fraction_of_ceiling": None,
                "message": f"not measured: `send` and the fake Klaviyo are not available ({exc})"}
    mapping_set = load_mapping_set("klaviyo")
    rate, limits = profile_ceiling(mapping_set.delivery)
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"identifies-{identifies}-{seed}.ndjson"
    count = _write_identifies(source, identifies, seed)
    settings = {k: v for k, v in corpus.PROFILES[0].items() if k != "listId"}
    settings_path = workdir / "profile-settings.json"
    settings_path.write_text(json.dumps(settings), encoding="utf-8")
    fake = FakeServer(DeliveryPlan.for_set(mapping_set), FakeOptions(api_keys=[settings["privateKey"]],
                                                                     time_scale=time_scale)).start()
    print(f"  delivering {count:,} identifies with `send` to the fake Klaviyo (time scale {time_scale:g}, "
          f"profile ceiling {rate:,.0f}/s) …", file=sys.stderr, flush=True)
    try:
        process, elapsed = run_send(root, source, settings_path, fake.url, time_scale)
        snapshot = fake.store.snapshot()
    finally:
        fake.stop()
    summary = SUMMARY.search(process.stderr)
    if process.returncode != 0 or summary is None:
        return {"profiles_per_s": None, "fraction_of_ceiling": None,
                "message": f"not measured: send exited {process.returncode}: {process.stderr.strip()[-500:]}"}
    events, delivered, requests, retried, answered_429 = (int(g) for g in summary.groups())
    counters = snapshot["counters"]
    imported = delivered  # an identify counts once its job completed without an error for its row
    per_s = imported / (elapsed * time_scale)
    return {
        "profiles_per_s": round(per_s, 1),
        "fraction_of_ceiling": round(per_s / rate, 4),
        "fraction_429": round(answered_429 / requests, 4) if requests else None,
        "ceiling_profiles_per_s": rate,
        "limits": limits,
        "time_scale": time_scale,
        "input_identifies": events,
        "delivered_identifies": delivered,
        "profiles_imported": imported,
        "profile_rows_accepted": counters.get("accepted_items", 0),  # rows about one profile are merged
        "distinct_profiles_at_the_fake": len(snapshot["profiles"]),  # the fake merges shared identifiers
        "every_profile_imported": imported == count,
        "requests": requests,
        "jobs": counters.get("jobs_created", 0),
        "job_polls": counters.get("job_polls", 0),
        "answered_429": answered_429,
        "wall_seconds": round(elapsed, 1),
        "message": None,
    }
