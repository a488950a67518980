"""Profiles in bulk, adaptively, and asynchronous jobs followed to their end (delivery.yaml's
batching.profile_imports): a small backlog goes to Create or Update Profile one by one, a large one
becomes Bulk Import Profiles jobs with one row per profile; a job counts only when it is complete,
and the rows it refused are dead-lettered with the API's error. Delivered in-process to the fake
Klaviyo (real socket), or by `send` killed while a job is being polled."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import KLAVIYO_SPEC
from delivery_helpers import SECRET, SETTINGS, deliver, write_events, write_settings

from engine.delivery.batching import BatchBuilder, Rendered, prepare
from engine.delivery.config import DeliveryPlan
from engine.delivery.jobs import attribute_errors, job_path, job_state
from engine.delivery.sqlite_outbox import SQLiteOutbox
from engine.mapping_set import load_mapping_set
from engine.openapi_check import load_openapi
from engine.problems import MappingSetError

SET = Path(__file__).resolve().parent.parent / "mappings" / "klaviyo"
NO_LIST = {**SETTINGS, "listId": None}  # identifies import profiles only (no subscription requests)
BULK = "/api/profile-bulk-import-jobs"


@pytest.fixture(scope="module")
def plan() -> DeliveryPlan:
    return DeliveryPlan.for_set(load_mapping_set("klaviyo"))


def identify(user: int, seq: int, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": f"u{user}", "messageId": f"m-{seq}", "timestamp": "2026-11-01T12:00:00Z",
            "traits": {"email": f"u{user}@example.com", "seq": seq, **traits}}


def rows(fake: Any) -> list[dict[str, Any]]:
    return [row for r in fake.store.requests if r["path"] == BULK
            for row in r["json"]["data"]["attributes"]["profiles"]["data"]]


def calls(fake: Any, path: str) -> list[dict[str, Any]]:
    return [r for r in fake.store.requests if r["path"] == path]


def dead_letters(state: Path) -> list[dict[str, Any]]:
    outbox = SQLiteOutbox(state, exclusive=False, create=False)
    try:
        return list(outbox.dead_letters())
    finally:
        outbox.close()


# -- adaptive: few go one by one, a backlog goes in bulk ---------------------------------------------------
def test_a_small_backlog_goes_to_profile_import_one_by_one(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    _, counts = deliver(tmp_path, [identify(i, i) for i in range(40)], fake.url, settings=NO_LIST)
    assert counts["delivered"] == 40
    assert len(calls(fake, "/api/profile-import")) == 40
    assert calls(fake, BULK) == [] and fake.store.jobs == {}


def test_a_backlog_becomes_a_job_with_one_row_per_profile_later_values_winning(tmp_path: Path,
                                                                               fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50)
    events = [identify(seq % 150, seq, **({"plan": "pro"} if seq < 150 else {})) for seq in range(600)]
    _, counts = deliver(tmp_path, events, fake.url, settings=NO_LIST)
    assert counts == {"pending": 0, "delivered": 600, "rejected": 0, "skipped": 0, "dead": 0}
    jobs = calls(fake, BULK)
    assert len(jobs) == 1 and calls(fake, "/api/profile-import") == []
    spec = load_openapi(str(KLAVIYO_SPEC))
    assert spec.validate_body("POST", BULK, jobs[0]["json"]) == []
    # one row per profile, carrying its last identify's values and the earlier ones it did not repeat
    by_email = {row["attributes"]["email"]: row["attributes"]["properties"] for row in rows(fake)}
    assert len(rows(fake)) == len(by_email) == 150
    assert by_email["u7@example.com"] == {"seq": 457, "plan": "pro"}
    assert {p["seq"] for p in by_email.values()} == set(range(450, 600))
    # followed to its end: polled until complete, never more than the job's own rate limit
    [run] = fake.store.jobs.values()
    assert run.polls >= 1 and fake.store.counters.get("rate_limited", 0) == 0


def test_rows_a_job_refuses_are_dead_lettered_with_the_apis_error(tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=50, fail_job_rows_matching=r'"u1[0-4]@example\.com"')
    events = [identify(seq % 100, seq) for seq in range(300)]
    _, counts = deliver(tmp_path, events, fake.url, settings=NO_LIST)
    refused = {f"m-{seq}" for seq in range(300) if 10 <= seq % 100 <= 14}
    assert counts == {"pending": 0, "delivered": 300 - len(refused), "rejected": 0, "skipped": 0,
                      "dead": len(refused)}
    [run] = fake.store.jobs.values()
    letters = dead_letters(tmp_path)
    assert {letter["messageId"] for letter in letters} == refused
    for letter in letters:
        assert letter["response"]["error"] == f"the job {run.job_id} refused this row: This row was refused " \
                                  "(fail_job_rows_matching)."
        [error] = json.loads(letter["response"]["body"])
        assert error["attributes"]["original_payload"]["attributes"]["email"] in {
            f"u{n}@example.com" for n in range(10, 15)}
    imported = {p.get("email") for p in fake.store.snapshot()["profiles"].values()}
    assert imported == {f"u{n}@example.com" for n in range(100) if not 10 <= n <= 14}


def _cancelled(fake: Any, run: Any) -> Any:
    return {"data": {"type": "profile-bulk-import-job", "id": run.job_id, "attributes": {
        "status": "cancelled", "created_at": "2026-11-01T12:00:00+00:00", "total_count": run.total}}}


def _refusals_not_listed(fake: Any, run: Any) -> Any:
    return {"data": {"type": "profile-bulk-import-job", "id": run.job_id, "attributes": {
        "status": "complete", "created_at": "2026-11-01T12:00:00+00:00", "total_count": run.total,
        "completed_count": run.total - 3, "failed_count": 3}}}


def _gone(fake: Any, run: Any) -> Any:
    from engine.fake.server import Reply

    if not run.polls:  # the answer to the bulk call itself
        return {"data": {"type": "profile-bulk-import-job", "id": run.job_id, "attributes": {"status": "queued"}}}
    raise Reply(404, [{"id": "e1", "status": 404, "code": "not_found", "title": "Not found.", "detail": "No job."}])


@pytest.mark.parametrize(("answer", "error"), [
    (_cancelled, "the job {id} ended cancelled"),
    (_refusals_not_listed, "the job {id} reported 3 refused row(s) but named 0; every other row is dead-lettered "
                           "(replaying is safe for upserts)"),
    (_gone, "the job {id} was accepted but its state could not be read (replaying is safe for upserts)"),
])
def test_a_job_whose_outcome_is_not_known_row_by_row_dead_letters_all_its_imports(
        tmp_path: Path, fake_klaviyo: Any, answer: Any, error: str) -> None:
    fake = fake_klaviyo(time_scale=50)
    fake._job_body = lambda run: answer(fake, run)
    _, counts = deliver(tmp_path, [identify(seq, seq) for seq in range(150)], fake.url, settings=NO_LIST)
    assert counts == {"pending": 0, "delivered": 0, "rejected": 0, "skipped": 0, "dead": 150}
    [run] = fake.store.jobs.values()
    assert {letter["response"]["error"] for letter in dead_letters(tmp_path)} == {error.format(id=run.job_id)}
    outbox = SQLiteOutbox(tmp_path, exclusive=False, create=False)
    assert outbox.open_jobs() == []
    outbox.close()


def test_a_worker_stopped_while_polling_polls_the_job_again_instead_of_reimporting(tmp_path: Path,
                                                                                    fake_klaviyo: Any) -> None:
    from delivery_helpers import deliver as deliver_again

    fake = fake_klaviyo(time_scale=2)  # a job takes 2 API seconds to complete: 1 s here
    events = [identify(seq, seq) for seq in range(200)]
    stopper = threading.Thread(target=_stop_when_a_job_is_recorded, args=(tmp_path,), daemon=True)
    stopper.start()
    _, first = deliver(tmp_path, events, fake.url, settings=NO_LIST, time_scale=2)
    stopper.join()
    assert first["pending"] == 200 and first["delivered"] == 0
    outbox = SQLiteOutbox(tmp_path, exclusive=False, create=False)
    [job] = outbox.open_jobs()
    outbox.close()
    assert len(job.unit_ids) == 200 and job.batch == "profile_imports"
    polls_before = fake.store.jobs[job.job_id].polls

    _, second = deliver_again(tmp_path, [], fake.url, settings=NO_LIST, time_scale=2)
    assert second["delivered"] == 200 and second["pending"] == 0
    assert len(calls(fake, BULK)) == 1  # not imported again
    assert fake.store.jobs[job.job_id].polls > polls_before
    outbox = SQLiteOutbox(tmp_path, exclusive=False, create=False)
    assert outbox.open_jobs() == []
    outbox.close()


_WORKERS: list[Any] = []


def _stop_when_a_job_is_recorded(state: Path) -> None:
    """Stop the in-process worker as soon as the outbox holds a job being followed."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (state / "outbox.sqlite3").exists():
            outbox = SQLiteOutbox(state, exclusive=False, create=False)
            try:
                if outbox.open_jobs():
                    break
            finally:
                outbox.close()
        time.sleep(0.02)
    for worker in _WORKERS:
        worker.stop()


