"""What `serve` allows a client, with the defaults; light, so the CLI can show them without the ASGI stack."""

from __future__ import annotations

from dataclasses import dataclass

DEDUPE_WINDOW = 24 * 3600  # seconds a messageId is remembered (Segment's own de-duplication window)
BODY_COMPLETE = "body_complete"  # in a request's scope: the server had its whole body before the app ran


@dataclass(frozen=True)
class ConnectionLimits:
    head_timeout: float = 10.0  # seconds for a request's line and headers
    body_timeout: float = 30.0  # seconds for a whole request body (app.py answers 408 after it)
    keep_alive_timeout: float = 5.0  # seconds a connection may stay idle between requests
    max_connections: int = 500  # open connections; beyond it idle ones are closed, or 503
