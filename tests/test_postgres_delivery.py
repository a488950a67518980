"""The shared outbox against a real PostgreSQL (a schema per test, from SEGMENT_KLAVIYO_TEST_POSTGRES;
skipped with the reason when it is unset or unreachable): migrations, leases and their fence, and
`worker` processes delivering one database's events to the fake Klaviyo — exactly once when nothing
fails, with a takeover within the lease bound when one is killed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from delivery_helpers import (
    PROJECT_ROOT,
    SECRET,
    SETTINGS,
    corpus,
    expected_event_keys,
    expected_requests,
    run_cli,
    set_without_bulk_imports,
    write_settings,
)

import engine
from engine.delivery.config import DeliveryPlan
from engine.delivery.ingest import Ingester
from engine.delivery.leases import LeaseOptions
from engine.delivery.outbox import DeadLetter, LeaseLost, NewEvent, NewUnit, OpenJob, OutboxError
from engine.delivery.postgres_migrations import LATEST
from engine.delivery.postgres_outbox import PostgresOutbox
from engine.delivery.sealing import Sealer

LEASE_TTL = 3.0  # seconds: takeover within 4 s (shorter ones expire while a loaded test machine stalls)
TAKEOVER_BOUND = LeaseOptions(LEASE_TTL).takeover_within


def record(url: str, events: list[dict[str, Any]], mappings: str | Path = "klaviyo") -> dict[str, int]:
    """Map and record events the way `serve --no-worker` does; the outbox's event counts."""
    mapping_set = engine.load_mapping_set(str(mappings))
    plan = DeliveryPlan.for_set(mapping_set)
    with PostgresOutbox(url, partition_of=plan.lane_of) as store:
        store.init_meta("mapping_set", mapping_set.name)
        sealer = Sealer({"privateKey": SECRET}, store.init_meta("seal_nonce", Sealer.new_nonce()))
        Ingester(mapping_set, SETTINGS, store, sealer).ingest(events, "test")
        return store.counts().events


def worker(url: str, settings: Path, base_url: str, *more: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "engine", "worker", "--state", url, "--settings", str(settings),
                             "--base-url", base_url, "--lease-ttl", str(LEASE_TTL), *map(str, more)],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def leases(url: str) -> dict[str, tuple[str | None, int]]:
    with psycopg.connect(url) as db:
        rows = db.execute("SELECT partition, holder, generation FROM leases WHERE expires > now() "
                          "OR holder IS NULL").fetchall()
    return {str(p): (h, int(g)) for p, h, g in rows}


def pending_partitions(url: str) -> set[str]:
    with psycopg.connect(url) as db:
        return {str(r[0]) for r in db.execute("SELECT DISTINCT partition FROM units WHERE status = 'pending'")}


def unit(path: str, position: int = 0) -> NewUnit:
    return NewUnit(position, "r", "POST", path, "{}", "json", "{}")


def lanes(method: str, url: str, unit: object = None) -> str:
    return url.strip("/").split("/")[0]  # "/a/x" is in partition "a"


