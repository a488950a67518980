"""`serve`'s deliverer: the delivery worker in a second process on the same SQLite outbox.

Ingestion and delivery in one process shared one GIL: with the worker running, a single-message
request cost 1.5–2× the CPU and batches ingested at half the rate (README, Performance). So on a
state folder `serve` records (it holds the recorder's lock) and a child process it starts and
supervises delivers (the deliverer's lock; sqlite_outbox.py says how the two share the file).

    parent (serve)                                  child (python -m engine.serve.deliverer)
    ─ stdin:  one JSON line (set, settings, state,  ─ reads it, opens the outbox as the deliverer,
              options), then a byte per commit        runs DeliveryWorker; a byte: look now (notify)
              (a wake-up; EOF: the server is gone)    EOF or SIGTERM: finish the calls in flight,
                                                      send nothing new, exit 0 (SIGINT is ignored:
                                                      the server passes a Ctrl-C on as SIGTERM)
    ─ stdout: reads JSON lines                      ─ writes {"ready": true} once it holds the lock,
                                                      then its WorkerStats and the latencies of
                                                      what it delivered since the last line
    ─ stderr: shared (its log lines)

The settings (secrets among them) go through the pipe, never on the child's command line (visible
to `ps`) nor in its environment; the write keys are not given to it at all. `DelivererProcess` (the
parent's side) restarts a child that dies (after 0.25 s, doubling to 10 s while it keeps dying),
except after a configuration the API refuses (401/403: exit 3), which is reported in /health like
the in-process worker's was; on SIGTERM it asks the child to stop and waits for its calls in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from typing import Any

from ..delivery.config import DeliveryPlan
from ..delivery.ingest import Ingester
from ..delivery.outbox import Finished
from ..delivery.sealing import Sealer
from ..delivery.sqlite_outbox import SQLiteOutbox
from ..delivery.worker import DeliveryWorker, WorkerOptions, WorkerStats
from ..mapping_set import PROGRAM, MappingSet

log = logging.getLogger(f"{PROGRAM}.serve")

EXIT_REFUSED = 3  # the API refused the configuration: restarting would not help
EXIT_LOCKED = 4  # another process delivers from the folder
EXIT_NOT_STARTED = 127  # (no child: the supervisor's own code for a failed start)
STOP_GRACE = 60.0  # seconds a stopping child has to finish its calls in flight before it is killed
FIRST_BACKOFF, MAX_BACKOFF = 0.25, 10.0
HEALTHY_AFTER = 30.0  # a child that ran this long before dying is restarted at once
# The worker's refill_interval: a wake-up sooner than that would only be put off by the worker (and
# costs a write here and a loop turn there: one per request made the deliverer's CPU 2.5x its work).
WAKE_EVERY = WorkerOptions.refill_interval
REPORT_EVERY = 0.25  # seconds between the child's stats lines when only retries or polls changed
_STAT_FIELDS = [f.name for f in fields(WorkerStats) if f.name != "started"]


def child_config(mapping_folder: str, settings: dict[str, Any], state: str, base_url: str,
                 options: WorkerOptions, log_level: int) -> bytes:
    """The line the parent sends first: everything the child needs, secrets included (a pipe only)."""
    return json.dumps({"mappings": mapping_folder, "settings": settings, "state": state, "base_url": base_url,
                       "options": asdict(options), "log_level": log_level}).encode("utf-8") + b"\n"


class DelivererProcess:
    """The parent's side: start the child, wake it after each commit, relay its counters into
    `stats` and its latencies to `observe`, restart it when it dies, stop it gracefully."""

    def __init__(self, config: bytes, observe: Callable[[float], None]):
        self._config = config
        self._observe = observe  # called with each delivered event's latency in seconds
        self.stats = WorkerStats()  # summed over every child this server ran
        self.failure: str | None = None  # a configuration the API refused: not restarted
        self.restarts = 0
        self.state = "starting"
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._wake_timer: asyncio.TimerHandle | None = None
        self._last_wake = 0.0

    @property
    def running(self) -> bool:
        return self.state == "running"

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise())

    def notify(self) -> None:
        """Something was recorded: tell the child. At most one wake-up every WAKE_EVERY seconds (the
        worker looks at the outbox at most that often anyway); one asked for sooner is sent when the
        interval ends, so the last commit of a burst is never left to the child's idle poll."""
        if self._wake_timer is not None:
            return  # a wake-up is due already
        now = time.monotonic()
        wait = self._last_wake + WAKE_EVERY - now
        if wait > 0:
            self._wake_timer = asyncio.get_running_loop().call_later(wait, self._wake)
            return
        self._wake()

    def _wake(self) -> None:
        self._wake_timer = None
        self._last_wake = time.monotonic()
        process = self._process
        if process is None or process.returncode is not None or process.stdin is None:
            return
        transport = process.stdin.transport
        if transport.is_closing() or transport.get_write_buffer_size():
            return
        try:
            process.stdin.write(b"w")
        except (BrokenPipeError, ConnectionResetError):  # it is dying: the supervisor restarts it
            pass

    async def stop(self) -> None:
        """Ask the child to finish its calls in flight and exit; wait for it (kill it after STOP_GRACE)."""
        self._stopping = True
        if self._wake_timer is not None:
            self._wake_timer.cancel()
            self._wake_timer = None
        process, task = self._process, self._task
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), STOP_GRACE)
            except asyncio.TimeoutError:
                log.error("the deliverer did not stop within %g s; killed (its calls in flight are sent again "
                          "at the next start)", STOP_GRACE)
                process.kill()
        if task is not None:
            await task

    async def _supervise(self) -> None:
        backoff = FIRST_BACKOFF
        while not self._stopping:
            started = time.monotonic()
            code = await self._run_child()
            if self._stopping:
                break
            if code == EXIT_REFUSED:
                self.state = "stopped"
                return  # the child reported why (self.failure)
            if time.monotonic() - started >= HEALTHY_AFTER:
                backoff = FIRST_BACKOFF
            self.restarts += 1
            self.state = f"restarting: the deliverer exited ({self._exit_text(code)}); restart {self.restarts}"
            if code != EXIT_LOCKED or self.restarts == 1 or backoff >= MAX_BACKOFF:
                log.warning("%s in %g s", self.state, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
        self.state = "stopped"

    @staticmethod
    def _exit_text(code: int) -> str:
        if code == EXIT_LOCKED:
            return "another process delivers from this folder"
        if code == EXIT_NOT_STARTED:
            return "it could not be started"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    async def _run_child(self) -> int:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_WRITE_KEYS")}  # it needs no write key
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "engine.serve.deliverer", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, env=env, limit=1 << 24)
        except OSError as exc:  # (no process could be made: out of memory or processes) tried again later
            log.error("could not start the deliverer: %s", exc)
            return EXIT_NOT_STARTED
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(self._config)
        if self._stopping:  # stopped while it was being started
            process.send_signal(signal.SIGTERM)
        last = dict.fromkeys(_STAT_FIELDS, 0)
        async for line in process.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            if report.get("ready"):  # it holds the deliverer's lock and delivers
                self.state = "running"
            if "failure" in report:
                self.failure = str(report["failure"])
            for name, value in report.get("stats", {}).items():
                if name in last:
                    setattr(self.stats, name, getattr(self.stats, name) + value - last[name])
                    last[name] = value
            for seconds in report.get("latencies", ()):
                self._observe(float(seconds))
        code = await process.wait()
        if process.stdin is not None:
            process.stdin.close()
        self.state = "stopped" if self._stopping else self.state
        return code


