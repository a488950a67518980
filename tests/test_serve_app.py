"""The Tracking API app alone (engine/serve/app.py), with a stand-in for the outbox.

Every refused request must have stored nothing, every acknowledged one everything: the stand-in
records each `accept` call, so the tests see exactly what the outbox would have been given.
"""

from __future__ import annotations

import base64
import gzip
import json
import warnings
from typing import Any

import pytest

with warnings.catch_warnings():  # Starlette 1.x asks for `httpx2` under its TestClient; httpx works as well
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from engine.events import InputError
from engine.serve.app import create_app
from engine.serve.metrics import PREFIX, Metrics
from engine.serve.tracking import MAX_BATCH_BYTES, MAX_MESSAGE_BYTES

KEY = "wk_test_123"


def basic(key: str, colon: bool = True) -> dict[str, str]:
    raw = f"{key}:" if colon else key
    return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}


AUTH = basic(KEY)


class Outbox:
    """Records what the app handed over; can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any] | InputError]] = []
        self.fail = False

    def __call__(self, messages: list[dict[str, Any] | InputError], /) -> None:
        if self.fail:
            raise OSError("disk full")
        self.calls.append(messages)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [m for call in self.calls for m in call if not isinstance(m, InputError)]


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()


@pytest.fixture
def client(outbox: Outbox) -> TestClient:
    app = create_app(outbox, [KEY, "second-key"], health=lambda: {"ok": True, "outbox": {"pending": 7}})
    return TestClient(app, base_url="http://127.0.0.1")


def post(client: TestClient, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=data,
                       headers={"Content-Type": "application/json", **(AUTH if headers is None else headers)})


def refused(response: Any, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["code"] == code
    assert body["reason"] == body["message"]
    for word in words:
        assert word in body["reason"]


# -- accepted requests ---------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["identify", "track", "page", "screen", "group", "alias", "delete"])
def test_single_endpoint_gives_the_type(client: TestClient, outbox: Outbox, call: str) -> None:
    response = post(client, f"/v1/{call}", {"userId": "u1", "messageId": "m1"})
    assert response.status_code == 200 and response.json() == {"success": True}
    [message] = outbox.messages
    assert message["type"] == call and message["userId"] == "u1" and message["messageId"] == "m1"
    assert message["receivedAt"].endswith("Z")


def test_the_endpoint_overrides_a_type_in_the_body(client: TestClient, outbox: Outbox) -> None:
    assert post(client, "/v1/track", {"type": "identify", "event": "Signed Up", "userId": "u"}).status_code == 200
    assert outbox.messages[0]["type"] == "track"


def test_batch_merges_context_and_integrations_and_keeps_order(client: TestClient, outbox: Outbox) -> None:
    body = {
        "batch": [
            {"type": "identify", "userId": "a", "context": {"ip": "1.2.3.4", "device": {"name": "own"}}},
            {"type": "track", "event": "E", "userId": "a", "integrations": {"X": False}, "sentAt": "own"},
            {"type": "page", "userId": "a", "messageId": "keep-me"},
        ],
        "context": {"device": {"type": "phone", "name": "shared"}, "locale": "fr"},
        "integrations": {"All": True, "X": True},
        "sentAt": "2026-11-01T12:00:00Z",
        "writeKey": KEY,
    }
    assert post(client, "/v1/batch", body).json() == {"success": True}
    assert len(outbox.calls) == 1  # one request, one all-or-nothing store
    first, second, third = outbox.messages
    assert [m["type"] for m in outbox.messages] == ["identify", "track", "page"]
    assert first["context"] == {"ip": "1.2.3.4", "device": {"type": "phone", "name": "own"}, "locale": "fr"}
    assert second["integrations"] == {"All": True, "X": False}
    assert third["context"] == {"device": {"type": "phone", "name": "shared"}, "locale": "fr"}
    assert first["sentAt"] == "2026-11-01T12:00:00Z" and second["sentAt"] == "own"
    assert third["messageId"] == "keep-me" and first["messageId"].startswith("api-")
    assert first["messageId"] != second["messageId"]
    assert all("writeKey" not in m for m in outbox.messages)  # the secret is never stored


def test_import_is_a_batch(client: TestClient, outbox: Outbox) -> None:
    assert post(client, "/v1/import", {"batch": [{"type": "track", "event": "Old", "userId": "u"}]}).status_code == 200
    assert outbox.messages[0]["event"] == "Old"


def test_empty_batch_is_acknowledged_without_storing(client: TestClient, outbox: Outbox) -> None:
    assert post(client, "/v1/batch", {"batch": []}).json() == {"success": True}
    assert outbox.calls == []


def test_gzip_body(client: TestClient, outbox: Outbox) -> None:
    data = gzip.compress(json.dumps({"batch": [{"type": "track", "event": "Zipped", "userId": "u"}]}).encode())
    response = post(client, "/v1/batch", data, {**AUTH, "Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert outbox.messages[0]["event"] == "Zipped"


# -- authentication ------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {},
    basic("wrong"),
    basic(""),
    {"Authorization": "Bearer " + KEY},
    {"Authorization": "Basic !!!not-base64"},
], ids=["none", "unknown-key", "empty-key", "bearer", "bad-base64"])
def test_unauthenticated_requests_get_401_and_store_nothing(client: TestClient, outbox: Outbox,
                                                            headers: dict[str, str]) -> None:
    response = post(client, "/v1/track", {"event": "E", "userId": "u"}, headers)
    refused(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert outbox.calls == []


def test_every_configured_key_and_the_colonless_form_work(client: TestClient, outbox: Outbox) -> None:
    assert post(client, "/v1/track", {"event": "E", "userId": "u"}, basic("second-key")).status_code == 200
    assert post(client, "/v1/track", {"event": "E", "userId": "u"}, basic(KEY, colon=False)).status_code == 200
    assert len(outbox.messages) == 2


def test_write_key_in_the_body_when_no_header(client: TestClient, outbox: Outbox) -> None:
    assert post(client, "/v1/track", {"event": "E", "userId": "u", "writeKey": KEY}, {}).status_code == 200
    refused(post(client, "/v1/track", {"event": "E", "userId": "u", "writeKey": "nope"}, {}), 401, "unauthorized")
    # a bad body without any credentials says only that the credentials are missing
    refused(post(client, "/v1/track", b"{not json", {}), 401, "unauthorized", "no write key")
    assert len(outbox.messages) == 1 and "writeKey" not in outbox.messages[0]


def test_a_header_with_a_wrong_key_is_not_saved_by_a_right_body_key(client: TestClient, outbox: Outbox) -> None:
    refused(post(client, "/v1/track", {"event": "E", "writeKey": KEY}, basic("wrong")), 401, "unauthorized")
    assert outbox.calls == []


# -- bad requests: 400 with a reason, nothing stored -------------------------------------------------------
BATCH_OK = {"type": "track", "event": "Fine", "userId": "u"}


@pytest.mark.parametrize("path,body,code,words", [
    ("/v1/batch", b'{"batch": [', "invalid_json", ["not valid JSON", "line 1"]),
    ("/v1/track", b"", "invalid_json", ["empty"]),
    ("/v1/track", b"\xff\xfe\x00garbage", "invalid_json", []),
    ("/v1/track", [{"event": "E"}], "invalid_message", ["an array", "must be a JSON object"]),
    ("/v1/identify", "text", "invalid_message", ["a string"]),
    ("/v1/batch", {"messages": []}, "invalid_batch", ["no batch"]),
    ("/v1/batch", {"batch": {"type": "track"}}, "invalid_batch", ["batch is an object"]),
    ("/v1/batch", {"batch": [BATCH_OK], "context": []}, "invalid_batch", ["context is an array"]),
], ids=["truncated-json", "empty", "not-utf8", "array-message", "string-message", "no-batch",
        "batch-not-array", "bad-context"])
def test_bad_requests(client: TestClient, outbox: Outbox, path: str, body: Any, code: str,
                      words: list[str]) -> None:
    refused(post(client, path, body), 400, code, *words)
    assert outbox.calls == []


# -- bad messages: each rejected alone, recorded with its reason; the others accepted (200) -----------------
FINE = b'{"type": "track", "event": "Fine", "userId": "u"}'


@pytest.mark.parametrize("path,body,reasons", [
    ("/v1/batch", b'{"batch": [%s, 42]}' % FINE, ["batch[1] is a number; a message must be a JSON object"]),
    ("/v1/batch", b'{"batch": [%s, %s, null]}' % (FINE, FINE), ["batch[2] is null; a message must be a JSON object"]),
    ("/v1/batch", b'{"batch": [%s, {"event": "E", "userId": "u"}]}' % FINE,
     ["batch[1] has no type; it must be one of identify, track, page, screen, group, alias, delete"]),
    ("/v1/batch", b'{"batch": [{"type": "purchase"}, %s]}' % FINE,
     ['batch[0] has type "purchase"; it must be one of identify, track, page, screen, group, alias, delete']),
    ("/v1/batch", b'{"batch": [{"type": 3}]}', ["batch[0] has type a number; it must be one of identify, track, "
                                                "page, screen, group, alias, delete"]),
    ("/v1/batch", b'{"batch": [%s, {"type": "track", "event": "\\ud800"}]}' % FINE,
     ["batch[1]: event: the string holds a lone surrogate (\\ud800), which is not Unicode text"]),
    ("/v1/batch", b'{"batch": [{"type": "track", "event": "\xff"}, %s]}' % FINE,
     ["batch[0]: event: the string holds a byte that is not UTF-8 (0xff)"]),
    ("/v1/batch", b'{"batch": [%s, {"type": "track", "properties": {"n": NaN}}]}' % FINE,
     ["batch[1]: properties.n: NaN is not a number JSON allows"]),
    ("/v1/batch", b'{"batch": [%s, {"type": "track", "properties": {"n": 1e999}}]}' % FINE,
     ["batch[1]: properties.n: 1e999 is beyond a double's range"]),
    ("/v1/batch", b'{"batch": [%s, {"type": "track", "properties": {"n": %s}}]}' % (FINE, b"9" * 5000),
     ["batch[1]: properties.n: a number of 5000 digits; the limit is 64"]),
    ("/v1/batch", b'{"batch": [%s, {"type": "track", "properties": %s}]}' % (FINE, b"[" * 3000 + b"]" * 3000),
     # (the body's depth counts: the envelope and its batch array are two levels of it)
     ["batch[1]: properties[0][0][0]\u2026 (198 levels down): nested deeper than 200 levels (the limit)"]),
    ("/v1/track", b'{"event": "E", "userId": "u", "properties": {"x": Infinity}}',
     ["properties.x: Infinity is not a number JSON allows"]),
], ids=["number", "null", "no-type", "unknown-type", "type-not-string", "lone-surrogate", "not-utf8", "nan",
        "overflow", "long-integer", "too-deep", "infinity-single"])
def test_bad_messages_are_rejected_alone(client: TestClient, outbox: Outbox, path: str, body: bytes,
                                         reasons: list[str]) -> None:
    response = post(client, path, body)
    assert response.status_code == 200 and response.json() == {"success": True}
    [call] = outbox.calls
    assert [m.reason for m in call if isinstance(m, InputError)] == reasons
    assert [m["event"] for m in call if not isinstance(m, InputError)] == ["Fine"] * (len(call) - len(reasons))


def test_a_byte_order_mark_is_skipped(client: TestClient, outbox: Outbox) -> None:
    response = post(client, "/v1/track", "\ufeff".encode() + b'{"event": "E", "userId": "u"}')
    assert response.json() == {"success": True}
    assert [m["event"] for m in outbox.messages] == ["E"]


def test_message_over_32_kb(client: TestClient, outbox: Outbox) -> None:
    big = {"event": "Big", "userId": "u", "properties": {"blob": "x" * MAX_MESSAGE_BYTES}}
    refused(post(client, "/v1/track", big), 400, "payload_too_large", "32 KB", "a message")
    refused(post(client, "/v1/batch", {"batch": [BATCH_OK, {**big, "type": "track"}]}), 400, "message_too_large",
            "batch[1]", "32 KB")
    # just under the limit passes
    fits = {"event": "Fits", "userId": "u", "properties": {"blob": "x" * (MAX_MESSAGE_BYTES - 200)}}
    assert post(client, "/v1/track", fits).status_code == 200
    assert [m["event"] for m in outbox.messages] == ["Fits"]


def test_batch_over_500_kb(client: TestClient, outbox: Outbox) -> None:
    item = {"type": "track", "event": "E", "userId": "u", "properties": {"blob": "y" * 20_000}}
    body = {"batch": [item] * (MAX_BATCH_BYTES // 20_000 + 2)}
    refused(post(client, "/v1/batch", body), 400, "payload_too_large", "500 KB", "batch")
    # gzip does not get around the limit: it applies to the decompressed body (and stops a gzip bomb)
    data = gzip.compress(json.dumps(body).encode())
    assert len(data) < 10_000
    refused(post(client, "/v1/batch", data, {**AUTH, "Content-Encoding": "gzip"}), 400, "payload_too_large", "500 KB")
    assert outbox.calls == []


def test_bad_encodings(client: TestClient, outbox: Outbox) -> None:
    refused(post(client, "/v1/track", b"\x1f\x8b not really gzip", {**AUTH, "Content-Encoding": "gzip"}),
            400, "invalid_gzip", "gzip")
    truncated = gzip.compress(json.dumps({"event": "E"}).encode())[:-6]
    refused(post(client, "/v1/track", truncated, {**AUTH, "Content-Encoding": "gzip"}), 400, "invalid_gzip")
    refused(post(client, "/v1/track", b"{}", {**AUTH, "Content-Encoding": "br"}), 415, "unsupported_encoding", "br")
    assert outbox.calls == []


def test_unknown_endpoint_and_wrong_method(client: TestClient) -> None:
    refused(post(client, "/v1/purchase", {"event": "E"}), 404, "not_found", "/v1/batch")
    assert client.get("/v1/track", headers=AUTH).status_code == 405


def test_a_store_failure_is_503_and_not_acknowledged(client: TestClient, outbox: Outbox) -> None:
    outbox.fail = True
    response = post(client, "/v1/batch", {"batch": [BATCH_OK]})
    refused(response, 503, "unavailable", "disk full", "again")
    assert response.headers["Retry-After"] == "1"
    outbox.fail = False
    assert post(client, "/v1/batch", {"batch": [BATCH_OK]}).status_code == 200
    metrics = client.get("/metrics").text
    assert f"{PREFIX}_messages_received_total 1" in metrics


# -- health and metrics ----------------------------------------------------------------------------------
def test_health(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "outbox": {"pending": 7}}


def test_health_reports_a_problem_as_503(outbox: Outbox) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("database is locked")

    client = TestClient(create_app(outbox, [KEY], health=lambda: {"ok": False, "worker": "stopped"}))
    assert client.get("/health").status_code == 503
    client = TestClient(create_app(outbox, [KEY], health=broken))
    response = client.get("/health")
    assert response.status_code == 503 and "database is locked" in response.json()["error"]


def test_metrics_text(outbox: Outbox) -> None:
    metrics = Metrics()
    metrics.gauge("outbox_depth", lambda: 3)
    metrics.inc("events_delivered_total", 2)
    metrics.inc("rate_limited_total")
    metrics.observe_latency(0.02)
    metrics.observe_latency(7.0)
    client = TestClient(create_app(outbox, [KEY], metrics=metrics))
    post(client, "/v1/batch", {"batch": [BATCH_OK, BATCH_OK]})
    post(client, "/v1/track", b"{", AUTH)
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for line in [
        f"# TYPE {PREFIX}_messages_received_total counter",
        f"{PREFIX}_messages_received_total 2",
        f"{PREFIX}_events_delivered_total 2",
        f"{PREFIX}_events_rejected_total 0",
        f"{PREFIX}_events_dead_lettered_total 0",
        f"{PREFIX}_retries_total 0",
        f"{PREFIX}_rate_limited_total 1",
        f'{PREFIX}_http_requests_total{{endpoint="batch",status="200"}} 1',
        f'{PREFIX}_http_requests_total{{endpoint="track",status="400"}} 1',
        f"# TYPE {PREFIX}_outbox_depth gauge",
        f"{PREFIX}_outbox_depth 3",
        f"# TYPE {PREFIX}_delivery_latency_seconds histogram",
        f'{PREFIX}_delivery_latency_seconds_bucket{{le="0.025"}} 1',
        f'{PREFIX}_delivery_latency_seconds_bucket{{le="10"}} 2',
        f'{PREFIX}_delivery_latency_seconds_bucket{{le="+Inf"}} 2',
        f"{PREFIX}_delivery_latency_seconds_count 2",
    ]:
        assert line in text.splitlines(), line
