"""The delivery worker: drains an outbox to the API, with batching, order, rate limits and retries.

    worker = DeliveryWorker(plan, outbox, sealer, base_url="https://api.example.com")
    stats = await worker.run()          # returns when the input is complete and everything answered
    # or, in a server: run() forever, call worker.notify() after recording events, worker.stop() to end

The worker reads pending units (requests) from the outbox in input order, a window at a time, and
places each one:

- a unit the mapping set's `batching` can merge joins the open bulk call of its partition (same
  URL, headers and body outside the items) if the call has room; otherwise it is sent on its own;
- **order**: every unit carries keys — its event (`order.same_event`) and, per lane, each identifier
  of the subject it is about (`order.same_subject`). A unit whose key is held by an earlier unit
  that is not yet answered waits ("blocked"), unless both go in the same call, where items keep
  input order. So an event's requests go out in rule order (a profile's import before its
  subscription), and one profile's events in input order, never two calls for it at once.

A call is dispatched when it is full, when it has waited `linger` seconds for more items, or at
once when no more input can come; each endpoint's `RateLimiter` decides when. The answer decides:
2xx marks every unit delivered; a stop status (401/403) ends the run with a configuration error,
leaving the units pending; an item-error status (400 naming items by JSON pointer) dead-letters
those items and resends the rest; a retryable status or a network error retries with backoff (a
429 pauses the endpoint for Retry-After); anything else dead-letters the call's units with the
response. Nothing is marked before the API has answered, so a crash resends only calls in flight.

One process, one asyncio loop: `run` is a coroutine. Outbox calls run in worker threads
(`asyncio.to_thread`), so a server's event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..mapping_set import PROGRAM
from ..strict_json import decode_stored
from .batching import BatchBuilder, Prepared, Rendered, prepare, units_named
from .chains import ChainError, ChainRunner, chain_continues, chain_subject, inherit_subject
from .config import BatchSpec, DeliveryPlan, Endpoint
from .jobs import attribute_errors, error_page, job_id, job_path, job_state, same_origin_path
from .outbox import DeadLetter, Finished, LeaseLost, OpenJob, StoredUnit, WorkQueue
from .ratelimit import RateLimiter
from .retry import (
    DEAD,
    DELIVERED,
    ITEM_ERRORS,
    RETRY,
    STOP,
    answer_errors,
    backoff,
    classify,
    retry_after,
    stop_message,
)
from .sealing import MissingSecret, Sealer

log = logging.getLogger(f"{PROGRAM}.delivery")

MAX_RESPONSE_TEXT = 16_000
PREPARE_SLICE = 250  # units prepared between two turns of the event loop (a few ms)


class DeliveryStopped(Exception):
    """The API refused the configuration (401/403): no request can succeed until it is fixed."""


@dataclass
class WorkerOptions:
    time_scale: float = 1.0  # the API's clock runs this much faster (a fake server's test mode)
    concurrency: int = 8  # HTTP requests at once
    max_calls: int = 64  # calls dispatched and not finished (incl. those waiting to retry)
    window: int = 20_000  # units held in memory
    linger: float = 0.25  # seconds a call that is not full waits for more items while input may come
    poll: float = 0.5  # seconds between looks at the outbox when idle and more input may come
    refill_interval: float = 0.01  # at most one look a this many seconds however often it is told of more
    seed: int | None = None


@dataclass
class WorkerStats:
    requests: int = 0
    retried: int = 0  # requests that were retries
    rate_limited: int = 0  # 429 answers
    server_errors: int = 0
    network_errors: int = 0
    delivered_units: int = 0
    dead_units: int = 0
    delivered_events: int = 0
    dead_events: int = 0
    job_polls: int = 0  # looks at an asynchronous job's state
    started: float = field(default_factory=time.monotonic)


class Unit:
    __slots__ = ("id", "event_id", "rule", "method", "url", "headers", "body_kind", "body", "attempts", "chain",
                 "endpoint", "target", "spec", "prepared", "keys", "oversized", "backlog_of")

    def __init__(self, stored: StoredUnit):
        self.id = stored.id
        self.event_id = stored.event_id
        self.rule = stored.rule
        self.method = stored.method
        self.url = stored.url
        self.headers = stored.headers
        self.body_kind = stored.body_kind
        self.body = stored.body
        self.attempts = stored.attempts
        self.chain = stored.chain
        self.endpoint: Endpoint | None = None
        self.target: Endpoint | None = None
        self.spec: BatchSpec | None = None
        self.prepared: Prepared | None = None
        self.keys: frozenset[str] = frozenset()
        self.oversized = False
        self.backlog_of: str | None = None  # the adaptive batching it counts in (when_backlog)


class Slot:
    """A call in the making, then in flight: one unit, or a bulk call of many."""

    __slots__ = ("units", "builder", "target_name", "endpoint", "method", "url", "headers", "keys", "created",
                 "sealed", "attempts", "rate_limited", "open_key", "backlog", "backlog_of")

    def __init__(self, first: Unit, builder: BatchBuilder | None):
        self.units: dict[int, Unit] = {}
        self.builder = builder
        self.endpoint = first.target
        self.target_name = first.target.name if first.target is not None else ""
        if builder is not None and first.spec is not None:
            self.method = first.spec.target.method
            query = first.url.partition("?")[2]
            self.url = first.spec.target.path + ("?" + query if query else "")
        else:
            self.method = first.method
            self.url = first.url
        self.headers = first.headers
        self.keys: set[str] = set()
        self.created = time.monotonic()
        self.sealed = builder is None
        self.attempts = 0
        self.rate_limited = 0
        self.open_key: tuple[str, str] | None = None
        self.backlog = 0  # units counted in a when_backlog batching's backlog until dispatched
        self.backlog_of = first.backlog_of


def rate_limiters(plan: DeliveryPlan, time_scale: float) -> dict[str, RateLimiter]:
    """One limiter per endpoint of the plan (by name; '' for a URL outside them: no limit)."""
    margin = plan.retry.rate_limit_margin
    limiters = {name: RateLimiter(endpoint.rate_windows, margin, time_scale)
                for name, endpoint in plan.endpoints.items()}
    limiters[""] = RateLimiter([], 0.0, time_scale)
    return limiters


class DeliveryWorker:
    """See the module docstring. One worker per outbox (per process, for the SQLite outbox)."""

    def __init__(self, plan: DeliveryPlan, outbox: WorkQueue, sealer: Sealer, base_url: str,
                 options: WorkerOptions | None = None, client: httpx.AsyncClient | None = None,
                 on_progress: Callable[[WorkerStats], None] | None = None, chains: ChainRunner | None = None,
                 limiters: dict[str, RateLimiter] | None = None):
        self.plan = plan
        self.chains = chains
        self.outbox = outbox
        self.sealer = sealer
        self.base_url = base_url.rstrip("/")
        self.options = options or WorkerOptions()
        self.stats = WorkerStats()
        self.on_progress = on_progress
        self._client = client
        self._rng = random.Random(self.options.seed)
        # given: shared with the other partitions of its lane this process delivers (leases.py)
        self._limiters = limiters if limiters is not None else rate_limiters(plan, self.options.time_scale)
        self._identifiers = plan.subject_identifiers
        # placement state
        self._holders: dict[str, set[Slot]] = {}
        self._blocked: list[Unit] = []
        self._blocked_keys: set[str] = set()
        self._blocked_for: dict[tuple[str, str], int] = {}  # blocked units per open-call key they may join
        self._open: dict[tuple[str, str], Slot] = {}
        self._queues: dict[str, list[Slot]] = {}
        self._held = 0  # units in memory
        self._cursor = 0
        self._exhausted = False
        self._input_complete = False
        self._more = True
        self._last_fetch = 0.0
        self._stopping = False
        self._fatal: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._calls = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._sending = 0  # HTTP requests on the wire (at most options.concurrency)
        self._slot_freed: asyncio.Condition | None = None
        self._waiting: dict[str, int] = {}  # per when_backlog batching: its source's units not yet sent
        self._resumed: set[int] = set()  # units of jobs accepted before a restart (followed, not resent)
        self._continued: set[int] = set()  # a chain's next steps, placed when recorded (not read again)

    # -- control (thread-safe) ---------------------------------------------------------------------------
    def _poke(self) -> None:
        if self._loop is not None and self._wake is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop is closed
                pass

    def notify(self) -> None:
        """New units were recorded in the outbox."""
        self._more = True
        self._poke()

    def input_complete(self) -> None:
        """No more units will be recorded: finish what is there, then `run` returns."""
        self._input_complete = True
        self._more = True
        self._poke()

    def stop(self) -> None:
        """Finish the calls in flight, send nothing new, return from `run` (units stay pending)."""
        self._stopping = True
        self._poke()

    def idle(self) -> bool:
        """Nothing in memory and no call in flight: everything read so far is answered."""
        return self._held == 0 and not self._tasks

    # -- the loop ------------------------------------------------------------------------------------------
    async def run(self) -> WorkerStats:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Condition()
        own_client = self._client is None
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.plan.retry.timeout),
                limits=httpx.Limits(max_connections=self.options.concurrency,
                                    max_keepalive_connections=self.options.concurrency))
        try:
            await self._resume_jobs()
            while True:
                self._wake.clear()
                if self._fatal is not None:
                    raise self._fatal
                if self._stopping:
                    if not self._tasks:
                        break
                else:
                    await self._refill()
                now = time.monotonic()
                deadline = self._dispatch(now)
                if self._done():
                    break
                timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
                if not self._input_complete and not self._stopping:
                    wait = self.options.poll
                    if self._more:  # a refill put off by refill_interval
                        wait = max(self._last_fetch + self.options.refill_interval - time.monotonic(), 0.001)
                    timeout = wait if timeout is None else min(timeout, wait)
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
        finally:
            if self._fatal is not None or self._tasks:
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if own_client:
                await self._client.aclose()
                self._client = None
        return self.stats

    def _done(self) -> bool:
        return (self._input_complete and self._exhausted and self._held == 0 and not self._tasks)

    async def _refill(self) -> None:
        """Load pending units when told there are more, or every `poll` seconds while input may come."""
        if self._exhausted and not self._more:
            return
        since = time.monotonic() - self._last_fetch
        if not self._more and since < self.options.poll:
            return
        if since < self.options.refill_interval and not self._input_complete:
            return  # told again within the interval (a server's every commit): one query serves them all
        room = self.options.window - self._held
        if room <= 0:
            return
        complete = self._input_complete  # read before the query: then nothing can come after it
        self._more = False
        self._last_fetch = time.monotonic()
        limit = min(room, 5000)
        stored = await asyncio.to_thread(self.outbox.pending_units, self._cursor, limit)
        if stored:
            self._cursor = stored[-1].id
        self._exhausted = len(stored) < limit and complete
        if len(stored) == limit:
            self._more = True
        oversized: list[Unit] = []
        # All are prepared before any is placed: an adaptive batching sees the whole backlog. In slices,
        # giving the loop back between them: 5,000 units take ~150 ms, which a server's requests
        # would otherwise wait out.
        units: list[Unit] = []
        for start in range(0, len(stored), PREPARE_SLICE):
            if start:
                await asyncio.sleep(0)
            units += [self._prepare(record) for record in stored[start:start + PREPARE_SLICE]
                      if record.id not in self._resumed and record.id not in self._continued]
        self._continued.difference_update(record.id for record in stored)
        self._held += len(units)
        for unit in units:
            if unit.oversized:
                oversized.append(unit)
                continue
            self._place(unit)
        for unit in oversized:
            assert unit.spec is not None
            if unit.backlog_of is not None:
                self._waiting[unit.backlog_of] -= 1
            await self._dead([unit], DeadLetter(None, None, f"the request is larger than the {unit.spec.max_bytes} "
                                                            f"bytes a {unit.spec.name} call may carry", 0))
            self._held -= 1

    def _prepare(self, stored: StoredUnit) -> Unit:
        unit = Unit(stored)
        path = unit.url.partition("?")[0]
        endpoint = self.plan.endpoint_for(unit.method, path) if unit.url.startswith("/") else None
        unit.endpoint = unit.target = endpoint
        keys: set[str] = set()
        if self.plan.same_event:
            keys.add(f"event:{unit.event_id}")
        body: Any = None
        ordered = bool(endpoint is not None and self.plan.same_subject and endpoint.lane
                       and endpoint.subject is not None)
        if unit.body_kind == "json" and unit.body is not None and endpoint is not None:
            if ordered or endpoint.name in self.plan.by_source:
                body = decode_stored(unit.body)
        if unit.chain is not None:
            # a chain holds its subject's order until its last step (its look-up may carry no subject)
            held = chain_subject(unit.chain) if self.plan.same_subject else None
            if held is not None:
                keys.update(f"{held[0]}|{name}={value}" for name, value in held[1].items() if name in self._identifiers)
            unit.keys = frozenset(keys)
            return unit  # never merged into a bulk call: its own answer is needed
        if body is not None and endpoint is not None:
            subjects = None
            if ordered:
                subjects = endpoint.subjects(body)
                for subject in subjects:
                    for name in self._identifiers:
                        value = subject.get(name)
                        if value not in (None, ""):
                            keys.add(f"{endpoint.lane}|{name}={value}")
            spec = self.plan.by_source.get(endpoint.name)
            if spec is not None:
                context = f"{spec.target.method} {unit.url.partition('?')[2]} {unit.headers}"
                prepared = prepare(spec, body, context, self._identifiers, subjects)
                if prepared is not None:
                    unit.spec, unit.prepared, unit.target = spec, prepared, spec.target
                    if prepared.layout.overhead + prepared.size > spec.max_bytes:
                        unit.oversized = True
                    if spec.when_backlog is not None:
                        unit.backlog_of = spec.name
                        self._waiting[spec.name] = self._waiting.get(spec.name, 0) + 1
        unit.keys = frozenset(keys)
        return unit

    # -- placement (order rules) ---------------------------------------------------------------------
    def _block(self, unit: Unit) -> None:
        self._blocked.append(unit)
        self._blocked_keys.update(unit.keys)
        if unit.spec is not None and unit.prepared is not None:
            key = (unit.spec.name, unit.prepared.partition)
            self._blocked_for[key] = self._blocked_for.get(key, 0) + 1

    def _hold(self, slot: Slot, unit: Unit) -> None:
        slot.units[unit.id] = unit
        if unit.backlog_of is not None:
            slot.backlog += 1
        for key in unit.keys:
            slot.keys.add(key)
            self._holders.setdefault(key, set()).add(slot)

    def _new_slot(self, unit: Unit) -> Slot:
        builder = None
        if unit.prepared is not None and unit.spec is not None:
            builder = BatchBuilder(unit.spec, unit.prepared.partition, unit.prepared.layout)
        slot = Slot(unit, builder)
        if builder is not None and unit.spec is not None and unit.prepared is not None:
            slot.open_key = (unit.spec.name, unit.prepared.partition)
            self._open[slot.open_key] = slot
            builder.add(unit.id, unit.prepared)
        self._queues.setdefault(slot.target_name, []).append(slot)
        self._hold(slot, unit)
        return slot

    def _seal(self, slot: Slot) -> None:
        slot.sealed = True
        if slot.open_key is not None and self._open.get(slot.open_key) is slot:
            del self._open[slot.open_key]

    def _place(self, unit: Unit) -> None:
        spec = unit.spec
        if spec is not None and spec.when_backlog is not None and unit.prepared is not None \
                and self._waiting.get(spec.name, 0) < spec.when_backlog:
            unit.spec, unit.prepared, unit.target = None, None, unit.endpoint  # a small backlog: on its own
        if unit.keys & self._blocked_keys:
            self._block(unit)
            return
        owners: set[Slot] = set()
        for key in unit.keys:
            owners.update(self._holders.get(key, ()))
        if unit.prepared is None or unit.spec is None:
            if owners:
                self._block(unit)
            else:
                self._new_slot(unit)
            return
        slot = self._open.get((unit.spec.name, unit.prepared.partition))
        if slot is not None and owners <= {slot}:
            assert slot.builder is not None
            verdict = slot.builder.accepts(unit.prepared)
            if verdict == "add":
                slot.builder.add(unit.id, unit.prepared)
                self._hold(slot, unit)
                if slot.builder.full:
                    self._seal(slot)
                return
            if verdict == "duplicate":
                slot.builder.add_duplicate(unit.id)
                self._hold(slot, unit)
                return
            if verdict == "merge":
                slot.builder.merge(unit.id, unit.prepared)
                self._hold(slot, unit)
                return
            if owners:
                self._block(unit)
                return
            self._seal(slot)  # full, or a unique key clash: this call is done, start another
        elif owners:
            self._block(unit)
            return
        new = self._new_slot(unit)
        if new.builder is not None and new.builder.full:
            self._seal(new)

    def _release(self, slot: Slot) -> None:
        for key in slot.keys:
            holders = self._holders.get(key)
            if holders is not None:
                holders.discard(slot)
                if not holders:
                    del self._holders[key]
        self._held -= len(slot.units)
        slot.units.clear()
        if self._blocked:
            # Placed again, in order: the blocked units that share a key with this call, or with a unit
            # placed again before them (they may now go). The others wait on something that did not
            # change, so they are only blocked again: a backlog of thousands costs no work per answer.
            freed = set(slot.keys)
            if all(freed.isdisjoint(unit.keys) for unit in self._blocked):
                return  # none of them waits on this call: they stay blocked as they are
            waiting, self._blocked, self._blocked_keys = self._blocked, [], set()
            self._blocked_for = {}
            for unit in waiting:
                if freed.isdisjoint(unit.keys):
                    self._block(unit)
                    continue
                self._place(unit)
                if not self._blocked or self._blocked[-1] is not unit:
                    freed.update(unit.keys)

    # -- dispatch --------------------------------------------------------------------------------------
    def _dispatchable(self, slot: Slot, now: float) -> bool:
        """Full calls go at once; others wait up to `linger` for more items, unless none can come."""
        if slot.sealed or self._stopping or now - slot.created >= self.options.linger:
            return True
        if self._exhausted or self._held >= self.options.window:
            return slot.open_key is None or not self._blocked_for.get(slot.open_key)
        return False

    def _dispatch(self, now: float) -> float | None:
        """Start every call that may go now; returns when to look again (None: on the next event)."""
        if self._stopping:
            return None
        deadline: float | None = None
        for name, queue in self._queues.items():
            limiter = self._limiters.get(name) or self._limiters[""]
            # A call is counted by its rate limiter when it is dispatched, so it must go on the wire at
            # once: dispatch only while a connection is free.
            while queue and self._calls < self.options.max_calls and self._sending < self.options.concurrency:
                ready = next((s for s in queue if self._dispatchable(s, now)), None)
                if ready is None:
                    oldest = min(s.created for s in queue) + self.options.linger
                    deadline = oldest if deadline is None else min(deadline, oldest)
                    break
                wait = limiter.delay(now)
                if wait > 0:
                    deadline = now + wait if deadline is None else min(deadline, now + wait)
                    break
                limiter.record(now)
                queue.remove(ready)
                self._seal(ready)
                if ready.backlog and ready.backlog_of is not None:
                    self._waiting[ready.backlog_of] -= ready.backlog
                    ready.backlog = 0
                self._start(ready)
        return deadline

    def _start(self, slot: Slot, resumed_job: str | None = None) -> None:
        self._calls += 1
        if resumed_job is None:
            self._sending += 1  # its first request goes out now
        task = asyncio.get_running_loop().create_task(self._run_call(slot, resumed_job))
        self._tasks.add(task)

    async def _run_call(self, slot: Slot, resumed_job: str | None = None) -> None:
        try:
            if resumed_job is not None:
                await self._follow_job(slot, resumed_job)
            else:
                await self._deliver(slot)
        except DeliveryStopped as exc:
            self._fatal = exc
        except asyncio.CancelledError:
            raise
        except MissingSecret as exc:
            self._fatal = DeliveryStopped(str(exc))
        except LeaseLost as exc:  # another worker delivers this partition now: stop, marking nothing more
            self._fatal = exc
        except Exception as exc:  # a bug must not lose units: they stay pending in the outbox
            log.exception("delivery call failed")
            self._fatal = exc
        finally:
            self._calls -= 1
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)
            self._release(slot)
            if self._wake is not None:
                self._wake.set()

    # -- one call --------------------------------------------------------------------------------------
    def _render(self, slot: Slot) -> tuple[bytes, Rendered | None]:
        if slot.builder is not None:
            rendered = slot.builder.render()
            text = rendered.body.decode()
            return self.sealer.unseal(text).encode(), rendered
        unit = next(iter(slot.units.values()))
        if unit.body is None:
            return b"", None
        body = self.sealer.unseal(unit.body)
        if unit.body_kind == "form":
            from urllib.parse import urlencode
            return urlencode(json.loads(body)).encode(), None
        return body.encode(), None

    def _target_url(self, slot: Slot) -> str:
        url = self.sealer.unseal(slot.url, json_text=False)
        return self.base_url + url if url.startswith("/") else url

    async def _deliver(self, slot: Slot) -> None:
        assert self._client is not None and self._slot_freed is not None
        policy = self.plan.retry
        limiter = self._limiters.get(slot.target_name) or self._limiters[""]
        try:
            headers = json.loads(self.sealer.unseal(slot.headers))
            url = self._target_url(slot)
            body, rendered = self._render(slot)
        except BaseException:
            await self._free_connection()  # the one _start reserved for the first request
            raise
        first = True
        while True:
            if not first and not await self._take_connection(limiter):
                return  # a retry is something new: the units stay pending for the next run
            first = False
            status: int | None = None
            text: str | None = None
            response_headers: httpx.Headers | None = None
            error = ""
            try:
                response = await self._client.request(slot.method, url, content=body or None, headers=headers)
                status, response_headers = response.status_code, response.headers
                text = response.text[:MAX_RESPONSE_TEXT]
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            finally:
                await self._free_connection()
            self.stats.requests += 1
            if slot.attempts or slot.rate_limited:
                self.stats.retried += 1
            verdict = classify(policy, status, self.plan.stop, self.plan.item_error_status, slot.builder is not None)
            if verdict.action == DELIVERED:
                if slot.builder is not None and slot.builder.spec.job is not None:
                    await self._job_started(slot, status, text)
                    return
                if slot.builder is None and chain_continues(next(iter(slot.units.values())).chain):
                    await self._step(slot, status, text)
                    return
                await self._delivered(slot)
                return
            if verdict.action == STOP:
                raise DeliveryStopped(self._stop_message(slot, status, verdict.reason, text))
            if verdict.action == ITEM_ERRORS and rendered is not None:
                if await self._item_errors(slot, rendered, status, text):
                    if not slot.builder or not slot.builder.entries:
                        return
                    body, rendered = self._render(slot)
                    continue
                verdict.action = DEAD
            if verdict.action == RETRY:
                if status == 429:
                    self.stats.rate_limited += 1
                    slot.rate_limited += 1
                    if slot.rate_limited > policy.max_rate_limited:
                        await self._dead(self._all_units(slot), self._letter(status, text, error, slot,
                                                                             "too many 429 answers"))
                        return
                    after = retry_after(response_headers.get(policy.retry_after_header)) if response_headers else None
                    wait = after if after is not None else backoff(policy, slot.rate_limited, self._rng)
                    limiter.pause(wait)
                else:
                    if status is None:
                        self.stats.network_errors += 1
                    else:
                        self.stats.server_errors += 1
                    slot.attempts += 1
                    if slot.attempts >= policy.max_attempts:
                        await self._dead(self._all_units(slot), self._letter(status, text, error, slot,
                                                                             f"gave up after {slot.attempts} tries"))
                        return
                    wait = backoff(policy, slot.attempts, self._rng)
                log.debug("retrying %s %s after %s in %.3fs", slot.method, url, status or error, wait)
                if not await self._pause(wait / self.options.time_scale):
                    return  # told to stop while waiting: the units stay pending for the next run
                continue
            await self._dead(self._all_units(slot), self._letter(status, text, error, slot, verdict.reason))
            return

    async def _pause(self, seconds: float) -> bool:
        """Wait before a retry; False as soon as the worker is told to stop (a server shutting down
        must not wait out a backoff of up to a minute, nor retry until the call is dead-lettered)."""
        deadline = time.monotonic() + seconds
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, 0.1))
        return False

    async def _free_connection(self) -> None:
        assert self._slot_freed is not None
        self._sending -= 1
        async with self._slot_freed:
            self._slot_freed.notify()
        if self._wake is not None:
            self._wake.set()

    def _all_units(self, slot: Slot) -> list[Unit]:
        return list(slot.units.values())

    def _letter(self, status: int | None, text: str | None, error: str, slot: Slot, reason: str) -> DeadLetter:
        detail = f"{reason}: {error}" if error else reason
        return DeadLetter(status, self.sealer.mask(text) if text is not None else None, self.sealer.mask(detail),
                          slot.attempts + slot.rate_limited + 1)

    def _stop_message(self, slot: Slot, status: int | None, template: str, text: str | None) -> str:
        where = f"{slot.method} {slot.url.partition('?')[0]}"
        return self.sealer.mask(stop_message(self.plan, slot.endpoint, where, status, template, text))

    async def _delivered(self, slot: Slot) -> None:
        ids = list(slot.units)
        attempts = slot.attempts + slot.rate_limited + 1
        finished: Finished = await asyncio.to_thread(self.outbox.mark_delivered, ids, attempts)
        self.stats.delivered_units += len(ids)
        self.stats.delivered_events += finished.delivered
        self.stats.dead_events += finished.dead
        self._progress()

    # -- request chains (chains.py) ------------------------------------------------------------------------
    async def _step(self, slot: Slot, status: int | None, text: str | None) -> None:
        """A chain's step answered: record its next step with the mark, then place it ahead of whatever
        waits on the same keys (it takes its chain's place in the subject's order)."""
        (unit,) = slot.units.values()
        assert unit.chain is not None
        if self.chains is None:
            raise DeliveryStopped(f"request {unit.id} ({unit.rule}) starts a request chain, and this worker was "
                                  "given no mapping to run its next step with; it stays pending")
        try:
            answer = decode_stored(text) if text else None
            step = self.chains.next_step(unit.chain, answer)
        except (ChainError, ValueError) as exc:
            reason = f"the chain's next step cannot be made: {exc}"
            await self._dead([unit], self._letter(status, text, "", slot, reason))
            return
        for new in step.units:  # the next step holds the chain's subject too (recorded: a restart keeps it)
            new.chain = inherit_subject(unit.chain, new.chain)
        attempts = slot.attempts + slot.rate_limited + 1
        finished, added = await asyncio.to_thread(self.outbox.mark_step, unit.id, attempts, step.units, step.skipped)
        self.stats.delivered_units += 1
        self.stats.delivered_events += finished.delivered
        self.stats.dead_events += finished.dead
        if step.skipped is not None:
            log.info("request chain of %s ends: %s", unit.rule, step.skipped)
        following = [self._prepare(stored) for stored in added]
        self._continued.update(u.id for u in following)
        self._held += len(following)
        ahead = [u for u in following if u.keys & slot.keys]
        for later in following:
            if later not in ahead:
                self._place(later)
        if ahead:
            waiting = self._blocked
            self._blocked = []
            for later in ahead:
                self._block(later)
            self._blocked += waiting
        self._progress()

    # -- asynchronous jobs (batching.job) ---------------------------------------------------------------
    async def _job_started(self, slot: Slot, status: int | None, text: str | None) -> None:
        """A bulk call was accepted as a job: record it, then follow it to its end."""
        assert slot.builder is not None and slot.builder.spec.job is not None
        identifier = job_id(slot.builder.spec.job, text)
        if identifier is None:
            await self._dead(self._all_units(slot), self._letter(
                status, text, "", slot, "the API accepted the call but named no job to follow (its outcome is "
                                        "unknown; replaying the dead letters is safe for upserts)"))
            return
        job = OpenJob(identifier, slot.builder.spec.name, sorted(slot.units))
        await asyncio.to_thread(self.outbox.save_job, job)
        await self._follow_job(slot, identifier)

    async def _follow_job(self, slot: Slot, identifier: str) -> None:
        """Poll the job until it ends; dead-letter the rows it refused, mark the rest delivered."""
        assert slot.builder is not None and slot.builder.spec.job is not None
        spec = slot.builder.spec
        job = spec.job
        assert job is not None
        while True:
            if not await self._pause(job.interval / self.options.time_scale):
                return  # stopping: the job stays recorded and is polled again by the next run
            self.stats.job_polls += 1
            answer = await self._fetch(slot, job.poll, job_path(job.poll, identifier))
            if answer is None:
                return
            status, text = answer
            if status is None or not 200 <= status < 300:
                await self._job_unknown(slot, identifier, status, text, "its state could not be read")
                return
            state = job_state(job, text)
            if state.ended:
                break
        if state.failed:
            await self._dead(self._all_units(slot), self._letter(status, text, "", slot,
                                                                 f"the job {identifier} ended {state.status}"))
            self._held -= len(slot.units)
            slot.units.clear()
        elif state.failed_count > 0 and job.errors is not None:
            if not await self._job_errors(slot, identifier, state.failed_count):
                return
        if slot.units:
            await self._delivered(slot)
        await asyncio.to_thread(self.outbox.finish_job, identifier)

    async def _job_errors(self, slot: Slot, identifier: str, failed_count: int) -> bool:
        """Read the job's refused rows and dead-letter their units with the API's error; False when
        the worker is stopping (nothing marked, the job is polled again by the next run)."""
        assert slot.builder is not None and slot.builder.spec.job is not None
        spec = slot.builder.spec
        job = spec.job
        assert job is not None and job.errors is not None
        errors: list[Any] = []
        url: str | None = job_path(job.errors, identifier)
        while url is not None:
            answer = await self._fetch(slot, job.errors, url)
            if answer is None:
                return False
            status, text = answer
            if status is None or not 200 <= status < 300:
                await self._job_unknown(slot, identifier, status, text, "its import errors could not be read")
                return False
            page = error_page(job, text)
            errors += page.errors
            url = same_origin_path(page.next_url) if page.errors and page.next_url else None
        rendered = slot.builder.render()
        found = attribute_errors(job, spec, rendered, self._identifiers, errors)
        merged = slot.builder.merged
        for unit_id, about in sorted(found.by_unit.items()):
            victims = [slot.units[u] for u in [unit_id, *merged.get(unit_id, [])] if u in slot.units]
            detail = "; ".join(str(job.error_detail.search(e)) for e in about) if job.error_detail else ""
            await self._dead(victims, self._letter(200, json.dumps(about, ensure_ascii=False), "", slot,
                                                   f"the job {identifier} refused this row" +
                                                   (f": {detail}" if detail else "")))
            for victim in victims:
                del slot.units[victim.id]
            self._held -= len(victims)
        if found.unmatched or len(found.by_unit) < failed_count:
            # Rows refused that no listed error names: no unit can be told delivered for sure.
            reason = (f"the job {identifier} reported {failed_count} refused row(s) but named "
                      f"{len(found.by_unit)}; every other row is dead-lettered (replaying is safe for upserts)")
            await self._dead(self._all_units(slot), self._letter(
                200, json.dumps(found.unmatched, ensure_ascii=False), "", slot, reason))
            self._held -= len(slot.units)
            slot.units.clear()
        return True

    async def _job_unknown(self, slot: Slot, identifier: str, status: int | None, text: str | None,
                           why: str) -> None:
        await self._dead(self._all_units(slot), self._letter(
            status, text, "", slot, f"the job {identifier} was accepted but {why} (replaying is safe for upserts)"))
        await asyncio.to_thread(self.outbox.finish_job, identifier)

    async def _take_connection(self, limiter: RateLimiter) -> bool:
        """A free connection first, then the rate limit (a call is sent when it is counted); False,
        with the connection given back, when the worker is stopping."""
        assert self._slot_freed is not None
        async with self._slot_freed:
            await self._slot_freed.wait_for(lambda: self._sending < self.options.concurrency)
            self._sending += 1
        try:
            await limiter.acquire()
        except BaseException:
            await self._free_connection()
            raise
        if self._stopping:
            await self._free_connection()
            return False
        return True

    async def _fetch(self, slot: Slot, endpoint: Endpoint, path: str) -> tuple[int | None, str | None] | None:
        """GET an endpoint within its own rate limit, retried like any call: the last answer (status
        None: no answer), or None when the worker is stopping."""
        assert self._client is not None and self._slot_freed is not None
        policy = self.plan.retry
        limiter = self._limiters.get(endpoint.name) or self._limiters[""]
        headers = json.loads(self.sealer.unseal(slot.headers))
        headers.pop("Content-Type", None)
        url = self.base_url + path
        attempts = rate_limited = 0
        while True:
            if not await self._take_connection(limiter):
                return None
            status: int | None = None
            text: str | None = None
            response_headers: httpx.Headers | None = None
            try:
                response = await self._client.request("GET", url, headers=headers)
                status, response_headers = response.status_code, response.headers
                text = response.text[:MAX_RESPONSE_TEXT]
            except httpx.TransportError:
                pass
            finally:
                await self._free_connection()
            self.stats.requests += 1
            if attempts or rate_limited:
                self.stats.retried += 1
            verdict = classify(policy, status, self.plan.stop, None, False)
            if verdict.action == STOP:
                raise DeliveryStopped(self._stop_message(slot, status, verdict.reason, text))
            if verdict.action != RETRY:
                return status, text
            if status == 429:
                self.stats.rate_limited += 1
                rate_limited += 1
                if rate_limited > policy.max_rate_limited:
                    return status, text
                after = retry_after(response_headers.get(policy.retry_after_header)) if response_headers else None
                wait = after if after is not None else backoff(policy, rate_limited, self._rng)
                limiter.pause(wait)
            else:
                attempts += 1
                if status is None:
                    self.stats.network_errors += 1
                else:
                    self.stats.server_errors += 1
                if attempts >= policy.max_attempts:
                    return status, text
                wait = backoff(policy, attempts, self._rng)
            if not await self._pause(wait / self.options.time_scale):
                return None

    async def _resume_jobs(self) -> None:
        """Jobs accepted before a restart: follow them again instead of resending their units."""
        for job in await asyncio.to_thread(self.outbox.open_jobs):
            spec = next((b for b in self.plan.batches if b.name == job.batch and b.job is not None), None)
            stored = await asyncio.to_thread(self.outbox.units_with_ids, job.unit_ids) if spec else []
            units = [self._prepare(record) for record in stored]
            if spec is None or not units or any(u.prepared is None or u.spec is not spec for u in units):
                for unit in units:  # not followed: refill loads (and counts) them again
                    if unit.backlog_of is not None:
                        self._waiting[unit.backlog_of] -= 1
                if units:  # the set no longer follows such jobs: send the units again (upserts)
                    log.warning("job %s: its batching %r is gone; its requests are sent again", job.job_id, job.batch)
                await asyncio.to_thread(self.outbox.finish_job, job.job_id)
                continue
            slot = self._rebuild_job(units)
            self._resumed.update(slot.units)
            self._held += len(slot.units)
            self._start(slot, resumed_job=job.job_id)

    def _rebuild_job(self, units: list[Unit]) -> Slot:
        """The job's call as it was sent (same units, same merges), holding its units' order keys."""
        first = units[0]
        assert first.spec is not None and first.prepared is not None
        builder = BatchBuilder(first.spec, first.prepared.partition, first.prepared.layout)
        slot = Slot(first, builder)
        slot.sealed = True
        for unit in units:
            assert unit.prepared is not None
            verdict = builder.accepts(unit.prepared)
            if verdict == "merge":
                builder.merge(unit.id, unit.prepared)
            elif verdict == "duplicate":
                builder.add_duplicate(unit.id)
            else:
                builder.add(unit.id, unit.prepared)
            unit.backlog_of = None  # sent already: not part of any backlog
            self._hold(slot, unit)
        if first.spec.when_backlog is not None:
            self._waiting[first.spec.name] -= len(units)
        return slot

    async def _dead(self, units: list[Unit], letter: DeadLetter) -> None:
        ids = [u.id for u in units]
        finished: Finished = await asyncio.to_thread(self.outbox.mark_dead, ids, letter)
        self.stats.dead_units += len(ids)
        self.stats.delivered_events += finished.delivered
        self.stats.dead_events += finished.dead
        log.info("dead-lettered %d request(s): %s", len(ids), letter.error)
        self._progress()

    async def _item_errors(self, slot: Slot, rendered: Rendered, status: int | None, text: str | None) -> bool:
        """Dead-letter the items an answer's errors name; False unless every error names items."""
        assert slot.builder is not None
        errors = answer_errors(self.plan, text)
        if not errors or self.plan.error_pointer is None:
            return False
        per_unit: dict[int, list[Any]] = {}
        for error in errors:
            pointer = self.plan.error_pointer.search(error)
            units, all_named = units_named(rendered, [pointer] if isinstance(pointer, str) else [])
            if not units or not all_named:
                return False  # an error about the call itself: every item is condemned
            for unit_id in units:
                per_unit.setdefault(unit_id, []).append(error)
        named = set(per_unit)
        duplicates_of = self._duplicates_by_original(slot)
        for unit_id in sorted(named):
            victims = [slot.units[unit_id]] + [slot.units[d] for d in duplicates_of.get(unit_id, []) if d in slot.units]
            condemning = json.dumps(per_unit[unit_id], ensure_ascii=False)
            await self._dead(victims, self._letter(status, condemning, "", slot, "the API refused this item"))
            for victim in victims:
                del slot.units[victim.id]
            self._held -= len(victims)
        slot.builder.remove(named)
        slot.builder.duplicates = [d for d in slot.builder.duplicates if d in slot.units]
        return True

    def _duplicates_by_original(self, slot: Slot) -> dict[int, list[int]]:
        """Which unit in the body each ride-along duplicate repeats (same group and unique key)."""
        assert slot.builder is not None
        by_key: dict[tuple[str | None, str], int] = {}
        for entry in slot.builder.entries:
            if entry.prepared.unique is not None:
                by_key[(entry.prepared.group, entry.prepared.unique)] = entry.unit
        result: dict[int, list[int]] = {}
        for unit_id in slot.builder.duplicates:
            unit = slot.units.get(unit_id)
            if unit is None or unit.prepared is None or unit.prepared.unique is None:
                continue
            original = by_key.get((unit.prepared.group, unit.prepared.unique))
            if original is not None:
                result.setdefault(original, []).append(unit_id)
        return result

    def _progress(self) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(self.stats)
            except Exception:  # a display problem must not stop delivery
                log.exception("progress callback failed")
