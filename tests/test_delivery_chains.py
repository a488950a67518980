"""Request chains at delivery (engine/delivery/chains.py): a look-up, then a request made from its
answer, recorded with the look-up's mark; run in-process against the fake Klaviyo, which answers
look-ups from the profiles it has seen imported.

The chain runner here is a small Python one (the rule language's chains use the same interface):
look the profile up by email, then remove the ids found from a list."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from delivery_helpers import SECRET, hand_made

import engine
from engine.delivery.chains import ChainError, NextStep, chain_subject
from engine.delivery.config import DeliveryPlan
from engine.delivery.outbox import NewEvent, NewUnit
from engine.delivery.sealing import Sealer
from engine.delivery.sqlite_outbox import SQLiteOutbox
from engine.delivery.worker import DeliveryWorker, WorkerOptions

HEADERS = json.loads(hand_made("GET", "/x", [{}])[0].units[0].headers)


def look_up(email: str, list_id: str = "ListA") -> NewEvent:
    """An event whose one request starts a chain: find the profile by email, then take it off a list."""
    chain = {"remove_from": list_id, "subject": {"lane": "profiles", "identifiers": {"email": email}}}
    url = f'/api/profiles?filter=equals(email,"{email}")'
    return NewEvent(f"exit-{email}", "pending", raw="{}",
                    units=[NewUnit(0, "exit", "GET", url, json.dumps(HEADERS), None, None, json.dumps(chain))])


def imports(*emails: str) -> list[NewEvent]:
    return hand_made("POST", "/api/profile-import", [
        {"data": {"type": "profile", "attributes": {"email": email}}} for email in emails])


class RemoveFound:
    """The second step: DELETE the found profile ids from the chain's list (nothing found: skipped)."""

    def __init__(self, body: Any = None) -> None:
        self.body = body  # a body to send instead (a step the API refuses)
        self.answers: list[Any] = []

    def next_step(self, chain: str, answer: Any) -> NextStep:
        self.answers.append(answer)
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise ChainError("the look-up's answer has no data list")
        ids = [found["id"] for found in answer["data"]]
        if not ids:
            return NextStep(skipped="step 2 skipped: no profile found")
        step = json.loads(chain)
        body = self.body or {"data": [{"type": "profile", "id": i} for i in ids]}
        return NextStep([NewUnit(0, "exit", "DELETE", f"/api/lists/{step['remove_from']}/relationships/profiles",
                                 json.dumps({**HEADERS, "Content-Type": "application/vnd.api+json"}), "json",
                                 json.dumps(body), None)])


def run(state: Path, url: str, events: list[NewEvent], runner: Any, source: str = "s") -> tuple[Any, SQLiteOutbox]:
    plan = DeliveryPlan.for_set(engine.load_mapping_set("klaviyo"))
    outbox = SQLiteOutbox(state)
    if events:
        outbox.add_events(source, outbox.progress(source), events)
    worker = DeliveryWorker(plan, outbox, Sealer({"privateKey": SECRET}, "0123abcd"), url,
                            WorkerOptions(time_scale=50, linger=0.05), chains=runner)
    worker.input_complete()
    try:
        return asyncio.run(worker.run()), outbox
    except BaseException:
        outbox.close()
        raise


def calls(fake: Any) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in fake.store.requests]


