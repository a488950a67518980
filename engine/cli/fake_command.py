"""`fake-<default set>`: a fake of the API a mapping set delivers to, on a loopback port.

It checks what the real API checks (auth and scopes, required headers, every body against the
OpenAPI document the set ships, bulk caps, rate limits with 429 and Retry-After) and keeps what it
accepted, de-duplicated the way the API does. `GET /_fake/received` shows what it keeps,
`GET /_fake/requests` the accepted requests, `POST /_fake/reset` forgets everything. The options
below make it misbehave on purpose, for testing a sender. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from typing import Any

from ..fake.server import FakeOptions, FakeServer
from ..mapping_set import DEFAULT_SET
from .common import EXIT_OK, UsageError, delivery_plan, fail, load_set_or_exit


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(f"fake-{DEFAULT_SET}", help="run a fake of the mapping set's API on a local port",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--mappings", default=DEFAULT_SET, metavar="NAME|DIR",
                        help=f"the mapping set whose API to fake (default: {DEFAULT_SET})")
    parser.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY",
                        help="accept only this key (repeatable; default: any key)")
    parser.add_argument("--scopes", metavar="S1,S2",
                        help="the scopes the keys have (default: all); others answer 403")
    parser.add_argument("--time-scale", type=float, default=1.0, metavar="X",
                        help="run the clock X times faster (rate-limit windows, Retry-After)")
    parser.add_argument("--no-rate-limits", action="store_true", help="do not enforce the published rate limits")
    parser.add_argument("--error-rate", type=float, default=0.0, metavar="P", help="answer 5xx with probability P")
    parser.add_argument("--drop-rate", type=float, default=0.0, metavar="P",
                        help="drop the connection without an answer with probability P")
    parser.add_argument("--slow-rate", type=float, default=0.0, metavar="P", help="answer slowly with probability P")
    parser.add_argument("--slow-seconds", type=float, default=1.0, metavar="S", help="how slowly (default 1s)")
    parser.add_argument("--burst-429-every", type=float, default=0.0, metavar="S",
                        help="every S (API) seconds, answer everything 429 for --burst-429-length seconds")
    parser.add_argument("--burst-429-length", type=float, default=1.0, metavar="S")
    parser.add_argument("--fail-items-matching", metavar="REGEX",
                        help="answer 400 naming the items whose JSON matches REGEX (tests dead-lettering)")
    parser.add_argument("--fail-job-rows-matching", metavar="REGEX",
                        help="accept bulk jobs but list their rows whose JSON matches REGEX as import errors")
    parser.add_argument("--seed", type=int, help="seed for the misbehaviour (reproducible runs)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        mapping_set = load_set_or_exit(args.mappings)
        plan = delivery_plan(mapping_set)
        if plan.spec_path is None:
            raise UsageError(f"mapping set '{mapping_set.name}' names no OpenAPI spec in its delivery section")
        options = FakeOptions(
            api_keys=args.api_keys, scopes=args.scopes.split(",") if args.scopes is not None else None,
            time_scale=args.time_scale, enforce_rate_limits=not args.no_rate_limits, error_rate=args.error_rate,
            drop_rate=args.drop_rate, slow_rate=args.slow_rate, slow_seconds=args.slow_seconds,
            burst_429_every=args.burst_429_every, burst_429_length=args.burst_429_length,
            fail_items_matching=args.fail_items_matching, fail_job_rows_matching=args.fail_job_rows_matching,
            seed=args.seed)
        try:
            fake = FakeServer(plan, options, host=args.host, port=args.port)
        except OSError as exc:
            raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    except UsageError as exc:
        return fail(str(exc))
    print(f"fake {mapping_set.title} listening on {fake.url} "
          f"(GET {fake.url}/_fake/received shows what it kept; Ctrl-C stops)", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it like Ctrl-C: with the summary
    with contextlib.suppress(KeyboardInterrupt):
        fake.serve_forever()
    snapshot = fake.store.snapshot()
    kept = ", ".join(f"{len(v)} {k}" for k, v in sorted(snapshot["records"].items())) or "nothing"
    print(f"\nfake stopped: {snapshot['counters'].get('requests', 0)} requests, "
          f"{snapshot['counters'].get('accepted', 0)} accepted; kept {len(snapshot['profiles'])} profiles, {kept}",
          file=sys.stderr)
    return EXIT_OK
