"""The durable outbox's contract: every event is recorded before anything is sent, and marked when accepted.

What is stored:

- an **event** per input event: its source and index in that source, its `messageId`, and its
  status — `pending` (requests not all answered yet), `delivered` (every request accepted),
  `rejected` (the mapping refused it; `reason` says why), `skipped` (no rule sends it; `reason` says
  why) or `dead` (some request was dead-lettered). The raw input event is kept until the event is
  delivered, so that a dead or rejected one can be mapped again (`outbox replay --remap`);
- a **unit** per request the mapping made for the event: method, URL (relative to the base URL),
  headers, body, and its status `pending`, `delivered` or `dead` (with the response that condemned
  it). Secret settings never reach the store: the sender seals them into placeholders first;
- a unit may carry a **chain**: the next step of a request chain (JSON text the worker's
  `ChainRunner` reads: which rule, which step, what it needs besides the answer). When such a unit
  is answered, `mark_step` marks it delivered and records the next step's requests for the same
  event in the same transaction, so a kill between two steps resumes at the next one and never
  loses or repeats a step (see chains.py);
- a **source** per input (a file, stdin, a server): how many of its events were recorded, so a
  restarted `send` skips those and goes on with the next.

The contract a store keeps (`Outbox`): `add_events` is atomic — a batch of events and its units are
all recorded, together with the source's progress, or none is; `mark_delivered`/`mark_dead` are
atomic per call. A unit is resent after a crash only if it was not yet marked, i.e. at most the
requests that were in flight. tests/test_outbox_contract.py holds every store to it.

The stores, one module each (`stores.open_outbox(state)` picks one from `--state`):

- `sqlite_outbox.SQLiteOutbox`: the embedded default, one file in a state folder, one process (it
  holds an exclusive lock on the folder);
- `postgres_outbox.PostgresOutbox`: a PostgreSQL database shared by any number of `serve` and
  `worker` processes; workers lease partitions of the pending units (`leases.py`), so each unit is
  handed to one worker at a time.
"""

from __future__ import annotations

import json
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..events import decode_json, event_problem

EVENT_STATUSES = ("pending", "delivered", "rejected", "skipped", "dead")
UNIT_STATUSES = ("pending", "delivered", "dead")
PRIVATE_FOLDER, PRIVATE_FILE = 0o700, 0o600


@dataclass
class NewUnit:
    """A request to record (url relative to the base URL when it starts with '/'; text already sealed)."""

    position: int
    rule: str
    method: str
    url: str
    headers: str  # JSON object text
    body_kind: str | None
    body: str | None  # JSON text
    chain: str | None = None  # JSON text: the chain's next step, run with this request's answer


# A shared store's partition for a request: partition_of(method, url, the request) -> its lease's name
# (DeliveryPlan.lane_of: its lane, or the part of a split lane its ordering key hashes to).
PartitionOf = Callable[[str, str, "NewUnit | None"], str]


@dataclass
class NewEvent:
    message_id: str | None
    status: str  # pending | rejected | skipped
    reason: str | None = None
    notes: list[str] = field(default_factory=list)  # item rejections and warnings
    raw: str | None = None  # the input event, kept until it is delivered (for replay --remap)
    units: list[NewUnit] = field(default_factory=list)


@dataclass
class StoredUnit:
    id: int
    event_id: int
    position: int
    rule: str
    method: str
    url: str
    headers: str
    body_kind: str | None
    body: str | None
    attempts: int
    chain: str | None = None


@dataclass
class DeadLetter:
    """Why a unit was given up: the response that condemned it (or the network error)."""

    status: int | None
    body: str | None
    error: str
    attempts: int

    def to_json(self) -> str:
        return json.dumps({"status": self.status, "body": self.body, "error": self.error, "attempts": self.attempts},
                          ensure_ascii=False)


@dataclass
class Counts:
    events: dict[str, int]
    units: dict[str, int]

    @property
    def total_events(self) -> int:
        return sum(self.events.values())


