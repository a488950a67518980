"""The embedded outbox: one SQLite file in a state folder, used by one process (see outbox.py for
what is stored and the contract).

`SQLiteOutbox` keeps `outbox.sqlite3` in the state folder (WAL journal, so a kill at any instant
leaves the last committed state). The state folder holds emails and raw events, so it is created
readable by its owner only (0700) and every file the outbox writes there is 0600 (SQLite gives its
`-wal` and `-shm` files the mode of the database file). A damaged file (truncated, overwritten,
emptied) raises `OutboxDamaged` naming it and what to do; it is never silently replaced by a new
outbox. An emptied or deleted file cannot be told from a new folder by the file alone, so the first
recorded event also writes a sidecar, `outbox.recorded`: while it is there, an empty or missing
`outbox.sqlite3` is damage, not a fresh start.

Two roles, each one process at a time: the recorder (it adds events: `serve`) holds `outbox.lock`,
the deliverer (it sends and marks units: serve's deliverer process) holds `outbox.deliver.lock`; a
store opened for both (`send`, the `outbox` command's changes) holds both. So a second server or a
second deliverer on one folder is refused, while a server and its deliverer share it: WAL lets one
read while the other writes, and their write transactions take turns on a third lock,
`outbox.write.lock` (a blocking flock wakes the waiter as soon as the holder commits, where SQLite's
busy handler would sleep up to 100 ms between tries). Many processes share a PostgreSQL outbox
instead: postgres_outbox.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .outbox import (
    EVENT_STATUSES,
    PRIVATE_FILE,
    PRIVATE_FOLDER,
    UNIT_STATUSES,
    Counts,
    DeadLetter,
    Finished,
    NewEvent,
    NewUnit,
    OpenJob,
    Outbox,
    OutboxError,
    StoredEvent,
    StoredUnit,
    open_private,
    raw_event,
    skip_duplicates,
)

OUTBOX_FILE = "outbox.sqlite3"
LOCK_FILE = "outbox.lock"  # the recorder's
DELIVER_LOCK_FILE = "outbox.deliver.lock"  # the deliverer's
WRITE_TURN_FILE = "outbox.write.lock"  # held for each write transaction while the roles are split
ROLES = ("recorder", "deliverer")
MARK_CHUNK = 100  # units marked in one transaction while the roles are split (about 1 ms each)
RECORDED_FILE = "outbox.recorded"  # written with the first recorded event: evidence the file held events
RECOVERY_HINT = ("stop whatever uses the folder, move it aside (mv {folder} {folder}.damaged) and start again with "
                 "an empty --state; README's \"A damaged outbox\" says how to recover what the file still holds")



_JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    batch TEXT NOT NULL,
    units TEXT NOT NULL,
    created REAL NOT NULL
);
"""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    id TEXT PRIMARY KEY,
    label TEXT NOT NULL DEFAULT '',
    next_index INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    idx INTEGER NOT NULL,
    message_id TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    notes TEXT,
    raw TEXT,
    created REAL NOT NULL,
    finished REAL,
    UNIQUE (source, idx)
);
CREATE INDEX IF NOT EXISTS events_by_status ON events (source, status);
CREATE INDEX IF NOT EXISTS events_by_message_id ON events (source, message_id);
CREATE TABLE IF NOT EXISTS units (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL REFERENCES events (id),
    position INTEGER NOT NULL,
    rule TEXT NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    headers TEXT NOT NULL,
    body_kind TEXT,
    body TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    response TEXT,
    finished REAL,
    chain TEXT
);
CREATE INDEX IF NOT EXISTS units_pending ON units (id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS units_by_event ON units (event_id);
CREATE INDEX IF NOT EXISTS units_dead ON units (id) WHERE status = 'dead';
"""
SCHEMA_VERSION = "1"
_UNIT_COLUMNS = "id, event_id, position, rule, method, url, headers, body_kind, body, attempts, chain"
_INSERT_UNIT = ("INSERT INTO units (event_id, position, rule, method, url, headers, body_kind, body, chain, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')")
IN_CHUNK = 500  # ids in one `IN (...)` list (under SQLite's 999 bound parameters, with room for others)


def in_chunks(ids: Sequence[Any]) -> Iterator[list[Any]]:
    """`ids` in lists of at most IN_CHUNK: one statement each, not one an id."""
    for start in range(0, len(ids), IN_CHUNK):
        yield list(ids[start:start + IN_CHUNK])


class OutboxLocked(OutboxError):
    """Another process is using this state folder."""


class OutboxDamaged(OutboxError):
    """The outbox file is not a sound SQLite database, or was emptied after events were recorded."""

    def __init__(self, path: Path, what: str):
        super().__init__(f"{path} is damaged: {what}. Nothing was changed; "
                         + RECOVERY_HINT.format(folder=path.parent))
        self.path = path


# SQLite's primary result codes for a file that is not (or no longer) a sound database
_DAMAGE_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def _is_damage(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in _DAMAGE_CODES



class SQLiteOutbox(Outbox):
    """The embedded outbox: `DIR/outbox.sqlite3`. Safe to use from several threads of one process.

    A delivered request's body is dropped (its row, status and times stay), so the file grows by
    about a hundred bytes per delivered request rather than by the request; `keep_delivered_bodies`
    keeps them."""

    keep_delivered_bodies = False

    def __init__(self, folder: str | os.PathLike[str], exclusive: bool = True, create: bool = True,
                 read_only: bool = False, role: str | None = None):
        """Open (or, with `create`, make) the outbox in `folder`.

        `exclusive` takes the folder for this process: both roles' locks, or with `role`
        ("recorder" or "deliverer") that role's only, sharing the folder with the other role's
        process. `read_only` opens it for reading only, writing nothing — neither the folder nor the
        file (so it works on a read-only folder, and beside a running server). Raises OutboxLocked,
        OutboxDamaged, OutboxError (another SQLite failure) or FileNotFoundError (no outbox, with
        `create=False`)."""
        if role is not None and role not in ROLES:
            raise ValueError(f"role {role!r}: not one of {', '.join(ROLES)}")
        self.folder = Path(folder)
        self.read_only = read_only
        # A recorder (`serve`) answers 200 once its commit returns: that commit waits for the disk, so
        # a power loss cannot take an event the server acknowledged. `send` can read its input again,
        # and a mark lost only resends a request (at-least-once), so they need not wait.
        self.synchronous = "FULL" if role == "recorder" else "NORMAL"
        if create and not read_only:
            self.folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_FOLDER)
        self.path = self.folder / OUTBOX_FILE
        self._recorded_marked = (self.folder / RECORDED_FILE).is_file()
        self._check_file(create and not read_only)
        self._lock_handles: list[Any] = []
        self._write_turn: Any = None  # with a role: the other role's process writes too
        if exclusive and not read_only:
            try:
                if role in (None, "recorder"):
                    self._take_lock(LOCK_FILE, "records into it (a running `serve`, `send`, or an `outbox` command "
                                               "changing it)")
                if role in (None, "deliverer"):
                    self._take_lock(DELIVER_LOCK_FILE, "delivers from it (a running `serve`'s deliverer, a `worker` "
                                                       "or `send`)")
                if role is not None:
                    self._write_turn = os.fdopen(os.open(self.folder / WRITE_TURN_FILE, os.O_RDWR | os.O_CREAT,
                                                         PRIVATE_FILE), "a+")
            except BaseException:
                self._release_locks()
                raise
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._write_lock = threading.Lock()  # one write transaction at a time in this process
        try:
            self._open_schema()
        except sqlite3.Error as exc:
            self.close()
            if _is_damage(exc):
                raise OutboxDamaged(self.path, f"SQLite says: {exc}") from None
            raise OutboxError(f"{self.path}: cannot be opened: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _check_file(self, create: bool) -> None:
        """Refuse a missing or empty file where events were recorded; make a new one private."""
        size = self.path.stat().st_size if self.path.is_file() else None
        if self._recorded_marked and not size:
            what = "it is missing" if size is None else "it is empty (0 bytes)"
            raise OutboxDamaged(self.path, f"{what}, but {RECORDED_FILE} beside it says events were recorded in it")
        if self.read_only and size == 0:  # a new, empty outbox: nothing to read (and no tables to read it from)
            raise FileNotFoundError(f"no outbox in {self.folder} ({OUTBOX_FILE} is empty)")
        if size is None:
            if not create:
                raise FileNotFoundError(f"no outbox in {self.folder} (expected {OUTBOX_FILE})")
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))
        elif not self.read_only:
            self._make_private()

    def _make_private(self) -> None:
        # An outbox made before files were private: narrow what this process owns (others it cannot).
        for name in (OUTBOX_FILE, OUTBOX_FILE + "-wal", OUTBOX_FILE + "-shm", LOCK_FILE, DELIVER_LOCK_FILE,
                     WRITE_TURN_FILE, RECORDED_FILE):
            try:
                path = self.folder / name
                if path.stat().st_mode & 0o077:
                    path.chmod(PRIVATE_FILE)
            except OSError:
                pass

    def _open_schema(self) -> None:
        db = self._db()
        if self.read_only:
            db.execute("SELECT count(*) FROM meta").fetchone()  # reads the header: a damaged file fails here
        else:
            db.executescript(_SCHEMA)  # idempotent; executescript commits on its own
            db.executescript(_JOBS_SCHEMA)
            if "chain" not in {str(r[1]) for r in db.execute("PRAGMA table_info(units)")}:
                db.execute("ALTER TABLE units ADD COLUMN chain TEXT")  # an outbox from before request chains
            with self._transaction() as tx:
                if tx.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() is None:
                    tx.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        # The pages are checked once at open: a file truncated or overwritten in the middle reads
        # fine until the damaged page is reached, which would be mid-delivery.
        problems = [str(row[0]) for row in db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise OutboxDamaged(self.path, "SQLite's check finds " + "; ".join(problems))
        if not self.read_only and not self._recorded_marked and db.execute("SELECT 1 FROM events LIMIT 1").fetchone():
            self._mark_recorded()  # an outbox from before the sidecar existed

    def _mark_recorded(self) -> None:
        marker = self.folder / RECORDED_FILE
        with open_private(marker) as out:
            out.write(f"{OUTBOX_FILE} in this folder has recorded events (since "
                      f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}). While this file is here, a "
                      f"missing or empty {OUTBOX_FILE} is reported as damage rather than started afresh.\n")
        self._recorded_marked = True

    def _take_lock(self, name: str, holder: str) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
            return
        handle = os.fdopen(os.open(self.folder / name, os.O_RDWR | os.O_CREAT, PRIVATE_FILE), "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise OutboxLocked(f"{self.folder} is in use by another process that {holder}; it holds {name}") from None
        self._lock_handles.append(handle)

    def _release_locks(self) -> None:
        for handle in [*self._lock_handles, self._write_turn]:
            if handle is not None:
                handle.close()
        self._lock_handles = []
        self._write_turn = None

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            db.row_factory = sqlite3.Row
            self._local.db = db
            with self._guard:
                self._connections.append(db)
        return db

    def _connect(self) -> sqlite3.Connection:
        if not self.read_only:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self.synchronous}")
            db.execute("PRAGMA busy_timeout = 30000")
            return db
        uri = self.path.resolve().as_uri() + "?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout = 30000")
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
            return db
        except sqlite3.OperationalError:
            # A WAL database in a folder this process cannot write, with no -shm file to share (no
            # writer running): SQLite cannot open it read-only unless told nothing will change it.
            db.close()
            return sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None, check_same_thread=False)

    class _Tx:
        def __init__(self, db: sqlite3.Connection, lock: threading.Lock, turn: Any):
            self.db = db
            self.lock = lock
            self.turn = turn

        def __enter__(self) -> sqlite3.Connection:
            # Threads of this process take turns on a lock, and processes on a flock, not on SQLite's
            # busy handler, which polls with sleeps of up to 100 ms: a server's recording would wait
            # on the deliverer's marking.
            self.lock.acquire()
            try:
                if self.turn is not None:
                    import fcntl
                    fcntl.flock(self.turn.fileno(), fcntl.LOCK_EX)  # (blocks this thread only: the GIL is let go)
                try:
                    self.db.execute("BEGIN IMMEDIATE")
                except BaseException:
                    self._end_turn()
                    raise
            except BaseException:
                self.lock.release()
                raise
            return self.db

        def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
            try:
                self.db.execute("COMMIT" if kind is None else "ROLLBACK")
            finally:
                self._end_turn()
                self.lock.release()

        def _end_turn(self) -> None:
            if self.turn is not None:
                import fcntl
                fcntl.flock(self.turn.fileno(), fcntl.LOCK_UN)

    def _transaction(self) -> SQLiteOutbox._Tx:
        return SQLiteOutbox._Tx(self._db(), self._write_lock, self._write_turn)

    # -- writing ---------------------------------------------------------------------------------------
    def progress(self, source: str) -> int:
        row = self._db().execute("SELECT next_index FROM sources WHERE id = ?", (source,)).fetchone()
        return int(row[0]) if row else 0

    def add_events(self, source: str, first_index: int, events: Sequence[NewEvent], label: str = "") -> int:
        with self._transaction() as db:
            progress = self._add_events(db, source, first_index, events, label)
        if events and not self._recorded_marked:
            self._mark_recorded()
        return progress

    def append_events(self, source: str, events: Sequence[NewEvent], label: str = "",
                      dedupe_window: float | None = None) -> int:
        with self._transaction() as db:
            row = db.execute("SELECT next_index FROM sources WHERE id = ?", (source,)).fetchone()
            first = int(row[0]) if row else 0
            if dedupe_window is not None:
                self._mark_duplicates(db, source, first, events, dedupe_window)
            self._add_events(db, source, first, events, label)
        if events and not self._recorded_marked:
            self._mark_recorded()
        return first

    @staticmethod
    def _mark_duplicates(db: sqlite3.Connection, source: str, first: int, events: Sequence[NewEvent],
                         window: float) -> None:
        since = time.time() - window
        ids = list(dict.fromkeys(e.message_id for e in events if e.message_id is not None))
        seen: dict[str, int] = {}
        for chunk in in_chunks(ids):  # one query a chunk of messageIds, not one an event
            # (SQLite: with min(id), the bare column idx is the one of the row holding that minimum)
            seen.update((str(r[0]), int(r[1])) for r in db.execute(
                f"SELECT message_id, idx, min(id) FROM events WHERE source = ? AND message_id IN "
                f"({','.join('?' * len(chunk))}) AND created >= ? GROUP BY message_id", [source, *chunk, since]))
        skip_duplicates(events, first, seen, window)

    def _add_events(self, db: sqlite3.Connection, source: str, first_index: int, events: Sequence[NewEvent],
                    label: str) -> int:
        now = time.time()
        row = db.execute("SELECT next_index FROM sources WHERE id = ?", (source,)).fetchone()
        if row is None:
            db.execute("INSERT INTO sources (id, label, next_index, created) VALUES (?, ?, 0, ?)",
                       (source, label, now))
            done = 0
        else:
            done = int(row[0])
        if first_index > done:
            raise ValueError(f"source {source}: events {done}..{first_index - 1} were never recorded")
        # Ids are given here, so the events and their units go in with one statement each (not one
        # round trip per event); the transaction holds the write lock, so no one else takes them.
        last_id = int(db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])
        rows: list[tuple[Any, ...]] = []
        units: list[tuple[Any, ...]] = []
        for offset, event in enumerate(events):
            index = first_index + offset
            if index < done:
                continue
            status = event.status if event.units or event.status != "pending" else "skipped"
            last_id += 1
            rows.append((last_id, source, index, event.message_id, status, event.reason,
                         json.dumps(event.notes, ensure_ascii=False) if event.notes else None, event.raw, now,
                         None if status == "pending" else now))
            for unit in event.units:
                units.append((last_id, unit.position, unit.rule, unit.method, unit.url, unit.headers,
                              unit.body_kind, unit.body, unit.chain))
        if rows:
            db.executemany("INSERT INTO events (id, source, idx, message_id, status, reason, notes, raw, created, "
                           "finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if units:
            db.executemany(_INSERT_UNIT, units)
        progress = max(done, first_index + len(events))
        db.execute("UPDATE sources SET next_index = ? WHERE id = ?", (progress, source))
        return progress

    def pending_units(self, after_id: int, limit: int) -> list[StoredUnit]:
        rows = self._db().execute(
            f"SELECT {_UNIT_COLUMNS} FROM units WHERE status = 'pending' AND id > ? ORDER BY id LIMIT ?",
            (after_id, limit)).fetchall()
        return [StoredUnit(*row) for row in rows]

    def save_job(self, job: OpenJob) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)",
                       (job.job_id, job.batch, json.dumps(job.unit_ids), time.time()))

    def open_jobs(self) -> list[OpenJob]:
        rows = self._db().execute("SELECT job_id, batch, units FROM jobs ORDER BY created").fetchall()
        return [OpenJob(str(r[0]), str(r[1]), [int(i) for i in json.loads(r[2])]) for r in rows]

    def finish_job(self, job_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def units_with_ids(self, unit_ids: Sequence[int]) -> list[StoredUnit]:
        found: list[StoredUnit] = []
        for chunk in in_chunks(unit_ids):
            found += [StoredUnit(*row) for row in self._db().execute(
                f"SELECT {_UNIT_COLUMNS} FROM units WHERE status = 'pending' AND id IN ({','.join('?' * len(chunk))})",
                chunk)]
        return sorted(found, key=lambda u: u.id)

    def _finish(self, db: sqlite3.Connection, unit_ids: Sequence[int]) -> Finished:
        finished = Finished()
        now = time.time()
        for chunk in in_chunks(unit_ids):
            marks = ",".join("?" * len(chunk))
            event_ids = [r[0] for r in db.execute(
                f"SELECT DISTINCT e.id FROM events e JOIN units u ON u.event_id = e.id "
                f"WHERE u.id IN ({marks}) AND e.status = 'pending'", chunk)]
            if not event_ids:
                continue
            emarks = ",".join("?" * len(event_ids))
            db.execute(
                f"UPDATE events SET status = CASE "
                f"WHEN EXISTS (SELECT 1 FROM units u WHERE u.event_id = events.id AND u.status = 'pending') "
                f"THEN 'pending' "
                f"WHEN EXISTS (SELECT 1 FROM units u WHERE u.event_id = events.id AND u.status = 'dead') THEN 'dead' "
                f"ELSE 'delivered' END WHERE id IN ({emarks})", event_ids)
            db.execute(f"UPDATE events SET finished = ? WHERE id IN ({emarks}) AND status != 'pending'",
                       [now, *event_ids])
            if not self.keep_delivered_bodies:  # (the raw input is kept for a replay --remap only)
                db.execute(f"UPDATE events SET raw = NULL WHERE id IN ({emarks}) AND status = 'delivered'", event_ids)
            for status, count in db.execute(
                    f"SELECT status, count(*) FROM events WHERE id IN ({emarks}) GROUP BY status", event_ids):
                if status == "delivered":
                    finished.delivered += int(count)
                elif status == "dead":
                    finished.dead += int(count)
            if finished.delivered:
                finished.latencies += [float(r[0]) for r in db.execute(
                    f"SELECT finished - created FROM events WHERE id IN ({emarks}) AND status = 'delivered'",
                    event_ids)]
        return finished

    @staticmethod
    def _set_pending(db: sqlite3.Connection, unit_ids: Sequence[int], assignments: str, values: list[Any]) -> None:
        """`UPDATE units SET assignments` for those of the units still pending: one statement for
        IN_CHUNK units, not one a unit (a 1,000-unit bulk call's mark took 12% less CPU)."""
        for chunk in in_chunks(unit_ids):
            db.execute(f"UPDATE units SET {assignments} WHERE id IN ({','.join('?' * len(chunk))}) "
                       "AND status = 'pending'", [*values, *chunk])

    def _in_turns(self, unit_ids: Sequence[int], mark: Callable[[Sequence[int]], Finished]) -> Finished:
        """`mark` for all the units: at once, or, while another process records into the folder, in
        transactions of MARK_CHUNK units, letting it write between them (marking a 1,000-unit bulk
        call took 7-38 ms on a busy machine, which every request of a server waited out)."""
        if self._write_turn is None or len(unit_ids) <= MARK_CHUNK:
            return mark(unit_ids)
        finished = Finished()
        for start in range(0, len(unit_ids), MARK_CHUNK):
            if start:
                os.sched_yield()  # (the recorder, woken by the unlock, takes the turn now if it waits)
            part = mark(unit_ids[start:start + MARK_CHUNK])
            finished.delivered += part.delivered
            finished.dead += part.dead
            finished.latencies += part.latencies
        return finished

    def mark_delivered(self, unit_ids: Sequence[int], attempts: int = 1) -> Finished:
        if not unit_ids:
            return Finished()
        now = time.time()
        body = "body" if self.keep_delivered_bodies else "NULL"  # a delivered body is not needed again

        def mark(ids: Sequence[int]) -> Finished:
            with self._transaction() as db:
                self._set_pending(db, ids, "status = 'delivered', attempts = attempts + ?, finished = ?, "
                                           f"body = {body}", [attempts, now])
                return self._finish(db, ids)
        return self._in_turns(unit_ids, mark)

    def mark_dead(self, unit_ids: Sequence[int], letter: DeadLetter) -> Finished:
        if not unit_ids:
            return Finished()
        now = time.time()
        text = letter.to_json()

        def mark(ids: Sequence[int]) -> Finished:
            with self._transaction() as db:
                self._set_pending(db, ids, "status = 'dead', attempts = attempts + ?, response = ?, finished = ?",
                                  [letter.attempts, text, now])
                return self._finish(db, ids)
        return self._in_turns(unit_ids, mark)

    def mark_step(self, unit_id: int, attempts: int, next_units: Sequence[NewUnit],
                  note: str | None = None) -> tuple[Finished, list[StoredUnit]]:
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT event_id FROM units WHERE id = ? AND status = 'pending'", (unit_id,)).fetchone()
            if row is None:
                return Finished(), []  # marked already: its step ran
            event_id = int(row[0])
            body = "body" if self.keep_delivered_bodies else "NULL"
            db.execute(f"UPDATE units SET status = 'delivered', attempts = attempts + ?, finished = ?, body = {body} "
                       "WHERE id = ?", (attempts, now, unit_id))
            after = int(db.execute("SELECT coalesce(max(position), -1) FROM units WHERE event_id = ?",
                                   (event_id,)).fetchone()[0]) + 1
            new_ids = [int(db.execute(_INSERT_UNIT, (event_id, after + i, u.rule, u.method, u.url, u.headers,
                                                     u.body_kind, u.body, u.chain)).lastrowid or 0)
                       for i, u in enumerate(next_units)]
            if note is not None:
                notes = db.execute("SELECT notes FROM events WHERE id = ?", (event_id,)).fetchone()[0]
                db.execute("UPDATE events SET reason = ?, notes = ? WHERE id = ?",
                           (note, json.dumps([*(json.loads(notes) if notes else []), note], ensure_ascii=False),
                            event_id))
            finished = self._finish(db, [unit_id])
            stored = [StoredUnit(*r) for r in db.execute(
                f"SELECT {_UNIT_COLUMNS} FROM units WHERE id IN ({','.join('?' * len(new_ids))}) ORDER BY id",
                new_ids)] if new_ids else []
            return finished, stored

    def requeue_dead(self, unit_ids: Sequence[int] | None = None) -> int:
        with self._transaction() as db:
            if unit_ids is None:
                ids = [r[0] for r in db.execute("SELECT id FROM units WHERE status = 'dead'")]
            else:
                ids = list(unit_ids)
            count = 0
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                # events first, while the units still say which of them are dead: a delivered unit
                # named here must not put its (finished) event back to pending with nothing to send
                db.execute(f"UPDATE events SET status = 'pending', finished = NULL WHERE id IN "
                           f"(SELECT event_id FROM units WHERE status = 'dead' AND id IN ({marks}))", chunk)
                count += db.execute(f"UPDATE units SET status = 'pending', attempts = 0, finished = NULL "
                                    f"WHERE status = 'dead' AND id IN ({marks})", chunk).rowcount
            return count

    def events_to_remap(self, statuses: Sequence[str]) -> list[StoredEvent]:
        marks = ",".join("?" * len(statuses))
        rows = self._db().execute(f"SELECT id, source, idx, status, raw FROM events WHERE status IN ({marks}) "
                                  "ORDER BY id", list(statuses))
        return [StoredEvent(*row) for row in rows]

    def remap_event(self, event_id: int, event: NewEvent) -> str:
        with self._transaction() as db:
            delivered = {(position, rule) for position, rule in db.execute(
                "SELECT position, rule FROM units WHERE event_id = ? AND status = 'delivered'", (event_id,))}
            db.execute("DELETE FROM units WHERE event_id = ? AND status != 'delivered'", (event_id,))
            fresh = [u for u in event.units if (u.position, u.rule) not in delivered]
            db.executemany(_INSERT_UNIT, [(event_id, u.position, u.rule, u.method, u.url, u.headers, u.body_kind,
                                           u.body, u.chain) for u in fresh])
            status = event.status if event.status != "pending" else "pending" if fresh else "delivered"
            db.execute("UPDATE events SET status = ?, reason = ?, notes = ?, raw = ?, finished = ? WHERE id = ?",
                       (status, event.reason, json.dumps(event.notes, ensure_ascii=False) if event.notes else None,
                        None if status in ("delivered", "skipped") else event.raw,
                        None if status == "pending" else time.time(), event_id))
            return status

    def dead_reasons(self, source: str | None = None, limit: int = 3) -> list[tuple[str, int]]:
        where, args = ("AND e.source = ?", (source,)) if source is not None else ("", ())
        rows = self._db().execute(
            "SELECT json_extract(u.response, '$.status') AS answer, json_extract(u.response, '$.error') AS reason, "
            f"count(*) FROM units u JOIN events e ON e.id = u.event_id WHERE u.status = 'dead' {where} "
            "GROUP BY answer, reason ORDER BY count(*) DESC, min(u.id) LIMIT ?", (*args, limit))
        return [(f"HTTP {answer}: {reason}" if answer is not None else str(reason), int(count))
                for answer, reason, count in rows]

    def get_meta(self, key: str) -> str | None:
        row = self._db().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- reading ---------------------------------------------------------------------------------------
    def counts(self, source: str | None = None) -> Counts:
        db = self._db()
        where, args = ("WHERE source = ?", (source,)) if source is not None else ("", ())
        events = {s: 0 for s in EVENT_STATUSES}
        for status, count in db.execute(f"SELECT status, count(*) FROM events {where} GROUP BY status", args):
            events[str(status)] = int(count)
        units = {s: 0 for s in UNIT_STATUSES}
        join = "JOIN events e ON e.id = u.event_id WHERE e.source = ?" if source is not None else ""
        for status, count in db.execute(f"SELECT u.status, count(*) FROM units u {join} GROUP BY u.status", args):
            units[str(status)] = int(count)
        return Counts(events, units)

    @property
    def where(self) -> str:
        return str(self.path)

    def sources(self) -> list[dict[str, Any]]:
        rows = self._db().execute("SELECT id, label, next_index, created FROM sources ORDER BY created")
        return [dict(r) for r in rows]

    def dead_letters(self, source: str | None = None) -> Iterator[dict[str, Any]]:
        where, args = ("AND e.source = ?", (source,)) if source is not None else ("", ())
        rows = self._db().execute(
            "SELECT u.id AS unit, e.source, e.idx AS event, e.message_id AS messageId, u.rule, u.method, u.url, "
            "u.headers, u.body_kind, u.body, u.attempts, u.response, u.finished "
            f"FROM units u JOIN events e ON e.id = u.event_id WHERE u.status = 'dead' {where} ORDER BY u.id", args)
        for row in rows:
            record = dict(row)
            record["headers"] = json.loads(record["headers"])
            record["body"] = json.loads(record["body"]) if record["body"] is not None else None
            record["response"] = json.loads(record["response"]) if record["response"] else None
            yield record

    def events(self, status: str, source: str | None = None) -> Iterator[dict[str, Any]]:
        where, args = ("AND source = ?", (status, source)) if source is not None else ("", (status,))
        rows = self._db().execute(
            "SELECT id, source, idx AS event, message_id AS messageId, status, reason, notes, raw, created, finished "
            f"FROM events WHERE status = ? {where} ORDER BY id", args)
        for row in rows:
            record = dict(row)
            record["notes"] = json.loads(record["notes"]) if record["notes"] else []
            record["raw"] = raw_event(record["raw"])
            yield record

    def close(self) -> None:
        with self._guard:
            for db in self._connections:
                try:
                    db.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()
        self._release_locks()

    def __enter__(self) -> SQLiteOutbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


