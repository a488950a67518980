"""Helpers for the delivery tests: event corpora, running `send` as a process, reading the outbox."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import engine
from engine.delivery.sqlite_outbox import SQLiteOutbox

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SECRET = "pk_test_SECRET_never_printed_42"

SETTINGS = {
    "privateKey": SECRET,
    "listId": "ListA",
    "confirmOptin": True,
    "sendPageEvents": True,
    "defaultPhoneRegion": "US",
}


def write_settings(folder: Path, **overrides: Any) -> Path:
    path = folder / "settings.json"
    path.write_text(json.dumps({**SETTINGS, **overrides}), encoding="utf-8")
    return path


def set_without_bulk_imports(folder: Path) -> Path:
    """A copy of the klaviyo set whose profile imports never go in bulk (a backlog never reaches the
    threshold): for tests about many single requests (rate limits, chaos on each request)."""
    import shutil

    copy = folder / "klaviyo-singles"
    shutil.copytree(PROJECT_ROOT / "mappings" / "klaviyo", copy)
    delivery = copy / "delivery.yaml"
    text = delivery.read_text(encoding="utf-8")
    assert "when_backlog: 100 " in text
    delivery.write_text(text.replace("when_backlog: 100 ", "when_backlog: 100000000 "), encoding="utf-8")
    return copy


def write_events(folder: Path, events: list[dict[str, Any]], name: str = "events.ndjson") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def corpus(count: int, seed: int = 7, users: int = 80, mix: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """A deterministic mix of Segment events: tracks, identifies (subscribing to the list), orders
    with products, pages, screens (skipped) and events without a user (rejected)."""
    rng = random.Random(seed)
    mix = mix or {"track": 0.45, "identify": 0.25, "order": 0.1, "page": 0.08, "screen": 0.06, "bad": 0.06}
    kinds = list(mix)
    weights = [mix[k] for k in kinds]
    events: list[dict[str, Any]] = []
    for i in range(count):
        kind = rng.choices(kinds, weights)[0]
        user = f"user-{rng.randrange(users)}"
        stamp = f"2026-11-01T{10 + i // 3600 % 10:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"
        base = {"userId": user, "messageId": f"m-{seed}-{i}", "timestamp": stamp}
        if kind == "track":
            events.append({**base, "type": "track", "event": rng.choice(["Item Added", "Searched", "Signed In"]),
                           "properties": {"n": i, "query": "x" * rng.randrange(1, 40)}})
        elif kind == "identify":
            events.append({**base, "type": "identify",
                           "traits": {"email": f"{user}@example.com", "firstName": "Ada", "plan": rng.choice("ab")}})
        elif kind == "order":
            products = [{"productId": f"p{j}", "sku": f"s{j}", "name": f"Product {j}", "price": 10 + j,
                         "quantity": 1} for j in range(rng.randrange(1, 4))]
            events.append({**base, "type": "track", "event": "Order Completed",
                           "properties": {"orderId": f"o-{seed}-{i}", "revenue": 20, "currency": "USD",
                                          "products": products}})
        elif kind == "page":
            events.append({**base, "type": "page", "name": "Pricing", "properties": {"path": "/pricing"}})
        elif kind == "screen":
            events.append({**base, "type": "screen", "name": "Home"})
        else:
            events.append({"type": "track", "event": "Orphan", "messageId": f"m-{seed}-{i}"})
    return events


def expected_requests(events: list[dict[str, Any]], settings: dict[str, Any] | None = None) -> list[engine.Request]:
    mapper = engine.Mapper(engine.load_mapping_set("klaviyo"), settings or SETTINGS)
    return [request for index, event in enumerate(events) for request in mapper.map(event, index).requests]


def expected_event_keys(events: list[dict[str, Any]], settings: dict[str, Any] | None = None) -> set[tuple[str, str]]:
    """(metric, unique_id) of every event request the mapping makes."""
    keys = set()
    for request in expected_requests(events, settings):
        if request.url.endswith("/api/events"):
            attributes = request.body["data"]["attributes"]
            keys.add((attributes["metric"]["data"]["attributes"]["name"], attributes["unique_id"]))
    return keys


def send_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "engine", "send", *map(str, args), "--progress", "never"]


def run_send(*args: str | Path, timeout: float = 120, env: dict[str, str] | None = None) \
        -> subprocess.CompletedProcess[str]:
    return subprocess.run(send_command(*args), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def run_cli(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def outbox_counts(state: Path) -> dict[str, int]:
    outbox = SQLiteOutbox(state, exclusive=False, create=False)
    try:
        return outbox.counts().events
    finally:
        outbox.close()


def summary_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if " events: " in line and " delivered" in line]
    assert lines, stderr
    return lines[-1]


def deliver(state: Path, events: list[dict[str, Any]], url: str, settings: dict[str, Any] | None = None,
            units: list[Any] | None = None, time_scale: float = 50.0, linger: float = 0.2,
            **options: Any) -> tuple[Any, dict[str, int]]:
    """Record events (and/or hand-made NewEvents) in an outbox at `state`, deliver them in-process to `url`."""
    import asyncio

    from engine.delivery.config import DeliveryPlan
    from engine.delivery.ingest import Ingester
    from engine.delivery.sealing import Sealer
    from engine.delivery.worker import DeliveryWorker, WorkerOptions

    mapping_set = engine.load_mapping_set("klaviyo")
    plan = DeliveryPlan.for_set(mapping_set)
    settings = settings or SETTINGS
    outbox = SQLiteOutbox(state)
    try:
        sealer = Sealer({"privateKey": settings["privateKey"]}, "0123abcd")
        ingester = Ingester(mapping_set, settings, outbox, sealer)  # records, and makes chains' next steps
        if events:
            ingester.ingest(events, "test-events")
        if units:
            outbox.add_events("test-units", outbox.progress("test-units"), units)
        worker = DeliveryWorker(plan, outbox, sealer, url, WorkerOptions(time_scale=time_scale, linger=linger,
                                                                               **options), chains=ingester)
        worker.input_complete()
        stats = asyncio.run(worker.run())
        return stats, outbox.counts().events
    finally:
        outbox.close()


def hand_made(method: str, path: str, bodies: list[Any], secret: str = SECRET) -> list[Any]:
    """One NewEvent per body, each with one request (as the outbox stores them: sealed JSON text)."""
    from engine.delivery.outbox import NewEvent, NewUnit

    headers = json.dumps({"Authorization": "Klaviyo-API-Key {{secret:0123abcd:privateKey}}", "revision": "2026-07-15",
                          "Content-Type": "application/vnd.api+json", "Accept": "application/vnd.api+json"})
    return [NewEvent(f"hand-{i}", "pending", units=[NewUnit(0, "hand", method, path, headers, "json", json.dumps(b))])
            for i, b in enumerate(bodies)]