def test_a_chain_looks_up_then_removes_what_it_found(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    _, outbox = run(tmp_path / "a", fake.url, imports("a@example.com"), RemoveFound())
    outbox.close()
    runner = RemoveFound()
    stats, outbox = run(tmp_path / "b", fake.url, [look_up("a@example.com"), look_up("nobody@example.com")], runner)
    try:
        (profile_id,) = fake.store.snapshot()["profiles"]
        # (the two look-ups go at once: their answers come in either order)
        assert sorted((a["data"] for a in runner.answers), key=len) == [
            [], [{"type": "profile", "id": profile_id, "attributes": {"email": "a@example.com"}}]]
        (removal,) = fake.store.snapshot()["records"]["list_removals"]
        assert removal["request"] == {"data": [{"type": "profile", "id": profile_id}]}
        assert fake.store.counters["lookups:get_profiles"] == 2
        assert outbox.counts().events["delivered"] == 2 and stats.delivered_units == 3
        assert [(e["messageId"], e["reason"]) for e in outbox.events("delivered")] == [
            ("exit-a@example.com", None), ("exit-nobody@example.com", "step 2 skipped: no profile found")]
    finally:
        outbox.close()


def test_a_chain_keeps_its_subjects_order(tmp_path: Path, fake_klaviyo: Any) -> None:
    # exit, then an import of the same profile: the import waits for the removal, not just the look-up
    fake = fake_klaviyo(time_scale=50)
    _, outbox = run(tmp_path / "a", fake.url, imports("a@example.com"), RemoveFound())
    outbox.close()
    fake.store.requests.clear()
    fake.options.throttle_first = {"remove_profiles_from_list": 1}  # the removal is late: the import must wait
    _, outbox = run(tmp_path / "b", fake.url, [look_up("a@example.com"), *imports("a@example.com")], RemoveFound())
    pending = outbox.counts().units["pending"]
    outbox.close()
    assert calls(fake) == [
        ("GET", "/api/profiles"), ("DELETE", "/api/lists/ListA/relationships/profiles"),
        ("POST", "/api/profile-import")]
    assert pending == 0 and fake.store.counters["rate_limited"] == 1
    assert chain_subject(look_up("a@example.com").units[0].chain or "") == ("profiles", {"email": "a@example.com"})


def test_the_next_step_keeps_the_chains_subject_in_the_outbox(tmp_path: Path) -> None:
    with SQLiteOutbox(tmp_path) as outbox:
        outbox.add_events("s", 0, [look_up("a@example.com")])
        (first,) = outbox.pending_units(0, 10)
        step = RemoveFound().next_step(first.chain or "", {"data": [{"type": "profile", "id": "P1"}]})
        from engine.delivery.chains import chain_continues, inherit_subject

        step.units[0].chain = inherit_subject(first.chain or "", step.units[0].chain)
        _, (second,) = outbox.mark_step(first.id, 1, step.units)
        assert json.loads(second.chain or "") == {"subject": {"lane": "profiles", "identifiers": {
            "email": "a@example.com"}}, "end": True}
        assert chain_continues(first.chain) and not chain_continues(second.chain)


def test_a_kill_between_steps_resumes_at_the_next_step(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    _, outbox = run(tmp_path / "a", fake.url, imports("a@example.com"), RemoveFound())
    outbox.close()
    state = tmp_path / "b"
    outbox = SQLiteOutbox(state)
    outbox.add_events("s", 0, [look_up("a@example.com")])
    (first,) = outbox.pending_units(0, 10)
    # the look-up was answered and its mark committed (with the next step), then the process died
    (profile_id,) = fake.store.snapshot()["profiles"]
    step = RemoveFound().next_step(first.chain or "", {"data": [{"type": "profile", "id": profile_id}]})
    outbox.mark_step(first.id, 1, step.units)
    outbox.close()
    fake.store.requests.clear()
    stats, outbox = run(state, fake.url, [], RemoveFound())
    try:
        assert calls(fake) == [("DELETE", "/api/lists/ListA/relationships/profiles")]  # no second look-up
        assert outbox.counts().events["delivered"] == 1 and stats.delivered_events == 1
    finally:
        outbox.close()


def test_a_step_that_429s_is_retried_then_delivered(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50, throttle_first={"remove_profiles_from_list": 2})
    _, outbox = run(tmp_path / "a", fake.url, imports("a@example.com"), RemoveFound())
    outbox.close()
    stats, outbox = run(tmp_path / "b", fake.url, [look_up("a@example.com")], RemoveFound())
    try:
        assert stats.rate_limited == 2 and outbox.counts().events["delivered"] == 1
        assert len(fake.store.snapshot()["records"]["list_removals"]) == 1
    finally:
        outbox.close()


def test_a_step_the_api_refuses_dead_letters_the_event_with_the_answer(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    _, outbox = run(tmp_path / "a", fake.url, imports("a@example.com"), RemoveFound())
    outbox.close()
    _, outbox = run(tmp_path / "b", fake.url, [look_up("a@example.com")], RemoveFound(body={"data": "not a list"}))
    try:
        (letter,) = outbox.dead_letters()
        assert letter["method"] == "DELETE" and letter["response"]["status"] == 400
        assert "data" in letter["response"]["body"] and outbox.counts().events["dead"] == 1
        assert SECRET not in json.dumps(letter)
    finally:
        outbox.close()


def test_an_answer_the_runner_cannot_read_dead_letters_the_look_up(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)

    class Refuses(RemoveFound):
        def next_step(self, chain: str, answer: Any) -> NextStep:
            raise ChainError("the look-up's answer has no data list")

    _, outbox = run(tmp_path, fake.url, [look_up("a@example.com")], Refuses())
    try:
        (letter,) = outbox.dead_letters()
        assert letter["method"] == "GET"
        assert letter["response"]["error"] == ("the chain's next step cannot be made: the look-up's answer has no "
                                               "data list")
        assert json.loads(letter["response"]["body"]) == {"data": [], "links": {"self": "", "next": None,
                                                                                 "prev": None}}
    finally:
        outbox.close()


def test_a_worker_without_a_runner_stops_and_keeps_the_chain_pending(tmp_path: Path, fake_klaviyo: Any) -> None:
    import pytest

    from engine.delivery.worker import DeliveryStopped

    fake = fake_klaviyo(time_scale=50)
    with pytest.raises(DeliveryStopped, match="starts a request chain, and this worker was given no mapping"):
        run(tmp_path, fake.url, [look_up("a@example.com")], None)
    with SQLiteOutbox(tmp_path) as outbox:
        assert outbox.counts().units["pending"] == 1


# -- the klaviyo set's chains, mapped from events ----------------------------------------------------------
def exited(email: str | None, user_id: str, list_id: str = "L1") -> dict[str, Any]:
    event: dict[str, Any] = {"type": "track", "event": "Audience Exited", "userId": user_id,
                             "messageId": f"exit-{user_id}", "context": {"personas": {"external_audience_id": list_id}}}
    if email:
        event["properties"] = {"email": email}
    return event


def test_the_klaviyo_sets_chains_end_to_end(tmp_path: Path, fake_klaviyo: Any) -> None:
    from delivery_helpers import deliver

    fake = fake_klaviyo(time_scale=50)
    events = [
        {"type": "identify", "userId": "u1", "traits": {"email": "a@example.com"}, "messageId": "id-1"},
        {"type": "identify", "userId": "u2", "traits": {"firstName": "B"}, "messageId": "id-2"},
        exited("a@example.com", "u1"),
        exited(None, "u2", "L2"),  # by external_id
        exited("nobody@example.com", "u3"),
        {"type": "delete", "userId": "u2", "messageId": "del-u2"},  # by external_id
        {"type": "delete", "userId": "u9", "messageId": "del-u9"},  # nobody
    ]
    stats, counts = deliver(tmp_path, events, fake.url, settings={"privateKey": SECRET, "sendPageEvents": True})
    profiles = {attributes.get("external_id"): pid for pid, attributes in fake.store.snapshot()["profiles"].items()}
    records = fake.store.snapshot()["records"]
    assert sorted((r["request"]["data"][0]["id"], r["profile"]) for r in records["list_removals"]) == sorted(
        [(profiles["u1"], profiles["u1"]), (profiles["u2"], profiles["u2"])])
    assert [r["request"]["data"]["attributes"]["profile"]["data"]["id"] for r in records["deletions"]] == [
        profiles["u2"]]
    assert counts == {"pending": 0, "delivered": 7, "rejected": 0, "skipped": 0, "dead": 0}
    with SQLiteOutbox(tmp_path) as outbox:
        reasons = {e["messageId"]: e["reason"] for e in outbox.events("delivered") if e["reason"]}
    assert reasons == {
        "exit-u3": "step 2 of rule 'audience/exited' skipped: no Klaviyo profile has nobody@example.com",
        "del-u9": "step 2 of rule 'deletion-by-user-id' skipped: no Klaviyo profile has external_id u9: nothing "
                  "to delete"}
    # the look-ups' paths, and every step's body, passed the fake's OpenAPI check (a 400 would be dead)
    assert fake.store.counters["lookups:get_profiles"] == 5


def test_a_deletion_step_that_429s_is_retried_then_delivered(tmp_path: Path, fake_klaviyo: Any) -> None:
    from delivery_helpers import deliver

    fake = fake_klaviyo(time_scale=50, throttle_first={"request_profile_deletion": 2})
    events = [{"type": "identify", "userId": "u2", "traits": {"firstName": "B"}, "messageId": "id-2"},
              {"type": "delete", "userId": "u2", "messageId": "del-u2"}]
    stats, counts = deliver(tmp_path, events, fake.url, settings={"privateKey": SECRET})
    assert stats.rate_limited == 2 and counts["delivered"] == 2
    assert len(fake.store.snapshot()["records"]["deletions"]) == 1


def test_map_explain_shows_the_chain() -> None:
    import engine

    mapper = engine.Mapper(engine.load_mapping_set("klaviyo"), {"privateKey": "pk_x"}, explain=True)
    result = mapper.map(exited("a@example.com", "u1"))
    (built,) = [e for e in mapper.explanation(result)["explain"] if e["rule"] == "audience/exited"]
    assert built["requests"][0]["then"] == [
        "step 2, with the previous answer as `response`: remove the profiles found (response.data[].id) from the "
        "list (or skip)"]


def test_send_killed_between_steps_resumes_at_the_next_step(tmp_path: Path, fake_klaviyo: Any) -> None:
    # the removal is throttled until the kill: send has recorded the look-up's answer and the next
    # step, is waiting to send that step, and dies (SIGKILL); the next send sends the step only
    import signal
    import subprocess
    import time

    from delivery_helpers import PROJECT_ROOT, run_send, send_command, write_events, write_settings

    fake = fake_klaviyo(time_scale=1, throttle_first={"remove_profiles_from_list": 10_000})
    events = write_events(tmp_path, [
        {"type": "identify", "userId": "u1", "traits": {"email": "a@example.com"}, "messageId": "id-1"},
        exited("a@example.com", "u1")])
    settings = write_settings(tmp_path)
    state = tmp_path / "state"
    process = subprocess.Popen(send_command(events, "--settings", settings, "--base-url", fake.url, "--state", state),
                               cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while fake.store.counters.get("rate_limited", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.store.counters.get("rate_limited", 0) >= 1, "the removal was never tried"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert fake.store.counters["lookups:get_profiles"] == 1
    assert "list_removals" not in fake.store.snapshot()["records"]
    with SQLiteOutbox(state, exclusive=False, create=False) as outbox:
        (waiting,) = outbox.pending_units(0, 10)
        assert (waiting.method, waiting.url) == ("DELETE", "/api/lists/L1/relationships/profiles")
    assert fake.options.throttle_first is not None
    fake.options.throttle_first.clear()
    result = run_send(events, "--settings", settings, "--base-url", fake.url, "--state", state)
    assert result.returncode == 0, result.stderr
    assert fake.store.counters["lookups:get_profiles"] == 1  # not looked up again
    (profile_id,) = fake.store.snapshot()["profiles"]
    (removal,) = fake.store.snapshot()["records"]["list_removals"]
    assert removal["request"] == {"data": [{"type": "profile", "id": profile_id}]}
    with SQLiteOutbox(state, exclusive=False, create=False) as outbox:
        assert outbox.counts().events["delivered"] == 2
