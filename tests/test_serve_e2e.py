"""`serve` end to end: a real server process, Segment's own Python client, the fake Klaviyo.

Each test starts `segment-klaviyo serve` as a process on 127.0.0.1 (port 0: the OS picks one, the
server prints it) delivering to the in-process fake from the `fake_klaviyo` fixture, and stops it.
Both run their rate-limit clocks 20 times faster, so that the published limits hold and the tests
stay short.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from segment.analytics.client import Client as SegmentClient
from segment.analytics.request import DatetimeSerializer

from engine import Mapper, load_mapping_set
from engine.delivery.batching import canonical, split
from engine.delivery.config import DeliveryPlan
from engine.delivery.sqlite_outbox import SQLiteOutbox
from engine.fake.server import FakeServer

ROOT = Path(__file__).resolve().parent.parent
WRITE_KEY = "wk_serve_test"
SETTINGS = {"privateKey": "pk_serve_test_SECRET", "listId": "ListA", "confirmOptin": True}
TIME_SCALE = 20
STAMP = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)

MAPPING_SET = load_mapping_set("klaviyo")
PLAN = DeliveryPlan.for_set(MAPPING_SET)


class Server:
    """One `serve` process; `url` once it listens."""

    def __init__(self, state: Path, base_url: str, settings_file: Path, log: Path):
        self.state = state
        self.log = log
        command = [sys.executable, "-m", "engine", "serve", "--port", "0", "--state", str(state),
                   "--write-key", WRITE_KEY, "--write-key", "another-key", "--settings", str(settings_file),
                   "--base-url", base_url, "--time-scale", str(TIME_SCALE), "--linger", "0.05"]
        self._out = open(log, "ab")
        self._offset = self._out.tell()  # a restarted server appends to the same log
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        self.url = self._wait_for_port(30)

    def _wait_for_port(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.output())
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"serve did not start:\n{self.output()}")

    def output(self) -> str:
        """What this process printed so far."""
        return self.log.read_bytes()[self._offset:].decode(errors="replace")

    def health(self) -> dict[str, Any]:
        response = httpx.get(self.url + "/health", timeout=5)
        body: dict[str, Any] = response.json()
        return body

    def wait_until(self, done: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        health = self.health()
        while not done(health):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last health: {health}\n{self.output()}")
            time.sleep(0.1)
            health = self.health()
        return health

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._out.close()
        return self.process.returncode


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(SETTINGS), encoding="utf-8")
    started: list[Server] = []

    def start(base_url: str, state: Path | None = None) -> Server:
        server = Server(state or tmp_path / "state", base_url, settings_file, tmp_path / "serve.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL)


def auth(key: str = WRITE_KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def segment_client(url: str, errors: list[Any], **options: Any) -> SegmentClient:
    return SegmentClient(WRITE_KEY, host=url, on_error=lambda error, batch: errors.append(error),
                         upload_interval=0.05, max_retries=2, **options)


def as_sent(message: dict[str, Any]) -> dict[str, Any]:
    """The message as the client puts it on the wire (JSON, datetimes as ISO text)."""
    result: dict[str, Any] = json.loads(json.dumps(message, cls=DatetimeSerializer))
    return result


def predicted(messages: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    """What `map` says the messages become: (method, path, body) of every single request."""
    mapper = Mapper(MAPPING_SET, SETTINGS)
    requests = [r for i, m in enumerate(messages) for r in mapper.map(m, i).requests]
    return Counter((r.method, urlsplit(r.url).path, canonical(r.body)) for r in requests)


def received(fake: FakeServer) -> Counter[tuple[str, str, str]]:
    """What the fake accepted, bulk calls taken apart into the single requests they carry."""
    with fake.store.lock:
        accepted = list(fake.store.requests)
    singles: Counter[tuple[str, str, str]] = Counter()
    for request in accepted:
        endpoint = PLAN.endpoint_for(request["method"], request["path"])
        spec = PLAN.by_target.get(endpoint.name) if endpoint is not None else None
        if spec is None:
            singles[(request["method"], request["path"], canonical(request["json"]))] += 1
            continue
        for item in split(spec, request["json"]):
            singles[(spec.source.method, spec.source.path, canonical(item.single))] += 1
    return singles


def event_keys(fake: FakeServer) -> set[tuple[str, str]]:
    """(metric, unique_id) of every event the fake keeps."""
    snapshot = fake.store.snapshot()
    return {(str(r["key"][1]), str(r["key"][2])) for r in snapshot["records"].get("events", [])}


def predicted_event_keys(messages: list[dict[str, Any]]) -> set[tuple[str, str]]:
    mapper = Mapper(MAPPING_SET, SETTINGS)
    keys = set()
    for index, message in enumerate(messages):
        for request in mapper.map(message, index).requests:
            if request.url.endswith("/api/events"):
                attributes = request.body["data"]["attributes"]
                keys.add((attributes["metric"]["data"]["attributes"]["name"], attributes["unique_id"]))
    return keys


def all_delivered(total: int) -> Callable[[dict[str, Any]], bool]:
    def done(health: dict[str, Any]) -> bool:
        events = health["events"]
        return bool(health["outbox_depth"] == 0 and sum(events.values()) == total)
    return done


# -- the real client, end to end ----------------------------------------------------------------------------
def test_segment_client_end_to_end(fake_klaviyo: Callable[..., FakeServer], serve: Callable[..., Server]) -> None:
    fake = fake_klaviyo(time_scale=TIME_SCALE, api_keys=[SETTINGS["privateKey"]])
    server = serve(fake.url)
    errors: list[Any] = []
    client = segment_client(server.url, errors, gzip=True)
    sent = []
    _, message = client.identify("user-1", {"email": "ada@example.com", "firstName": "Ada", "plan": "pro"},
                                 timestamp=STAMP, message_id="m-identify-1")
    sent.append(message)
    _, message = client.track("user-1", "Item Added", {"sku": "s-1", "price": 9.5}, timestamp=STAMP,
                              message_id="m-track-1")
    sent.append(message)
    _, message = client.track("user-1", "Order Completed", {
        "orderId": "o-1", "revenue": 27, "currency": "USD",
        "products": [{"productId": "p1", "sku": "s1", "name": "Mat", "price": 12, "quantity": 1},
                     {"productId": "p2", "sku": "s2", "name": "Cup", "price": 7.5, "quantity": 2}]},
        timestamp=STAMP, message_id="m-order-1")
    sent.append(message)
    client.flush()
    assert errors == []

    server.wait_until(lambda h: h["events"]["delivered"] == 3 and h["outbox_depth"] == 0)
    expected = predicted([as_sent(m) for m in sent])
    assert sum(expected.values()) >= 5  # identify → profile + subscription; order → order + 2 products; track
    assert received(fake) == expected

    metrics = httpx.get(server.url + "/metrics").text
    assert "segment_klaviyo_messages_received_total 3" in metrics
    assert "segment_klaviyo_events_delivered_total 3" in metrics
    assert "segment_klaviyo_delivery_latency_seconds_count 3" in metrics
    assert server.stop() == 0  # SIGTERM: a clean stop
    assert "stopped; 0 event(s) pending" in server.output()


# -- bad requests against the real server: status and reason, nothing stored --------------------------------
def test_bad_requests_store_nothing_and_rejections_are_recorded(fake_klaviyo: Callable[..., FakeServer],
                                                                serve: Callable[..., Server]) -> None:
    fake = fake_klaviyo(time_scale=TIME_SCALE)
    server = serve(fake.url)
    url = server.url
    ok = {"type": "track", "event": "Fine", "userId": "u", "messageId": "fine-1"}
    cases: list[tuple[str, bytes, dict[str, str], int, str]] = [
        ("/v1/batch", b'{"batch": [', auth(), 400, "not valid JSON"),
        ("/v1/track", b"[1, 2]", auth(), 400, "must be a JSON object"),
        ("/v1/track", json.dumps({**ok, "properties": {"x": "y" * 40_000}}).encode(), auth(), 400, "32 KB"),
        ("/v1/batch", gzip.compress(json.dumps({"batch": [ok] * 9000}).encode()),
         {**auth(), "Content-Encoding": "gzip"}, 400, "500 KB"),
        ("/v1/track", json.dumps(ok).encode(), auth("not-a-key"), 401, "unknown write key"),
        ("/v1/track", json.dumps(ok).encode(), {}, 401, "no write key"),
    ]
    for path, body, headers, status, words in cases:
        response = httpx.post(url + path, content=body, headers={"Content-Type": "application/json", **headers})
        assert response.status_code == status, (path, response.text)
        answer = response.json()
        assert answer["success"] is False and words in answer["reason"], answer
    assert server.health()["events"] == {"pending": 0, "delivered": 0, "rejected": 0, "skipped": 0, "dead": 0}

    # a message the mapping refuses is acknowledged, then recorded with its reason
    response = httpx.post(url + "/v1/track", json={"event": "Orphan", "messageId": "orphan-1"}, headers=auth())
    assert response.json() == {"success": True}
    assert server.health()["events"]["rejected"] == 1
    assert "segment_klaviyo_events_rejected_total 1" in httpx.get(url + "/metrics").text
    listing = subprocess.run([sys.executable, "-m", "engine", "outbox", "rejected", "--state", str(server.state)],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
    [line] = [json.loads(x) for x in listing.stdout.splitlines() if "orphan-1" in x]
    assert "userId is required" in line["reason"]

    # bad messages of a batch are rejected alone, recorded with their reasons; the good one is delivered
    body = b'{"batch": [%s, "text", {"event": "E", "messageId": "no-type"}, ' \
           b'{"type": "track", "userId": "u", "event": "\\ud800", "messageId": "surrogate"}, ' \
           b'{"type": "track", "userId": "u", "event": "N", "properties": {"n": NaN}, "messageId": "nan"}]}' \
           % json.dumps({**ok, "messageId": "fine-2"}).encode()
    response = httpx.post(url + "/v1/batch", content=body, headers={"Content-Type": "application/json", **auth()})
    assert response.json() == {"success": True}
    health = server.wait_until(lambda h: h["events"]["delivered"] == 1)
    assert health["events"] == {"pending": 0, "delivered": 1, "rejected": 5, "skipped": 0, "dead": 0}
    listing = subprocess.run([sys.executable, "-m", "engine", "outbox", "rejected", "--state", str(server.state)],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
    reasons = {json.loads(x)["reason"] for x in listing.stdout.splitlines()}
    assert reasons >= {
        "batch[1] is a string; a message must be a JSON object",
        "batch[2] has no type; it must be one of identify, track, page, screen, group, alias, delete",
        "batch[3]: event: the string holds a lone surrogate (\\ud800), which is not Unicode text",
        "batch[4]: properties.n: NaN is not a number JSON allows",
    }


# -- SIGKILL after acknowledging ---------------------------------------------------------------------------
def test_sigkill_after_acknowledging_loses_nothing(fake_klaviyo: Callable[..., FakeServer],
                                                   serve: Callable[..., Server], tmp_path: Path) -> None:
    # The fake answers slowly, so the kill comes while calls are in flight and most events are pending.
    fake = fake_klaviyo(time_scale=TIME_SCALE, slow_rate=1.0, slow_seconds=2.0)
    state = tmp_path / "state"
    server = serve(fake.url, state)
    errors: list[Any] = []
    client = segment_client(server.url, errors, sync_mode=True)  # each call returns once acknowledged
    sent = []
    for i in range(60):
        user = f"user-{i % 7}"
        if i % 10 == 0:
            _, message = client.identify(user, {"email": f"{user}@example.com"}, timestamp=STAMP,
                                         message_id=f"kill-{i}")
        else:
            _, message = client.track(user, "Item Added", {"n": i}, timestamp=STAMP, message_id=f"kill-{i}")
        sent.append(as_sent(message))
    assert errors == []
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)

    outbox = SQLiteOutbox(state, exclusive=False, create=False)
    try:
        counts = outbox.counts().events
    finally:
        outbox.close()
    assert sum(counts.values()) == 60  # every acknowledged message was recorded before its answer
    assert counts["pending"] > 0  # …and the kill did leave work undone

    fake.options.slow_rate = 0.0
    again = serve(fake.url, state)
    again.wait_until(all_delivered(60))
    assert again.health()["events"]["delivered"] == 60
    assert event_keys(fake) == predicted_event_keys(sent)
    profiles = {p.get("external_id") for p in fake.store.snapshot()["profiles"].values()}
    assert {f"user-{i}" for i in range(7)} <= profiles


# -- SIGTERM: stop accepting, finish the request in flight, keep the outbox ---------------------------------
def test_sigterm_finishes_the_request_in_flight_and_keeps_the_outbox(fake_klaviyo: Callable[..., FakeServer],
                                                                     serve: Callable[..., Server],
                                                                     tmp_path: Path) -> None:
    # The API is failing (every answer a 5xx): at SIGTERM the worker is waiting to retry. It must not
    # wait out the backoff nor retry until the events are dead-lettered: they stay pending.
    fake = fake_klaviyo(time_scale=TIME_SCALE, error_rate=1.0)
    state = tmp_path / "state"
    server = serve(fake.url, state)
    batch = [{"type": "track", "event": "Item Added", "userId": f"u{i}", "messageId": f"term-{i}",
              "timestamp": "2026-11-01T12:00:00Z"} for i in range(20)]
    assert httpx.post(server.url + "/v1/batch", json={"batch": batch}, headers=auth()).status_code == 200
    # The deliverer (a child process) has tried once and is waiting to retry: on a loaded machine its
    # start-up alone can outlast a fixed sleep.
    deadline = time.monotonic() + 60
    while not fake.store.snapshot()["counters"].get("injected_errors", 0):
        assert time.monotonic() < deadline, "the deliverer never called the API"
        time.sleep(0.05)

    # A request whose body is still on its way when SIGTERM arrives.
    body = json.dumps({"event": "Late", "userId": "late", "messageId": "term-late"}).encode()
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        head = (f"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Authorization: {auth()['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n")
        connection.sendall(head.encode() + body[:10])
        time.sleep(1.0)  # the server has read the headers: the request is in flight
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # soon no new connection is accepted
            try:
                httpx.get(server.url + "/health", timeout=2)
            except httpx.TransportError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        connection.sendall(body[10:])
        received_bytes = b""
        while not received_bytes.endswith(b"}"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            received_bytes += chunk
        answer = received_bytes.decode()
    assert answer.startswith("HTTP/1.1 200") and answer.endswith('{"success":true}'), answer
    assert server.process.wait(10) == 0
    assert "stopped; 21 event(s) pending" in server.output()
    assert fake.store.snapshot()["counters"].get("injected_errors", 0) > 0

    outbox = SQLiteOutbox(state, exclusive=False, create=False)
    try:
        assert outbox.counts().events["pending"] == 21  # the late one too; nothing dead-lettered
    finally:
        outbox.close()
    fake.options.error_rate = 0.0
    again = serve(fake.url, state)
    again.wait_until(all_delivered(21))
    assert ("Item Added", "term-late") not in event_keys(fake)
    assert ("Late", "term-late") in event_keys(fake)


# -- a burst from 8 concurrent clients ----------------------------------------------------------------------
def test_burst_of_1000_requests_from_8_clients(fake_klaviyo: Callable[..., FakeServer],
                                               serve: Callable[..., Server]) -> None:
    fake = fake_klaviyo(time_scale=TIME_SCALE)
    server = serve(fake.url)
    clients, per_client = 8, 125
    messages: list[list[dict[str, Any]]] = [[] for _ in range(clients)]
    failures: list[str] = []

    def run_client(number: int) -> None:
        with httpx.Client(base_url=server.url, headers=auth(), timeout=30) as http:
            for i in range(per_client):
                user = f"burst-user-{(number * per_client + i) % 50}"
                base = {"userId": user, "timestamp": "2026-11-01T12:00:00Z"}
                if i % 5 == 4:  # a small batch, gzipped
                    batch = [{**base, "type": "track", "event": "Item Added", "messageId": f"b-{number}-{i}-{j}",
                              "properties": {"n": j}} for j in range(2)]
                    response = http.post("/v1/batch", content=gzip.compress(json.dumps({"batch": batch}).encode()),
                                         headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
                    sent = batch
                elif i % 5 == 3:
                    message = {**base, "messageId": f"b-{number}-{i}", "traits": {"email": f"{user}@example.com"}}
                    response = http.post("/v1/identify", json=message)
                    sent = [{**message, "type": "identify"}]
                else:
                    message = {**base, "messageId": f"b-{number}-{i}", "event": "Searched",
                               "properties": {"query": f"q{i}"}}
                    response = http.post("/v1/track", json=message)
                    sent = [{**message, "type": "track"}]
                if response.status_code != 200 or response.json() != {"success": True}:
                    failures.append(f"{response.status_code} {response.text}")
                else:
                    messages[number].extend(sent)

    started = time.monotonic()
    threads = [threading.Thread(target=run_client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    acknowledged_in = time.monotonic() - started
    assert failures == []
    every = [m for sent in messages for m in sent]
    assert len(every) == clients * per_client + clients * per_client // 5  # 1,000 requests, 1,200 messages

    health = server.wait_until(all_delivered(len(every)), timeout=60)
    delivered_in = time.monotonic() - started
    assert health["events"]["delivered"] == len(every)
    assert event_keys(fake) == predicted_event_keys(every)
    metrics = httpx.get(server.url + "/metrics").text
    assert 'segment_klaviyo_http_requests_total{endpoint="track",status="200"} 600' in metrics
    assert f"segment_klaviyo_messages_received_total {len(every)}" in metrics
    print(f"burst: {clients * per_client} requests ({len(every)} messages) acknowledged in {acknowledged_in:.1f}s, "
          f"all delivered in {delivered_in:.1f}s")
    assert server.stop() == 0


def test_serve_refuses_to_start_without_a_write_key(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "engine", "serve", "--state", str(tmp_path / "s"),
                             "--set", "privateKey=pk_x", "--set", "listId=L"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--write-key" in result.stderr