# -- the store ------------------------------------------------------------------------------------------------
def test_a_newer_schema_is_refused_naming_both_versions(postgres_url: str) -> None:
    PostgresOutbox(postgres_url).close()
    with psycopg.connect(postgres_url) as db:
        db.execute("INSERT INTO schema_version (version) VALUES (%s)", (LATEST + 1,))
    message = (f"the outbox schema in this database is version {LATEST + 1}, newer than this segment-klaviyo "
               f"understands (version {LATEST}); nothing was changed. Upgrade segment-klaviyo on this machine")
    with pytest.raises(OutboxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PostgresOutbox(postgres_url)
    done = run_cli("outbox", "status", "--state", postgres_url)
    assert done.returncode == 2 and message in done.stderr


def test_tables_are_created_once_and_carry_a_tenant(postgres_url: str) -> None:
    PostgresOutbox(postgres_url).close()
    with PostgresOutbox(postgres_url) as store:  # opened again: nothing to migrate
        assert store.schema_version() == LATEST == 2
    with psycopg.connect(postgres_url) as db:
        versions = db.execute("SELECT version FROM schema_version").fetchall()
        with_tenant = {r[0] for r in db.execute(
            "SELECT table_name FROM information_schema.columns WHERE column_name = 'tenant' "
            "AND table_schema = current_schema()")}
    assert versions == [(1,), (2,)]
    assert with_tenant == {"meta", "sources", "events", "units", "jobs", "leases"}


def test_an_unreachable_database_is_named_without_its_password() -> None:
    done = run_cli("outbox", "status", "--state", "postgresql://someone:hunter2@127.0.0.1:1/nowhere")
    assert done.returncode == 2
    assert "postgresql://someone:***@127.0.0.1:1/nowhere: cannot connect" in done.stderr
    assert "hunter2" not in done.stderr


def test_outbox_status_reads_a_database(postgres_url: str) -> None:
    counts = record(postgres_url, corpus(40, seed=3))
    done = run_cli("outbox", "status", "--state", postgres_url)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line.get("input") for line in lines] == ["", None]
    assert lines[-1]["events"] == counts and lines[-1]["outbox"].startswith("postgresql://root@")


# -- leases ---------------------------------------------------------------------------------------------------
def test_a_partition_is_leased_to_one_worker_and_a_lost_lease_marks_nothing(postgres_url: str) -> None:
    with PostgresOutbox(postgres_url, partition_of=lanes) as store:
        store.add_events("s", 0, [NewEvent("m0", "pending", units=[unit("/a/x")]),
                                  NewEvent("m1", "pending", units=[unit("/b/x")])])
        first = store.claim_partitions("A", ttl=30, limit=10)
        assert [(lease.partition, lease.holder, lease.generation) for lease in first] == [("a", "A", 1), ("b", "A", 1)]
        assert store.claim_partitions("B", ttl=30, limit=10) == []
        queue = store.partition_queue(first[0])
        (mine,) = queue.pending_units(0, 10)
        # A stops renewing (paused, cut off): its lease on "a" expires and B takes it over
        with psycopg.connect(postgres_url) as db:
            db.execute("UPDATE leases SET expires = now() - interval '1 second' WHERE partition = 'a'")
        (taken,) = store.claim_partitions("B", ttl=30, limit=10)
        assert (taken.partition, taken.holder, taken.generation) == ("a", "B", 2)
        with pytest.raises(LeaseLost, match="the lease on partition 'a' \\(generation 1\\) was taken over"):
            queue.mark_delivered([mine.id])
        with pytest.raises(LeaseLost):
            queue.mark_dead([mine.id], DeadLetter(500, None, "x", 1))
        assert [lease.partition for lease in store.renew_leases("A", ttl=30)] == ["b"]
        assert store.counts().units["pending"] == 2  # nothing was marked by the stale worker
        assert store.partition_queue(taken).mark_delivered([mine.id]).delivered == 1
        store.release_lease(first[1])
        assert [lease.partition for lease in store.claim_partitions("B", ttl=30, limit=10)] == ["b"]


def test_an_event_s_requests_keep_their_order_across_partitions(postgres_url: str) -> None:
    with PostgresOutbox(postgres_url, partition_of=lanes) as store:
        store.add_events("s", 0, [NewEvent("m0", "pending", units=[unit("/a/1", 0), unit("/b/2", 1)]),
                                  NewEvent("m1", "pending", units=[unit("/b/3", 0)])])
        by_partition = {lease.partition: store.partition_queue(lease)
                        for lease in store.claim_partitions("A", ttl=30, limit=10)}
        # b's first unit waits for its event's request in a: b's queue stops there (and keeps its order)
        assert by_partition["b"].pending_units(0, 10) == []
        (first,) = by_partition["a"].pending_units(0, 10)
        by_partition["a"].mark_delivered([first.id])
        assert [u.url for u in by_partition["b"].pending_units(0, 10)] == ["/b/2", "/b/3"]