@pytest.fixture(autouse=True)
def _track_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the workers `deliver` makes, so a helper thread can stop one mid-run."""
    from engine.delivery import worker as worker_module

    original = worker_module.DeliveryWorker.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _WORKERS.append(self)

    _WORKERS.clear()
    monkeypatch.setattr(worker_module.DeliveryWorker, "__init__", init)


# -- one row per profile: the builder -----------------------------------------------------------------------
def _prepared(plan: DeliveryPlan, attributes: dict[str, Any]) -> Any:
    spec = plan.by_source["create_or_update_profile"]
    return prepare(spec, {"data": {"type": "profile", "attributes": attributes}}, "ctx", plan.subject_identifiers)


def test_one_call_never_holds_two_rows_about_one_profile(plan: DeliveryPlan) -> None:
    spec = plan.by_source["create_or_update_profile"]
    first = _prepared(plan, {"email": "a@x.io", "properties": {"plan": "free", "seen": 1}, "first_name": "Ada"})
    builder = BatchBuilder(spec, first.partition, first.layout)
    builder.add(1, first)
    table = [  # (a later request, what the builder does with it)
        ({"email": "a@x.io", "properties": {"plan": "pro"}}, "merge"),
        ({"external_id": "b", "email": "a@x.io"}, "merge"),
        ({"phone_number": "+15005550006"}, "add"),
    ]
    for unit, (attributes, verdict) in enumerate(table, 2):
        prepared = _prepared(plan, attributes)
        assert builder.accepts(prepared) == verdict, attributes
        builder.merge(unit, prepared) if verdict == "merge" else builder.add(unit, prepared)
    # a request about both rows' profiles could be merged into neither: it waits for the next call
    assert builder.accepts(_prepared(plan, {"external_id": "b", "phone_number": "+15005550006"})) == "no"
    body = json.loads(builder.render().body)
    assert [row["attributes"] for row in body["data"]["attributes"]["profiles"]["data"]] == [
        {"email": "a@x.io", "properties": {"plan": "pro", "seen": 1}, "first_name": "Ada", "external_id": "b"},
        {"phone_number": "+15005550006"},
    ]
    assert builder.merged == {1: [2, 3]}


def test_the_subjects_a_worker_found_already_give_the_same_row(plan: DeliveryPlan) -> None:
    # (the worker finds a request's subjects for its order keys, and hands them to prepare)
    spec = plan.by_source["create_or_update_profile"]
    body = {"data": {"type": "profile", "attributes": {"email": "a@x.io", "external_id": "b", "first_name": "Ada"}}}
    found = spec.source.subjects(body)
    assert prepare(spec, body, "ctx", plan.subject_identifiers, found) == prepare(spec, body, "ctx",
                                                                                  plan.subject_identifiers)
    assert prepare(spec, body, "ctx", plan.subject_identifiers, found).subject == {"email=a@x.io", "external_id=b"}
    # what is handed over is what counts: no second look at the body
    other = prepare(spec, body, "ctx", plan.subject_identifiers, [{"phone_number": "+15005550006"}])
    assert other.subject == {"phone_number=+15005550006"}


# -- a job's answers ---------------------------------------------------------------------------------------
def test_a_jobs_state_is_read_as_declared(plan: DeliveryPlan) -> None:
    job = plan.by_source["create_or_update_profile"].job
    assert job is not None
    assert job_path(job.poll, "a/b c") == "/api/profile-bulk-import-jobs/a%2Fb%20c"
    table = [  # (answer, (status, ended, failed, failed_count))
        ({"data": {"attributes": {"status": "queued"}}}, ("queued", False, False, 0)),
        ({"data": {"attributes": {"status": "processing", "failed_count": 3}}}, ("processing", False, False, 3)),
        ({"data": {"attributes": {"status": "complete", "failed_count": None}}}, ("complete", True, False, 0)),
        ({"data": {"attributes": {"status": "complete", "failed_count": 2}}}, ("complete", True, False, 2)),
        ({"data": {"attributes": {"status": "cancelled"}}}, ("cancelled", True, True, 0)),
        ({"errors": []}, (None, False, False, 0)),
    ]
    for answer, expected in table:
        state = job_state(job, json.dumps(answer))
        assert (state.status, state.ended, state.failed, state.failed_count) == expected, answer
    assert job_state(job, "not json").status is None


def test_each_import_error_is_tied_to_its_row(plan: DeliveryPlan) -> None:
    spec = plan.by_source["create_or_update_profile"]
    assert spec.job is not None
    builder: BatchBuilder | None = None
    for unit, email in enumerate(["a@x.io", "b@x.io", "c@x.io"], 1):
        prepared = _prepared(plan, {"email": email, "properties": {"n": unit}})
        builder = builder or BatchBuilder(spec, prepared.partition, prepared.layout)
        builder.add(unit, prepared)
    assert builder is not None
    rendered: Rendered = builder.render()

    def error(**attributes: Any) -> dict[str, Any]:
        return {"type": "import-error", "id": "e", "attributes": {"code": "invalid", "title": "t", "detail": "d",
                                                                   "source": {}, **attributes}}

    row_b = {"type": "profile", "attributes": {"email": "b@x.io", "properties": {"n": 2}}}
    table = [  # (error, the unit it names, or None: unmatched)
        (error(original_payload=row_b), 2),  # the row as sent
        (error(original_payload={"type": "profile", "attributes": {"email": "c@x.io"}}), 3),  # by identifier
        (error(source={"pointer": "/data/attributes/profiles/data/0"}), 1),  # by pointer
        (error(source={"pointer": "/data/attributes/profiles/data/9"}), None),
        (error(original_payload={"type": "profile", "attributes": {"email": "zz@x.io"}}), None),
        (error(), None),
    ]
    for listed, unit in table:
        found = attribute_errors(spec.job, spec, rendered, plan.subject_identifiers, [listed])
        assert (found.by_unit, found.unmatched) == (({unit: [listed]}, []) if unit else ({}, [listed])), listed


# -- a broken declaration is reported at its place ----------------------------------------------------------
def _broken(tmp_path: Path, old: str, new: str) -> list[str]:
    folder = tmp_path / "klaviyo-broken"
    shutil.copytree(SET, folder)
    delivery = folder / "delivery.yaml"
    text = delivery.read_text(encoding="utf-8")
    assert old in text, old
    delivery.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(MappingSetError) as raised:
        load_mapping_set(folder)
    return [re.sub(r"^.*?klaviyo-broken/", "", str(p)) for p in raised.value.problems]


def _both(line: str, message: str) -> list[str]:
    """The job block is shared (a YAML alias) by audience_lists: a mistake in it is each batching's."""
    return [f"delivery.yaml:{line}: batching {name}: {message}" for name in ("audience_lists", "profile_imports")]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("when_backlog: 100 ", "when_backlog: 0 ", ["delivery.yaml:123:19: 'when_backlog' must be at least 1"]),
    ("one_per_subject: merge", "one_per_subject: fold",
     ["delivery.yaml:127:22: 'one_per_subject': 'fold' is not one of merge, split"]),
    ("poll: get_bulk_import_profiles_job", "poll: get_job",
     _both("138:13", "job.poll: no endpoint 'get_job' (declare it under endpoints)")),
    ("poll: get_bulk_import_profiles_job", "poll: bulk_import_profiles",
     _both("138:13", "job.poll: bulk_import_profiles must be a GET with exactly one path parameter (the job's id)")),
    ("status: data.attributes.status", "status: data.attributes[",
     _both("139:15", "job.status: not a JMESPath expression: invalid JMESPath: the expression ends too early")),
    ("failed: [cancelled]", "failed: [complete]", _both("141:15", "job: complete cannot be both done and failed")),
    ("      error_list: data\n", "",
     _both("143:15", "job.errors needs error_list and error_item or error_pointer (how an error names its row)")),
    ("      done: [complete]\n", "", ["delivery.yaml:136:10: missing required key 'done'"]),
])
def test_a_broken_job_declaration_is_reported_at_its_place(tmp_path: Path, old: str, new: str,
                                                           expected: list[str]) -> None:
    problems = _broken(tmp_path, old, new)
    assert problems == expected


