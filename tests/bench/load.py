"""A load generator for `serve` (and the floor app): HTTP/1.1 keep-alive on loopback, asyncio, raw sockets.

    python tests/bench/load.py --port P --key K --bodies FILE [--connections 16] [--seconds 5]
                               [--max-requests N] [--offset N] [--rate R] [--path /v1/track]

FILE holds one request body a line (sent in turn, each once at most: --max-requests is capped by the
lines there are). Closed loop by default: each connection sends its next request as soon as the last
is answered. With --rate, open loop: request k is due at k/R seconds, and its latency counts from
when it was due (so a server that falls behind shows it, instead of slowing the generator down).
Bounded in time (--seconds) and in count. Prints one JSON object: requests, errors (a non-200
answer or a broken connection), seconds, requests_per_s, latency percentiles in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


async def _answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def run(args: argparse.Namespace) -> dict[str, object]:
    with open(args.bodies, "rb") as source:
        bodies = [line.rstrip(b"\n") for line in source if line.strip()][args.offset:args.offset + args.max_requests]
    auth = base64.b64encode(f"{args.key}:".encode()).decode()
    head = (f"POST {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\nAuthorization: Basic {auth}\r\n"
            "Content-Type: application/json\r\nContent-Length: ").encode()
    requests = [head + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies]
    next_request = 0
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    deadline = started + args.seconds

    async def connection() -> None:
        nonlocal next_request, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        try:
            while next_request < len(requests):
                number = next_request
                next_request += 1
                due = started + number / args.rate if args.rate else time.perf_counter()
                if due >= deadline:
                    return
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(requests[number])
                status = await _answer(reader)
                if status != 200:
                    errors += 1
                latencies.append(time.perf_counter() - due)
                if time.perf_counter() >= deadline:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(connection() for _ in range(args.connections))), args.seconds + 30)
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"requests": len(latencies), "errors": errors, "seconds": round(elapsed, 3),
            "requests_per_s": round(len(latencies) / elapsed, 1), "rate_asked": args.rate,
            "p50_ms": round(1000 * (percentile(ordered, 0.5) or 0), 2),
            "p99_ms": round(1000 * (percentile(ordered, 0.99) or 0), 2),
            "max_ms": round(1000 * (ordered[-1] if ordered else 0), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", default="bench-write-key")
    parser.add_argument("--bodies", required=True)
    parser.add_argument("--path", default="/v1/track")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--offset", type=int, default=0, help="skip this many bodies (sent by an earlier run)")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s, open loop (0: closed loop)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