def test_jobs_belong_to_the_partition_that_started_them(postgres_url: str) -> None:
    with PostgresOutbox(postgres_url, partition_of=lanes) as store:
        store.add_events("s", 0, [NewEvent("m0", "pending", units=[unit("/a/1")]),
                                  NewEvent("m1", "pending", units=[unit("/b/1")])])
        a, b = store.claim_partitions("A", ttl=30, limit=10)
        (ua,) = store.partition_queue(a).pending_units(0, 10)
        store.partition_queue(a).save_job(OpenJob("job-a", "bulk", [ua.id]))
        assert [j.job_id for j in store.partition_queue(a).open_jobs()] == ["job-a"]
        assert store.partition_queue(b).open_jobs() == []
        store.release_lease(a)
        (again,) = store.claim_partitions("B", ttl=30, limit=10)
        with pytest.raises(LeaseLost):
            store.partition_queue(a).finish_job("job-a")
        assert [j.job_id for j in store.partition_queue(again).open_jobs()] == ["job-a"]
        assert store.pending_count() == 3  # two units and the open job


def test_replayed_units_tell_the_holder_to_read_again(postgres_url: str) -> None:
    with PostgresOutbox(postgres_url, partition_of=lanes) as store:
        store.add_events("s", 0, [NewEvent("m0", "pending", units=[unit("/a/1")])])
        (lease,) = store.claim_partitions("A", ttl=30, limit=10)
        (u,) = store.partition_queue(lease).pending_units(0, 10)
        store.partition_queue(lease).mark_dead([u.id], DeadLetter(500, None, "down", 5))
        assert store.requeue_dead() == 1
        (renewed,) = store.renew_leases("A", ttl=30)
        assert renewed.replays == lease.replays + 1 and renewed.generation == lease.generation


