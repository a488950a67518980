"""`serve` put together: the Tracking API app, the durable outbox and the delivery worker.

    service = Service(mapping_set, plan, settings, state_dir, base_url, WorkerOptions(...))
    app = create_app(service.accept, write_keys, service.metrics, service.health, service.lifespan)
    run(app, host, port)       # uvicorn; returns after SIGTERM/SIGINT once everything is closed

Per request, `Service.accept` maps the messages and records them — events, their requests (sealed:
no secret is stored) or the mapping's rejection with its reason — in one outbox transaction, shared
with the requests that arrived meanwhile (commits.py, `Ingester.record_groups`; a messageId already
recorded within the de-duplication window is recorded as a skipped duplicate instead, so a client's
retry after a lost answer is not delivered twice), then wakes the worker; only then does the app
answer success. The worker (`DeliveryWorker.run`, the same one `send` uses: batching, rate limits,
retries, dead letters) runs for the server's whole life: on a state folder in a second process that
this one starts, wakes and restarts (deliverer.py), so that recording and delivering do not share
a GIL; on a database as a task in uvicorn's event loop (`SharedDelivery`).

Shutdown (SIGTERM or Ctrl-C): uvicorn stops accepting connections and lets the requests in flight
finish; then the lifespan ends, the worker is told to stop (its calls in flight finish, nothing new
is sent; a deliverer process is sent SIGTERM and waited for) and the outbox is closed. Whatever is
not delivered stays in the outbox, and the next `serve` (or `send --resume`) with the same
`--state` delivers it. After a kill -9 the same holds: nothing acknowledged was only in memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from ..delivery.config import DeliveryPlan
from ..delivery.ingest import Ingester
from ..delivery.leases import LeaseOptions, SharedDelivery, shared_store
from ..delivery.outbox import Finished, Outbox
from ..delivery.sealing import Sealer
from ..delivery.sqlite_outbox import SQLiteOutbox
from ..delivery.stores import is_database_url, open_outbox, without_password
from ..delivery.worker import DeliveryStopped, WorkerOptions, WorkerStats
from ..events import InputError
from ..mapping_set import PROGRAM, MappingSet
from .commits import CommitGroup
from .connections import guarded_protocol
from .deliverer import DelivererProcess, child_config
from .delivery_metrics import backlog_series, count_deliveries
from .limits import DEDUPE_WINDOW, ConnectionLimits
from .metrics import Metrics

log = logging.getLogger(f"{PROGRAM}.serve")

SOURCE = "serve"  # the outbox source every server request is recorded under
SHUTDOWN_GRACE = 30  # seconds for the requests in flight to finish after SIGTERM


def _open_metered(state: str | os.PathLike[str], plan: DeliveryPlan, metrics: Metrics, tenant: str = "") -> Outbox:
    if not is_database_url(str(state)):  # (its deliverer process reports the latencies: deliverer.py)
        return SQLiteOutbox(state, role="recorder")
    outbox = shared_store(open_outbox(str(state), partition_of=plan.lane_of, tenant=tenant))

    def observe(finished: Finished) -> None:
        for seconds in finished.latencies:
            metrics.observe_latency(seconds)

    outbox.on_delivered = observe
    return outbox


class Service:
    """The outbox, the ingester and the worker of one server, and what the app asks of them.

    `state`: a folder (SQLite: this process records, a deliverer process it supervises delivers,
    deliverer.py) or a postgresql:// URL (a shared outbox: this server's worker leases partitions
    like a `worker` process does). `deliver=False` (`serve --no-worker`): only record; `worker`
    processes deliver."""

    def __init__(self, mapping_set: MappingSet, plan: DeliveryPlan, settings: dict[str, Any],
                 state: str | os.PathLike[str], base_url: str, options: WorkerOptions | None = None,
                 metrics: Metrics | None = None, dedupe_window: float | None = DEDUPE_WINDOW,
                 deliver: bool = True, lease: LeaseOptions | None = None, tenant: str = ""):
        self.metrics = metrics or Metrics()
        self.dedupe_window = dedupe_window or None  # 0: keep every copy
        # raises OutboxError: locked by another process, damaged, a database out of reach or too new
        self.tenant = tenant
        self.outbox = _open_metered(state, plan, self.metrics, tenant)
        self.worker: SharedDelivery | None = None
        self.deliverer: DelivererProcess | None = None
        try:
            nonce = self.outbox.init_meta("seal_nonce", Sealer.new_nonce())
            resolved = mapping_set.resolve_settings(dict(settings))
            secrets = {name: str(resolved[name]) for name in mapping_set.secret_settings if resolved.get(name)}
            self.sealer = Sealer(secrets, nonce)
            self.ingester = Ingester(mapping_set, settings, self.outbox, self.sealer)
            if deliver and is_database_url(str(state)):
                self.worker = SharedDelivery(plan, shared_store(self.outbox), self.sealer, base_url, options, lease,
                                             chains=self.ingester)
            elif deliver:
                config = child_config(str(mapping_set.folder.resolve()), dict(settings), str(Path(state).resolve()),
                                      base_url, options or WorkerOptions(), log.getEffectiveLevel())
                self.deliverer = DelivererProcess(config, self.metrics.observe_latency)
            self.commits = CommitGroup(self._record)
        except BaseException:
            self.outbox.close()
            raise
        self.base_url = base_url
        self.failure: str | None = None
        self.running = False
        self.started = time.time()
        stats = (self.worker.stats if self.worker is not None
                 else self.deliverer.stats if self.deliverer is not None else WorkerStats())
        self.metrics.counter_from("events_delivered_total", lambda: stats.delivered_events)
        self.metrics.counter_from("events_dead_lettered_total", lambda: stats.dead_events)
        self.metrics.counter_from("retries_total", lambda: stats.retried)
        self.metrics.counter_from("rate_limited_total", lambda: stats.rate_limited)
        self.metrics.counter_from("job_polls_total", lambda: stats.job_polls)
        if isinstance(self.worker, SharedDelivery):
            shared = self.worker
            count_deliveries(self.metrics, lambda field: float(getattr(stats, field)),
                             lambda: shared.counters.takeovers, shared.store,
                             lambda: {tenant: len(shared.partitions_held)})
        elif is_database_url(str(state)):  # --no-worker: the backlog all the same
            store = shared_store(self.outbox)
            self.metrics.gauge_series("backlog", lambda: backlog_series(store))
        self.metrics.gauge("outbox_depth", self.pending)
        self.metrics.gauge("up", lambda: 1 if self.delivering() else 0)
        if self.deliverer is not None:
            deliverer = self.deliverer
            self.metrics.counter_from("deliverer_restarts_total", lambda: deliverer.restarts)

    # -- for the app -----------------------------------------------------------------------------------
    async def accept(self, messages: list[dict[str, Any] | InputError], /) -> None:
        """Map and record the messages of one request, atomically (in one transaction with those of
        the requests that arrive meanwhile: commits.py); then wake the worker."""
        records = await self.commits.record(messages)
        for record, _ in records:
            if record.status == "rejected":
                self.metrics.inc("events_rejected_total")
                log.debug("rejected %s: %s", record.message_id, record.reason)
            elif record.status == "skipped":
                self.metrics.inc("events_skipped_total")
                if record.reason and record.reason.startswith("duplicate"):
                    self.metrics.inc("events_duplicate_total")
        if self.deliverer is not None:
            self.deliverer.notify()
        elif self.worker is not None:
            self.worker.notify()

    def _record(self, groups: list[list[dict[str, Any] | InputError]]) -> list[Any]:
        return self.ingester.record_groups(SOURCE, groups, label=SOURCE, dedupe_window=self.dedupe_window)

    def pending(self) -> int:
        return self.outbox.counts().events["pending"]

    def delivering(self) -> bool:
        """Up, and delivery not stopped (a deliverer being restarted counts as stopped)."""
        if self.deliverer is not None:
            self.failure = self.deliverer.failure
            if self.deliverer.state.startswith("restarting"):
                return False
        return self.running and self.failure is None

    def health(self) -> dict[str, Any]:
        events = self.outbox.counts().events
        ok = self.delivering()
        delivery = "running" if ok else (self.failure or "not running")
        if self.deliverer is not None and self.failure is None and self.running:
            delivery = self.deliverer.state  # starting, running, or restarting: why
        if self.worker is None and self.deliverer is None and self.failure is None:
            delivery = "off: this server only records (serve --no-worker); worker processes deliver"
        return {"ok": ok, "delivery": delivery, "outbox_depth": events["pending"],
                "events": events, "uptime_seconds": round(time.time() - self.started, 3)}

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(self._deliver()) if self.worker is not None else None
        if self.deliverer is not None:
            self.deliverer.start()
        self.running = True
        try:
            yield
        finally:
            if self.worker is not None and task is not None:
                self.worker.stop()
                await task
            if self.deliverer is not None:
                await self.deliverer.stop()  # its calls in flight finish first
            self.running = False
            try:
                left = f"{self.pending()} event(s) pending in the outbox for the next start"
            except Exception as exc:  # closing must not fail for a count
                left = f"the outbox could not be counted: {exc}"
            self.outbox.close()
            log.info("stopped; %s", left)

    async def _deliver(self) -> None:
        assert self.worker is not None
        try:
            await self.worker.run()
        except DeliveryStopped as exc:
            self.failure = f"configuration error, delivery stopped: {exc}"
            log.error("%s (requests keep being accepted and stored; fix it and restart)", self.failure)
        except Exception as exc:  # stored events are safe; say so and keep accepting
            self.failure = f"delivery stopped: {self.sealer.mask(repr(exc))}"
            log.exception("delivery stopped (requests keep being accepted and stored; restart to resume)")


def uvicorn_config(app: Starlette, host: str, port: int, limits: ConnectionLimits) -> uvicorn.Config:
    """uvicorn's settings for the app: the httptools protocol with the head deadline and the connection cap."""
    metrics = getattr(app.state, "metrics", None)
    return uvicorn.Config(app, host=host, port=port, lifespan="on", access_log=False, log_config=None,
                          log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE,
                          http=guarded_protocol(limits, metrics if isinstance(metrics, Metrics) else None),
                          timeout_keep_alive=limits.keep_alive_timeout)  # type: ignore[arg-type]  # a float works


def run(app: Starlette, host: str, port: int, state: str | Path, base_url: str,
        limits: ConnectionLimits | None = None) -> None:
    """Serve until SIGTERM/SIGINT; print where, once listening (with the real port when 0 was asked)."""
    config = uvicorn_config(app, host, port, limits or ConnectionLimits())
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname() if server.servers else (host, port)
            where = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
            print(f"{PROGRAM} serve: listening on http://{where}:{bound[1]} · outbox {without_password(str(state))} · "
                  f"delivering to {base_url}", file=sys.stderr, flush=True)
        await task

    # uvicorn catches SIGTERM/SIGINT, shuts down gracefully, then restores the handlers it found and
    # raises the signal again, so that the default action ends the process. After a graceful stop
    # there is nothing left to end: the handlers it finds (and restores) ignore the signal, and the
    # command exits 0.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        asyncio.run(serve())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore(sig: int, frame: FrameType | None) -> None:
    pass
