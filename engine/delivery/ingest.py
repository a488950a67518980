"""Recording events in the outbox: map each one, then store it with its requests, before any is sent.

`Ingester.record_batch` maps a list of events and records them atomically; `record_groups` does the
same for the requests a server gathered, in one transaction (what `serve` does before answering
them); `Ingester.ingest` streams a whole input through it in chunks and
resumes where a previous run stopped (what `send` does). Rejections and skips are recorded with
their reasons; requests are sealed (no secret reaches the store) and their URLs kept relative to the
base URL, so a later run may send them elsewhere (`--base-url`).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from ..evaluate import Mapper, MapResult, Request
from ..events import InputError, read_events
from ..functions import EvalError
from ..mapping_set import MappingSet
from ..strict_json import NotStrictJSON, compact_text, printable, strict_dumps, unsendable
from .chains import ChainError, NextStep
from .outbox import NewEvent, NewUnit, Outbox
from .sealing import Sealer

SOURCE_PREFIX_BYTES = 64 * 1024


def source_id(prefix: bytes | str, given: str | None = None) -> str:
    """An input's identity: its first 64 KiB (so a restarted run finds its progress), or a given name."""
    if given:
        return "named:" + given
    data = prefix.encode("utf-8") if isinstance(prefix, str) else prefix
    return "sha256:" + hashlib.sha256(data).hexdigest()[:32]


class PrefixedStream:
    """A binary stream whose first part was already read (to name the source) and is replayed first."""

    def __init__(self, head: bytes, rest: IO[bytes]):
        self._head = io.BytesIO(head)
        self._rest = rest
        self._head_done = not head

    def readline(self) -> bytes:
        if not self._head_done:
            line = self._head.readline()
            if line.endswith(b"\n"):
                return line
            self._head_done = True
            return line + self._rest.readline()
        return self._rest.readline()

    def read(self) -> bytes:
        head = b"" if self._head_done else self._head.read()
        self._head_done = True
        return head + self._rest.read()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def open_source(stream: IO[bytes], given_id: str | None = None) -> tuple[str, IO[bytes]]:
    """Read an input's first 64 KiB to name it; returns (source id, a stream that starts over)."""
    head = stream.read(SOURCE_PREFIX_BYTES)
    return source_id(head, given_id), cast(IO[bytes], PrefixedStream(head, stream))


@dataclass
class IngestStats:
    skipped_already_recorded: int = 0
    recorded: int = 0
    rejected: int = 0
    skipped: int = 0
    units: int = 0


