"""`worker`: deliver what a shared outbox (--state postgresql://…) holds, beside other workers; or
what a state folder holds, beside the `serve --no-worker` that records into it.

    $PROG worker --state postgresql://user@db/segment --settings settings.yaml
    $PROG worker --state postgresql://… --settings … --until-empty     # a backlog, then exit
    $PROG worker --state postgresql://… --tenants tenants.yaml --metrics-port 9464
    $PROG worker --state ./state --settings settings.yaml     # a folder: its one deliverer

The outbox's requests are split into partitions, one per lane of the mapping set's delivery section.
A worker leases whole partitions (at most its fair share of them among the live workers), renews its
leases every --lease-ttl/3 seconds and delivers them with the same batching, order, rate limits and
retries as `send`. A worker that dies stops renewing: after --lease-ttl its partitions are taken by
another worker, which sends again only what was in flight (at-least-once).

SIGTERM or Ctrl-C stops it gracefully: the calls in flight finish and are marked, nothing new is
sent, the leases are released for the other workers. Exit 0 after such a stop, or with --until-empty
once nothing is pending and nothing was dead-lettered by this worker; 1 with --until-empty when some
events were dead-lettered (`outbox dead-letters --state URL`); 2 for bad usage, a database out of
reach or too new, or a configuration the API refuses (401/403: nothing is dead-lettered).

With --tenants FILE it delivers every tenant of the file (each with its own settings, partitions,
leases and rate limits); a tenant whose requests it meets but that is not in its file is left to
the workers that have its settings (it says so once). --metrics-port serves GET /metrics
(Prometheus: backlog per tenant and lane, leases held, takeovers, job polls) on --metrics-host.

With a folder (--state DIR) it is the folder's deliverer: one at a time (a second one, or a `serve`
that delivers itself, is refused), beside the one `serve --no-worker` recording into it. It looks
for new requests every $POLL seconds (nothing wakes it, as `serve` wakes its own deliverer);
--tenants, --metrics-port and --lease-ttl are for a shared outbox only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..delivery.ingest import Ingester
from ..delivery.leases import LeaseOptions, SharedDelivery, shared_store
from ..delivery.outbox import OutboxError
from ..delivery.sealing import Sealer
from ..delivery.sqlite_outbox import OUTBOX_FILE
from ..delivery.stores import is_database_url, open_outbox, without_password
from ..delivery.tenant_deliveries import TenantDeliveries
from ..delivery.worker import DeliveryStopped, WorkerOptions, WorkerStats
from ..mapping_set import PROGRAM
from .common import (
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
    DeliverySetup,
    UsageError,
    add_delivery_options,
    add_mapping_options,
    add_tenants_option,
    fail,
    prepare_delivery,
)
from .serve_command import add_lease_option

if TYPE_CHECKING:  # (the PostgreSQL driver is imported only when a URL is given)
    from ..delivery.postgres_outbox import PostgresOutbox

FOLDER_POLL = 0.1  # seconds between looks at a folder's outbox while idle: nothing wakes this worker
__doc__ = (__doc__ or "").replace("$PROG", PROGRAM).replace("$POLL", f"{FOLDER_POLL:g}")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("worker", help="deliver what a shared (PostgreSQL) outbox holds, beside other "
                                                  "workers, or a `serve --no-worker` folder",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", required=True, metavar="URL|DIR",
                        help="the outbox `serve --state` records into: a postgresql:// URL (shared), or a folder "
                             "(this worker is its one deliverer)")
    add_mapping_options(parser)
    add_tenants_option(parser)
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve GET /metrics (Prometheus) on this port (0: any free port, printed)")
    parser.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDRESS",
                        help="address for --metrics-port (default 127.0.0.1: this machine only)")
    parser.add_argument("--until-empty", action="store_true",
                        help="exit once nothing is pending (in any partition) instead of waiting for more")
    add_delivery_options(parser, concurrency="HTTP requests to the API at once, per partition held (default 8)")
    add_lease_option(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="what to log on stderr (default info: leases taken, given back and lost)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        if not is_database_url(args.state):
            if args.tenants or args.metrics_port is not None:
                raise UsageError(f"--state {args.state}: --tenants and --metrics-port need a shared outbox (a "
                                 "postgresql:// URL)")
            if not Path(args.state, OUTBOX_FILE).is_file():
                raise UsageError(f"--state {args.state}: no outbox there ({OUTBOX_FILE}); a folder worker delivers "
                                 "what a `serve --no-worker` records into it")
        setup = prepare_delivery(args, "deliver")
        if args.time_scale <= 0 or args.concurrency < 1 or args.linger < 0 or not args.lease_ttl > 0:
            raise UsageError("--time-scale must be > 0, --concurrency ≥ 1, --linger ≥ 0 and --lease-ttl > 0")
        if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
            raise UsageError(f"--metrics-port {args.metrics_port}: not a port number")
    except UsageError as exc:
        return fail(str(exc))
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"{PROGRAM} worker: %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not is_database_url(args.state):
        return _deliver_folder(args, setup)
    shown = without_password(args.state)
    stores: list[PostgresOutbox] = []
    try:
        try:
            deliveries = _tenant_deliveries(args, setup, stores)
        except (OutboxError, UsageError) as exc:
            return fail(str(exc))
        if args.until_empty:
            deliveries.input_complete()
        tenants = ", ".join(f"'{name}'" for name in deliveries.deliveries if name)
        print(f"{PROGRAM} worker {' '.join(deliveries.holders)}: delivering {shown} to {setup.base_url}"
              + (f" for tenants {tenants}" if tenants else "")
              + (" until nothing is pending" if args.until_empty else ""), file=sys.stderr, flush=True)
        if not _delivered(deliveries.stop, _with_metrics(deliveries, args.metrics_host, args.metrics_port)):
            return EXIT_USAGE
        counters = deliveries.counters
        code = _stopped(args, deliveries.sum_stats(), sum(store.counts().events["pending"] for store in stores),
                        f" · leases: {counters.claimed} taken ({counters.takeovers} from a dead worker), "
                        f"{counters.lost} lost")
        return EXIT_USAGE if deliveries.stopped else code  # (some tenant's configuration refused: logged above)
    finally:
        for store in stores:
            store.close()


def _tenant_deliveries(args: argparse.Namespace, setup: DeliverySetup,
                       stores: list[PostgresOutbox]) -> TenantDeliveries:
    """A SharedDelivery per tenant of --tenants (or one, tenant '', with --settings); each store
    opened is appended to `stores` (for the caller to close)."""
    targets = [(t.name, t.resolved) for t in setup.tenants] if setup.tenants is not None else [("", setup.settings)]
    options = WorkerOptions(time_scale=args.time_scale, concurrency=args.concurrency, linger=args.linger)
    deliveries: dict[str, SharedDelivery] = {}
    for tenant, settings in targets:
        store = shared_store(open_outbox(args.state, partition_of=setup.plan.lane_of, tenant=tenant))
        stores.append(store)
        recorded_by = store.init_meta("mapping_set", setup.mapping_set.name)
        if recorded_by != setup.mapping_set.name:
            whose = f" for tenant '{tenant}'" if tenant else ""
            raise UsageError(f"--state {without_password(args.state)} holds requests{whose} of mapping set "
                             f"'{recorded_by}', not '{setup.mapping_set.name}'")
        secrets = {name: str(settings[name]) for name in setup.mapping_set.secret_settings if settings.get(name)}
        sealer = Sealer(secrets, store.init_meta("seal_nonce", Sealer.new_nonce()))
        chains = Ingester(setup.mapping_set, settings, store, sealer)  # makes request chains' next steps
        deliveries[tenant] = SharedDelivery(setup.plan, store, sealer, setup.base_url, options,
                                            LeaseOptions(args.lease_ttl), chains=chains)
    return TenantDeliveries(deliveries)


def _deliver_folder(args: argparse.Namespace, setup: DeliverySetup) -> int:
    """The folder's deliverer (its lock refuses a second one, and a `serve` that delivers itself)."""
    from ..delivery.sqlite_outbox import SQLiteOutbox
    from ..serve.deliverer import folder_worker

    try:
        outbox = SQLiteOutbox(args.state, create=False, role="deliverer")
    except OutboxError as exc:
        return fail(str(exc))
    try:
        options = WorkerOptions(time_scale=args.time_scale, concurrency=args.concurrency, linger=args.linger,
                                poll=FOLDER_POLL)
        worker, _ = folder_worker(setup.mapping_set, setup.plan, setup.given_settings, outbox, setup.base_url,
                                  options)
        if args.until_empty:
            worker.input_complete()
        print(f"{PROGRAM} worker: delivering {args.state} to {setup.base_url}"
              + (" until nothing is pending" if args.until_empty else ""), file=sys.stderr, flush=True)
        if not _delivered(worker.stop, worker.run()):
            return EXIT_USAGE
        return _stopped(args, worker.stats, outbox.counts().events["pending"])
    finally:
        outbox.close()


