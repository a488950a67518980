"""`serve`: Segment's Tracking API on a local port, delivering what it receives.

Segment's libraries (or anything that speaks the Tracking API) send to
`POST /v1/identify|track|page|screen|group|alias|batch|import`, authenticated with HTTP Basic whose
user name is one of the --write-key values. A request is answered {"success": true} only once every
message in it is recorded in the outbox (--state DIR, SQLite); a worker in the same process
delivers the recorded requests with the same batching, rate limits and retries as `send`. Mapping
rejections are recorded with their reason (`outbox rejected --state DIR`), not answered as errors.
GET /health and GET /metrics (Prometheus) tell how it goes. SIGTERM or Ctrl-C stops it gracefully;
what is not delivered yet stays in the outbox for the next start.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ..delivery.outbox import OutboxError
from ..delivery.worker import WorkerOptions
from ..mapping_set import DEFAULT_SET, PROGRAM
from .common import EXIT_OK, UsageError, add_mapping_options, fail, prepare_delivery

DEFAULT_STATE = f"{PROGRAM}-state"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="accept Segment's Tracking API over HTTP and deliver what arrives",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    add_mapping_options(parser)
    parser.add_argument("--state", default=DEFAULT_STATE, metavar="DIR",
                        help=f"the outbox folder, kept across restarts (default: ./{DEFAULT_STATE})")
    parser.add_argument("--write-key", dest="write_keys", action="append", default=[], metavar="KEY",
                        help="a write key clients may use (repeatable; at least one is required)")
    parser.add_argument("--base-url", metavar="URL",
                        help="deliver here instead of the mapping set's base URL (also: the environment "
                             f"variable <SET NAME>_BASE_URL, e.g. {DEFAULT_SET.upper()}_BASE_URL)")
    parser.add_argument("--allow-compatibility-only", action="store_true",
                        help="deliver with a mapping set marked compatibility_only (its API may be retired)")
    parser.add_argument("--concurrency", type=int, default=8, metavar="N",
                        help="HTTP requests to the API at once (default 8)")
    parser.add_argument("--linger", type=float, default=0.25, metavar="SECONDS",
                        help="how long a bulk call that is not full waits for more items (default 0.25)")
    parser.add_argument("--time-scale", type=float, default=1.0, metavar="X",
                        help="the API's clock runs X times faster (only for a fake started with the same "
                             "--time-scale)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="what to log on stderr (default info; debug also logs each rejected event)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        setup = prepare_delivery(args, "serve")
        mapping_set, plan, settings, base_url = setup.mapping_set, setup.plan, setup.given_settings, setup.base_url
        write_keys = [key for key in args.write_keys if key]
        if not write_keys:
            raise UsageError("give at least one --write-key: the key Segment's libraries are configured with")
        if not 0 <= args.port <= 65535:
            raise UsageError(f"--port {args.port}: not a port number")
        if args.time_scale <= 0 or args.concurrency < 1 or args.linger < 0:
            raise UsageError("--time-scale must be > 0, --concurrency ≥ 1 and --linger ≥ 0")
    except UsageError as exc:
        return fail(str(exc))

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"{PROGRAM} serve: %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per delivered call is too many
    # Imported here: the ASGI stack is needed by this command only.
    from ..serve.app import create_app
    from ..serve.server import Service
    from ..serve.server import run as run_server

    state = Path(args.state)
    options = WorkerOptions(time_scale=args.time_scale, concurrency=args.concurrency, linger=args.linger)
    try:
        service = Service(mapping_set, plan, settings, state, base_url, options)
    except OutboxError as exc:  # names the file and what to do
        return fail(str(exc))
    except OSError as exc:
        return fail(f"--state {state}: {exc}")
    app = create_app(service.accept, write_keys, service.metrics, service.health, service.lifespan)
    run_server(app, args.host, args.port, state, base_url)
    return EXIT_OK
