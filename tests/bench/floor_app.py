"""The floor `serve` is measured against: a bare Starlette app on uvicorn (the server `serve` runs on)
that reads each POST's JSON body with the standard library and answers {"success": true}. Nothing is
checked, stored or delivered: no Tracking API server on this stack can be faster. It runs on what
`serve` runs on (server.py: uvicorn's httptools parser, asyncio's own event loop, no access log), so
the two differ only in what `serve` does per request.

    python tests/bench/floor_app.py   # prints "listening on PORT" once it listens on 127.0.0.1
"""

from __future__ import annotations

import asyncio
import json
import socket

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def tracking(request: Request) -> Response:
    json.loads(await request.body())
    return JSONResponse({"success": True})


app = Starlette(routes=[Route("/v1/{endpoint}", tracking, methods=["POST"])])


def main() -> None:
    # (IPPROTO_TCP said, as uvicorn's own sockets do: asyncio sets TCP_NODELAY only on those, and
    # without it every answer after the first waits 40 ms for a delayed ACK)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    print(f"listening on {listener.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, http="httptools", loop="asyncio", log_level="warning",
                                           access_log=False))
    asyncio.run(server.serve(sockets=[listener]))


if __name__ == "__main__":
    main()
