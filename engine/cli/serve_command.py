"""`serve`: Segment's Tracking API on a local port, delivering what it receives.

Segment's libraries (or anything that speaks the Tracking API) send to
`POST /v1/identify|track|page|screen|group|alias|batch|import`, authenticated with HTTP Basic whose
user name is one of the write keys (--write-key, --write-key-file or the environment variable
$KEYS_ENV, comma-separated). A request is answered {"success": true} only once every
message in it is recorded in the outbox (--state DIR, SQLite; or a postgresql:// URL shared with other
servers and `worker` processes); a worker delivers the recorded requests with the same batching, rate
limits and retries as `send` (with a folder, in a second process this server starts, wakes and
restarts if it dies; with a URL, in this process, leasing partitions like `worker`; --no-worker: this
server only records, `worker` processes deliver, one `worker --state DIR` for a folder). Mapping
rejections are recorded with their reason (`outbox rejected --state DIR`), not answered as errors.
GET /health and GET /metrics (Prometheus) tell how it goes. SIGTERM or Ctrl-C stops it gracefully;
what is not delivered yet stays in the outbox for the next start.

Hostile or broken clients are bounded: a request head must arrive within --head-timeout seconds and
its body within --body-timeout (408); at most --max-connections are open (idle ones are closed to
make room; when all are busy new requests get 503, /health and /metrics still answer). A messageId
already recorded within --dedupe-window seconds is recorded as a skipped duplicate, not sent again.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..delivery.leases import DEFAULT_LEASE_TTL, LeaseOptions
from ..delivery.outbox import OutboxError
from ..delivery.stores import is_database_url, without_password
from ..delivery.worker import WorkerOptions
from ..mapping_set import PROGRAM
from ..serve.limits import DEDUPE_WINDOW, ConnectionLimits
from .common import (
    EXIT_OK,
    UsageError,
    add_delivery_options,
    add_mapping_options,
    add_tenants_option,
    fail,
    prepare_delivery,
)

DEFAULT_STATE = f"{PROGRAM}-state"
KEYS_ENV = PROGRAM.upper().replace("-", "_") + "_WRITE_KEYS"
__doc__ = (__doc__ or "").replace("$KEYS_ENV", KEYS_ENV)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="accept Segment's Tracking API over HTTP and deliver what arrives",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    add_mapping_options(parser)
    add_tenants_option(parser)
    parser.add_argument("--state", default=DEFAULT_STATE, metavar="DIR|URL",
                        help=f"the outbox folder, kept across restarts (default: ./{DEFAULT_STATE}); or a "
                             "postgresql:// URL, an outbox shared by several servers and workers")
    parser.add_argument("--no-worker", dest="deliver", action="store_false",
                        help="only record what arrives; `worker` processes deliver it (with a folder, one "
                             "`worker --state DIR`)")
    add_lease_option(parser)
    parser.add_argument("--write-key", dest="write_keys", action="append", default=[], metavar="KEY",
                        help="a write key clients may use (repeatable). At least one key is required, from here, "
                             f"--write-key-file or {KEYS_ENV}; prefer those two: a command line is visible to "
                             "other users of the machine")
    parser.add_argument("--write-key-file", dest="write_key_files", action="append", default=[], metavar="FILE",
                        help="write keys, one a line (blank lines and lines starting with # are ignored; repeatable)")
    add_delivery_options(parser, concurrency="HTTP requests to the API at once (default 8)")
    limits = ConnectionLimits()
    parser.add_argument("--head-timeout", type=float, default=limits.head_timeout, metavar="SECONDS",
                        help="close a connection whose request line and headers take longer (default "
                             f"{limits.head_timeout:g})")
    parser.add_argument("--body-timeout", type=float, default=limits.body_timeout, metavar="SECONDS",
                        help=f"answer 408 to a request whose body takes longer (default {limits.body_timeout:g})")
    parser.add_argument("--keep-alive-timeout", type=float, default=limits.keep_alive_timeout, metavar="SECONDS",
                        help="close a connection idle this long between requests (default "
                             f"{limits.keep_alive_timeout:g})")
    parser.add_argument("--max-connections", type=int, default=limits.max_connections, metavar="N",
                        help="open connections at most; beyond, idle ones are closed, or new requests get 503 "
                             f"(/health and /metrics still answer) (default {limits.max_connections})")
    parser.add_argument("--dedupe-window", type=float, default=DEDUPE_WINDOW, metavar="SECONDS",
                        help="a messageId recorded this recently is recorded again as a skipped duplicate, not "
                             f"sent (default {DEDUPE_WINDOW}, a day; 0: off)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="what to log on stderr (default info; debug also logs each rejected event)")
    parser.set_defaults(run=run)


def add_lease_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lease-ttl", type=float, default=DEFAULT_LEASE_TTL, metavar="SECONDS",
                        help="with a postgresql:// --state: a worker's lease on a partition lasts this long unless "
                             "renewed (every third of it); a dead worker's partitions are taken over within 4/3 of "
                             f"it (default {DEFAULT_LEASE_TTL:g}: within {DEFAULT_LEASE_TTL * 4 / 3:.1f} s)")


def run(args: argparse.Namespace) -> int:
    try:
        setup = prepare_delivery(args, "serve")
        mapping_set, plan, settings, base_url = setup.mapping_set, setup.plan, setup.given_settings, setup.base_url
        write_keys = _write_keys(args) if not setup.tenants else [key for t in setup.tenants for key in t.write_keys]
        if setup.tenants and (args.write_keys or args.write_key_files):
            raise UsageError("--tenants names each tenant's write keys: leave out --write-key and --write-key-file")
        if not write_keys:
            raise UsageError(f"give at least one write key (--write-key-file FILE, {KEYS_ENV} or --write-key): "
                             "the key Segment's libraries are configured with")
        if not 0 <= args.port <= 65535:
            raise UsageError(f"--port {args.port}: not a port number")
        if args.time_scale <= 0 or args.concurrency < 1 or args.linger < 0:
            raise UsageError("--time-scale must be > 0, --concurrency ≥ 1 and --linger ≥ 0")
        for name in ("head_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(args, name) > 0:
                raise UsageError(f"--{name.replace('_', '-')} must be > 0 seconds")
        if not args.lease_ttl > 0:
            raise UsageError("--lease-ttl must be > 0 seconds")
        if args.max_connections < 1 or args.dedupe_window < 0:
            raise UsageError("--max-connections must be ≥ 1 and --dedupe-window ≥ 0")
        limits = ConnectionLimits(args.head_timeout, args.body_timeout, args.keep_alive_timeout, args.max_connections)
    except UsageError as exc:
        return fail(str(exc))

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"{PROGRAM} serve: %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per delivered call is too many
    # Imported here: the ASGI stack is needed by this command only.
    from ..serve.app import create_app
    from ..serve.server import Service
    from ..serve.server import run as run_server

    state = args.state if is_database_url(args.state) else Path(args.state)
    options = WorkerOptions(time_scale=args.time_scale, concurrency=args.concurrency, linger=args.linger)
    try:
        if setup.tenants:
            from ..serve.tenant_services import TenantServices
            tenants = TenantServices(mapping_set, plan, setup.tenants, str(state), base_url, options,
                                     dedupe_window=args.dedupe_window, deliver=args.deliver,
                                     lease=LeaseOptions(args.lease_ttl))
        else:
            service = Service(mapping_set, plan, settings, state, base_url, options, dedupe_window=args.dedupe_window,
                              deliver=args.deliver, lease=LeaseOptions(args.lease_ttl))
    except OutboxError as exc:  # names the file (or database) and what to do
        return fail(str(exc))
    except OSError as exc:
        return fail(f"--state {without_password(str(state))}: {exc}")
    if setup.tenants:
        app = create_app(lambda messages: None, [], tenants.metrics, tenants.health, tenants.lifespan,
                         body_timeout=limits.body_timeout, tenants=tenants.routes)
    else:
        app = create_app(service.accept, write_keys, service.metrics, service.health, service.lifespan,
                         body_timeout=limits.body_timeout)
    run_server(app, args.host, args.port, state, base_url if args.deliver else "no one (--no-worker)", limits)
    return EXIT_OK


def _write_keys(args: argparse.Namespace) -> list[str]:
    """The keys from --write-key, each --write-key-file and the environment. Errors never quote a key."""
    keys = [key for key in args.write_keys if key]
    for path in args.write_key_files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--write-key-file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--write-key-file {path}: not UTF-8 text") from None
        found = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
        if not found:
            raise UsageError(f"--write-key-file {path}: no key in it (one a line)")
        keys += found
    keys += [key.strip() for key in os.environ.get(KEYS_ENV, "").split(",") if key.strip()]
    return keys
