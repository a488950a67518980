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

from ..events import (
    MESSAGE_TYPES,
    NOT_QUICK,
    InputError,
    checked_event,
    decode_json,
    event_problem,
    input_error,
    quick_decode,
)
from ..functions import a_json_type
from ..strict_json import compact_bytes

CALL_TYPES = MESSAGE_TYPES  # one endpoint each
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


def parse_json(body: bytes) -> tuple[Any, bool]:
    """The body's JSON document, and whether its messages need event_problem's check (events.py)."""
    if not body.strip():
        raise BadRequest("the body is empty; send a JSON object", "invalid_json")
    quick = quick_decode(body)
    if quick is not NOT_QUICK:
        return quick, False
    try:
        text, not_utf8 = body.decode("utf-8"), False
    except UnicodeDecodeError:
        # Decoded anyway: the bytes that are not UTF-8 become lone surrogates, and only the messages
        # that hold them are rejected.
        text, not_utf8 = body.decode("utf-8", "surrogateescape"), True
    if text.startswith("\ufeff"):  # a byte-order mark, as map and send skip it
        text = text[1:]
    try:
        document, suspect = decode_json(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}",
                         "invalid_json") from None
    return document, suspect or not_utf8


def _type_problem(message: dict[str, Any], where: str) -> str | None:
    kind = message.get("type")
    if kind is None:
        return f"{where} has no type; it must be one of {', '.join(CALL_TYPES)}"
    if kind not in CALL_TYPES:
        shown = json.dumps(kind) if isinstance(kind, str) else a_json_type(kind)
        return f"{where} has type {shown}; it must be one of {', '.join(CALL_TYPES)}"
    return None


def message_size(message: Any) -> int:
    """A message's size as Segment's libraries measure it: its compact JSON, in UTF-8 bytes."""
    return len(compact_bytes(message))


def _merge(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """`own` deep-merged over `base`: nested objects are merged, any other value of `own` wins."""
    merged = dict(base)
    for key, value in own.items():
        below = merged.get(key)
        merged[key] = _merge(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return merged


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_request(endpoint: str, body: bytes,
                 received_at: str | None = None) -> tuple[list[dict[str, Any] | InputError], str | None]:
    """Messages of one request (already decoded), and the write key its body carried, if any. A
    message that cannot be taken (not an object, no call type, a string that is not text, NaN…) is
    an InputError in its place, to be recorded as rejected: one bad message does not refuse the others."""
    if endpoint not in CALL_TYPES and endpoint not in BATCH_ENDPOINTS:
        raise BadRequest(f"unknown endpoint /v1/{endpoint}", "not_found", 404)
    document, suspect = parse_json(body)
    if not isinstance(document, dict):
        what = "a batch request" if endpoint in BATCH_ENDPOINTS else "a message"
        raise BadRequest(f"the body is {a_json_type(document)}; {what} must be a JSON object", "invalid_message")
    body_key = document.get("writeKey")
    write_key = body_key if isinstance(body_key, str) and body_key and event_problem(body_key) is None else None
    received = received_at or now_iso()
    if endpoint in CALL_TYPES:
        message = dict(document)
        message["type"] = endpoint
        return [_checked(_normalize(message, received, None), "", suspect)], write_key
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
    messages: list[dict[str, Any] | InputError] = []
    for index, item in enumerate(items):
        where = f"batch[{index}]"
        # A bad item is rejected alone (recorded with its reason); the others are accepted.
        if not isinstance(item, dict):
            messages.append(input_error(f"{where} is {a_json_type(item)}; a message must be a JSON object", item))
            continue
        content = event_problem(item) if suspect else None
        problem = f"{where}: {content}" if content else _type_problem(item, where)
        if problem is not None:
            messages.append(input_error(problem, item))
            continue
        size = message_size(item)
        if size > MAX_MESSAGE_BYTES:
            raise BadRequest(f"{where} is {size} bytes; the limit is {_kb(MAX_MESSAGE_BYTES)} a message",
                             "message_too_large")
        message = dict(item)
        for key, value in shared.items():
            own = message.get(key)
            message[key] = _merge(value, own) if isinstance(own, dict) else (value if own is None else own)
        messages.append(_checked(_normalize(message, received, sent_at), f"{where}: ", suspect))
    return messages, write_key


def _checked(message: dict[str, Any], where: str, suspect: bool) -> dict[str, Any] | InputError:
    """The message, or its rejection when it holds what no destination takes (see events.py)."""
    return checked_event(message, where) if suspect else message


def _normalize(message: dict[str, Any], received_at: str, sent_at: Any) -> dict[str, Any]:
    message.pop("writeKey", None)
    if sent_at is not None and "sentAt" not in message:
        message["sentAt"] = sent_at
    message["receivedAt"] = received_at
    if not message.get("messageId"):
        message["messageId"] = f"api-{uuid.uuid4()}"
    return message
