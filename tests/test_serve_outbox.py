"""What `serve` needs of the outbox: requests recorded from several threads at once, none lost."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.delivery.ingest import Ingester
from engine.delivery.outbox import NewEvent, NewUnit
from engine.delivery.sealing import Sealer
from engine.delivery.sqlite_outbox import SQLiteOutbox
from engine.mapping_set import load_mapping_set


def test_concurrent_record_batch_loses_nothing(tmp_path: Path) -> None:
    # Each HTTP request records its messages with one record_batch call, from a worker thread; the
    # end of the source must be found inside the transaction, or two requests would share indexes
    # and the second one's events would be taken for already recorded (and silently dropped).
    outbox = SQLiteOutbox(tmp_path)
    ingester = Ingester(load_mapping_set("klaviyo"), {"privateKey": "pk_x", "listId": "L"}, outbox,
                        Sealer({"privateKey": "pk_x"}, "abcd"))

    def client(number: int) -> None:
        for i in range(25):
            ingester.record_batch("serve", [
                {"type": "track", "event": "E", "userId": f"u{number}", "messageId": f"{number}-{i}-{j}",
                 "timestamp": "2026-11-01T12:00:00Z"} for j in range(2)])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert outbox.counts().total_events == 8 * 25 * 2
        assert outbox.progress("serve") == 8 * 25 * 2
        ids = [e["messageId"] for e in outbox.events("pending")]
        assert len(set(ids)) == 400
    finally:
        outbox.close()


DUPLICATE_OF = "duplicate: event {} of this source has the same messageId (duplicates are skipped for 60 s)"


def _rows(folder: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(folder / "outbox.sqlite3") as db:
        return [tuple(row) for row in db.execute(sql)]


def _event(message_id: str | None) -> NewEvent:
    return NewEvent(message_id, "pending", units=[NewUnit(0, "r", "POST", "/x", "{}", "json", "{}")])


# requests appended one after the other (each a list of messageIds) → (status, reason) of every event recorded
DEDUPE_CASES = {
    "a retried request": ([["a", "b"], ["a", "b"]],
                          [("pending", None), ("pending", None), ("skipped", DUPLICATE_OF.format(0)),
                           ("skipped", DUPLICATE_OF.format(1))]),
    "twice in one batch": ([["a", "a", "b"]], [("pending", None), ("skipped", DUPLICATE_OF.format(0)),
                                               ("pending", None)]),
    "a duplicate of a duplicate names the first": ([["a"], ["a"], ["a"]],
                                                   [("pending", None), ("skipped", DUPLICATE_OF.format(0)),
                                                    ("skipped", DUPLICATE_OF.format(0))]),
    "no messageId is never a duplicate": ([[None], [None]], [("pending", None), ("pending", None)]),
}


@pytest.mark.parametrize("case", DEDUPE_CASES)
def test_append_events_records_duplicates_as_skipped(tmp_path: Path, case: str) -> None:
    requests, expected = DEDUPE_CASES[case]
    with SQLiteOutbox(tmp_path) as outbox:
        for ids in requests:
            events = [_event(i) for i in ids]
            outbox.append_events("serve", events, dedupe_window=60)
            assert all((e.units == []) == (e.status == "skipped") for e in events)  # the caller sees what was kept
        assert _rows(tmp_path, "SELECT status, reason FROM events ORDER BY idx") == expected
        assert outbox.counts().units["pending"] == sum(status == "pending" for status, _ in expected)


def test_duplicates_are_per_source_within_the_window_and_only_when_asked(tmp_path: Path) -> None:
    with SQLiteOutbox(tmp_path) as outbox:
        outbox.append_events("serve", [_event("a")], dedupe_window=60)
        outbox.append_events("other", [_event("a")], dedupe_window=60)  # another source
        outbox.append_events("serve", [_event("a")])  # no window (send): every copy is kept
        with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
            db.execute("UPDATE events SET created = created - 61")  # out of the window now
        outbox.append_events("serve", [_event("a")], dedupe_window=60)
        outbox.append_events("serve", [_event("a")], dedupe_window=60)
        assert _rows(tmp_path, "SELECT source, idx, status FROM events ORDER BY id") == [
            ("serve", 0, "pending"), ("other", 0, "pending"), ("serve", 1, "pending"), ("serve", 2, "pending"),
            ("serve", 3, "skipped")]
