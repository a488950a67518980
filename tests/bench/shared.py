"""The shared (PostgreSQL) outbox: what a stored event costs, and `worker` processes delivering.

    SEGMENT_KLAVIYO_TEST_POSTGRES=postgresql://root@127.0.0.1:5432/test python tests/bench/shared.py [--json FILE]

1. Store cost: --store-events events of one request each recorded with `add_events` (chunks of 500,
   as `send` and `serve` record) and marked delivered with `mark_delivered` (calls of 100 units, as
   bulk answers come), on the SQLite store (a tmp folder) and on the PostgreSQL store (a schema of
   its own): microseconds of wall time per event for each step, and PostgreSQL over SQLite.
2. Workers: the bench corpus's --worker-events events recorded in a fresh schema, then 1, 2 and 4
   `worker --until-empty` processes against the fake Klaviyo without rate limits (in this
   process, on loopback): delivered events per second, from the workers' start to the last one's
   exit (process start included; an empty run's start-up time is reported beside it).
3. Takeover: the same events, 2 workers (default --lease-ttl); the one holding a partition with work
   left is SIGKILLed: seconds until another holds that partition's lease.
4. Under the published limits: track events enough for --limited-windows full steady windows (and
   half of one more) at the Bulk Create Events ceiling, recorded, then 3 workers against the fake
   enforcing Klaviyo's limits: the events accepted in the full windows over what the ceiling allows
   (as tests/bench/delivery.py measures `send`), and the workers' 429 answers over their requests;
   where the CPU went meanwhile (cores: the workers' CPU seconds per wall second, the PostgreSQL
   server processes serving the run's schema, this process's fake) and each worker's events.

Everything (the fake, the workers, PostgreSQL) shares this machine's cores: the count is printed.
Keys: store_sqlite_add_us, store_sqlite_mark_us, store_postgres_add_us, store_postgres_mark_us,
store_postgres_over_sqlite, workers_1_events_per_s, workers_2_events_per_s, workers_4_events_per_s,
worker_startup_s, takeover_s, limited_3_workers_fraction_of_ceiling, limited_3_workers_fraction_429,
limited_cpu_workers, limited_cpu_postgres, limited_cpu_fake, limited_worker_events,
limited_worker_cpu_us_per_event, cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
import delivery  # noqa: E402
import psycopg  # noqa: E402

import engine  # noqa: E402
from engine.delivery.config import DeliveryPlan  # noqa: E402
from engine.delivery.ingest import Ingester  # noqa: E402
from engine.delivery.outbox import NewEvent, NewUnit, Outbox  # noqa: E402
from engine.delivery.postgres_outbox import PostgresOutbox  # noqa: E402
from engine.delivery.sealing import Sealer  # noqa: E402
from engine.delivery.stores import open_outbox  # noqa: E402
from engine.fake.server import FakeOptions, FakeServer  # noqa: E402

SECRET = "pk_bench_not_a_real_key"
SETTINGS = {"privateKey": SECRET, "listId": "ListA", "confirmOptin": True, "sendPageEvents": True}


class Schema:
    """A schema of its own on the server, dropped at the end. Its connections carry the schema's name
    as their application_name, so their server processes can be found (BackendCPU)."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.name = f"sk_bench_{os.getpid()}_{secrets.token_hex(3)}"
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'CREATE SCHEMA "{self.name}"')
        self.url = (dsn + ("&" if "?" in dsn else "?") + f"options=-csearch_path%3D{self.name}"
                    + f"&application_name={self.name}")

    def drop(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')


class BackendCPU:
    """CPU seconds used by the PostgreSQL server processes serving one schema's connections (found by
    application_name, read from /proc every half second while they live): only when the server runs
    on this machine (None otherwise)."""

    def __init__(self, dsn: str, application_name: str):
        import threading

        self.dsn = dsn
        self.application_name = application_name
        self.seen: dict[int, float] = {}
        self.readable = True
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> BackendCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            while True:
                pids = [int(pid) for (pid,) in admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.application_name,))]
                for pid in pids:
                    try:
                        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    except OSError:
                        self.readable = self.readable and pid in self.seen  # (gone since the query: fine)
                        continue
                    self.seen[pid] = (int(fields[11]) + int(fields[12])) / self._tick
                if self._done.wait(0.5):
                    return

    @property
    def seconds(self) -> float | None:
        return sum(self.seen.values()) if self.readable and self.seen else None


def store_cost(outbox: Outbox, count: int) -> tuple[float, float]:
    """Microseconds per event: recording (chunks of 500), then marking delivered (calls of 100)."""
    body = json.dumps({"data": {"type": "event", "attributes": {"properties": {"n": 1}, "metric": "Bench"}}})
    events = [NewEvent(f"m{i}", "pending", raw="{}", units=[NewUnit(0, "track", "POST", "/api/events",
                                                                     '{"revision": "x"}', "json", body)])
              for i in range(count)]
    started = time.perf_counter()
    for first in range(0, count, 500):
        outbox.add_events("bench", first, events[first:first + 500])
    added = time.perf_counter() - started
    ids = [u.id for u in outbox.pending_units(0, count)]
    started = time.perf_counter()
    for first in range(0, len(ids), 100):
        outbox.mark_delivered(ids[first:first + 100])
    marked = time.perf_counter() - started
    assert outbox.counts().events["delivered"] == count
    return added / count * 1e6, marked / count * 1e6