# -- workers --------------------------------------------------------------------------------------------------
def test_two_workers_deliver_every_event_exactly_once(postgres_url: str, tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(enforce_rate_limits=False)
    events = corpus(600, seed=11)
    counts = record(postgres_url, events)
    settings = write_settings(tmp_path)
    first = worker(postgres_url, settings, fake.url, "--until-empty")
    second = worker(postgres_url, settings, fake.url, "--until-empty")
    results = [finish(first), finish(second)]
    assert [code for code, _ in results] == [0, 0], results
    with PostgresOutbox(postgres_url) as store:
        after = store.counts().events
    assert after == {**counts, "pending": 0, "delivered": counts["pending"]}
    snapshot = fake.store.snapshot()
    kept = Counter((r["key"][1], r["key"][2]) for r in snapshot["records"]["events"])
    assert set(kept) == expected_event_keys(events) and max(kept.values()) == 1
    assert all(r["times"] == 1 for r in snapshot["records"]["events"])
    emails = {r.body["data"]["attributes"]["email"] for r in expected_requests(events)
              if r.url.endswith("/api/profile-import")}
    assert emails <= {p.get("email") for p in snapshot["profiles"].values()}
    delivered = [int(err.split(" event(s) delivered")[0].rsplit("· ", 1)[1]) for _, err in results]
    assert sum(delivered) == counts["pending"]
    assert all(SECRET not in err for _, err in results)


def test_a_killed_worker_s_partitions_are_taken_over_within_the_bound(postgres_url: str, tmp_path: Path,
                                                                     fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=3.0)  # Klaviyo's limits, three times faster: profiles take ~10 s
    singles = set_without_bulk_imports(tmp_path)
    events = corpus(1200, seed=12)
    counts = record(postgres_url, events, singles)
    settings = write_settings(tmp_path)
    scale = ("--time-scale", "3", "--mappings", singles)
    doomed = worker(postgres_url, settings, fake.url, *scale)
    survivor = worker(postgres_url, settings, fake.url, *scale, "--until-empty")
    deadline = time.monotonic() + 60
    while True:  # both hold a share, and the doomed one a partition with work left (else nothing to take over)
        assert time.monotonic() < deadline and doomed.poll() is None and survivor.poll() is None
        held = leases(postgres_url)
        if len({holder for holder, _ in held.values()} - {None}) == 2:
            doomed_holder = next(h for h, _ in held.values() if h and f":{doomed.pid}:" in h)
            if any(held.get(p, (None, 0))[0] == doomed_holder for p in pending_partitions(postgres_url)):
                break
        time.sleep(0.05)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    killed = time.monotonic()
    while True:  # every partition with work left is another worker's within the bound
        left = pending_partitions(postgres_url)
        now = leases(postgres_url)
        if all(now.get(p, (None, 0))[0] not in (None, doomed_holder) for p in left):
            break
        assert time.monotonic() - killed <= TAKEOVER_BOUND + 0.5, (left, now)
        time.sleep(0.05)
    assert left, "the killed worker had finished: nothing was taken over"
    code, err = finish(survivor)
    assert code == 0, err
    with PostgresOutbox(postgres_url) as store:
        after = store.counts().events
    assert after == {**counts, "pending": 0, "delivered": counts["pending"]}
    kept = Counter((r["key"][1], r["key"][2]) for r in fake.store.snapshot()["records"]["events"])
    assert set(kept) == expected_event_keys(events)
    # duplicates only of what was in flight: at most a call per connection of the dead worker
    assert sum(n - 1 for n in kept.values()) <= 8 * 3
    assert "taken over from a worker whose lease expired" in err and "(0 from a dead worker)" not in err


def test_worker_until_empty_exit_codes(postgres_url: str, tmp_path: Path, fake_klaviyo: Any) -> None:
    settings = write_settings(tmp_path)
    record(postgres_url, corpus(30, seed=5))
    refusing = fake_klaviyo(enforce_rate_limits=False, api_keys=["another key"])
    code, err = finish(worker(postgres_url, settings, refusing.url, "--until-empty"))
    assert code == 2 and "configuration error, delivery stopped" in err and SECRET not in err
    fake = fake_klaviyo(enforce_rate_limits=False, fail_items_matching="Searched")
    code, err = finish(worker(postgres_url, settings, fake.url, "--until-empty"))
    assert code == 1, err
    with PostgresOutbox(postgres_url) as store:
        assert store.counts().events["pending"] == 0 and store.counts().events["dead"] > 0
    code, err = finish(worker(postgres_url, settings, fake.url, "--until-empty"))  # nothing left: at once
    assert code == 0 and "0 event(s) delivered and 0 dead-lettered by this worker" in err
    folder = run_cli("worker", "--state", tmp_path / "state", "--settings", settings)  # (folders: test_serve_deliverer)
    assert folder.returncode == 2 and "no outbox there (outbox.sqlite3)" in folder.stderr


def test_a_worker_stops_gracefully_on_sigterm_and_releases_its_leases(postgres_url: str, tmp_path: Path,
                                                                       fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(time_scale=5.0)
    record(postgres_url, corpus(300, seed=6), set_without_bulk_imports(tmp_path))
    running = worker(postgres_url, write_settings(tmp_path), fake.url, "--time-scale", "5",
                     "--mappings", tmp_path / "klaviyo-singles")
    deadline = time.monotonic() + 30
    while not any(holder for holder, _ in leases(postgres_url).values()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    running.send_signal(signal.SIGTERM)
    code, err = finish(running, timeout=30)
    assert code == 0, err
    assert all(holder is None for holder, _ in leases(postgres_url).values())  # free for others at once


# -- serve and send on a database ------------------------------------------------------------------------------
def test_serve_no_worker_records_and_a_worker_delivers(postgres_url: str, tmp_path: Path,
                                                       fake_klaviyo: Any) -> None:
    import re

    import httpx

    fake = fake_klaviyo(enforce_rate_limits=False)
    settings = write_settings(tmp_path)
    log = tmp_path / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", "0", "--no-worker", "--state",
                               postgres_url, "--write-key", "wk", "--settings", str(settings), "--base-url", fake.url],
                              cwd=PROJECT_ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())):
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()
            time.sleep(0.05)
        url = found.group(1)
        events = corpus(50, seed=8)
        answer = httpx.post(url + "/v1/batch", json={"batch": events}, auth=("wk", ""), timeout=30)
        assert answer.status_code == 200 and answer.json() == {"success": True}
        health = httpx.get(url + "/health", timeout=5).json()
        assert health["delivery"] == "off: this server only records (serve --no-worker); worker processes deliver"
        assert health["ok"] is True and health["outbox_depth"] > 0
        time.sleep(0.5)
        assert fake.store.snapshot()["counters"].get("requests", 0) == 0  # nothing delivered by the server
        code, err = finish(worker(postgres_url, settings, fake.url, "--until-empty"))
        assert code == 0, err
        assert httpx.get(url + "/health", timeout=5).json()["outbox_depth"] == 0
        kept = Counter((r["key"][1], r["key"][2]) for r in fake.store.snapshot()["records"]["events"])
        assert set(kept) == expected_event_keys(events) and max(kept.values()) == 1
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    assert "delivering to no one (--no-worker)" in log.read_text() and SECRET not in log.read_text()


