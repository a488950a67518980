"""Delivering a shared (PostgreSQL) outbox from many processes: each worker leases whole partitions.

    delivery = SharedDelivery(plan, postgres_outbox, sealer, base_url, WorkerOptions(), LeaseOptions(ttl=10))
    stats = await delivery.run()    # until stop(); or, after input_complete(), until nothing is pending

A partition is a lane of the mapping set's delivery section, or one part of a lane split by
`order.partitions` (partitions.py: by a stable hash of the request's ordering key; requests outside
any lane share the partition ''). One worker at a time delivers a partition: it claims the
partition's lease atomically (`FOR UPDATE SKIP LOCKED`), renews it every `ttl / 3` seconds, and runs
one `DeliveryWorker` on it — so per-subject order and batching stay what they are in one process,
and a bulk job's polling belongs to the holder of the partition that started it.

- **Sharing**: workers say they are alive on every renewal; each holds at most its fair share of
  each lane (the lane's partitions ÷ live workers, rounded up) and of all partitions (likewise),
  giving back the extra ones gracefully when one joins.
- **Rate limits across workers**: the workers of one process's partitions of a lane share one set
  of limiters, kept to m/K of the lane's limits when it holds m of the lane's K partitions (all of
  them for a lane that is not split, or when it holds every part).
- **A worker that dies** (SIGKILL, a lost machine) stops renewing: its leases expire after `ttl`
  seconds and another worker takes them on its next renewal, so within `ttl × 4/3` (13.3 s with the
  default ttl of 10). What it had in flight is sent again by the new holder (at-least-once; the
  API's de-duplication keys cover it).
- **A worker that is paused past its lease** (a GC pause, a frozen VM) and comes back cannot corrupt
  anything: each mark checks the lease's generation in its transaction, and refuses (LeaseLost)
  once another worker took it; the stale worker stops delivering that partition.
- **A graceful stop** (SIGTERM): calls in flight finish and are marked, nothing new is sent, the
  leases are released so others take them at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, TypeVar

import httpx

from ..mapping_set import PROGRAM
from .chains import ChainRunner
from .config import DeliveryPlan
from .outbox import LeaseLost, Outbox
from .partitions import lane_share
from .ratelimit import RateLimiter
from .sealing import Sealer
from .worker import DeliveryStopped, DeliveryWorker, WorkerOptions, WorkerStats, rate_limiters

if TYPE_CHECKING:  # (the PostgreSQL driver is imported only by a process given a database URL)
    from .postgres_outbox import Lease, PostgresOutbox

log = logging.getLogger(f"{PROGRAM}.leases")
T = TypeVar("T")
Totals = TypeVar("Totals", WorkerStats, "LeaseCounters")

DEFAULT_LEASE_TTL = 10.0  # seconds: a dead worker's partitions are taken over within ttl × 4/3
EMPTY_CHECK = 0.2  # seconds between looks for "nothing pending" (--until-empty)
SETTLE = 1.0  # seconds from a worker's first heartbeat to its first claim


@dataclass
class LeaseOptions:
    ttl: float = DEFAULT_LEASE_TTL

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    @property
    def takeover_within(self) -> float:
        """The longest a dead worker's partition waits for another worker (expiry + one renewal)."""
        return self.ttl + self.renew_every


@dataclass
class _Held:
    lease: Lease
    worker: DeliveryWorker
    task: asyncio.Task[WorkerStats]
    # what to do once its worker has stopped (gracefully: its calls in flight answered and marked)
    give_back: bool = False  # release the lease: another worker takes the partition
    lost: bool = False  # nothing: the lease is another worker's already
    restart: Lease | None = None  # run a new worker under this lease (read the partition from its start)

    @property
    def leaving(self) -> bool:
        return self.give_back or self.lost


@dataclass
class LeaseCounters:
    claimed: int = 0
    takeovers: int = 0  # partitions taken from a worker whose lease had expired
    lost: int = 0


def add_up(total: Totals, parts: Sequence[Totals]) -> Totals:
    """`total` with each of its counts (every field but `started`) set to their sum over `parts`."""
    for item in fields(total):
        if item.name != "started":
            setattr(total, item.name, sum(getattr(part, item.name) for part in parts))
    return total


def shared_store(outbox: Outbox) -> PostgresOutbox:
    """The outbox as a shared store (leases need one)."""
    from .postgres_outbox import PostgresOutbox

    if not isinstance(outbox, PostgresOutbox):
        raise TypeError(f"{outbox.where} is not a shared (PostgreSQL) outbox: it has no leases")
    return outbox


