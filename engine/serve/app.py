"""The HTTP side of `serve`: a Starlette app that speaks Segment's Tracking API.

`create_app(accept, write_keys, ...)` builds it. Every `POST /v1/<call>` is authenticated (HTTP
Basic whose user name is a write key, or Segment's `writeKey` in the body when no Authorization
header is sent), its body read under Segment's size limits and gunzipped, its messages checked
(tracking.py), and then handed to `accept` — all of them at once. `accept` must store them durably,
all or nothing, and raise if it cannot; only when it has returned does the client get
`{"success": true}`. So an acknowledged message is never lost, and a refused request (400, 401,
404, 415, 503) has stored nothing.

Mapping rejections are not HTTP errors here: like Segment's API, the server accepts a well-formed
message and the delivery side records whatever the mapping set says about it.

A body must arrive within `body_timeout` seconds of its head (408, and the connection is closed: a
client trickling its body cannot hold a connection); a client that disconnects mid-body costs one
log line (the request stored nothing).

`GET /health` answers 200 with the outbox depth while the server and its worker live (503 when the
health callable reports a problem); `GET /metrics` answers Prometheus text.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, cast

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Lifespan

from ..events import InputError
from ..mapping_set import PROGRAM
from .limits import BODY_COMPLETE
from .metrics import Metrics
from .tracking import BATCH_ENDPOINTS, CALL_TYPES, BadRequest, body_limit, decode_body, read_request, too_large

log = logging.getLogger(f"{PROGRAM}.serve")

ENDPOINTS = CALL_TYPES + BATCH_ENDPOINTS
REALM = f'Basic realm="{PROGRAM}"'
BODY_TIMEOUT = 30.0  # seconds for a whole request body, from its head
SUCCESS = b'{"success":true}'  # the body of every accepted request, written once
CLIENT_CLOSED = 499  # the status recorded (never sent) for a request whose client went away mid-body
_deadline: Callable[[float], Any] | None = getattr(asyncio, "timeout", None)


class Accept(Protocol):
    """Store every message durably, all or nothing; raise when that is not possible. A coroutine
    function is awaited in the event loop; a plain one runs in a worker thread."""

    def __call__(self, messages: list[dict[str, Any] | InputError], /) -> Awaitable[None] | None: ...


def _error(status: int, code: str, reason: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    # `message` is what Segment's libraries log from an error answer; `reason` is the same text under
    # the key the rest of this tool uses for why something was refused.
    return JSONResponse({"success": False, "code": code, "message": reason, "reason": reason},
                        status_code=status, headers=headers)


def _unauthorized(reason: str) -> JSONResponse:
    return _error(401, "unauthorized", reason, {"WWW-Authenticate": REALM})


class _Auth:
    def __init__(self, write_keys: Iterable[str]):
        self._keys = [key.encode("utf-8") for key in write_keys if key]

    def allows(self, key: str) -> bool:
        candidate = key.encode("utf-8")
        # compare with every key, constant-time each, so the answer's timing does not tell which matched
        matched = False
        for known in self._keys:
            matched |= hmac.compare_digest(candidate, known)
        return matched

    def key_from_header(self, header: str) -> tuple[str | None, str]:
        """(the refusal reason or None, the write key the header carries)."""
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return (f"{scheme or 'this'} authorization is not supported; use HTTP Basic with the write key as user "
                    "name"), ""
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return "the Basic credentials are not valid base64", ""
        # `key:` as Segment documents it; a bare `key` is accepted too, as Segment still does.
        user = decoded.partition(":")[0]
        return (None if user and self.allows(user) else "unknown write key"), user


class _BodyTimeout(Exception):
    pass


async def _read_body(request: Request, limit: int, endpoint: str, timeout: float) -> bytes:
    """The raw body, refused early when it cannot fit the limit (gzip gets room for its overhead).

    Raises _BodyTimeout when it has not all arrived within `timeout` seconds, ClientDisconnect when
    the client goes away first. A body the server had whole before the app ran (BODY_COMPLETE: most
    single messages come with their head) is taken without a deadline: it cannot be slow."""
    encoded = "gzip" in request.headers.get("content-encoding", "").lower()
    cap = limit + limit // 8 + 1024 if encoded else limit
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise too_large(endpoint, int(length) if not encoded else None)
    chunks = bytearray()

    async def read_all() -> bytes:
        while True:  # (ASGI messages read as they come: Request.stream() is an async generator, which costs more)
            message = await request.receive()
            if message["type"] != "http.request":
                raise ClientDisconnect()
            chunks.extend(message.get("body", b""))
            if len(chunks) > cap:
                raise too_large(endpoint, None)
            if not message.get("more_body", False):
                return bytes(chunks)

    try:
        if request.scope.get(BODY_COMPLETE):
            return await read_all()
        # (one deadline for the whole body: one timer a request, not one a chunk)
        if _deadline is not None:  # (Python 3.11+: no task made per request, as wait_for makes)
            async with _deadline(timeout):
                return await read_all()
        return await asyncio.wait_for(read_all(), timeout)
    except asyncio.TimeoutError:
        raise _BodyTimeout(len(chunks)) from None
    except ClientDisconnect:
        raise ClientDisconnect(len(chunks)) from None


def create_app(accept: Accept, write_keys: Iterable[str], metrics: Metrics | None = None,
               health: Callable[[], dict[str, Any]] | None = None, lifespan: Lifespan[Any] | None = None,
               body_timeout: float = BODY_TIMEOUT, tenants: Mapping[str, Accept] | None = None) -> Starlette:
    """The Tracking API app. `health()` returns the /health body; a false "ok" in it answers 503.

    `tenants` (serve --tenants): write key -> the accept of the tenant it routes to; `accept` and
    `write_keys` are then not used."""
    if tenants is not None:
        write_keys = list(tenants)
    auth = _Auth(write_keys)
    stats = metrics or Metrics()
    asynchronous = inspect.iscoroutinefunction(accept)
    accepted = Response(SUCCESS, media_type="application/json")  # (sent as is, again and again: built once)

    async def tracking(request: Request) -> Response:
        endpoint = request.path_params["endpoint"]
        response = await _tracking(request, endpoint)
        stats.inc("http_requests_total", endpoint=endpoint if endpoint in ENDPOINTS else "other",
                  status=str(response.status_code))
        return response

    async def _tracking(request: Request, endpoint: str) -> Response:
        if endpoint not in ENDPOINTS:
            return _error(404, "not_found", f"no endpoint /v1/{endpoint}; the Tracking API has "
                          + ", ".join(f"/v1/{e}" for e in ENDPOINTS))
        header = request.headers.get("authorization")
        key = ""
        if header is not None:
            refusal, key = auth.key_from_header(header)
            if refusal is not None:
                return _unauthorized(refusal)
        try:
            raw = await _read_body(request, body_limit(endpoint), endpoint, body_timeout)
            body = decode_body(raw, request.headers.get("content-encoding"), endpoint)
            messages, body_key = read_request(endpoint, body)
        except _BodyTimeout as slow:
            return _error(408, "request_timeout", f"the body did not arrive within {body_timeout:g} s "
                          f"({slow.args[0]} bytes came); nothing was stored", {"Connection": "close"})
        except ClientDisconnect as gone:
            client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
            log.info("%s went away mid-body (%s bytes of /v1/%s came); nothing was stored", client, gone.args[0],
                     endpoint)
            return Response(status_code=CLIENT_CLOSED)  # nobody reads it; counted in the metrics
        except BadRequest as bad:
            if header is None:  # nobody proved who they are: say only that
                return _unauthorized("no write key: send HTTP Basic with the write key as user name")
            return _error(bad.status, bad.code, bad.reason)
        if header is None and (body_key is None or not auth.allows(body_key)):
            return _unauthorized("unknown write key" if body_key else
                                 "no write key: send HTTP Basic with the write key as user name")
        if messages:
            receive = accept if tenants is None else tenants[key if header is not None else str(body_key)]
            try:
                if inspect.iscoroutinefunction(receive) if tenants is not None else asynchronous:
                    await cast("Awaitable[None]", receive(messages))
                else:
                    await run_in_threadpool(receive, messages)
            except Exception as exc:
                log.exception("could not store %d message(s)", len(messages))
                return _error(503, "unavailable", f"the messages could not be stored, send them again: {exc}",
                              {"Retry-After": "1"})
            stats.inc("messages_received_total", len(messages))
        return accepted

    async def health_check(request: Request) -> Response:
        body: dict[str, Any] = {"ok": True}
        if health is not None:
            try:
                body = dict(health())
            except Exception as exc:
                body = {"ok": False, "error": str(exc)}
        body.setdefault("ok", True)
        return JSONResponse(body, status_code=200 if body["ok"] else 503)

    async def metrics_page(request: Request) -> Response:
        text = await run_in_threadpool(stats.render)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/v1/{endpoint}", tracking, methods=["POST"]),
        Route("/health", health_check, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
    ]
    app = _TrackingApp(tracking, routes=routes, lifespan=lifespan)
    app.state.metrics = stats
    return app


class _TrackingApp(Starlette):
    """Starlette, with `POST /v1/<call>` (every request a client sends) taken straight to its handler:
    Starlette's middleware and router cost a quarter of a single-message request's CPU and do nothing
    for it (the handler answers every error itself). Anything else (/health, /metrics, an unknown
    path, the lifespan) goes through Starlette as before."""

    def __init__(self, tracking: Callable[[Request], Awaitable[Response]], **options: Any):
        super().__init__(**options)
        self._tracking = tracking

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (scope["type"] == "http" and scope["method"] == "POST" and path.startswith("/v1/") and len(path) > 4
                and path.count("/") == 2):  # (what Route("/v1/{endpoint}") matches)
            scope["app"] = self
            request = Request(scope, receive)
            request.scope["path_params"] = {"endpoint": path[4:]}
            try:
                response = await self._tracking(request)
            except Exception:  # as Starlette's ServerErrorMiddleware would: a 500, the error logged
                log.exception("error in POST %s", path)
                response = PlainTextResponse("Internal Server Error", status_code=500)
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