# -- the chaos of jobs: 5xx, refused rows, a kill while a job is polled ---------------------------------------
def test_chaos_with_jobs_nothing_lost_refused_rows_dead_lettered(tmp_path: Path, fake_klaviyo: Any) -> None:
    import signal
    import subprocess

    from delivery_helpers import PROJECT_ROOT, outbox_counts, send_command, summary_line

    fake = fake_klaviyo(time_scale=4, error_rate=0.25, drop_rate=0.05, seed=77,
                        fail_job_rows_matching=r'"u3[0-9]@example\.com"')
    events = [identify(seq % 400, seq) for seq in range(1200)]
    source = write_events(tmp_path, events)
    settings = write_settings(tmp_path, listId=None)
    state = tmp_path / "state"
    command = send_command(source, "--settings", settings, "--base-url", fake.url, "--state", state,
                           "--time-scale", "4")
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                               stderr=(tmp_path / "run0.log").open("w"), text=True)
    deadline = time.monotonic() + 60
    while not any(run.polls for run in list(fake.store.jobs.values())):  # a job is being polled: kill
        assert process.poll() is None and time.monotonic() < deadline, "no job was polled"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    polled = {job_id: run.polls for job_id, run in fake.store.jobs.items() if run.polls}
    outbox = SQLiteOutbox(state, exclusive=False, create=False)
    open_jobs = {job.job_id: job for job in outbox.open_jobs()}
    outbox.close()
    assert set(polled) <= set(open_jobs)  # a polled job was recorded before it was polled
    rows_before = len(rows(fake))

    final = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert final.returncode == 1, final.stderr[-3000:]  # 1: some requests were dead-lettered
    # the killed run's jobs were polled again, their rows not imported again
    for job_id, polls in polled.items():
        assert fake.store.jobs[job_id].polls > polls
    resent = {row["attributes"]["properties"]["seq"] for row in rows(fake)[rows_before:]}
    followed = {int(u) for job in open_jobs.values() for u in job.unit_ids}
    assert followed and not resent & {seq for seq in range(1200) if seq + 1 in followed}
    # every profile imported but the refused ones; exactly their events dead-lettered
    refused = {f"m-{seq}" for seq in range(1200) if 30 <= seq % 400 <= 39}
    counts = outbox_counts(state)
    assert counts == {"pending": 0, "delivered": 1200 - len(refused), "rejected": 0, "skipped": 0,
                      "dead": len(refused)}
    assert {letter["messageId"] for letter in dead_letters(state)} == refused
    imported = {p.get("email") for p in fake.store.snapshot()["profiles"].values()}
    assert imported == {f"u{n}@example.com" for n in range(400) if not 30 <= n <= 39}
    assert f"1200 events: {1200 - len(refused)} delivered" in summary_line(final.stderr)
    counters = fake.store.snapshot()["counters"]
    assert counters["injected_errors"] > 0
    assert SECRET not in final.stderr + (tmp_path / "run0.log").read_text()