def test_send_on_a_database_delivers_and_gives_its_leases_back(postgres_url: str, tmp_path: Path,
                                                                fake_klaviyo: Any) -> None:
    from delivery_helpers import run_send, summary_line, write_events

    fake = fake_klaviyo(enforce_rate_limits=False)
    events = corpus(80, seed=9)
    done = run_send(write_events(tmp_path, events), "--settings", write_settings(tmp_path), "--base-url", fake.url,
                    "--state", postgres_url)
    assert done.returncode == 0, done.stderr
    with PostgresOutbox(postgres_url) as store:
        counts = store.counts().events
    assert counts["pending"] == 0 and counts["dead"] == 0 and sum(counts.values()) == len(events)
    assert summary_line(done.stderr).startswith(f"{len(events)} events: {counts['delivered']} delivered")
    assert all(holder is None for holder, _ in leases(postgres_url).values())
    kept = Counter((r["key"][1], r["key"][2]) for r in fake.store.snapshot()["records"]["events"])
    assert set(kept) == expected_event_keys(events) and max(kept.values()) == 1


def test_replayed_dead_letters_are_delivered_by_a_running_worker(postgres_url: str, tmp_path: Path,
                                                                 fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(enforce_rate_limits=False)
    events = corpus(40, seed=4)
    record(postgres_url, events)
    with PostgresOutbox(postgres_url) as store:  # an earlier outage: every request dead-lettered
        store.mark_dead([u.id for u in store.pending_units(0, 1000)], DeadLetter(503, None, "down", 5))
    running = worker(postgres_url, write_settings(tmp_path), fake.url)
    try:
        deadline = time.monotonic() + 30
        while not any(holder for holder, _ in leases(postgres_url).values()):
            assert time.monotonic() < deadline and running.poll() is None
            time.sleep(0.05)
        replayed = run_cli("outbox", "replay", "--state", postgres_url)
        assert replayed.returncode == 0, replayed.stderr
        while True:  # the holders read their partitions again at their next renewal
            with PostgresOutbox(postgres_url) as store:
                counts = store.counts().events
            if counts["pending"] == 0:
                break
            assert time.monotonic() < deadline + LEASE_TTL, counts
            time.sleep(0.1)
    finally:
        running.send_signal(signal.SIGTERM)
        code, err = finish(running)
    assert code == 0, err
    assert counts["dead"] == 0 and counts["delivered"] > 0
    kept = Counter((r["key"][1], r["key"][2]) for r in fake.store.snapshot()["records"]["events"])
    assert set(kept) == expected_event_keys(events) and max(kept.values()) == 1


# -- split lanes (order.partitions) ----------------------------------------------------------------------------
def _track_events(count: int) -> list[dict[str, Any]]:
    return [{"type": "track", "event": "Viewed", "userId": f"u{n}", "messageId": f"m{n}",
             "context": {"traits": {"email": f"user{n}@example.com"}}, "properties": {"n": n}} for n in range(count)]


def test_a_split_lane_s_parts_are_leased_apart_and_taken_over(postgres_url: str) -> None:
    record(postgres_url, _track_events(60))
    plan = DeliveryPlan.for_set(engine.load_mapping_set("klaviyo"))
    with PostgresOutbox(postgres_url, partition_of=plan.lane_of) as store:
        parts = [p for p in store.partition_names() if p.startswith("events#")]
        assert parts == [f"events#{n}/6" for n in range(6)]
        mine = store.claim_partitions("A", ttl=30, limit=3, among=parts)
        theirs = store.claim_partitions("B", ttl=30, limit=10, among=parts)
        assert [lease.partition for lease in mine] == parts[:3] and [lease.partition for lease in theirs] == parts[3:]
        queue = store.partition_queue(mine[0])
        pending = queue.pending_units(0, 100)
        assert pending and all(plan.lane_of(u.method, u.url, NewUnit(u.position, u.rule, u.method, u.url, u.headers,
                                                                      u.body_kind, u.body)) == parts[0]
                               for u in pending)
        # A stops renewing: its three parts expire and B takes them over, as whole leases
        with psycopg.connect(postgres_url) as db:
            db.execute("UPDATE leases SET expires = now() - interval '1 second' WHERE holder = 'A'")
        taken = store.claim_partitions("B", ttl=30, limit=10, among=parts)
        assert [(lease.partition, lease.generation, lease.taken_over) for lease in taken] == \
            [(part, 2, True) for part in parts[:3]]
        with pytest.raises(LeaseLost, match=f"the lease on partition '{parts[0]}' \\(generation 1\\)"):
            queue.mark_delivered([pending[0].id])
        assert store.partition_queue(taken[0]).mark_delivered([pending[0].id]).delivered == 1


def test_workers_sharing_a_split_lane_share_its_rate_limits(postgres_url: str, fake_klaviyo: Any) -> None:
    """Two workers: 3 of the events lane's 6 parts each, so half of each limit each; once one stops,
    the other holds all 6 and has the whole budget."""
    import asyncio

    from engine.delivery.leases import SharedDelivery
    from engine.delivery.worker import WorkerOptions

    fake = fake_klaviyo(enforce_rate_limits=False)
    record(postgres_url, _track_events(60))
    plan = DeliveryPlan.for_set(engine.load_mapping_set("klaviyo"))

    def limits(delivery: SharedDelivery) -> list[int] | None:
        limiter = delivery.rate_limiter("events", "bulk_create_events")
        return limiter.limits if limiter is not None else None

    async def scenario(store: PostgresOutbox) -> None:
        sealer = Sealer({"privateKey": SECRET}, store.init_meta("seal_nonce", Sealer.new_nonce()))
        first, second = (SharedDelivery(plan, store, sealer, fake.url, WorkerOptions(), LeaseOptions(ttl=1.5),
                                        holder=name) for name in ("A", "B"))
        runs = [asyncio.create_task(delivery.run()) for delivery in (first, second)]

        async def until(condition: Any, what: str, running: list[asyncio.Task[Any]]) -> None:
            deadline = time.monotonic() + 30
            while not condition():
                assert time.monotonic() < deadline, (what, first.partitions_held, second.partitions_held)
                assert not any(run.done() for run in running), [run.exception() for run in running if run.done()]
                await asyncio.sleep(0.05)

        def events_held(delivery: SharedDelivery) -> int:
            return sum(p.startswith("events#") for p in delivery.partitions_held)

        await until(lambda: events_held(first) == events_held(second) == 3, "3 parts each", runs)
        assert limits(first) == limits(second) == [5, 75]  # 10/s and 150/min, halved
        second.stop()
        await runs[1]
        await until(lambda: events_held(first) == 6, "all 6 parts", runs[:1])
        assert limits(first) == [10, 150]
        first.stop()
        await runs[0]

    with PostgresOutbox(postgres_url, partition_of=plan.lane_of) as store:
        asyncio.run(scenario(store))
