"""The shared outbox: a PostgreSQL database used by any number of `serve` and `worker` processes.

    outbox = PostgresOutbox("postgresql://user@host/db", partition_of=plan.lane_of)  # creates/migrates tables
    outbox.add_events(...)                  # the Outbox contract (outbox.py), like the SQLite store
    lease = outbox.claim_partitions(holder, ttl=10, limit=1)[0]
    queue = outbox.partition_queue(lease)   # what one DeliveryWorker drains: that partition only

Each unit is recorded with a **partition** (`partition_of(method, url, unit)`: the lane of the
endpoint it calls, or for a lane split by `order.partitions` the part its ordering key hashes to, so
one subject's requests in one lane share a partition; partitions.py) and a **tenant**. A
worker delivers a partition only while it holds its lease (leases.py runs them): a row in `leases`
with a holder, an expiry on the database's clock and a generation that grows with every new holder.
The queue of a lease marks units only while the lease row still names that holder and generation —
checked in the marking transaction, with the row locked — so a worker that lost its lease (paused,
partitioned away, its lease taken over) cannot change what the new holder does.

Order across partitions: an event's requests go out in the order its rules made them, even when they
are in different lanes. A partition's queue stops at its first unit whose event still has an earlier
request pending in another partition, and goes on once that one is answered.

Recording takes a per-tenant advisory lock for the transaction, so unit ids grow in commit order: a
worker reading "pending units after id N" never misses a unit committed late with a smaller id. The
tables are created and migrated by the product (postgres_migrations.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from ..mapping_set import PROGRAM
from .outbox import (
    EVENT_STATUSES,
    UNIT_STATUSES,
    Counts,
    DeadLetter,
    Finished,
    LeaseLost,
    NewEvent,
    NewUnit,
    OpenJob,
    Outbox,
    OutboxError,
    PartitionOf,
    StoredEvent,
    StoredUnit,
    raw_event,
    skip_duplicates,
)
from .postgres_migrations import LATEST, MIGRATIONS, SCHEMA_VERSION_TABLE
from .stores import without_password

MIGRATION_LOCK = 0x5EC7_0B0C  # advisory lock key: one process migrates at a time
T = TypeVar("T")
# Statements on the delivery path select units and events by id (or event_id) and leave "is it
# pending" to Python or to a predicate the partial indexes do not match (`status NOT IN (…)`): on a
# table filled faster than autovacuum analyses it, the planner otherwise combines the id look-up with
# a whole scan of the partial `units_pending` index, once per row — quadratic in the backlog.
NOT_FINISHED = "status NOT IN ('delivered', 'dead')"
UNIT_COLUMNS = "id, event_id, position, rule, method, url, headers, body_kind, body, attempts, chain"

INSERT_UNIT = ("INSERT INTO units (tenant, partition, event_id, position, rule, method, url, headers, body_kind, body, "
               "chain, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending') RETURNING id")


@dataclass(frozen=True)
class Lease:
    tenant: str
    partition: str
    holder: str
    generation: int
    replays: int  # grows when dead units are put back: the holder must read its partition again
    taken_over: bool = False  # claimed from a holder whose lease expired (not one that gave it back)


class PostgresOutbox(Outbox):
    """See the module docstring. Safe to use from several threads (a pool of connections)."""

    keep_delivered_bodies = False

    def __init__(self, url: str, tenant: str = "", partition_of: PartitionOf | None = None,
                 read_only: bool = False, pool_size: int = 8):
        """Connect (and, unless `read_only`, create or migrate the tables). Raises OutboxError naming
        the database when it cannot be reached or its schema is newer than this code."""
        self.url = url
        self.tenant = tenant
        self.partition_of: PartitionOf = partition_of or (lambda method, url, unit: "")
        self.read_only = read_only
        self.on_delivered: Callable[[Finished], None] | None = None  # e.g. a server's latency metrics
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        try:
            with psycopg.connect(url, connect_timeout=10) as probe:  # a clear error before a pool retries
                probe.execute("SELECT 1")
        except psycopg.Error as exc:
            raise OutboxError(f"{self.where}: cannot connect: {_first_line(exc)}") from None
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=True, timeout=60,
                                    kwargs={"connect_timeout": 10})
        # Lease upkeep has connections of its own: a renewal must never wait behind delivery's
        # transactions (a lease that is not renewed in time is taken over).
        self._lease_pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lease_pool_lock = threading.Lock()
        try:
            self._check_schema()
        except BaseException:
            self.close()
            raise

    @property
    def where(self) -> str:
        return without_password(self.url)

    # -- schema ------------------------------------------------------------------------------------------
    def _check_schema(self) -> None:
        with self._tx() as cur:
            if not self.read_only:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                cur.execute(SCHEMA_VERSION_TABLE)
            else:
                if not _one(cur, "SELECT to_regclass('schema_version') IS NOT NULL"):
                    raise OutboxError(f"{self.where}: no outbox in this database (no schema_version table)")
            found = int(_one(cur, "SELECT coalesce(max(version), 0) FROM schema_version", default=0))
            if found > LATEST:
                raise OutboxError(
                    f"{self.where}: the outbox schema in this database is version {found}, newer than this "
                    f"{PROGRAM} understands (version {LATEST}); nothing was changed. Upgrade {PROGRAM} on "
                    "this machine (every process sharing the database needs the same or a newer release)")
            if self.read_only:
                return
            for version, script in MIGRATIONS:
                if version > found:
                    cur.execute(script)
                    cur.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))

    def schema_version(self) -> int:
        with self._tx() as cur:
            return int(_one(cur, "SELECT coalesce(max(version), 0) FROM schema_version", default=0))

    # -- connections -------------------------------------------------------------------------------------
    @contextmanager
    def _tx(self, leases: bool = False) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """One transaction: committed at the end of the block, rolled back on an exception
        (`leases`: on the connections kept for lease upkeep)."""
        if self._pool is None:
            raise OutboxError(f"{self.where}: the outbox is closed")
        pool = self._pool
        if leases:
            with self._lease_pool_lock:  # (made on first use, maybe by two upkeep threads at once: one pool)
                if self._lease_pool is None:
                    self._lease_pool = ConnectionPool(self.url, min_size=1, max_size=2, open=True, timeout=60,
                                                      kwargs={"connect_timeout": 10})
                pool = self._lease_pool
        with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            yield cur

    def _lock_recording(self, cur: psycopg.Cursor[Any]) -> None:
        # Ids are taken under this lock and committed before it is released: they grow in commit order.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{PROGRAM} outbox recording:{self.tenant}",))

    # -- recording ---------------------------------------------------------------------------------------
    def progress(self, source: str) -> int:
        with self._tx() as cur:
            return int(_one(cur, "SELECT next_index FROM sources WHERE tenant = %s AND id = %s", (self.tenant, source),
                            default=0))

    def add_events(self, source: str, first_index: int, events: Sequence[NewEvent], label: str = "") -> int:
        with self._tx() as cur:
            self._lock_recording(cur)
            return self._add_events(cur, source, first_index, events, label)

    def append_events(self, source: str, events: Sequence[NewEvent], label: str = "",
                      dedupe_window: float | None = None) -> int:
        with self._tx() as cur:
            self._lock_recording(cur)
            first = int(_one(cur, "SELECT next_index FROM sources WHERE tenant = %s AND id = %s", (self.tenant, source),
                             default=0))
            if dedupe_window is not None:
                self._mark_duplicates(cur, source, first, events, dedupe_window)
            self._add_events(cur, source, first, events, label)
            return first

    def _mark_duplicates(self, cur: psycopg.Cursor[Any], source: str, first: int, events: Sequence[NewEvent],
                         window: float) -> None:
        ids = list(dict.fromkeys(e.message_id for e in events if e.message_id is not None))
        seen: dict[str, int] = {}
        if ids:
            cur.execute("SELECT message_id, min(idx) AS idx FROM events WHERE tenant = %s AND source = %s AND "
                        "message_id = ANY(%s) AND created >= %s GROUP BY message_id",
                        (self.tenant, source, ids, time.time() - window))
            seen.update((str(r["message_id"]), int(r["idx"])) for r in cur.fetchall())
        skip_duplicates(events, first, seen, window)

    def _add_events(self, cur: psycopg.Cursor[Any], source: str, first_index: int, events: Sequence[NewEvent],
                    label: str) -> int:
        now = time.time()
        cur.execute("INSERT INTO sources (tenant, id, label, next_index, created) VALUES (%s, %s, %s, 0, %s) "
                    "ON CONFLICT DO NOTHING", (self.tenant, source, label, now))
        done = int(_one(cur, "SELECT next_index FROM sources WHERE tenant = %s AND id = %s FOR UPDATE",
                        (self.tenant, source), default=0))
        if first_index > done:
            raise ValueError(f"source {source}: events {done}..{first_index - 1} were never recorded")
        fresh = [(first_index + offset, event) for offset, event in enumerate(events) if first_index + offset >= done]
        if fresh:
            cur.execute("SELECT nextval(pg_get_serial_sequence('events', 'id')) AS id FROM generate_series(1, %s)",
                        (len(fresh),))
            event_ids = sorted(int(r["id"]) for r in cur.fetchall())
            rows: list[tuple[Any, ...]] = []
            units: list[tuple[Any, ...]] = []
            partitions: set[str] = set()
            for event_id, (index, event) in zip(event_ids, fresh, strict=True):
                status = event.status if event.units or event.status != "pending" else "skipped"
                rows.append((event_id, self.tenant, source, index, event.message_id, status, event.reason,
                             json.dumps(event.notes, ensure_ascii=False) if event.notes else None, event.raw, now,
                             None if status == "pending" else now))
                for unit in event.units:
                    partition = self.partition_of(unit.method, unit.url, unit)
                    partitions.add(partition)
                    units.append((self.tenant, partition, event_id, unit.position, unit.rule, unit.method, unit.url,
                                  unit.headers, unit.body_kind, unit.body, unit.chain))
            # COPY: one stream for the whole batch (several times faster than row-by-row INSERTs)
            with cur.copy("COPY events (id, tenant, source, idx, message_id, status, reason, notes, raw, created, "
                          "finished) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            if units:
                with cur.copy("COPY units (tenant, partition, event_id, position, rule, method, url, headers, "
                              "body_kind, body, chain, status) FROM STDIN") as copy:
                    for row in units:
                        copy.write_row((*row, "pending"))
                self._known_partitions(cur, partitions)
        progress = max(done, first_index + len(events))
        cur.execute("UPDATE sources SET next_index = %s WHERE tenant = %s AND id = %s", (progress, self.tenant, source))
        return progress

    def _known_partitions(self, cur: psycopg.Cursor[Any], partitions: set[str]) -> None:
        cur.executemany("INSERT INTO leases (tenant, partition) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        [(self.tenant, p) for p in sorted(partitions)])

    # -- delivering (the whole outbox: one process, e.g. the contract tests; workers use partition_queue) --
    def pending_units(self, after_id: int, limit: int) -> list[StoredUnit]:
        with self._tx() as cur:
            cur.execute(f"SELECT {UNIT_COLUMNS} FROM units WHERE tenant = %s AND status = 'pending' AND id > %s "
                        "ORDER BY id LIMIT %s", (self.tenant, after_id, limit))
            return [_stored_unit(r) for r in cur.fetchall()]

    # A `fence` (a PartitionQueue's lease) makes a mark refuse with LeaseLost once another worker holds it.
    def mark_delivered(self, unit_ids: Sequence[int], attempts: int = 1, fence: Lease | None = None) -> Finished:
        if not unit_ids:
            return Finished()
        return _retried(lambda: self._mark_delivered_once(unit_ids, attempts, fence))

    def _mark_delivered_once(self, unit_ids: Sequence[int], attempts: int, fence: Lease | None) -> Finished:
        body = "body" if self.keep_delivered_bodies else "NULL"  # a delivered body is not needed again
        finished = self._mark(f"UPDATE units SET status = 'delivered', attempts = attempts + %s, finished = %s, "
                              f"body = {body} WHERE id = ANY(%s) AND {NOT_FINISHED} RETURNING event_id",
                              (attempts, time.time(), list(unit_ids)), fence)
        if self.on_delivered is not None:
            self.on_delivered(finished)
        return finished

    def mark_dead(self, unit_ids: Sequence[int], letter: DeadLetter, fence: Lease | None = None) -> Finished:
        if not unit_ids:
            return Finished()
        return _retried(lambda: self._mark(
            "UPDATE units SET status = 'dead', attempts = attempts + %s, response = %s, finished = %s "
            f"WHERE id = ANY(%s) AND {NOT_FINISHED} RETURNING event_id",
            (letter.attempts, letter.to_json(), time.time(), list(unit_ids)), fence))

    def _mark(self, update: str, args: tuple[Any, ...], fence: Lease | None) -> Finished:
        """One marking transaction in two round trips (pipelined: the fence and the units' update, then
        the events' lock and their update). Committed without waiting for the disk (synchronous_commit
        off): a mark lost to a database crash only sends its units again (at-least-once, as with a
        killed worker's calls in flight); recording is never relaxed this way."""
        with self._tx() as cur, cur.connection.pipeline():
            cur.execute("SET LOCAL synchronous_commit = off")
            fenced = self._fence_query(cur, fence)
            cur.execute(update, args)
            event_ids = sorted({int(r["event_id"]) for r in cur.fetchall()})
            if fence is not None and fenced is not None and fenced.fetchone() is None:
                raise _lease_lost(fence)  # (rolled back: nothing marked)
            return self._finish(cur, event_ids)

    def mark_step(self, unit_id: int, attempts: int, next_units: Sequence[NewUnit], note: str | None = None,
                  fence: Lease | None = None) -> tuple[Finished, list[StoredUnit]]:
        return _retried(lambda: self._mark_step_once(unit_id, attempts, next_units, note, fence))

    def _mark_step_once(self, unit_id: int, attempts: int, next_units: Sequence[NewUnit], note: str | None,
                        fence: Lease | None) -> tuple[Finished, list[StoredUnit]]:
        with self._tx() as cur:
            self._check_fence(cur, fence)
            self._lock_recording(cur)  # new unit ids, so they too grow in commit order
            cur.execute(f"SELECT event_id, partition FROM units WHERE id = %s AND {NOT_FINISHED} FOR UPDATE",
                        (unit_id,))
            row = cur.fetchone()
            if row is None:
                return Finished(), []  # marked already: its step ran
            event_id, partition = int(row["event_id"]), str(row["partition"])
            body = "body" if self.keep_delivered_bodies else "NULL"
            cur.execute(f"UPDATE units SET status = 'delivered', attempts = attempts + %s, finished = %s, "
                        f"body = {body} WHERE id = %s", (attempts, time.time(), unit_id))
            after = int(_one(cur, "SELECT coalesce(max(position), -1) + 1 FROM units WHERE event_id = %s", (event_id,),
                             default=0))
            new_ids: list[int] = []
            # the next step stays in this unit's partition: the worker that ran this step runs the next
            for offset, unit in enumerate(next_units):
                cur.execute(INSERT_UNIT, (self.tenant, partition, event_id, after + offset, unit.rule, unit.method,
                                          unit.url, unit.headers, unit.body_kind, unit.body, unit.chain))
                inserted = cur.fetchone()
                assert inserted is not None
                new_ids.append(int(inserted["id"]))
            if note is not None:
                cur.execute("UPDATE events SET reason = %s, notes = (coalesce(notes, '[]')::jsonb || "
                            "jsonb_build_array(%s::text))::text WHERE id = %s", (note, note, event_id))
            finished = self._finish(cur, [event_id])
            stored: list[StoredUnit] = []
            if new_ids:
                cur.execute(f"SELECT {UNIT_COLUMNS} FROM units WHERE id = ANY(%s) ORDER BY id", (new_ids,))
                stored = [_stored_unit(r) for r in cur.fetchall()]
        if self.on_delivered is not None:
            self.on_delivered(finished)
        return finished, stored

    @staticmethod
    def _fence_query(cur: psycopg.Cursor[Any], fence: Lease | None) -> psycopg.Cursor[Any] | None:
        """Within the marking transaction: select the lease row if it still names this holder and
        generation, locked until commit (so a takeover waits for the marks and then sees them). Its
        own cursor: pipelined with the statements after it, read once they are sent."""
        if fence is None:
            return None
        fenced = cur.connection.cursor()
        fenced.execute("SELECT 1 FROM leases WHERE tenant = %s AND partition = %s AND holder = %s AND generation = %s "
                       "FOR SHARE", (fence.tenant, fence.partition, fence.holder, fence.generation))
        return fenced

    @classmethod
    def _check_fence(cls, cur: psycopg.Cursor[Any], fence: Lease | None) -> None:
        fenced = cls._fence_query(cur, fence)
        if fence is not None and fenced is not None and fenced.fetchone() is None:
            raise _lease_lost(fence)

    def _finish(self, cur: psycopg.Cursor[Any], event_ids: Sequence[int]) -> Finished:
        """Events of `event_ids` with no request left pending end delivered (or dead, when one is)."""
        finished = Finished()
        if not event_ids:
            return finished
        # The events' rows are locked in id order first (two partitions' marks may finish one event: they
        # take turns), then a new statement (a new snapshot: it sees the other's committed units) works
        # out and sets their status, finish time, and the raw input dropped once delivered.
        locked = cur.connection.cursor()
        locked.execute("SELECT id FROM events WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (list(event_ids),))
        keep_raw = "events.raw" if self.keep_delivered_bodies else \
            "CASE WHEN v.status = 'delivered' THEN NULL ELSE events.raw END"
        cur.execute(f"UPDATE events SET status = v.status, finished = %s, raw = {keep_raw} FROM ("
                    "SELECT event_id, CASE WHEN bool_or(status = 'dead') THEN 'dead' ELSE 'delivered' END AS status "
                    "FROM units WHERE event_id = ANY(%s) GROUP BY event_id HAVING NOT bool_or(status = 'pending')) v "
                    "WHERE events.id = v.event_id AND events.status = 'pending' "
                    "RETURNING events.status, events.finished - events.created AS latency",
                    (time.time(), list(event_ids)))
        for row in cur.fetchall():
            if row["status"] == "delivered":
                finished.delivered += 1
                finished.latencies.append(float(row["latency"]))
            elif row["status"] == "dead":
                finished.dead += 1
        return finished

    def requeue_dead(self, unit_ids: Sequence[int] | None = None) -> int:
        with self._tx() as cur:
            if unit_ids is None:
                cur.execute("SELECT id FROM units WHERE tenant = %s AND status = 'dead'", (self.tenant,))
                ids = [int(r["id"]) for r in cur.fetchall()]
            else:
                ids = list(unit_ids)
            cur.execute("UPDATE units SET status = 'pending', attempts = 0, finished = NULL "
                        "WHERE tenant = %s AND status = 'dead' AND id = ANY(%s) RETURNING partition, event_id",
                        (self.tenant, ids))
            requeued = cur.fetchall()
            partitions = {str(r["partition"]) for r in requeued}
            cur.execute("UPDATE events SET status = 'pending', finished = NULL WHERE id = ANY(%s)",
                        (sorted({int(r["event_id"]) for r in requeued}),))
            self._replayed(cur, partitions)
            return len(requeued)

    def _replayed(self, cur: psycopg.Cursor[Any], partitions: set[str]) -> None:
        """Units behind a holder's cursor are pending again: tell the holders to read from the start."""
        if partitions:
            self._known_partitions(cur, partitions)
            cur.execute("UPDATE leases SET replays = replays + 1 WHERE tenant = %s AND partition = ANY(%s)",
                        (self.tenant, sorted(partitions)))

    # -- jobs --------------------------------------------------------------------------------------------
    def save_job(self, job: OpenJob, fence: Lease | None = None) -> None:
        with self._tx() as cur:
            self._check_fence(cur, fence)
            partition = fence.partition if fence is not None else self._partition_of_units(cur, job.unit_ids)
            cur.execute("INSERT INTO jobs (tenant, partition, job_id, batch, units, created) "
                        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant, job_id) DO UPDATE SET "
                        "partition = excluded.partition, batch = excluded.batch, units = excluded.units",
                        (self.tenant, partition, job.job_id, job.batch, json.dumps(job.unit_ids), time.time()))

    @staticmethod
    def _partition_of_units(cur: psycopg.Cursor[Any], unit_ids: Sequence[int]) -> str:
        return str(_one(cur, "SELECT partition FROM units WHERE id = ANY(%s) ORDER BY id LIMIT 1", (list(unit_ids),),
                        default=""))

    def open_jobs(self, partition: str | None = None) -> list[OpenJob]:
        where, args = ("AND partition = %s", (self.tenant, partition)) if partition is not None \
            else ("", (self.tenant,))
        with self._tx() as cur:
            cur.execute(f"SELECT job_id, batch, units FROM jobs WHERE tenant = %s {where} ORDER BY created, job_id",
                        args)
            return [OpenJob(str(r["job_id"]), str(r["batch"]), [int(i) for i in json.loads(r["units"])])
                    for r in cur.fetchall()]

    def finish_job(self, job_id: str, fence: Lease | None = None) -> None:
        with self._tx() as cur:
            self._check_fence(cur, fence)
            cur.execute("DELETE FROM jobs WHERE tenant = %s AND job_id = %s", (self.tenant, job_id))

    def units_with_ids(self, unit_ids: Sequence[int]) -> list[StoredUnit]:
        with self._tx() as cur:
            cur.execute(f"SELECT {UNIT_COLUMNS}, status FROM units WHERE id = ANY(%s) ORDER BY id", (list(unit_ids),))
            return [_stored_unit(r) for r in cur.fetchall() if r["status"] == "pending"]

    # -- mapping again -----------------------------------------------------------------------------------
    def events_to_remap(self, statuses: Sequence[str]) -> list[StoredEvent]:
        with self._tx() as cur:
            cur.execute("SELECT id, source, idx, status, raw FROM events WHERE tenant = %s AND status = ANY(%s) "
                        "ORDER BY id", (self.tenant, list(statuses)))
            return [StoredEvent(int(r["id"]), str(r["source"]), int(r["idx"]), str(r["status"]), r["raw"])
                    for r in cur.fetchall()]

    def remap_event(self, event_id: int, event: NewEvent) -> str:
        with self._tx() as cur:
            self._lock_recording(cur)
            cur.execute("SELECT position, rule FROM units WHERE event_id = %s AND status = 'delivered'", (event_id,))
            delivered = {(int(r["position"]), str(r["rule"])) for r in cur.fetchall()}
            cur.execute("DELETE FROM units WHERE event_id = %s AND status != 'delivered'", (event_id,))
            fresh = [u for u in event.units if (u.position, u.rule) not in delivered]
            placed = [(self.partition_of(u.method, u.url, u), u) for u in fresh]
            partitions = {partition for partition, _ in placed}
            cur.executemany(INSERT_UNIT, [(self.tenant, partition, event_id, u.position, u.rule, u.method, u.url,
                                           u.headers, u.body_kind, u.body, u.chain) for partition, u in placed])
            self._replayed(cur, partitions)
            status = event.status if event.status != "pending" else "pending" if fresh else "delivered"
            cur.execute("UPDATE events SET status = %s, reason = %s, notes = %s, raw = %s, finished = %s "
                        "WHERE id = %s",
                        (status, event.reason, json.dumps(event.notes, ensure_ascii=False) if event.notes else None,
                         None if status in ("delivered", "skipped") else event.raw,
                         None if status == "pending" else time.time(), event_id))
            return status

    # -- reading -----------------------------------------------------------------------------------------
    def counts(self, source: str | None = None) -> Counts:
        events = {s: 0 for s in EVENT_STATUSES}
        units = {s: 0 for s in UNIT_STATUSES}
        where, args = ("AND source = %s", (self.tenant, source)) if source is not None else ("", (self.tenant,))
        with self._tx() as cur:
            cur.execute(f"SELECT status, count(*) AS n FROM events WHERE tenant = %s {where} GROUP BY status", args)
            for row in cur.fetchall():
                events[str(row["status"])] = int(row["n"])
            join = "JOIN events e ON e.id = u.event_id AND e.source = %s" if source is not None else ""
            cur.execute(f"SELECT u.status, count(*) AS n FROM units u {join} WHERE u.tenant = %s GROUP BY u.status",
                        (source, self.tenant) if source is not None else (self.tenant,))
            for row in cur.fetchall():
                units[str(row["status"])] = int(row["n"])
        return Counts(events, units)

    def sources(self) -> list[dict[str, Any]]:
        with self._tx() as cur:
            cur.execute("SELECT id, label, next_index, created FROM sources WHERE tenant = %s ORDER BY created, id",
                        (self.tenant,))
            return [dict(r) for r in cur.fetchall()]

    def dead_letters(self, source: str | None = None) -> Iterator[dict[str, Any]]:
        where, args = ("AND e.source = %s", (self.tenant, source)) if source is not None else ("", (self.tenant,))
        with self._tx() as cur:
            cur.execute(
                'SELECT u.id AS unit, e.source, e.idx AS event, e.message_id AS "messageId", u.rule, u.method, u.url, '
                "u.headers, u.body_kind, u.body, u.attempts, u.response, u.finished "
                f"FROM units u JOIN events e ON e.id = u.event_id WHERE u.tenant = %s AND u.status = 'dead' {where} "
                "ORDER BY u.id", args)
            rows = cur.fetchall()
        for record in rows:
            record["headers"] = json.loads(record["headers"])
            record["body"] = json.loads(record["body"]) if record["body"] is not None else None
            record["response"] = json.loads(record["response"]) if record["response"] else None
            yield record

    def events(self, status: str, source: str | None = None) -> Iterator[dict[str, Any]]:
        where, args = ("AND source = %s", (self.tenant, status, source)) if source is not None \
            else ("", (self.tenant, status))
        with self._tx() as cur:
            cur.execute('SELECT id, source, idx AS event, message_id AS "messageId", status, reason, notes, raw, '
                        f"created, finished FROM events WHERE tenant = %s AND status = %s {where} ORDER BY id", args)
            rows = cur.fetchall()
        for record in rows:
            record["notes"] = json.loads(record["notes"]) if record["notes"] else []
            record["raw"] = raw_event(record["raw"])
            yield record

    def dead_reasons(self, source: str | None = None, limit: int = 3) -> list[tuple[str, int]]:
        where, args = ("AND e.source = %s", (self.tenant, source, limit)) if source is not None \
            else ("", (self.tenant, limit))
        with self._tx() as cur:
            cur.execute(
                "SELECT u.response::json ->> 'status' AS answer, u.response::json ->> 'error' AS reason, count(*) AS n "
                f"FROM units u JOIN events e ON e.id = u.event_id WHERE u.tenant = %s AND u.status = 'dead' {where} "
                "GROUP BY 1, 2 ORDER BY count(*) DESC, min(u.id) LIMIT %s", args)
            return [(f"HTTP {r['answer']}: {r['reason']}" if r["answer"] is not None else str(r["reason"]), int(r["n"]))
                    for r in cur.fetchall()]

    def get_meta(self, key: str) -> str | None:
        with self._tx() as cur:
            found = _one(cur, "SELECT value FROM meta WHERE tenant = %s AND key = %s", (self.tenant, key))
            return None if found is None else str(found)

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as cur:
            cur.execute("INSERT INTO meta (tenant, key, value) VALUES (%s, %s, %s) "
                        "ON CONFLICT (tenant, key) DO UPDATE SET value = excluded.value", (self.tenant, key, value))

    def init_meta(self, key: str, value: str) -> str:
        """The key's value, set to `value` first if it has none (one value, whichever process came first)."""
        with self._tx() as cur:
            cur.execute("INSERT INTO meta (tenant, key, value) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        (self.tenant, key, value))
            return str(_one(cur, "SELECT value FROM meta WHERE tenant = %s AND key = %s", (self.tenant, key),
                            default=value))

    def pending_count(self) -> int:
        """Pending units and open jobs of this tenant (0: nothing left to deliver)."""
        with self._tx() as cur:
            return int(_one(cur, "SELECT (SELECT count(*) FROM units WHERE tenant = %s AND status = 'pending') + "
                                 "(SELECT count(*) FROM jobs WHERE tenant = %s)", (self.tenant, self.tenant),
                            default=0))

    def backlog(self) -> dict[tuple[str, str], int]:
        """Pending requests by (tenant, partition), of every tenant: what all workers have left (metrics)."""
        with self._tx() as cur:
            cur.execute("SELECT tenant, partition, count(*) AS n FROM units WHERE status = 'pending' "
                        "GROUP BY tenant, partition")
            return {(str(r["tenant"]), str(r["partition"])): int(r["n"]) for r in cur.fetchall()}

    def tenants_with_partitions(self) -> list[str]:
        """Every tenant that has recorded requests (a worker delivers those it has settings for)."""
        with self._tx(leases=True) as cur:
            cur.execute("SELECT DISTINCT tenant FROM leases ORDER BY tenant")
            return [str(r["tenant"]) for r in cur.fetchall()]

    # -- leases (leases.py decides when) -----------------------------------------------------------------
    def heartbeat(self, holder: str, ttl: float) -> int:
        """Say this worker is alive; returns how many workers are (seen within `ttl`)."""
        with self._tx(leases=True) as cur:
            cur.execute("INSERT INTO workers (holder, seen) VALUES (%s, now()) "
                        "ON CONFLICT (holder) DO UPDATE SET seen = now()", (holder,))
            cur.execute("DELETE FROM workers WHERE seen < now() - make_interval(secs => %s)", (ttl * 6,))
            return int(_one(cur, "SELECT count(*) FROM workers WHERE seen >= now() - make_interval(secs => %s)", (ttl,),
                            default=1))

    def partition_names(self) -> list[str]:
        """Every partition this tenant has recorded requests in (a lease row each), in name order."""
        with self._tx(leases=True) as cur:
            cur.execute("SELECT partition FROM leases WHERE tenant = %s ORDER BY partition", (self.tenant,))
            return [str(r["partition"]) for r in cur.fetchall()]

    def claim_partitions(self, holder: str, ttl: float, limit: int, among: Sequence[str] | None = None) -> list[Lease]:
        """Take up to `limit` partitions (of `among`, when given) nobody holds or whose lease expired,
        atomically: rows another worker is claiming at the same instant are skipped (FOR UPDATE SKIP
        LOCKED), never shared."""
        if limit <= 0:
            return []
        which, args = ("AND partition = ANY(%s)", (list(among),)) if among is not None else ("", ())
        with self._tx(leases=True) as cur:
            cur.execute(
                "UPDATE leases l SET holder = %s, generation = l.generation + 1, "
                "expires = now() + make_interval(secs => %s) FROM ("
                f"  SELECT tenant, partition, holder AS was FROM leases WHERE tenant = %s {which} AND "
                "  (holder IS NULL OR expires < now()) ORDER BY partition LIMIT %s FOR UPDATE SKIP LOCKED) old "
                "WHERE l.tenant = old.tenant AND l.partition = old.partition "
                "RETURNING l.tenant, l.partition, l.holder, l.generation, l.replays, old.was IS NOT NULL AS taken_over",
                (holder, ttl, self.tenant, *args, limit))
            return [_lease(r) for r in cur.fetchall()]

    def renew_leases(self, holder: str, ttl: float) -> list[Lease]:
        """Extend every lease this worker still holds; returns them (one it lost is missing)."""
        with self._tx(leases=True) as cur:
            cur.execute("UPDATE leases SET expires = now() + make_interval(secs => %s) WHERE tenant = %s AND "
                        "holder = %s RETURNING tenant, partition, holder, generation, replays",
                        (ttl, self.tenant, holder))
            return [_lease(r) for r in cur.fetchall()]

    def release_lease(self, lease: Lease) -> None:
        """Give a lease up (a graceful stop): another worker may take it at once."""
        with self._tx(leases=True) as cur:
            cur.execute("UPDATE leases SET holder = NULL, expires = NULL WHERE tenant = %s AND partition = %s AND "
                        "holder = %s AND generation = %s", (lease.tenant, lease.partition, lease.holder,
                                                            lease.generation))

    def forget_worker(self, holder: str) -> None:
        with self._tx(leases=True) as cur:
            cur.execute("DELETE FROM workers WHERE holder = %s", (holder,))

    def partition_queue(self, lease: Lease) -> PartitionQueue:
        return PartitionQueue(self, lease)

    def partition_pending(self, partition: str, after_id: int, limit: int) -> list[StoredUnit]:
        """pending_units of one partition, up to the first whose event waits on another partition."""
        with self._tx() as cur:
            cur.execute(f"SELECT {UNIT_COLUMNS} FROM units WHERE tenant = %s AND partition = %s AND "
                        "status = 'pending' AND id > %s ORDER BY id LIMIT %s",
                        (self.tenant, partition, after_id, limit))
            units = [_stored_unit(r) for r in cur.fetchall()]
            if not units:
                return units
            # per event, its first request still pending in another partition (one indexed look-up
            # for the batch: a correlated subquery per unit costs a scan each on a fresh table)
            cur.execute(f"SELECT event_id, min(id) AS first FROM units WHERE event_id = ANY(%s) AND partition <> %s "
                        f"AND {NOT_FINISHED} GROUP BY event_id", (sorted({u.event_id for u in units}), partition))
            elsewhere = {int(row["event_id"]): int(row["first"]) for row in cur.fetchall()}
        for position, stored in enumerate(units):
            first = elsewhere.get(stored.event_id)
            if first is not None and first < stored.id:
                return units[:position]  # its event's earlier request (another partition) first: read on later
        return units

    def close(self) -> None:
        for pool in (self._pool, self._lease_pool):
            if pool is not None:
                pool.close()
        self._pool = self._lease_pool = None

    def __enter__(self) -> PostgresOutbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PartitionQueue:
    """One leased partition, as a DeliveryWorker drains it: its pending units and jobs, marked only
    while the lease is still this holder's (LeaseLost otherwise)."""

    def __init__(self, store: PostgresOutbox, lease: Lease):
        self.store = store
        self.lease = lease

    def pending_units(self, after_id: int, limit: int) -> list[StoredUnit]:
        return self.store.partition_pending(self.lease.partition, after_id, limit)

    def mark_delivered(self, unit_ids: Sequence[int], attempts: int = 1) -> Finished:
        return self.store.mark_delivered(unit_ids, attempts, fence=self.lease)

    def mark_dead(self, unit_ids: Sequence[int], letter: DeadLetter) -> Finished:
        return self.store.mark_dead(unit_ids, letter, fence=self.lease)

    def mark_step(self, unit_id: int, attempts: int, next_units: Sequence[NewUnit],
                  note: str | None = None) -> tuple[Finished, list[StoredUnit]]:
        return self.store.mark_step(unit_id, attempts, next_units, note, fence=self.lease)

    def save_job(self, job: OpenJob) -> None:
        self.store.save_job(job, fence=self.lease)

    def open_jobs(self) -> list[OpenJob]:
        return self.store.open_jobs(self.lease.partition)

    def finish_job(self, job_id: str) -> None:
        self.store.finish_job(job_id, fence=self.lease)

    def units_with_ids(self, unit_ids: Sequence[int]) -> list[StoredUnit]:
        return self.store.units_with_ids(unit_ids)


def _retried(transaction: Callable[[], T], tries: int = 5) -> T:
    """A transaction PostgreSQL aborted to break a deadlock (e.g. a mark beside `outbox replay`)
    is run again: nothing of it was kept."""
    for attempt in range(tries):
        try:
            return transaction()
        except psycopg.errors.DeadlockDetected:
            if attempt == tries - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def _one(cur: psycopg.Cursor[dict[str, Any]], query: str, args: Sequence[Any] = (), default: Any = None) -> Any:
    """The value a query selects: its first row's first column (`default` when it has no row)."""
    cur.execute(query, args)
    row = cur.fetchone()
    return next(iter(row.values())) if row else default


def _stored_unit(row: dict[str, Any]) -> StoredUnit:
    return StoredUnit(int(row["id"]), int(row["event_id"]), int(row["position"]), str(row["rule"]),
                      str(row["method"]), str(row["url"]), str(row["headers"]), row["body_kind"], row["body"],
                      int(row["attempts"]), row.get("chain"))


def _lease(row: dict[str, Any]) -> Lease:
    return Lease(str(row["tenant"]), str(row["partition"]), str(row["holder"]), int(row["generation"]),
                 int(row["replays"]), bool(row.get("taken_over", False)))


def _lease_lost(fence: Lease) -> LeaseLost:
    return LeaseLost(f"the lease on partition {fence.partition!r} (generation {fence.generation}) was taken over: "
                     "nothing marked")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