def new_holder() -> str:
    """A name for this worker in the lease table: machine, process, and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class SharedDelivery:
    """See the module docstring. Used by `worker`, and by `serve` and `send` on a PostgreSQL outbox."""

    def __init__(self, plan: DeliveryPlan, store: PostgresOutbox, sealer: Sealer, base_url: str,
                 options: WorkerOptions | None = None, lease: LeaseOptions | None = None,
                 holder: str | None = None, client: httpx.AsyncClient | None = None,
                 on_progress: Callable[[WorkerStats], None] | None = None, chains: ChainRunner | None = None):
        self.plan = plan
        self.chains = chains
        self.store = store
        self.sealer = sealer
        self.base_url = base_url
        self.options = options or WorkerOptions()
        self.lease_options = lease or LeaseOptions()
        self.holder = holder or new_holder()
        self.stats = WorkerStats()
        self.counters = LeaseCounters()
        self.on_progress = on_progress
        self._client = client
        self._held: dict[str, _Held] = {}
        # per lane: the rate limiters its partitions' workers in this process share (at this
        # process's share of the lane: _reshare)
        self._limiters: dict[str, dict[str, RateLimiter]] = {}
        self._ended: list[WorkerStats] = []
        self._stopping = False
        self._until_empty = False
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_tend = -math.inf
        self._told = False  # notify() was called (from any thread): pass it on in the loop
        # a thread of its own for lease upkeep: never queued behind the partitions' outbox calls
        self._upkeep = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leases")

    # -- control (thread-safe) ---------------------------------------------------------------------------
    def notify(self) -> None:
        """New units were recorded (in this process): wake the partitions' workers."""
        self._told = True
        self._poke()

    def input_complete(self) -> None:
        """Deliver what is pending, then return from `run` once nothing is (in any partition)."""
        self._until_empty = True
        self._poke()

    def stop(self) -> None:
        """Let the calls in flight finish, send nothing new, release the leases, return from `run`."""
        self._stopping = True  # (the loop, woken, stops the partitions' workers)
        self._poke()

    @property
    def partitions_held(self) -> list[str]:
        return sorted(self._held)

    def _poke(self) -> None:
        if self._loop is not None and self._wake is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop is closed
                pass

    # -- the loop ------------------------------------------------------------------------------------------
    async def run(self) -> WorkerStats:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            # Say it is alive, and claim only a moment later: workers started together then see each
            # other and each claims its share, instead of the first taking every partition and
            # giving most back (their workers stopped, their reads thrown away) a renewal later.
            await self._leases(self.store.heartbeat, self.holder, self.lease_options.ttl)
            renew = self.lease_options.renew_every
            self._last_tend = time.monotonic() - renew + min(SETTLE, renew)
            while not self._stopping:
                self._wake.clear()
                if self._told:
                    self._told = False
                    for held in self._held.values():
                        held.worker.notify()
                    if not self._held and time.monotonic() - self._last_tend >= EMPTY_CHECK:
                        self._last_tend = -math.inf  # the first units of a new database: look for partitions now
                await self._collect()
                if time.monotonic() - self._last_tend >= self.lease_options.renew_every:
                    await self._tend()
                if self._until_empty and await self._empty():
                    break
                timeout = self.lease_options.renew_every
                if self._until_empty:
                    timeout = min(timeout, EMPTY_CHECK)
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
        finally:
            try:
                await self._let_go_all()
                await self._leases(self.store.forget_worker, self.holder)
            finally:
                self._upkeep.shutdown(wait=False)
        return self.stats

    async def _leases(self, call: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._upkeep, lambda: call(*args))

    async def _empty(self) -> bool:
        if any(not held.worker.idle() for held in self._held.values()):
            return False
        return await asyncio.to_thread(self.store.pending_count) == 0

    async def _tend(self) -> None:
        """Renew what is held, drop what was lost, give back more than a fair share, claim up to it."""
        self._last_tend = time.monotonic()
        ttl = self.lease_options.ttl
        live = await self._leases(self.store.heartbeat, self.holder, ttl)
        renewed = {lease.partition: lease for lease in await self._leases(self.store.renew_leases, self.holder, ttl)}
        for partition, held in list(self._held.items()):
            lease = renewed.get(partition)
            if lease is None or lease.generation != held.lease.generation:
                if not held.lost:
                    log.warning("lost the lease on partition %r: another worker delivers it now", partition)
                    self.counters.lost += 1
                    held.lost = True
                    held.worker.stop()
            elif lease.replays != held.lease.replays and not held.leaving and held.restart is None:
                # dead units were put back behind its cursor: read the partition again from its start
                held.restart = lease
                held.worker.stop()
        by_lane: dict[str, list[str]] = {}
        for name in await self._leases(self.store.partition_names):
            by_lane.setdefault(lane_share(name)[0], []).append(name)
        workers = max(live, 1)
        # A fair share of each lane (the parts of a split lane spread over the workers), and of all
        # partitions (the lanes that are one partition each go to different workers).
        overall = max(1, math.ceil(sum(map(len, by_lane.values())) / workers))
        kept = 0
        for lane, names in sorted(by_lane.items()):
            share = max(1, math.ceil(len(names) / workers))
            mine = sorted((h for h in self._held.values() if not h.leaving and h.lease.partition in names),
                          key=lambda h: h.lease.partition)
            keep = min(share, max(overall - kept, 0))
            for held in mine[keep:]:
                log.info("giving partition %r back: %d worker(s) share lane %r's %d partition(s)",
                         held.lease.partition, live, lane, len(names))
                held.give_back = True  # released once its calls in flight are answered (_collect): no wait here,
                held.worker.stop()  # so the other leases keep being renewed meanwhile
            kept += len(mine[:keep])
            room = keep - len(mine[:keep])
            if room > 0 and not self._stopping:
                for lease in await self._leases(self.store.claim_partitions, self.holder, ttl, room, names):
                    kept += 1
                    self.counters.claimed += 1
                    if lease.taken_over:
                        self.counters.takeovers += 1
                    log.info("delivering partition %r (lease generation %d%s)", lease.partition, lease.generation,
                             ", taken over from a worker whose lease expired" if lease.taken_over else "")
                    self._start(lease)
        self._reshare()

    def rate_limiter(self, lane: str, endpoint: str) -> RateLimiter | None:
        """The limiter this process's partitions of `lane` share for an endpoint (None before it held one)."""
        return self._limiters.get(lane, {}).get(endpoint)

    def _reshare(self) -> None:
        """Each lane's rate limits: the share of the lane's partitions this process delivers (m of K:
        m/K), on the limiters its partitions' workers share."""
        shares: dict[str, float] = {}
        for held in self._held.values():
            if not held.leaving:
                lane, fraction = lane_share(held.lease.partition)
                shares[lane] = shares.get(lane, 0.0) + fraction
        for lane, limiters in self._limiters.items():
            for limiter in limiters.values():  # (a lane it no longer holds: the least, for calls still finishing)
                limiter.set_share(shares.get(lane, 0.0))

    def _start(self, lease: Lease) -> None:
        lane = lane_share(lease.partition)[0]
        limiters = self._limiters.get(lane)
        if limiters is None:
            limiters = self._limiters[lane] = rate_limiters(self.plan, self.options.time_scale)
        worker = DeliveryWorker(self.plan, self.store.partition_queue(lease), self.sealer, self.base_url,
                                self.options, client=self._client, on_progress=lambda _: self._sum(),
                                chains=self.chains, limiters=limiters)
        task = asyncio.get_running_loop().create_task(worker.run())
        task.add_done_callback(lambda _: self._poke())
        self._held[lease.partition] = _Held(lease, worker, task)
        self._reshare()  # before its worker's first dispatch

    async def _collect(self) -> None:
        """Partitions whose worker ended: a configuration error ends everything; a lost lease, that one."""
        for partition, held in list(self._held.items()):
            if not held.task.done():
                continue
            del self._held[partition]
            self._ended.append(held.worker.stats)
            self._sum()
            error = held.task.exception()
            if isinstance(error, LeaseLost):
                log.warning("partition %r: %s", partition, error)
                if not held.lost:
                    self.counters.lost += 1
            elif isinstance(error, DeliveryStopped):
                self._stopping = True
                raise error
            elif error is not None:
                raise error
            elif held.restart is not None and not held.leaving and not self._stopping:
                self._start(held.restart)
            elif not held.lost:
                # given back, or it ended by itself (it never does unless told): another worker may take it
                await self._leases(self.store.release_lease, held.lease)

    async def _let_go(self, held: _Held) -> None:
        """Stop a partition's worker, wait for it, and give the lease back (unless lost)."""
        held.worker.stop()
        try:
            await held.task
        except (LeaseLost, DeliveryStopped):
            pass
        finally:
            self._held.pop(held.lease.partition, None)
            self._ended.append(held.worker.stats)
            self._sum()
        if not held.lost:
            await self._leases(self.store.release_lease, held.lease)

    async def _let_go_all(self) -> None:
        for held in list(self._held.values()):
            held.worker.stop()
        errors: list[BaseException] = []
        for held in list(self._held.values()):
            try:
                await self._let_go(held)
            except Exception as exc:  # one partition's trouble must not keep the others' leases
                errors.append(exc)
        if errors:
            raise errors[0]

    def _sum(self) -> None:
        """This process's totals over its partitions' workers, past and present (in place: readers
        such as a server's metrics hold this object)."""
        add_up(self.stats, self._ended + [held.worker.stats for held in self._held.values()])
        if self.on_progress is not None:
            try:
                self.on_progress(self.stats)
            except Exception:  # a display problem must not stop delivery
                log.exception("progress callback failed")