@dataclass
class Finished:
    """Events that reached a final status through one mark_* call."""

    delivered: int = 0
    dead: int = 0
    # seconds from recording to delivery of each event delivered by the call (for latency metrics)
    latencies: list[float] = field(default_factory=list)


class WorkQueue(Protocol):
    """What a DeliveryWorker reads and marks: a whole outbox, or one leased partition of a shared one."""

    def pending_units(self, after_id: int, limit: int) -> list[StoredUnit]: ...

    def mark_delivered(self, unit_ids: Sequence[int], attempts: int = 1) -> Finished: ...

    def mark_dead(self, unit_ids: Sequence[int], letter: DeadLetter) -> Finished: ...

    def mark_step(self, unit_id: int, attempts: int, next_units: Sequence[NewUnit],
                  note: str | None = None) -> tuple[Finished, list[StoredUnit]]: ...

    def save_job(self, job: OpenJob) -> None: ...

    def open_jobs(self) -> list[OpenJob]: ...

    def finish_job(self, job_id: str) -> None: ...

    def units_with_ids(self, unit_ids: Sequence[int]) -> list[StoredUnit]: ...


class Outbox(ABC):
    """The interface the ingester, the worker and the CLI use. See the module docstring."""

    @abstractmethod
    def progress(self, source: str) -> int:
        """How many events of `source` are recorded (the index of the next one)."""

    @abstractmethod
    def add_events(self, source: str, first_index: int, events: Sequence[NewEvent], label: str = "") -> int:
        """Record events first_index… of a source with their units, atomically; returns the new progress.

        Events below the source's progress are already recorded and are left out."""

    @abstractmethod
    def append_events(self, source: str, events: Sequence[NewEvent], label: str = "",
                      dedupe_window: float | None = None) -> int:
        """Record events at the end of a source, atomically; returns the index of the first.

        Unlike `add_events` with `progress()` read beforehand, the end is found inside the same
        transaction, so several threads (a server's requests) may append to one source at once.

        With `dedupe_window` (seconds), an event whose messageId the source recorded less than that
        long ago (or earlier in `events`) is recorded as `skipped`, with the earlier event's index
        as the reason and no request; its NewEvent is updated to say so."""

    @abstractmethod
    def pending_units(self, after_id: int, limit: int) -> list[StoredUnit]:
        """Pending units with id > after_id, in id (input) order."""

    @abstractmethod
    def mark_delivered(self, unit_ids: Sequence[int], attempts: int = 1) -> Finished:
        """Units accepted by the API."""

    @abstractmethod
    def mark_dead(self, unit_ids: Sequence[int], letter: DeadLetter) -> Finished:
        """Units given up: dead-lettered with the response that condemned them."""

    @abstractmethod
    def mark_step(self, unit_id: int, attempts: int, next_units: Sequence[NewUnit],
                  note: str | None = None) -> tuple[Finished, list[StoredUnit]]:
        """A chain's step answered: in ONE transaction, the unit is marked delivered and `next_units`
        (the next step's requests) are recorded for its event, positioned after its other requests
        and in the unit's partition; returns what finished and the new units as stored. `note` (why
        nothing follows, e.g. a look-up that found nothing) becomes the event's reason and a note.
        A unit already marked is left alone and nothing is recorded (a step runs once)."""

    @abstractmethod
    def counts(self, source: str | None = None) -> Counts:
        """Events and units by status (of one source, or all)."""

    @abstractmethod
    def dead_letters(self, source: str | None = None) -> Iterator[dict[str, Any]]:
        """Every dead unit with its event and response, in order."""

    @abstractmethod
    def events(self, status: str, source: str | None = None) -> Iterator[dict[str, Any]]:
        """Events with a status (e.g. rejected, with their reason), in order."""

    @abstractmethod
    def requeue_dead(self, unit_ids: Sequence[int] | None = None) -> int:
        """Dead units (all, or these) back to pending, for a replay; returns how many."""

    @abstractmethod
    def sources(self) -> list[dict[str, Any]]:
        """Each input recorded: id, label, next_index, created (in the order they were first seen)."""

    @property
    @abstractmethod
    def where(self) -> str:
        """Where the store is, for messages (a file, or a database URL without its password)."""

    @abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    def init_meta(self, key: str, value: str) -> str:
        """The key's value, set to `value` first if it has none (a shared store does both atomically:
        the first of several processes decides)."""
        found = self.get_meta(key)
        if found is None:
            self.set_meta(key, value)
            return value
        return found

    @abstractmethod
    def close(self) -> None: ...

    # Asynchronous jobs (a bulk call answered "accepted, job J"): kept until the job's outcome is
    # marked, so a restarted worker polls J again instead of sending its units a second time.
    def save_job(self, job: OpenJob) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not keep asynchronous jobs")

    def open_jobs(self) -> list[OpenJob]:
        return []

    def finish_job(self, job_id: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not keep asynchronous jobs")

    def units_with_ids(self, unit_ids: Sequence[int]) -> list[StoredUnit]:
        """The pending units among these ids, in id order."""
        raise NotImplementedError(f"{type(self).__name__} does not keep asynchronous jobs")

    # Mapping again (`outbox replay --remap`): the events to map again, and their new requests.
    def events_to_remap(self, statuses: Sequence[str]) -> list[StoredEvent]:
        raise NotImplementedError(f"{type(self).__name__} does not map events again")

    def remap_event(self, event_id: int, event: NewEvent) -> str:
        """Replace the event's undelivered requests by `event`'s (a request already delivered, same
        position and rule, is not sent again), and its status and reason; returns the new status."""
        raise NotImplementedError(f"{type(self).__name__} does not map events again")

    def dead_reasons(self, source: str | None = None, limit: int = 3) -> list[tuple[str, int]]:
        """The most common reasons requests were dead-lettered, with how many."""
        raise NotImplementedError(f"{type(self).__name__} does not count dead-letter reasons")


@dataclass
class StoredEvent:
    id: int
    source: str
    index: int
    status: str
    raw: str | None


@dataclass
class OpenJob:
    """A job the API accepted and whose outcome is not marked yet: its id, the batching that made
    it, and the units it carries."""

    job_id: str
    batch: str
    unit_ids: list[int]


class LeaseLost(Exception):
    """A shared store refused a mark: this worker no longer holds the lease of the unit's partition
    (another worker took it over and delivers it now). Nothing was marked."""


class OutboxError(Exception):
    """The outbox cannot be used; the message names the file and what to do."""


def open_private(path: str | os.PathLike[str]) -> Any:
    """A text file for writing (truncated) that only its owner may read: it may hold events."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    # The mode above applies only to a new file; narrow an existing regular one. Never a device or a
    # pipe (`--errors /dev/null`): run as root, that would take /dev/null from every other user.
    if stat.S_ISREG(os.fstat(descriptor).st_mode):
        try:
            os.fchmod(descriptor, PRIVATE_FILE)
        except OSError:
            pass  # not ours to change; we may still write it
    return os.fdopen(descriptor, "w", encoding="utf-8")


def skip_duplicates(events: Sequence[NewEvent], first: int, seen: dict[str, int], window: float) -> None:
    """Mark each event whose messageId was `seen` (messageId -> index: earlier in the store, or earlier in
    `events`, whose first index is `first`) as skipped, with the event it repeats; both stores use this."""
    for offset, event in enumerate(events):
        if event.message_id is None:
            continue
        earlier = seen.get(event.message_id)
        if earlier is None:
            seen[event.message_id] = first + offset
            continue
        event.status, event.units, event.raw = "skipped", [], None
        event.reason = (f"duplicate: event {earlier} of this source has the same messageId "
                        f"(duplicates are skipped for {window:g} s)")


def raw_event(raw: str | None) -> Any:
    """A stored input event as JSON, or as the text it is when it is not strict JSON (a line that was
    not JSON, not UTF-8, or held NaN: the reason it was rejected)."""
    if not raw:
        return None
    try:
        value, suspect = decode_json(raw)
    except json.JSONDecodeError:
        return raw
    return raw if suspect and event_problem(value) is not None else value