def record(url: str, events: list[Any]) -> int:
    mapping_set = engine.load_mapping_set("klaviyo")
    with PostgresOutbox(url, partition_of=DeliveryPlan.for_set(mapping_set).lane_of) as store:
        store.init_meta("mapping_set", mapping_set.name)
        sealer = Sealer({"privateKey": SECRET}, store.init_meta("seal_nonce", Sealer.new_nonce()))
        Ingester(mapping_set, SETTINGS, store, sealer).ingest(events, "bench")
        return store.counts().events["pending"]


def run_workers(url: str, settings: Path, base_url: str, count: int, *more: str) -> tuple[float, list[str]]:
    """`count` workers until nothing is pending: (wall seconds, each one's stderr)."""
    command = [sys.executable, "-m", "engine", "worker", "--state", url, "--settings", str(settings),
               "--base-url", base_url, "--until-empty", "--log-level", "warning", *more]
    started = time.perf_counter()
    workers = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for _ in range(count)]
    logs = []
    for process in workers:
        _, err = process.communicate(timeout=1800)
        if process.returncode != 0:
            raise SystemExit(f"worker failed ({process.returncode}): {err[-2000:]}")
        logs.append(err)
    return time.perf_counter() - started, logs


def takeover(dsn: str, settings: Path, base_url: str, events: list[Any], workers: int = 2) -> dict[str, Any]:
    """Seconds from the SIGKILL of a worker holding a partition with work left to another worker's
    lease on it, with the default --lease-ttl (the bound: 4/3 of it)."""
    import signal

    schema = Schema(dsn)
    command = [sys.executable, "-m", "engine", "worker", "--state", schema.url, "--settings", str(settings),
               "--base-url", base_url, "--log-level", "warning"]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        record(schema.url, events)
        processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for _ in range(workers)]
        by_pid = {p.pid: p for p in processes}
        query = ("SELECT l.partition, l.holder, l.generation FROM leases l WHERE l.expires > now() AND EXISTS "
                 "(SELECT 1 FROM units u WHERE u.partition = l.partition AND u.status = 'pending')")
        with psycopg.connect(schema.url, autocommit=True) as db:
            deadline = time.monotonic() + 120
            while True:
                held = [(p, h, g) for p, h, g in db.execute(query).fetchall() if int(h.split(":")[-2]) in by_pid]
                if held:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("takeover: no worker held a partition with work")
                time.sleep(0.05)
            partition, holder, generation = held[0]
            by_pid[int(holder.split(":")[-2])].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            while not db.execute("SELECT 1 FROM leases WHERE partition = %s AND generation > %s",
                                 (partition, generation)).fetchall():
                if time.monotonic() - killed > 120:
                    raise SystemExit("takeover: no other worker took the partition")
                time.sleep(0.05)
            return {"takeover_s": time.monotonic() - killed, "takeover_partition": partition}
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=60)
        schema.drop()