# -- the child ----------------------------------------------------------------------------------------------
class _Reporter:
    """Writes the child's lines to the parent: stats after each mark, latencies of what was delivered."""

    def __init__(self) -> None:
        self._latencies: list[float] = []
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        self._out = sys.stdout.buffer

    def delivered(self, latencies: Sequence[float]) -> None:  # (from the outbox's thread)
        with self._lock:
            self._latencies += latencies

    def write(self, stats: WorkerStats, extra: dict[str, Any] | None = None) -> None:
        current = {name: getattr(stats, name) for name in _STAT_FIELDS}
        with self._lock:
            latencies, self._latencies = self._latencies, []
        if current == self._last and not latencies and not extra:
            return
        self._last = current
        line: dict[str, Any] = {"stats": current, "latencies": [round(s, 6) for s in latencies], **(extra or {})}
        try:
            self._out.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
            self._out.flush()
        except (BrokenPipeError, ValueError):  # the server is gone: its EOF on stdin stops us too
            pass


class _ReportingOutbox(SQLiteOutbox):
    """The outbox as the deliverer opens it, handing each delivery's latency to the reporter."""

    def __init__(self, folder: str, reporter: _Reporter):
        super().__init__(folder, create=False, role="deliverer")
        self._reporter = reporter

    def mark_delivered(self, unit_ids: Sequence[int], attempts: int = 1) -> Finished:
        finished = super().mark_delivered(unit_ids, attempts)
        self._reporter.delivered(finished.latencies)
        return finished