def _delivered(stop: Callable[[], None], delivery: Coroutine[Any, Any, object]) -> bool:
    """Run `delivery` to its end, SIGTERM and Ctrl-C calling `stop` (a graceful stop); False when a
    configuration error stopped it (said on stderr)."""
    async def until_signal() -> None:
        loop = asyncio.get_running_loop()  # (closed by asyncio.run, which takes its signal handlers away)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await delivery

    try:
        asyncio.run(until_signal())
    except DeliveryStopped as exc:
        print(f"{PROGRAM}: configuration error, delivery stopped: {exc}; nothing was dead-lettered", file=sys.stderr)
        return False
    return True


def _stopped(args: argparse.Namespace, stats: WorkerStats, pending: int, leases: str = "") -> int:
    """Say what this worker did; exit 1 when it ran --until-empty and dead-lettered some event."""
    print(f"{PROGRAM} worker: stopped · {stats.delivered_events} event(s) delivered and {stats.dead_events} "
          f"dead-lettered by this worker · {stats.requests} requests, {stats.retried} retried, "
          f"{stats.rate_limited} answered 429 · {pending} event(s) pending in the outbox{leases}", file=sys.stderr)
    return EXIT_REJECTED if args.until_empty and stats.dead_events else EXIT_OK


async def _with_metrics(deliveries: TenantDeliveries, metrics_host: str, metrics_port: int | None) -> None:
    """The deliveries run, with GET /metrics served meanwhile when a --metrics-port is given."""
    server = None
    if metrics_port is not None:
        from ..serve.delivery_metrics import shared_delivery_metrics
        from ..serve.metrics_endpoint import serve_metrics

        metrics = shared_delivery_metrics(deliveries)
        server = await serve_metrics(metrics.render, metrics_host, metrics_port)
        bound = server.sockets[0].getsockname()
        print(f"{PROGRAM} worker: metrics on http://{bound[0]}:{bound[1]}/metrics", file=sys.stderr, flush=True)
    try:
        await deliveries.run()
    finally:
        if server is not None:
            server.close()
