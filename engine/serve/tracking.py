"""Segment's Tracking API, read the way Segment's own server reads it.

`read_request` turns one HTTP request body into the list of messages it carries, or raises
BadRequest with a status, a code and a reason. It never half-reads: either every message of the
request is returned (normalized, ready to be stored) or none is.

What it follows from Segment's HTTP API documentation:
- the single-message endpoints (`/v1/identify`, `/v1/track`, …) take one message; the endpoint gives
  its type, so `POST /v1/track {"event": …}` is a track call even without `"type"` (a `type` in the
  body that names another call is overridden by the endpoint, as Segment-compatible servers do);
- `/v1/batch` (and `/v1/import`, its alias for historical data) takes `{"batch": [...]}` whose every
  item must be an object with a valid `type`; the envelope's `context` and `integrations` are merged
  into each item, the item's own keys winning;
- 32 KB at most a message, 500 KB at most a batch request (measured after gzip is undone): 400;
- `Content-Encoding: gzip` bodies are accepted;
- the write key may travel in the body (`writeKey`) instead of HTTP Basic; it is never stored.

Normalization: `receivedAt` is set to the server's clock, a `sentAt` of the envelope is copied into
messages that have none, and a message without `messageId` gets one (Segment adds it too). The
server (server.py) records a messageId seen in the last 24 hours (`serve --dedupe-window`) as a
skipped duplicate instead of delivering it again.
"""

from __future__ import annotations

import json
import uuid
import zlib
from datetime import datetime, timezone
from typing import Any

from ..functions import a_json_type

CALL_TYPES = ("identify", "track", "page", "screen", "group", "alias")
BATCH_ENDPOINTS = ("batch", "import")
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024


class BadRequest(Exception):
    """A request refused as a whole; nothing of it is stored."""

    def __init__(self, reason: str, code: str = "invalid_request", status: int = 400):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.status = status


def body_limit(endpoint: str) -> int:
    """The largest body (after gzip is undone) an endpoint accepts."""
    return MAX_BATCH_BYTES if endpoint in BATCH_ENDPOINTS else MAX_MESSAGE_BYTES


def _kb(limit: int) -> str:
    return f"{limit // 1024} KB ({limit} bytes)"


def too_large(endpoint: str, size: int | None = None) -> BadRequest:
    limit = body_limit(endpoint)
    what = "a batch request" if endpoint in BATCH_ENDPOINTS else "a message"
    got = f"the body is {size} bytes" if size is not None else "the body is larger"
    return BadRequest(f"{got}; the limit is {_kb(limit)} for {what}", "payload_too_large")


def decode_body(raw: bytes, content_encoding: str | None, endpoint: str) -> bytes:
    """The body with its content encoding undone, refused when larger than the endpoint's limit."""
    limit = body_limit(endpoint)
    encodings = [e.strip().lower() for e in (content_encoding or "").split(",") if e.strip()]
    encodings = [e for e in encodings if e != "identity"]
    if not encodings:
        if len(raw) > limit:
            raise too_large(endpoint, len(raw))
        return raw
    if encodings not in (["gzip"], ["x-gzip"]):
        raise BadRequest(f"Content-Encoding {content_encoding!r} is not supported; send gzip or no encoding",
                         "unsupported_encoding", 415)
    return _gunzip(raw, limit, endpoint)


def _gunzip(raw: bytes, limit: int, endpoint: str) -> bytes:
    out = bytearray()
    data = raw
    while True:  # a gzip stream may hold several members
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += decompressor.decompress(data, limit + 1 - len(out))
            if len(out) > limit:
                raise too_large(endpoint)
            if decompressor.unconsumed_tail:
                raise too_large(endpoint)
            out += decompressor.flush()
        except zlib.error as exc:
            raise BadRequest(f"the body is not valid gzip: {exc}", "invalid_gzip") from None
        if len(out) > limit:
            raise too_large(endpoint)
        if not decompressor.eof:
            raise BadRequest("the body is not valid gzip: the stream is truncated", "invalid_gzip")
        data = decompressor.unused_data
        if not data.strip(b"\x00"):
            return bytes(out)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise BadRequest("the body is empty; send a JSON object", "invalid_json")
    try:
        return json.loads(body, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text", "invalid_json") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}",
                         "invalid_json") from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", "invalid_json") from None


def _check_type(message: dict[str, Any], where: str) -> None:
    kind = message.get("type")
    if kind is None:
        raise BadRequest(f"{where} has no type; it must be one of {', '.join(CALL_TYPES)}", "missing_type")
    if kind not in CALL_TYPES:
        shown = json.dumps(kind) if isinstance(kind, str) else a_json_type(kind)
        raise BadRequest(f"{where} has type {shown}; it must be one of {', '.join(CALL_TYPES)}", "invalid_type")


def message_size(message: Any) -> int:
    """A message's size as Segment's libraries measure it: its compact JSON, in UTF-8 bytes."""
    return len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def _merge(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """`own` deep-merged over `base`: nested objects are merged, any other value of `own` wins."""
    merged = dict(base)
    for key, value in own.items():
        below = merged.get(key)
        merged[key] = _merge(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return merged


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_request(endpoint: str, body: bytes, received_at: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Messages of one request (already decoded), and the write key its body carried, if any."""
    if endpoint not in CALL_TYPES and endpoint not in BATCH_ENDPOINTS:
        raise BadRequest(f"unknown endpoint /v1/{endpoint}", "not_found", 404)
    document = parse_json(body)
    if not isinstance(document, dict):
        what = "a batch request" if endpoint in BATCH_ENDPOINTS else "a message"
        raise BadRequest(f"the body is {a_json_type(document)}; {what} must be a JSON object", "invalid_message")
    body_key = document.get("writeKey")
    write_key = body_key if isinstance(body_key, str) and body_key else None
    received = received_at or now_iso()
    if endpoint in CALL_TYPES:
        message = dict(document)
        message["type"] = endpoint
        return [_normalize(message, received, None)], write_key
    items = document.get("batch")
    if not isinstance(items, list):
        got = "no batch" if items is None else f"batch is {a_json_type(items)}"
        raise BadRequest(f"a batch request must be an object with a batch array; it has {got}", "invalid_batch")
    shared: dict[str, dict[str, Any]] = {}
    for key in ("context", "integrations"):
        value = document.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise BadRequest(f"the batch's {key} is {a_json_type(value)}; it must be an object", "invalid_batch")
        shared[key] = value
    sent_at = document.get("sentAt")
    messages = []
    for index, item in enumerate(items):
        where = f"batch[{index}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} is {a_json_type(item)}; every message must be a JSON object",
                             "invalid_message")
        _check_type(item, where)
        size = message_size(item)
        if size > MAX_MESSAGE_BYTES:
            raise BadRequest(f"{where} is {size} bytes; the limit is {_kb(MAX_MESSAGE_BYTES)} a message",
                             "message_too_large")
        message = dict(item)
        for key, value in shared.items():
            own = message.get(key)
            message[key] = _merge(value, own) if isinstance(own, dict) else (value if own is None else own)
        messages.append(_normalize(message, received, sent_at))
    return messages, write_key


def _normalize(message: dict[str, Any], received_at: str, sent_at: Any) -> dict[str, Any]:
    message.pop("writeKey", None)
    if sent_at is not None and "sentAt" not in message:
        message["sentAt"] = sent_at
    message["receivedAt"] = received_at
    if not message.get("messageId"):
        message["messageId"] = f"api-{uuid.uuid4()}"
    return message