def _read_config() -> dict[str, Any]:
    """The first line on stdin (read unbuffered: what follows it are wake-ups, read by the loop)."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(0, 65536)
        if not chunk:
            raise SystemExit("serve's deliverer: no configuration on stdin (it is started by `serve`)")
        data += chunk
    config: dict[str, Any] = json.loads(data.split(b"\n", 1)[0])
    return config


def folder_worker(mapping_set: MappingSet, plan: DeliveryPlan, settings: dict[str, Any], outbox: SQLiteOutbox,
                  base_url: str, options: WorkerOptions,
                  on_progress: Callable[[WorkerStats], None] | None = None) -> tuple[DeliveryWorker, Sealer]:
    """The delivery worker of a state folder opened as its deliverer (serve's child, `worker --state DIR`),
    with the sealer that masks what it logs."""
    resolved = mapping_set.resolve_settings(dict(settings))
    secrets = {name: str(resolved[name]) for name in mapping_set.secret_settings if resolved.get(name)}
    sealer = Sealer(secrets, outbox.init_meta("seal_nonce", Sealer.new_nonce()))
    chains = Ingester(mapping_set, settings, outbox, sealer)  # makes request chains' next steps
    return DeliveryWorker(plan, outbox, sealer, base_url, options, on_progress=on_progress, chains=chains), sealer


def main() -> int:
    # Ctrl-C reaches the whole process group: the server stops first and then stops this process
    # (SIGTERM), so that it is not restarted meanwhile as a deliverer that died.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = _read_config()
    logging.basicConfig(level=int(config["log_level"]), stream=sys.stderr,
                        format=f"{PROGRAM} serve (deliverer): %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from ..delivery.sqlite_outbox import OutboxLocked
    from ..delivery.worker import DeliveryStopped
    from ..mapping_set import load_mapping_set

    mapping_set = load_mapping_set(config["mappings"])
    plan = DeliveryPlan.for_set(mapping_set)
    reporter = _Reporter()
    try:
        outbox = _ReportingOutbox(config["state"], reporter)
    except OutboxLocked as exc:
        log.debug("%s", exc)
        return EXIT_LOCKED
    try:
        worker, sealer = folder_worker(mapping_set, plan, dict(config["settings"]), outbox, config["base_url"],
                                       WorkerOptions(**config["options"]), on_progress=reporter.write)
        reporter.write(worker.stats, {"ready": True})
        try:
            asyncio.run(_deliver(worker, reporter))
        except DeliveryStopped as exc:
            message = f"configuration error, delivery stopped: {exc}"
            reporter.write(worker.stats, {"failure": message})
            log.error("%s (requests keep being accepted and stored; fix it and restart)", message)
            return EXIT_REFUSED
        except Exception as exc:  # stored events are safe; the server starts another deliverer
            reporter.write(worker.stats)
            log.error("delivery stopped: %s (the server starts another deliverer)", sealer.mask(repr(exc)))
            return 1
        reporter.write(worker.stats)
        return 0
    finally:
        outbox.close()


async def _deliver(worker: DeliveryWorker, reporter: _Reporter) -> None:
    loop = asyncio.get_running_loop()

    def woken() -> None:
        try:
            data = os.read(0, 65536)
        except BlockingIOError:
            return
        if data:
            worker.notify()
        else:  # the server is gone (killed, or closed the pipe): finish what is in flight and exit
            loop.remove_reader(0)
            worker.stop()

    loop.add_reader(0, woken)
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    run = asyncio.create_task(worker.run())
    while not run.done():  # retries and job polls change counters without a mark: report them too
        await asyncio.wait([run], timeout=REPORT_EVERY)
        reporter.write(worker.stats)
    run.result()


if __name__ == "__main__":
    sys.exit(main())
