"""Connections under hostile clients: a deadline and a size cap for each request's head, and a cap on open connections.

uvicorn closes a connection idle between requests (`timeout_keep_alive`) but gives none to a client
that connects and sends its request head slowly, or never (slowloris): each holds a socket and a
file descriptor for as long as it likes. `guarded_protocol(limits, metrics)` returns uvicorn's
httptools protocol (the C parser: h11's pure-Python one cost a third of a single-message request's
CPU) with three additions:

- a request head must arrive within `head_timeout` seconds of the connection (or of the first byte
  of the next request on a kept-alive connection, counted once the request before it is answered),
  or the connection is closed;
- a request head (its target and headers) larger than MAX_HEAD_BYTES is refused with 400 and the
  connection closed, as h11 does by itself (httptools keeps whatever it is sent); a head that keeps
  coming is cut off once that much more of it has come than the read it began in;
- when a new connection makes more than `max_connections` open, the oldest *idle* one (no request
  in progress for at least IDLE_GRACE seconds: a slow head, or a kept-alive client between
  requests) is closed to make room. The grace keeps a burst of new connections, accepted before
  any has sent its head, from closing each other. When none is idle (all are in requests, each
  bounded by the body timeout in app.py, or are new), the new one is answered 503 `busy` with
  `Connection: close` — except `GET /health` and `GET /metrics`, which are answered as usual, so a
  monitor sees the server while it is full.

uvicorn's own `limit_concurrency` is not used: it answers 503 to everything over the limit,
`/health` too, and closes nothing that is idle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..mapping_set import PROGRAM
from .limits import BODY_COMPLETE, ConnectionLimits
from .metrics import Metrics

log = logging.getLogger(f"{PROGRAM}.serve")

ALWAYS_ANSWERED = ("/health", "/metrics")  # answered even when the server is full
CAP_WARNING_EVERY = 60.0  # seconds between two log lines saying the connection cap was reached
IDLE_GRACE = 0.5  # seconds without a request before a connection may be closed to make room
MAX_HEAD_BYTES = 16 * 1024  # a request's target and headers (h11's default limit, which serve had before)


class _CapWarning:
    """One log line when the cap is reached, then at most one a minute (an attack must not flood the log)."""

    last: float | None = None

    @classmethod
    def reached(cls, limit: int, what: str) -> None:
        now = time.monotonic()
        if cls.last is None or now - cls.last >= CAP_WARNING_EVERY:
            cls.last = now
            log.warning("%d connections open (the --max-connections cap): %s", limit, what)


async def _answer_busy(app: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope.get("type") == "http" and scope.get("method") == "GET" and scope.get("path") in ALWAYS_ANSWERED:
        await app(scope, receive, send)
        return
    reason = "the server has too many open connections; send again shortly"
    body = json.dumps({"success": False, "code": "busy", "message": reason, "reason": reason}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class HeadTooLarge(Exception):
    """Raised from the parser's callback: uvicorn answers 400 and closes the connection, as for any bad head."""


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-head deadline and size cap, and the connection cap
    (see the module)."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    metrics: ClassVar[Metrics | None] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.idle_since = time.monotonic()
        self.head_open = False  # the parser is inside a request head
        self.head_bytes = 0  # what came of it after the data it began in
        self.measure_head = False  # whether the head that ends in this data may be over MAX_HEAD_BYTES
        self._head_deadline: asyncio.TimerHandle | None = None
        self._await_head()
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        # A head within one read of at most MAX_HEAD_BYTES cannot be over it: only other heads are
        # measured (no cost per header for the others). A head that keeps coming is cut off here,
        # before it piles up in the parser.
        self.measure_head = self.head_open or len(data) > MAX_HEAD_BYTES
        if self.head_open:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._head_too_large()
                self.send_400_response("Invalid HTTP request received.")
                return
        super().data_received(data)
        # A head that began and did not end in this data is timed from now (one that did costs no timer); a
        # head pipelined behind a request in progress is timed once that one is answered.
        if self.head_open and self._answered():
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    # the parser's callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_open, self.head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self.head_open = False
        self._head_arrived()
        if self.measure_head and len(self.url) + sum(len(n) + len(v) for n, v in self.headers) > MAX_HEAD_BYTES:
            self._head_too_large()
            raise HeadTooLarge(f"a request head over {MAX_HEAD_BYTES} bytes")  # uvicorn answers 400
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.scope[BODY_COMPLETE] = True  # type: ignore[literal-required]  # (app.py then sets no body deadline)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self.idle_since = time.monotonic()
        super().on_response_complete()
        if self.head_open:
            self._await_head()  # part of the next request came with this one (pipelined)

    def idle(self, since: float) -> bool:
        """No request in progress since `since` (monotonic): safe to close without losing anything."""
        return self._answered() and self.idle_since <= since and not self.transport.is_closing()

    def _answered(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _head_too_large(self) -> None:
        self.head_open = False
        self._head_arrived()
        self._count("head_too_large")

    def _await_head(self) -> None:
        if self._head_deadline is None and not self.transport.is_closing():
            self._head_deadline = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)

    def _head_arrived(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self._answered() and not self.transport.is_closing():
            self._count("head_timeout")
            self.transport.close()

    def _make_room(self) -> None:
        since = time.monotonic() - IDLE_GRACE
        idle = [c for c in self.connections if isinstance(c, GuardedProtocol) and c.idle(since)]
        if idle:
            oldest = min(idle, key=lambda connection: connection.idle_since)
            oldest._head_arrived()
            oldest.transport.close()
            self._count("evicted_idle")
            _CapWarning.reached(self.limits.max_connections, "closing the oldest idle ones to make room")
        else:
            inner = self.app
            self.app = lambda scope, receive, send: _answer_busy(inner, scope, receive, send)
            self._count("over_capacity")
            _CapWarning.reached(self.limits.max_connections,
                                "all are in requests, so new ones are answered 503 (except /health)")

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.inc("connections_closed_total", reason=reason)


def guarded_protocol(limits: ConnectionLimits, metrics: Metrics | None) -> type[GuardedProtocol]:
    """The protocol class to give uvicorn (`Config(http=…)`), bound to these limits."""

    class Bound(GuardedProtocol):
        pass

    Bound.limits = limits
    Bound.metrics = metrics
    return Bound
