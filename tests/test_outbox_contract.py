"""The outbox contract (engine/delivery/outbox.py), held to by every store: the same tests run on the
embedded SQLite store (a tmp folder) and on the PostgreSQL store (a schema of the test's own, from
SEGMENT_KLAVIYO_TEST_POSTGRES; skipped with the reason when it is unset or unreachable)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.delivery.outbox import DeadLetter, NewEvent, NewUnit, OpenJob, Outbox
from engine.delivery.stores import open_outbox


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outbox]:
    state = str(tmp_path / "state") if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    outbox = open_outbox(state)
    try:
        yield outbox
    finally:
        outbox.close()


def unit(position: int = 0, path: str = "/api/events", body: object = None, headers: str | None = "{}") -> NewUnit:
    return NewUnit(position, f"rule{position}", "POST", path, headers, "json",  # type: ignore[arg-type]
                   json.dumps(body if body is not None else {"n": position}))


def event(name: str, *units: NewUnit, raw: str | None = None) -> NewEvent:
    return NewEvent(name, "pending", raw=raw if raw is not None else json.dumps({"messageId": name}),
                    units=list(units))


def test_add_events_records_events_units_and_progress(store: Outbox) -> None:
    assert store.progress("a") == 0
    assert store.add_events("a", 0, [event("m0", unit(0), unit(1)), event("m1", unit(0)),
                                     NewEvent("m2", "rejected", reason="no userId")], label="a.ndjson") == 3
    assert store.progress("a") == 3
    counts = store.counts("a")
    assert counts.events == {"pending": 2, "delivered": 0, "rejected": 1, "skipped": 0, "dead": 0}
    assert counts.units == {"pending": 3, "delivered": 0, "dead": 0}
    units = store.pending_units(0, 10)
    assert [(u.position, u.rule, u.method, u.url, json.loads(u.body or "null"), u.attempts) for u in units] == [
        (0, "rule0", "POST", "/api/events", {"n": 0}, 0), (1, "rule1", "POST", "/api/events", {"n": 1}, 0),
        (0, "rule0", "POST", "/api/events", {"n": 0}, 0)]
    assert units[0].event_id == units[1].event_id != units[2].event_id
    assert [(s["id"], s["label"], s["next_index"]) for s in store.sources()] == [("a", "a.ndjson", 3)]


def test_add_events_skips_what_is_recorded_and_refuses_a_gap(store: Outbox) -> None:
    store.add_events("a", 0, [event("m0", unit()), event("m1", unit())])
    assert store.add_events("a", 1, [event("m1", unit()), event("m2", unit())]) == 3  # m1 is already there
    assert store.counts("a").events["pending"] == 3
    with pytest.raises(ValueError, match=r"source a: events 3\.\.4 were never recorded"):
        store.add_events("a", 5, [event("m5", unit())])
    assert store.progress("a") == 3 and store.counts().total_events == 3


def test_add_events_is_atomic(store: Outbox) -> None:
    store.add_events("a", 0, [event("m0", unit())])
    broken = event("m2", unit(headers=None))  # a unit the store cannot take (no headers): the batch fails
    with pytest.raises(Exception):  # noqa: B017 - each store's own integrity error
        store.add_events("a", 1, [event("m1", unit()), broken])
    assert store.progress("a") == 1
    assert store.counts("a").events["pending"] == 1 and store.counts().units["pending"] == 1


def test_an_event_without_requests_is_skipped(store: Outbox) -> None:
    store.add_events("a", 0, [NewEvent("m0", "pending", raw="{}")])
    assert store.counts().events["skipped"] == 1 and store.pending_units(0, 10) == []


def test_append_events_and_duplicates_within_the_window(store: Outbox) -> None:
    assert store.append_events("s", [event("x", unit()), event("y", unit())]) == 0
    batch = [event("x", unit()), event("z", unit()), event("z", unit())]
    assert store.append_events("s", batch, dedupe_window=60) == 2
    assert [(e.status, e.reason) for e in batch] == [
        ("skipped", "duplicate: event 0 of this source has the same messageId (duplicates are skipped for 60 s)"),
        ("pending", None),
        ("skipped", "duplicate: event 3 of this source has the same messageId (duplicates are skipped for 60 s)")]
    assert store.progress("s") == 5
    assert store.counts("s").events == {"pending": 3, "delivered": 0, "rejected": 0, "skipped": 2, "dead": 0}
    assert [(e["event"], e["reason"][:20]) for e in store.events("skipped", "s")] == [
        (2, "duplicate: event 0 o"), (4, "duplicate: event 3 o")]


def test_pending_units_in_order_after_a_cursor(store: Outbox) -> None:
    store.add_events("a", 0, [event(f"m{i}", unit(0, body={"i": i})) for i in range(5)])
    first = store.pending_units(0, 2)
    assert [json.loads(u.body or "") for u in first] == [{"i": 0}, {"i": 1}]
    rest = store.pending_units(first[-1].id, 10)
    assert [json.loads(u.body or "") for u in rest] == [{"i": 2}, {"i": 3}, {"i": 4}]


def test_marks_finish_events_and_report_what_finished(store: Outbox) -> None:
    store.add_events("a", 0, [event("m0", unit(0), unit(1)), event("m1", unit(0))])
    u0, u1, u2 = store.pending_units(0, 10)
    finished = store.mark_delivered([u0.id], attempts=2)
    assert (finished.delivered, finished.dead, finished.latencies) == (0, 0, [])  # m0 still waits for u1
    finished = store.mark_delivered([u1.id, u2.id])
    assert (finished.delivered, finished.dead, len(finished.latencies)) == (2, 0, 2)
    assert all(0 <= s < 60 for s in finished.latencies)
    assert store.mark_delivered([u1.id]).delivered == 0  # marked once only
    assert store.counts().events["delivered"] == 2 and store.counts().units["delivered"] == 3
    assert store.pending_units(0, 10) == []
    assert list(store.events("delivered"))[0]["raw"] is None  # the input is dropped once delivered


def test_dead_letters_keep_the_response_and_reasons(store: Outbox) -> None:
    store.add_events("a", 0, [event("m0", unit(0), unit(1)), event("m1", unit(0)), event("m2", unit(0))])
    u0, u1, u2, u3 = store.pending_units(0, 10)
    store.mark_delivered([u0.id])
    finished = store.mark_dead([u1.id, u2.id], DeadLetter(400, '{"errors": []}', "the API refused this item", 3))
    assert (finished.delivered, finished.dead) == (0, 2)
    store.mark_dead([u3.id], DeadLetter(None, None, "gave up after 5 tries: ConnectError", 5))
    letters = list(store.dead_letters())
    assert [(d["unit"], d["source"], d["event"], d["messageId"], d["rule"], d["body"], d["attempts"], d["response"])
            for d in letters] == [
        (u1.id, "a", 0, "m0", "rule1", {"n": 1}, 3,
         {"status": 400, "body": '{"errors": []}', "error": "the API refused this item", "attempts": 3}),
        (u2.id, "a", 1, "m1", "rule0", {"n": 0}, 3,
         {"status": 400, "body": '{"errors": []}', "error": "the API refused this item", "attempts": 3}),
        (u3.id, "a", 2, "m2", "rule0", {"n": 0}, 5,
         {"status": None, "body": None, "error": "gave up after 5 tries: ConnectError", "attempts": 5})]
    assert letters[0]["headers"] == {}
    assert store.dead_reasons() == [("HTTP 400: the API refused this item", 2),
                                    ("gave up after 5 tries: ConnectError", 1)]
    assert store.counts().events == {"pending": 0, "delivered": 0, "rejected": 0, "skipped": 0, "dead": 3}
    assert [e["raw"] for e in store.events("dead")] == [{"messageId": "m0"}, {"messageId": "m1"}, {"messageId": "m2"}]


def test_requeue_puts_dead_units_back(store: Outbox) -> None:
    store.add_events("a", 0, [event("m0", unit()), event("m1", unit()), event("m2", unit())])
    u0, u1, u2 = store.pending_units(0, 10)
    store.mark_dead([u0.id, u1.id, u2.id], DeadLetter(500, "x", "down", 5))
    assert store.requeue_dead([u1.id]) == 1
    assert [u.id for u in store.pending_units(0, 10)] == [u1.id]
    assert store.counts().events == {"pending": 1, "delivered": 0, "rejected": 0, "skipped": 0, "dead": 2}
    assert store.requeue_dead() == 2
    assert [(u.id, u.attempts) for u in store.pending_units(0, 10)] == [(u0.id, 0), (u1.id, 0), (u2.id, 0)]
    assert store.requeue_dead() == 0


def test_requeue_leaves_a_delivered_unit_and_its_event_alone(store: Outbox) -> None:
    store.add_events("a", 0, [event("m0", unit()), event("m1", unit())])
    u0, u1 = store.pending_units(0, 10)
    store.mark_delivered([u0.id])
    store.mark_dead([u1.id], DeadLetter(500, "x", "down", 5))
    assert store.requeue_dead([u0.id]) == 0  # not dead: nothing to put back, the event stays delivered
    assert store.pending_units(0, 10) == []
    assert store.counts().events == {"pending": 0, "delivered": 1, "rejected": 0, "skipped": 0, "dead": 1}


def test_jobs_are_kept_until_finished(store: Outbox) -> None:
    store.add_events("a", 0, [event("m0", unit()), event("m1", unit())])
    u0, u1 = store.pending_units(0, 10)
    assert store.open_jobs() == []
    store.save_job(OpenJob("job-1", "profile_imports", [u0.id, u1.id]))
    store.save_job(OpenJob("job-2", "profile_imports", [u1.id]))
    assert store.open_jobs() == [OpenJob("job-1", "profile_imports", [u0.id, u1.id]),
                                 OpenJob("job-2", "profile_imports", [u1.id])]
    store.mark_delivered([u0.id])
    assert [u.id for u in store.units_with_ids([u1.id, u0.id])] == [u1.id]  # the pending ones, in order
    store.finish_job("job-1")
    assert [j.job_id for j in store.open_jobs()] == ["job-2"]


def test_meta(store: Outbox) -> None:
    assert store.get_meta("seal_nonce") is None
    assert store.init_meta("seal_nonce", "abc") == "abc"
    assert store.init_meta("seal_nonce", "other") == "abc"
    store.set_meta("seal_nonce", "def")
    assert store.get_meta("seal_nonce") == "def"


def test_counts_per_source_and_in_total(store: Outbox) -> None:
    store.add_events("a", 0, [event("m0", unit(0), unit(1))])
    store.add_events("b", 0, [event("m1", unit()), NewEvent("m2", "rejected", reason="bad")])
    assert store.counts("a").units == {"pending": 2, "delivered": 0, "dead": 0}
    assert store.counts("b").events == {"pending": 1, "delivered": 0, "rejected": 1, "skipped": 0, "dead": 0}
    assert store.counts().total_events == 3 and store.counts().units["pending"] == 3
    assert [(e["source"], e["event"], e["reason"]) for e in store.events("rejected")] == [("b", 1, "bad")]


def test_remap_replaces_what_was_not_delivered(store: Outbox) -> None:
    store.add_events("a", 0, [event("m0", unit(0), unit(1)), NewEvent("m1", "rejected", reason="bad", raw='{"x":1}')])
    u0, u1 = store.pending_units(0, 10)
    store.mark_delivered([u0.id])
    store.mark_dead([u1.id], DeadLetter(400, "no", "refused", 1))
    stored = store.events_to_remap(["dead", "rejected"])
    assert [(e.source, e.index, e.status, e.raw) for e in stored] == [
        ("a", 0, "dead", '{"messageId": "m0"}'), ("a", 1, "rejected", '{"x":1}')]
    # mapped again: the same two requests; the delivered one is not sent again
    assert store.remap_event(stored[0].id, event("m0", unit(0), unit(1, body={"fixed": True}))) == "pending"
    assert [(u.position, json.loads(u.body or "")) for u in store.pending_units(0, 10)] == [(1, {"fixed": True})]
    assert store.remap_event(stored[1].id, NewEvent("m1", "rejected", reason="still bad", raw='{"x":1}')) == "rejected"
    assert [e["reason"] for e in store.events("rejected")] == ["still bad"]
    assert store.counts().events == {"pending": 1, "delivered": 0, "rejected": 1, "skipped": 0, "dead": 0}
    assert store.counts().units == {"pending": 1, "delivered": 1, "dead": 0}


# -- request chains: a step's requests recorded in the transaction that marks the previous step --------
def chained(position: int, next_step: dict[str, object], path: str = "/api/look-up") -> NewUnit:
    step = unit(position, path)
    step.chain = json.dumps(next_step)
    return step


def test_a_chain_unit_keeps_its_next_step(store: Outbox) -> None:
    store.add_events("a", 0, [event("m0", chained(0, {"rule": "r", "step": 1}))])
    (stored,) = store.pending_units(0, 10)
    assert json.loads(stored.chain or "") == {"rule": "r", "step": 1}
    assert [u.chain for u in store.units_with_ids([stored.id])] == [stored.chain]


def test_mark_step_records_the_next_step_with_the_mark(store: Outbox) -> None:
    store.add_events("a", 0, [event("m0", chained(0, {"rule": "r", "step": 1}), unit(1)), event("m1", unit(0))])
    look_up, other, later = store.pending_units(0, 10)
    finished, added = store.mark_step(look_up.id, 2, [chained(0, {"rule": "r", "step": 2}, "/api/second"),
                                                      unit(0, "/api/third")])
    assert (finished.delivered, finished.dead) == (0, 0)  # its event now waits for the next step
    # after the event's other requests, for the same event, in id order after everything recorded before
    assert [(u.event_id, u.position, u.url, json.loads(u.chain) if u.chain else None) for u in added] == [
        (look_up.event_id, 2, "/api/second", {"rule": "r", "step": 2}), (look_up.event_id, 3, "/api/third", None)]
    assert added[0].id > later.id and added == store.pending_units(later.id, 10)
    assert store.counts().units == {"pending": 4, "delivered": 1, "dead": 0}
    # a step runs once: marking the same unit again records nothing
    again, nothing = store.mark_step(look_up.id, 1, [unit(0)])
    assert (again.delivered, nothing) == (0, [])
    assert store.counts().units["pending"] == 4
    store.mark_delivered([other.id, added[1].id])
    finished, none = store.mark_step(added[0].id, 1, [])
    assert (finished.delivered, none) == (1, [])
    assert [e["messageId"] for e in store.events("delivered")] == ["m0"]


def test_a_step_with_nothing_to_do_ends_its_event_delivered_with_the_reason(store: Outbox) -> None:
    store.add_events("a", 0, [event("m0", chained(0, {"rule": "r", "step": 1}))])
    (look_up,) = store.pending_units(0, 10)
    finished, added = store.mark_step(look_up.id, 1, [], note="step 2 skipped: nothing found")
    assert (finished.delivered, added) == (1, [])
    (delivered,) = store.events("delivered")
    assert (delivered["reason"], delivered["notes"]) == ("step 2 skipped: nothing found",
                                                         ["step 2 skipped: nothing found"])


def test_a_dead_step_dead_letters_its_event(store: Outbox) -> None:
    store.add_events("a", 0, [event("m0", chained(0, {"rule": "r", "step": 1}))])
    (look_up,) = store.pending_units(0, 10)
    _, (second,) = store.mark_step(look_up.id, 1, [unit(0, "/api/second")])
    finished = store.mark_dead([second.id], DeadLetter(404, '{"errors": ["gone"]}', "refused", 1))
    assert finished.dead == 1
    (letter,) = store.dead_letters()
    assert (letter["unit"], letter["response"]["body"]) == (second.id, '{"errors": ["gone"]}')