def limited(dsn: str, folder: Path, windows: int, time_scale: float, workers: int = 3) -> dict[str, Any]:
    """3 workers under the published limits: the fraction of the events ceiling, the share of 429s."""
    import threading

    mapping_set = engine.load_mapping_set("klaviyo")
    rate, limits = delivery.ceiling(mapping_set.delivery)
    window = limits["window_s"]
    source = folder / "limited.ndjson"
    delivery._write_corpus(source, int(rate * window * (windows + 0.5) / delivery.EVENTS_PER_INPUT[False]), 7)
    events = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    settings = folder / "limited-settings.json"
    settings.write_text(json.dumps(SETTINGS), encoding="utf-8")
    schema = Schema(dsn)
    counter = f"accepted_items:{limits['endpoint']}"
    try:
        record(schema.url, events)
        fake = FakeServer(DeliveryPlan.for_set(mapping_set), FakeOptions(time_scale=time_scale)).start()
        samples: list[tuple[float, int]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                with fake.store.lock:
                    samples.append((fake.api_now(), fake.store.counters.get(counter, 0)))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            here = time.process_time()
            with BackendCPU(dsn, schema.name) as server:
                seconds, logs = run_workers(schema.url, settings, fake.url, workers, "--time-scale", str(time_scale))
            here = time.process_time() - here
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            workers_cpu = after.ru_utime - children.ru_utime + after.ru_stime - children.ru_stime
            finished_api = fake.api_now()
        finally:
            done.set()
            sampler.join()
            with fake.store.lock:
                total = fake.store.counters.get(counter, 0)
            fake.stop()
    finally:
        schema.drop()
    summaries = [re.search(r"(\d+) requests, (\d+) retried, (\d+) answered 429", log) for log in logs]
    delivered = [re.search(r"(\d+) event\(s\) delivered", log) for log in logs]
    requests = sum(int(m.group(1)) for m in summaries if m)
    answered_429 = sum(int(m.group(3)) for m in summaries if m)
    fraction, per_window = delivery.fraction_over_windows(samples, total, finished_api, window, rate)
    return {f"limited_{workers}_workers_fraction_of_ceiling": round(fraction, 4) if fraction is not None else None,
            f"limited_{workers}_workers_fraction_429": round(answered_429 / requests, 5) if requests else None,
            "limited_ceiling_events_per_s": rate, "limited_events_per_window": [round(x) for x in per_window],
            "limited_requests": requests, "limited_answered_429": answered_429, "limited_wall_s": round(seconds, 1),
            "limited_input_events": len(events),
            # where the CPU went during the run, in CPU seconds per wall second (cores)
            "limited_cpu_workers": round(workers_cpu / seconds, 3),
            "limited_cpu_postgres": round(server.seconds / seconds, 3) if server.seconds is not None else None,
            "limited_cpu_fake": round(here / seconds, 3),  # this process: the fake and its sampler
            "limited_cpu_machine_load": round(os.getloadavg()[0], 2),
            "limited_worker_events": [int(m.group(1)) if m else None for m in delivered],
            "limited_worker_cpu_us_per_event": round(workers_cpu / max(sum(int(m.group(1)) for m in delivered if m), 1)
                                                     * 1e6, 1)}


def measure(dsn: str, store_events: int = 10_000, worker_events: int = 20_000, limited_windows: int = 1,
            limited_time_scale: float = 1.0) -> dict[str, Any]:
    """Every figure of this module's docstring (tests/bench/run.py calls it too)."""
    figures: dict[str, Any] = {"cores": os.cpu_count()}

    with tempfile.TemporaryDirectory() as folder:
        outbox = open_outbox(str(Path(folder) / "state"))
        figures["store_sqlite_add_us"], figures["store_sqlite_mark_us"] = store_cost(outbox, store_events)
        outbox.close()
        schema = Schema(dsn)
        try:
            with PostgresOutbox(schema.url) as store:
                figures["store_postgres_add_us"], figures["store_postgres_mark_us"] = store_cost(
                    store, store_events)
        finally:
            schema.drop()
        figures["store_postgres_over_sqlite"] = (
            (figures["store_postgres_add_us"] + figures["store_postgres_mark_us"])
            / (figures["store_sqlite_add_us"] + figures["store_sqlite_mark_us"]))

        settings = Path(folder) / "settings.json"
        settings.write_text(json.dumps(SETTINGS), encoding="utf-8")
        plan = DeliveryPlan.for_set(engine.load_mapping_set("klaviyo"))
        events = list(corpus.generate(worker_events))
        with FakeServer(plan, FakeOptions(enforce_rate_limits=False)) as fake:
            empty = Schema(dsn)
            try:
                PostgresOutbox(empty.url).close()
                figures["worker_startup_s"] = run_workers(empty.url, settings, fake.url, 1)[0]
            finally:
                empty.drop()
            for count in (1, 2, 4):
                schema = Schema(dsn)
                try:
                    pending = record(schema.url, events)
                    seconds = run_workers(schema.url, settings, fake.url, count)[0]
                    with PostgresOutbox(schema.url) as store:
                        counts = store.counts().events
                    assert counts["pending"] == 0 and counts["delivered"] == pending, counts
                    figures[f"workers_{count}_events_per_s"] = pending / seconds
                    figures[f"workers_{count}_seconds"] = seconds
                    figures["worker_events_delivered"] = pending
                finally:
                    schema.drop()
            figures.update(takeover(dsn, settings, fake.url, events))
        if limited_windows:
            figures.update(limited(dsn, Path(folder), limited_windows, limited_time_scale))

    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store-events", type=int, default=10_000)
    parser.add_argument("--worker-events", type=int, default=20_000)
    parser.add_argument("--limited-windows", type=int, default=1,
                        help="full steady windows (API minutes) the run under the published limits must fill (0: skip)")
    parser.add_argument("--limited-time-scale", type=float, default=1.0)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    dsn = os.environ.get("SEGMENT_KLAVIYO_TEST_POSTGRES")
    if not dsn:
        raise SystemExit("set SEGMENT_KLAVIYO_TEST_POSTGRES to a PostgreSQL URL (postgresql://root@127.0.0.1/test)")
    figures = measure(dsn, args.store_events, args.worker_events, args.limited_windows, args.limited_time_scale)
    for key, value in figures.items():
        print(f"{key:32} {value:,.2f}" if isinstance(value, float) else f"{key:32} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