class Ingester:
    """Maps events with the real settings and records them, sealed, in an outbox."""

    def __init__(self, mapping_set: MappingSet, settings: dict[str, Any], outbox: Outbox, sealer: Sealer):
        self.mapper = Mapper(mapping_set, settings)
        self.outbox = outbox
        self.sealer = sealer
        self.base_url = self.mapper.base_url
        # A rule's headers are mostly the same for every request: their sealed text is made once
        # (bounded: headers that vary per event, e.g. an idempotency key, are not kept).
        self._headers_text: dict[tuple[tuple[str, str], ...], str] = {}

    def to_record(self, event: Any, index: int) -> tuple[NewEvent, MapResult | None]:
        if isinstance(event, InputError):
            return NewEvent(message_id=event.message_id, status="rejected", reason=self.sealer.mask(event.reason),
                            raw=self.sealer.mask(event.raw) if event.raw is not None else None), None
        result = self.mapper.map(event, index)
        try:
            units = self._sealed(result.requests)
        except NotStrictJSON as exc:
            units = []
            result.reject(str(exc))
        message_id = result.message_id if isinstance(result.message_id, str) else None
        # Kept until the event is delivered, so that a dead or rejected event can be mapped again.
        # (msgspec's text: a float may read 1e16 for 1e+16, the same double to every reader of it)
        raw = self.sealer.mask(compact_text(event))
        # (reasons and warnings may quote a rule file's constant: stored as text SQLite can hold)
        notes = [printable(f"item {r.item} ({r.rule}) rejected: {r.reason}") for r in result.item_rejections]
        notes += [printable(f"warning: {w}") for w in result.warnings]
        if result.rejection is not None:
            return NewEvent(message_id, "rejected", reason=self.sealer.mask(printable(result.rejection)), notes=notes,
                            raw=raw), result
        if not result.requests:
            reason = result.skipped or ("every item was rejected" if result.item_rejections else "no request")
            status = "rejected" if result.item_rejections else "skipped"
            return NewEvent(message_id, status, reason=printable(reason), notes=notes,
                            raw=raw if status == "rejected" else None), result
        return NewEvent(message_id, "pending", notes=notes, raw=raw, units=units), result

    def remap(self, raw: str | None, index: int) -> NewEvent:
        """An event recorded earlier, mapped again from its raw input with the current mapping."""
        if raw is None:
            return NewEvent(None, "rejected", reason="its input was not kept (recorded by an older version, "
                                                     "or already delivered): cannot map it again")
        event = next(iter(read_events(io.BytesIO(raw.encode("utf-8")))), None)
        return self.to_record(event, index)[0]

    def _sealed(self, requests: list[Request]) -> list[NewUnit]:
        """Requests as the outbox stores them (sealed; strict JSON, or NotStrictJSON)."""
        units = []
        seal = self.sealer.seal
        base = self.base_url
        headers_text = self._headers_text
        for position, request in enumerate(requests):
            url = request.url[len(base):] if request.url.startswith(base + "/") else request.url
            try:
                body = None if request.body_kind is None else seal(strict_dumps(request.body, compact=True))
                key = tuple(request.headers.items())
                headers = headers_text.get(key)
                if headers is None:
                    headers = seal(strict_dumps(request.headers))
                    if len(headers_text) < 256:
                        headers_text[key] = headers
            except NotStrictJSON as exc:
                raise NotStrictJSON(unsendable(request.rule, exc)) from None
            # a chain's state holds the event: masked as the stored raw event is
            chain = None if request.chain is None else self.sealer.mask(strict_dumps(request.chain, compact=True))
            units.append(NewUnit(position, request.rule, request.method, seal(url), headers, request.body_kind, body,
                                 chain))
        return units

    def next_step(self, chain: str, answer: Any) -> NextStep:
        """A request chain's next step (chains.ChainRunner), mapped with this Ingester's settings."""
        try:
            state = json.loads(chain)
            requests, skipped, following = self.mapper.next_step(state, answer)
            for request in requests:
                request.chain = following
            return NextStep(self._sealed(requests), skipped)
        except (EvalError, NotStrictJSON, ValueError, AttributeError) as exc:
            raise ChainError(self.sealer.mask(str(exc))) from None

    def record_batch(self, source: str, events: list[Any], label: str = "",
                     dedupe_window: float | None = None) -> list[tuple[NewEvent, MapResult | None]]:
        """Map and record events at the end of `source`, atomically (all or none).

        Safe to call from several threads at once: the end is found in the recording transaction
        (the index given to the mapper is only an estimate then; nothing stored depends on it).
        With `dedupe_window`, a messageId the source recorded within that many seconds is recorded
        as a skipped duplicate (`Outbox.append_events`); the returned records say so."""
        start = self.outbox.progress(source)
        records = [self.to_record(event, start + i) for i, event in enumerate(events)]
        self.outbox.append_events(source, [r for r, _ in records], label, dedupe_window)
        return records

    def record_groups(self, source: str, groups: list[list[Any]], label: str = "",
                      dedupe_window: float | None = None) -> list[list[tuple[NewEvent, MapResult | None]] | Exception]:
        """record_batch for several groups of events (a server's concurrent requests) in ONE outbox
        transaction: one commit for all of them. A group whose mapping raised gets its exception in
        its place and records nothing; the others are recorded together, all or none (a failed
        transaction raises for all)."""
        start = self.outbox.progress(source)
        outcomes: list[list[tuple[NewEvent, MapResult | None]] | Exception] = []
        for events in groups:
            try:
                outcomes.append([self.to_record(event, start + i) for i, event in enumerate(events)])
            except Exception as exc:  # noqa: BLE001 - that request fails alone
                outcomes.append(exc)
            else:
                start += len(events)
        records = [record for outcome in outcomes if isinstance(outcome, list) for record, _ in outcome]
        if records:
            self.outbox.append_events(source, records, label, dedupe_window)
        return outcomes

    def ingest(self, events: Iterable[Any], source: str, label: str = "", chunk: int = 500,
               on_chunk: Callable[[IngestStats], None] | None = None,
               on_result: Callable[[int, Any, MapResult | None, NewEvent], None] | None = None,
               stop: Callable[[], bool] | None = None) -> IngestStats:
        """Record every event of an input not yet recorded (a restart skips the recorded ones)."""
        stats = IngestStats()
        done = self.outbox.progress(source)
        pending: list[NewEvent] = []
        first = done
        index = -1
        for index, event in enumerate(events):
            if index < done:
                stats.skipped_already_recorded += 1
                continue
            record, result = self.to_record(event, index)
            if on_result is not None:
                on_result(index, event, result, record)
            pending.append(record)
            stats.recorded += 1
            stats.units += len(record.units)
            stats.rejected += record.status == "rejected"
            stats.skipped += record.status == "skipped"
            if len(pending) >= chunk:
                self.outbox.add_events(source, first, pending, label)
                first += len(pending)
                pending = []
                if on_chunk is not None:
                    on_chunk(stats)
                if stop is not None and stop():
                    return stats
        if pending or index < 0:
            self.outbox.add_events(source, first, pending, label)
        if on_chunk is not None:
            on_chunk(stats)
        return stats
