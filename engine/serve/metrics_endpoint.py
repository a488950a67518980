"""GET /metrics for a process that serves nothing else (`worker --metrics-port`): a minimal HTTP/1.1 server.

A worker has no web app; one page read by a Prometheus scraper does not warrant one. Every other path
answers 404; a request head that does not arrive within a few seconds is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

HEAD_TIMEOUT = 5.0
MAX_HEAD = 8192


async def serve_metrics(render: Callable[[], str], host: str, port: int) -> asyncio.Server:
    """Start answering GET /metrics with `render()` (run in a thread: it may query the database)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            method, _, rest = head[:MAX_HEAD].decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            if method == "GET" and path == "/metrics":
                body = (await asyncio.to_thread(render)).encode("utf-8")
                status, kind = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
            else:
                body, status, kind = b"only GET /metrics here\n", "404 Not Found", "text/plain; charset=utf-8"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode("ascii") + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port, limit=MAX_HEAD)
