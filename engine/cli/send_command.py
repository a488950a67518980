"""`send`: map events and deliver them — durable outbox, batching, rate limits, retries.

Every event is recorded in the outbox (`--state DIR`, SQLite; or a shared `postgresql://` URL, where
this process delivers with a worker's leases until nothing is pending) before anything is sent, and
marked when the API accepts it; a run that is killed and started again with the same --state and input
goes on where it stopped. At the end one summary line: events delivered, rejected by the mapping,
skipped, dead-lettered; requests, retries, 429s. Exit 0 when every event was delivered, rejected
or skipped; 1 when some were dead-lettered; 2 for bad usage or a configuration the API refuses
(401/403: nothing is dead-lettered, fix the key and run again).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from ..delivery.config import DeliveryPlan
from ..delivery.ingest import Ingester, open_source
from ..delivery.outbox import NewEvent, Outbox, OutboxError, open_private
from ..delivery.sealing import Sealer
from ..delivery.stores import is_database_url, open_outbox, without_password
from ..delivery.worker import DeliveryStopped, DeliveryWorker, WorkerOptions, WorkerStats
from ..evaluate import MapResult
from ..events import read_events
from ..mapping_set import DEFAULT_SET, PROGRAM, MappingSet
from ..strict_json import json_line
from .common import (
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
    UsageError,
    add_debug_option,
    add_mapping_options,
    configure_logging,
    fail,
    prepare_delivery,
)

if TYPE_CHECKING:
    from ..fake.server import FakeServer

EXIT_INTERRUPTED = 130


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("send", help="map events and deliver them (outbox, batching, rate limits, retries)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", metavar="FILE",
                        help="events: a JSON object, a JSON array, NDJSON or a batch envelope (default: stdin)")
    add_mapping_options(parser)
    add_debug_option(parser)
    parser.add_argument("--base-url", metavar="URL",
                        help="send here instead of the mapping set's base URL (also: the environment "
                             f"variable <SET NAME>_BASE_URL, e.g. {DEFAULT_SET.upper()}_BASE_URL)")
    parser.add_argument("--state", metavar="DIR|URL",
                        help="the outbox folder (created if needed); run again with the same DIR to resume. "
                             "Or a postgresql:// URL: a shared outbox (README: Running on several machines). "
                             "Default: a temporary folder, removed at the end")
    parser.add_argument("--dead-letter", metavar="FILE", help="write the dead-lettered requests here (NDJSON)")
    parser.add_argument("--errors", metavar="FILE", help="write rejections and skips here (default: stderr)")
    parser.add_argument("--fake", action="store_true",
                        help="start a fake API in-process, deliver to it, then print what it received")
    parser.add_argument("--allow-compatibility-only", action="store_true",
                        help="send with a mapping set marked compatibility_only (its API may be retired)")
    parser.add_argument("--resume", action="store_true",
                        help="read no input: deliver what the outbox holds (e.g. after `outbox replay`)")
    parser.add_argument("--source-id", metavar="NAME",
                        help="name the input for resuming (default: a hash of its first 64 KiB)")
    parser.add_argument("--concurrency", type=int, default=8, metavar="N", help="HTTP requests at once (default 8)")
    parser.add_argument("--linger", type=float, default=0.25, metavar="SECONDS",
                        help="how long a bulk call that is not full waits for more items while input is read")
    parser.add_argument("--time-scale", type=float, default=1.0, metavar="X",
                        help="the API's clock runs X times faster (only for a fake started with the same "
                             "--time-scale): rate-limit windows, Retry-After and backoff shrink by X")
    parser.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                        help="a progress bar on stderr (auto: when stderr is a terminal)")
    parser.set_defaults(run=run)


class _Display:
    """The progress bar (a terminal only) and the summary line."""

    def __init__(self, enabled: bool, stream: IO[str]):
        self.enabled = enabled
        self.stream = stream
        self.lock = threading.Lock()
        self.read = 0
        self.final = 0  # rejected + skipped while reading
        self.stats: WorkerStats | None = None
        self.total_known: int | None = None
        self._last = 0.0
        self._drawn = False
        self._width = 0  # the longest bar drawn: what erasing it must cover

    def update(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        with self.lock:
            if not force and now - self._last < 0.1:
                return
            self._last = now
            stats = self.stats
            done = self.final + (stats.delivered_events + stats.dead_events if stats else 0)
            total = self.total_known if self.total_known is not None else self.read
            width = 30
            filled = int(width * done / total) if total else 0
            bar = "#" * filled + "-" * (width - filled)
            extra = f" {stats.requests} requests, {stats.retried} retried, {stats.rate_limited} 429s" if stats else ""
            line = f"[{bar}] {done}/{total} events{'' if self.total_known else '+'}{extra}"
            self.stream.write("\r" + line + " " * max(0, self._width - len(line)))
            self.stream.flush()
            self._width = max(self._width, len(line))
            self._drawn = True

    def clear(self) -> None:
        with self.lock:
            self._erase()

    def _erase(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._drawn = False

    def write_lines(self, out: IO[str], lines: list[str]) -> None:
        """Lines (skips, rejections) on `out`; when that is the bar's stream, the bar is erased first
        and drawn again under them, so that a line never lands in the middle of the bar."""
        if not lines:
            return
        with self.lock:
            if out is self.stream:
                self._erase()
            out.write("".join(line + "\n" for line in lines))
        if out is self.stream:
            self.update(force=True)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.debug)
    started = time.monotonic()
    try:
        setup = prepare_delivery(args, "send")
        mapping_set, plan, given, resolved, base_url = (setup.mapping_set, setup.plan, setup.given_settings,
                                                        setup.settings, setup.base_url)
        if args.fake and plan.spec_path is None:
            raise UsageError(f"--fake: mapping set '{mapping_set.name}' names no OpenAPI spec in a delivery section, "
                             "so there is no fake of its API")
        if args.resume and args.file:
            raise UsageError("--resume reads no input; leave out FILE")
        if args.time_scale <= 0 or args.concurrency < 1:
            raise UsageError("--time-scale must be > 0 and --concurrency ≥ 1")
        source: IO[bytes] | None = None
        if not args.resume:
            try:  # (bytes: a line that is not UTF-8 is rejected alone)
                source = open(args.file, "rb") if args.file else sys.stdin.buffer
            except OSError as exc:
                raise UsageError(f"{args.file}: {exc.strerror}") from None
    except UsageError as exc:
        return fail(str(exc))

    temporary = None
    if args.state:
        state = args.state
    else:
        temporary = tempfile.TemporaryDirectory(prefix=f"{PROGRAM}-state-")
        state = temporary.name
    fake: FakeServer | None = None
    try:
        try:
            outbox = open_outbox(state, partition_of=plan.lane_of)
        except OutboxError as exc:  # names the file and what to do
            return fail(str(exc))
        except OSError as exc:
            return fail(f"--state {without_password(state)}: {exc}")
        try:
            if args.fake:
                # (the fake server and the OpenAPI checker it loads: only when --fake asks for them)
                from ..fake.config import fake_config
                from ..fake.server import FakeOptions, FakeServer

                auth_setting = fake_config(plan).auth_setting
                key = resolved.get(auth_setting) if auth_setting else None
                fake = FakeServer(plan, FakeOptions(api_keys=[key] if key else None, time_scale=args.time_scale))
                fake.start()
                base_url = fake.url
            return _send(args, mapping_set, plan, given, resolved, outbox, source, base_url, started, fake)
        finally:
            outbox.close()
    finally:
        if fake is not None:
            fake.stop()
        if source is not None and source is not sys.stdin.buffer:
            source.close()
        if temporary is not None:
            temporary.cleanup()


def _send(args: argparse.Namespace, mapping_set: MappingSet, plan: DeliveryPlan, given: dict[str, Any],
          resolved: dict[str, Any], outbox: Outbox, source: IO[bytes] | None, base_url: str, started: float,
          fake: FakeServer | None) -> int:
    recorded_by = outbox.init_meta("mapping_set", mapping_set.name)
    if recorded_by != mapping_set.name:
        return fail(f"--state {without_password(args.state or '')} holds requests of mapping set '{recorded_by}', not "
                    f"'{mapping_set.name}': use another --state")
    nonce = outbox.init_meta("seal_nonce", Sealer.new_nonce())
    secrets = {name: str(resolved[name]) for name in mapping_set.secret_settings if resolved.get(name)}
    sealer = Sealer(secrets, nonce)
    show_progress = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    display = _Display(show_progress, sys.stderr)
    options = WorkerOptions(time_scale=args.time_scale, concurrency=args.concurrency, linger=args.linger)
    ingester = Ingester(mapping_set, given, outbox, sealer)  # records the input, and makes chains' next steps
    worker: DeliveryWorker | SharedDelivery
    if is_database_url(str(args.state or "")):
        from ..delivery.leases import SharedDelivery, shared_store
        worker = SharedDelivery(plan, shared_store(outbox), sealer, base_url, options,
                                on_progress=lambda stats: _progress(display, stats), chains=ingester)
    else:
        worker = DeliveryWorker(plan, outbox, sealer, base_url, options,
                                on_progress=lambda stats: _progress(display, stats), chains=ingester)

    source_name: str | None = None
    reader_error: list[str] = []
    stop_reading = threading.Event()
    reader: threading.Thread | None = None
    errors_out: IO[str] = open_private(args.errors) if args.errors else sys.stderr
    if source is not None:
        source_name, stream = open_source(source, args.source_id)
        label = args.file or "stdin"

        def on_result(index: int, event: Any, result: MapResult | None, record: NewEvent) -> None:
            lines: list[dict[str, Any]]
            if result is None:
                lines = [{"event": index, "messageId": record.message_id, "reason": record.reason}]
            else:
                lines = result.error_lines()
            display.write_lines(errors_out, [sealer.mask(json_line(line)) for line in lines])
            display.read = index + 1
            if record.status != "pending":
                display.final += 1

        def on_chunk(_: Any) -> None:
            worker.notify()
            display.update()

        def read_all() -> None:
            try:
                ingester.ingest(read_events(stream), source_name or "", label=label, on_result=on_result,
                                on_chunk=on_chunk,
                                stop=stop_reading.is_set)
            except OSError as exc:
                reader_error.append(f"reading {label}: {exc.strerror or exc}")
            except Exception as exc:  # noqa: BLE001 - reported, and the recorded events still go out
                reader_error.append(f"reading {label}: {sealer.mask(repr(exc))}")
            finally:
                if display.enabled and not stop_reading.is_set():  # (counting scans the outbox)
                    display.total_known = outbox.counts(source_name).total_events
                worker.input_complete()

        reader = threading.Thread(target=read_all, name="ingest", daemon=True)
    else:
        display.total_known = outbox.counts().total_events
        display.final = outbox.counts().total_events - outbox.counts().events["pending"]
        worker.input_complete()

    stopped: str | None = None
    interrupted = False
    try:
        with fewer_collections():
            if reader is not None:
                reader.start()
            asyncio.run(worker.run())
    except DeliveryStopped as exc:
        stopped = str(exc)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop_reading.set()
        if reader is not None:
            reader.join(timeout=30)
        display.clear()
        if errors_out is not sys.stderr:
            errors_out.close()

    counts = outbox.counts(source_name)
    stats = worker.stats
    events = counts.events
    if args.dead_letter:
        _write_dead_letters(outbox, sealer, source_name, args.dead_letter)
    if fake is not None:
        _print_fake(fake)
    pending = events["pending"]
    summary = (f"{counts.total_events} events: {events['delivered']} delivered, {events['rejected']} rejected, "
               f"{events['skipped']} skipped, {events['dead']} dead-lettered"
               + (f", {pending} pending" if pending else "")
               + f" · {stats.requests} requests, {stats.retried} retried, {stats.rate_limited} answered 429"
               + f" · {time.monotonic() - started:.1f}s")
    print(summary, file=sys.stderr)
    if events["dead"]:
        reasons = outbox.dead_reasons(source_name)
        print("most common dead-letter reasons: " + "; ".join(f"{count} × {_shortened(reason)}"
                                                               for reason, count in reasons), file=sys.stderr)
    for message in reader_error:
        print(f"{PROGRAM}: {message}", file=sys.stderr)
    if stopped is not None:
        print(f"{PROGRAM}: configuration error, delivery stopped: {stopped}", file=sys.stderr)
        if args.state:
            print(f"{PROGRAM}: nothing was dead-lettered; fix it and run again with --state "
                  f"{without_password(args.state)}", file=sys.stderr)
        return EXIT_USAGE
    if interrupted:
        print(f"{PROGRAM}: interrupted; {pending} event(s) pending"
              + (f", run again with --state {without_password(args.state)} to resume" if args.state else ""),
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if reader_error:
        return EXIT_USAGE
    return EXIT_REJECTED if events["dead"] else EXIT_OK


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Fewer full garbage collections while delivering: each walks every object alive, i.e. the
    loaded mapping set and the window of units held in memory (thousands, and acyclic), and they
    were 14% of `send`'s CPU on 50,000 events. What exists now lives to the end: frozen, never walked
    again; and a full collection comes after 100 collections of the middle generation, not 10.
    Both undone at the end (`send` may run inside another program)."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(thresholds[0], thresholds[1], 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _shortened(reason: str, limit: int = 160) -> str:
    return reason if len(reason) <= limit else reason[:limit - 1] + "…"


def _progress(display: _Display, stats: WorkerStats) -> None:
    display.stats = stats
    display.update()


def _write_dead_letters(outbox: Outbox, sealer: Sealer, source: str | None, path: str) -> None:
    with open_private(path) as out:
        for letter in outbox.dead_letters(source):
            out.write(sealer.mask(json_line(letter)) + "\n")


def _print_fake(fake: FakeServer) -> None:
    with fake.store.lock:
        requests = list(fake.store.requests)
    for request in requests:
        print(json.dumps({"method": request["method"], "path": request["path"], "status": request["status"],
                          "json": request["json"]}, ensure_ascii=False))
    snapshot = fake.store.snapshot()
    kept = ", ".join(f"{len(entries)} {kind}" for kind, entries in sorted(snapshot["records"].items())) or "nothing"
    print(f"fake API received {snapshot['counters'].get('requests', 0)} requests, accepted "
          f"{snapshot['counters'].get('accepted', 0)}; it keeps {len(snapshot['profiles'])} profiles; {kept}",
          file=sys.stderr)
