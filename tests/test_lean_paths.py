"""The lean paths keep the careful paths' answers: JSON read by msgspec is rejected with the same
reason as by the standard library, JSON written by msgspec is the same text (or the same refusal),
concurrent requests are recorded in one transaction yet each gets its own outcome, and chunks of
events recorded with one statement keep their units with their events."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine.delivery.outbox import NewEvent, NewUnit
from engine.delivery.sqlite_outbox import OUTBOX_FILE, SQLiteOutbox
from engine.events import NOT_QUICK, InputError, quick_decode, read_events
from engine.serve.commits import CommitGroup
from engine.strict_json import NotStrictJSON, json_line, strict_bytes, strict_dumps

GOOD = b'{"type":"track","event":"E","userId":"u"}'
PROPERTY = b'{"type":"track","event":"E","userId":"u","properties":{"x":%s}}'

# A line, and the reason it is rejected for ({n}: its line number), or None when it is read.
READ_TABLE: list[tuple[str, bytes, str | None]] = [
    ("NaN", PROPERTY % b"NaN", "input line {n}: properties.x: NaN is not a number JSON allows"),
    ("-Infinity", PROPERTY % b"-Infinity", "input line {n}: properties.x: -Infinity is not a number JSON allows"),
    ("beyond a double", PROPERTY % b"1e400", "input line {n}: properties.x: 1e400 is beyond a double's range"),
    ("66 digits", PROPERTY % (b"9" * 66), "input line {n}: properties.x: a number of 66 digits; the limit is 64"),
    ("65 digits", PROPERTY % (b"9" * 65), "input line {n}: properties.x: a number of 65 digits; the limit is 64"),
    ("lone surrogate", PROPERTY % b'"\\ud800"',
     "input line {n}: properties.x: the string holds a lone surrogate (\\ud800), which is not Unicode text"),
    ("lone low surrogate in a key", b'{"type":"track","event":"E","userId":"u","properties":{"\\udc00":1}}',
     "input line {n}: properties: a key holds a lone surrogate (\\udc00), which is not Unicode text"),
    ("two high surrogates", PROPERTY % b'"\\ud800\\ud800"',
     "input line {n}: properties.x: the string holds a lone surrogate (\\ud800), which is not Unicode text"),
    ("not UTF-8", PROPERTY % b'"\xff"', "input line {n}: not UTF-8 at byte 61 of the line"),
    ("too deep", PROPERTY % (b"[" * 201 + b"]" * 201),
     "input line {n}: properties.x[0][0]… (200 levels down): nested deeper than 200 levels (the limit)"),
    ("trailing comma", b'{"type":"track","event":"E","userId":"u",}',
     "input line {n}: not JSON: Expecting property name enclosed in double quotes, column 42"),
    ("control character", b'{"type":"track","event":"E","userId":"u\tv"}',
     "input line {n}: not JSON: Invalid control character at, column 40"),
    ("two values", b'{"type":"track"} {"type":"track"}', "input line {n}: not JSON: Extra data, column 18"),
    ("a leading zero", PROPERTY % b"01", "input line {n}: not JSON: Expecting ',' delimiter, column 61"),
    ("64 digits", PROPERTY % (b"9" * 64), None),
    ("a surrogate pair", PROPERTY % b'"\\ud83d\\ude00"', None),
    ("200 levels", PROPERTY % (b"[" * 198 + b"]" * 198), None),
    ("NUL escaped", PROPERTY % b'"\\u0000"', None),
    ("1e16", PROPERTY % b"1e16", None),
]


def _read(lines: list[bytes]) -> list[Any]:
    return list(read_events(io.BytesIO(b"\n".join(lines) + b"\n")))


@pytest.mark.parametrize("line, reason", [(line, reason) for _, line, reason in READ_TABLE],
                         ids=[name for name, _, _ in READ_TABLE])
def test_a_line_read_fast_is_read_as_the_careful_path_reads_it(line: bytes, reason: str | None) -> None:
    # Lines 1 and 2 are read the careful way (they decide the format); later lines the fast way.
    for position in (0, 4):
        lines = [GOOD] * 6
        lines[position] = line
        events = _read(lines)
        assert len(events) == 6
        assert all(event == json.loads(GOOD) for i, event in enumerate(events) if i != position)
        got = events[position]
        if reason is None:
            assert got == json.loads(line.decode("utf-8"))
            assert type(got["properties"]["x"]) is type(json.loads(line.decode("utf-8"))["properties"]["x"])
        else:
            assert isinstance(got, InputError)
            assert got.reason == reason.format(n=position + 1)


def test_big_integers_stay_exact() -> None:
    events = _read([GOOD, GOOD, PROPERTY % (b"1" + b"0" * 40), PROPERTY % b"-12345678901234567890123"])
    assert events[2]["properties"]["x"] == 10 ** 40
    assert events[3]["properties"]["x"] == -12345678901234567890123


def test_a_wide_batch_is_decoded_fast_and_a_deep_one_still_goes_the_careful_way() -> None:
    # 150 messages hold 300 brackets, more than MAX_DEPTH: the depth is measured, not guessed.
    wide = b'{"batch":[' + b",".join([GOOD] * 150) + b"]}"
    assert quick_decode(wide) == json.loads(wide)
    deep = b'{"batch":[' + b",".join([GOOD] * 150 + [PROPERTY % (b"[" * 197 + b"]" * 197)]) + b"]}"
    assert quick_decode(deep) is NOT_QUICK  # 201 levels from the envelope down
    shallower = b'{"batch":[' + b",".join([GOOD] * 150 + [PROPERTY % (b"[" * 196 + b"]" * 196)]) + b"]}"
    assert quick_decode(shallower) == json.loads(shallower)
    events = _read([GOOD, GOOD, wide, deep])
    assert events[2:152] == [json.loads(GOOD)] * 150
    assert isinstance(events[152], InputError)
    assert events[152].reason == ("input line 4: batch[150].properties.x… (200 levels down): "
                                  "nested deeper than 200 levels (the limit)")


@pytest.mark.parametrize("line", [
    {"event": 3, "messageId": "m-é", "reason": 'rule \'r\' said "no"\n\t\x01'},
    {"event": 4, "skipped": None, "flag": True, "big": 10 ** 30},
    {"event": 5, "reason": "a lone \ud800 surrogate"},
    {"event": 6, "item": 1.5e16, "nested": {"k": [1, None]}},
    {"event": 7, "nan": float("nan")},
], ids=["text", "scalars", "lone surrogate", "float and nesting", "NaN"])
def test_a_report_line_is_the_standard_librarys(line: dict[str, Any]) -> None:
    expected = json.dumps(line, ensure_ascii=False)
    try:
        expected.encode("utf-8")
    except UnicodeEncodeError:
        expected = json.dumps(line)
    assert json_line(line) == expected


# A value, and its text as strict_dumps writes it (the standard library's json.dumps with
# ensure_ascii=False), or the NotStrictJSON message.
WRITE_TABLE: list[tuple[str, Any, str]] = [
    ("plain", {"a": [1, "é", True, None], "b": {"c": 1.5}}, '{"a": [1, "é", true, null], "b": {"c": 1.5}}'),
    ("a big integer", {"k": 10 ** 40}, '{"k": 10000000000000000000000000000000000000000}'),
    ("quotes and escapes", {"s": 'x, y: "q"\n\t\\'}, '{"s": "x, y: \\"q\\"\\n\\t\\\\"}'),
    ("a control character", {"s": "\x01"}, '{"s": "\\u0001"}'),
    ("an integer key", {1: 2}, '{"1": 2}'),
    ("a tuple", {"t": (1, 2)}, '{"t": [1, 2]}'),
    ("NaN", {"x": float("nan")}, "it holds NaN or Infinity, which JSON does not allow"),
    ("Infinity", [float("inf")], "it holds NaN or Infinity, which JSON does not allow"),
    ("a lone surrogate", {"s": "a\ud800"}, "it holds a string that is not Unicode text (\\ud800)"),
]


@pytest.mark.parametrize("value, expected", [(value, text) for _, value, text in WRITE_TABLE],
                         ids=[name for name, _, _ in WRITE_TABLE])
def test_strict_text_is_the_standard_librarys(value: Any, expected: str) -> None:
    try:
        text = strict_dumps(value)
    except NotStrictJSON as exc:
        assert str(exc) == expected
        with pytest.raises(NotStrictJSON, match="^" + expected.replace("(", r"\(").replace(")", r"\)")
                           .replace("\\u", r"\\u") + "$"):
            strict_bytes(value, compact=True)
        return
    assert text == expected
    assert text == json.dumps(value, ensure_ascii=False, allow_nan=False)
    assert strict_bytes(value, compact=True).decode("utf-8") == json.dumps(value, ensure_ascii=False,
                                                                            separators=(",", ":"))


# -- group commit ------------------------------------------------------------------------------------------
def test_concurrent_requests_share_one_write_and_each_gets_its_own_outcome() -> None:
    writes: list[list[Any]] = []
    gate = threading.Event()

    def write(groups: list[Any]) -> list[Any]:
        writes.append(list(groups))
        if len(writes) == 1:
            gate.wait(5)  # the first write is slow: the next requests gather meanwhile
        return [ValueError(f"refused {g}") if g == "bad" else f"stored {g}" for g in groups]

    async def main() -> list[Any]:
        commits = CommitGroup(write)
        first = asyncio.create_task(commits.record("a"))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(commits.record(name)) for name in ("b", "bad", "c")]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert writes == [["a"], ["b", "bad", "c"]]
    assert outcomes[:2] == ["stored a", "stored b"] and outcomes[3] == "stored c"
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "refused bad"


def test_a_failed_transaction_refuses_every_request_in_it_and_the_next_ones_go_on() -> None:
    calls: list[list[Any]] = []

    def write(groups: list[Any]) -> list[Any]:
        calls.append(list(groups))
        if len(calls) == 1:
            time.sleep(0.05)
            raise OSError("disk full")
        return [f"stored {g}" for g in groups]

    async def main() -> tuple[list[Any], Any]:
        commits = CommitGroup(write)
        first = await asyncio.gather(commits.record("a"), commits.record("b"), return_exceptions=True)
        return first, await commits.record("c")

    first, later = asyncio.run(main())
    assert [str(e) for e in first] == ["disk full", "disk full"] and all(isinstance(e, OSError) for e in first)
    assert later == "stored c"
    assert calls == [["a", "b"], ["c"]]


def test_a_group_holds_at_most_max_group_requests() -> None:
    sizes: list[int] = []

    def write(groups: list[Any]) -> list[Any]:
        sizes.append(len(groups))
        time.sleep(0.01)
        return list(groups)

    async def main() -> list[Any]:
        commits = CommitGroup(write, max_group=3)
        return await asyncio.gather(*(commits.record(i) for i in range(8)))

    assert asyncio.run(main()) == list(range(8))
    assert sizes == [3, 3, 2]


# -- recording a chunk with one statement --------------------------------------------------------------
def _event(label: str, units: int) -> NewEvent:
    return NewEvent(label, "pending", units=[NewUnit(i, f"rule-{label}", "POST", f"/{label}/{i}", "{}", "json",
                                                     f'{{"n":"{label}-{i}"}}') for i in range(units)])


def test_units_stay_with_their_events_when_sources_interleave(tmp_path: Path) -> None:
    with SQLiteOutbox(tmp_path / "state") as outbox:
        outbox.add_events("one", 0, [_event("a", 2), NewEvent("s", "skipped", reason="no rule"), _event("b", 1)])
        outbox.append_events("two", [_event("c", 3)])
        outbox.add_events("one", 3, [_event("d", 1)])
        stored = outbox.pending_units(0, 100)
        db = sqlite3.connect(tmp_path / "state" / OUTBOX_FILE)  # the rows as the statements wrote them
        owner = dict(db.execute("SELECT id, message_id FROM events").fetchall())
        assert [(owner[u.event_id], u.url) for u in stored] == [
            ("a", "/a/0"), ("a", "/a/1"), ("b", "/b/0"), ("c", "/c/0"), ("c", "/c/1"), ("c", "/c/2"), ("d", "/d/0")]
        assert db.execute("SELECT source, idx, message_id, status FROM events ORDER BY id").fetchall() == [
            ("one", 0, "a", "pending"), ("one", 1, "s", "skipped"), ("one", 2, "b", "pending"),
            ("two", 0, "c", "pending"), ("one", 3, "d", "pending")]
        db.close()
        assert outbox.progress("one") == 4 and outbox.progress("two") == 1


def test_the_stored_input_is_msgspecs_text_and_maps_again_to_the_same_record(tmp_path: Path) -> None:
    from engine.delivery.ingest import Ingester
    from engine.delivery.sealing import Sealer
    from engine.mapping_set import load_mapping_set

    event = {"type": "track", "event": "Ordered", "userId": "u1", "messageId": "m1",
             "properties": {"big": 1e16, "small": 1e-7, "tenth": 0.1, "huge": 2 ** 70, "name": "Zoë ✓",
                            "key": "pk_secret", "nested": [{"x": -0.0}, None, True]}}
    outbox = SQLiteOutbox(tmp_path)
    try:
        ingester = Ingester(load_mapping_set("klaviyo"), {"privateKey": "pk_secret"}, outbox,
                            Sealer({"privateKey": "pk_secret"}, "0123abcd"))
        record, _ = ingester.to_record(event, 0)
        assert record.raw == ('{"type":"track","event":"Ordered","userId":"u1","messageId":"m1","properties":'
                              '{"big":1e16,"small":1e-7,"tenth":0.1,"huge":1180591620717411303424,"name":"Zoë ✓",'
                              '"key":"***","nested":[{"x":-0.0},null,true]}}')
        # The standard library reads the same values back (1e16 is 1e+16), and mapping it again
        # gives the record the event gave.
        assert json.loads(record.raw)["properties"]["big"] == 1e16
        assert ingester.remap(record.raw.replace("***", "pk_secret"), 0) == record
    finally:
        outbox.close()
