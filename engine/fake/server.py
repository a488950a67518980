"""A fake of the API a mapping set delivers to: a real HTTP server on a loopback socket.

Everything it checks comes from the mapping set's delivery section and the OpenAPI document it
names: the auth header (`fake.auth`; 401 without a valid key, 403 when the key lacks a scope the
operation lists), required headers (`fake.headers`, e.g. the revision), the content type, the body
against the operation's schema (400 with JSON:API errors whose `source.pointer` names the bad
field), the bulk calls' caps and duplicate rules (`batching`), and the published rate limits per
endpoint (fixed windows; 429 with `Retry-After`). What it accepts it records like the real API
(`fake.records`): profiles merged by identifier, events kept once per profile and key (later
repeats ignored), subscriptions by list.

For tests it can misbehave on purpose, at configured rates: 5xx answers, slow answers, connections
dropped (before or after the request was processed), bursts of 429 (as when another client uses the
quota), and 400s naming the items whose JSON matches a pattern. `time_scale` runs its clock faster:
a 1-second window lasts 1/time_scale seconds and Retry-After counts in those fast seconds.

Why the standard library's ThreadingHTTPServer and not an ASGI stack: a fake must be able to drop a
connection mid-request, which an ASGI application cannot do (the server owns the socket); threads
let one slow answer not hold up others; and it adds no dependency, so the fake runs wherever the
package is installed. It is a test tool: thousands of requests a second, not millions.

    with FakeServer(plan, FakeOptions(time_scale=20)) as fake:
        ...  # send to fake.url
        fake.store.snapshot()
"""

from __future__ import annotations

import datetime
import json
import math
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..delivery.batching import SplitItem, canonical, get_path, split
from ..delivery.config import DeliveryPlan, Endpoint
from ..openapi_check import OpenAPIDocument, load_openapi
from .config import FakeLookup, RecordSpec, fake_config


@dataclass
class FakeOptions:
    api_keys: list[str] | None = None  # keys accepted; None: any non-empty key
    scopes: list[str] | None = None  # scopes the keys have; None: all
    time_scale: float = 1.0
    enforce_rate_limits: bool = True
    error_rate: float = 0.0  # answer a 5xx (one of fake.error_statuses)
    drop_rate: float = 0.0  # close the connection without an answer (half before, half after processing)
    slow_rate: float = 0.0  # answer after slow_seconds
    slow_seconds: float = 1.0
    burst_429_every: float = 0.0  # API seconds between 429 bursts (0: none)
    burst_429_length: float = 1.0  # API seconds each burst lasts
    fail_items_matching: str | None = None  # 400 for items whose JSON matches this regex
    fail_job_rows_matching: str | None = None  # a job's rows whose JSON matches: listed as import errors
    throttle_first: dict[str, int] | None = None  # endpoint name -> how many of its first requests get a 429
    seed: int | None = None
    keep_requests: int = 100_000  # accepted requests kept for inspection


def _error(status: int, detail: str, pointer: str | None = None, parameter: str | None = None,
           code: str = "invalid", title: str = "Invalid input.") -> dict[str, Any]:
    error: dict[str, Any] = {"id": str(uuid.uuid4()), "status": status, "code": code, "title": title,
                             "detail": detail, "meta": {}}
    if pointer is not None:
        error["source"] = {"pointer": pointer}
    elif parameter is not None:
        error["source"] = {"parameter": parameter}
    return error


class Reply(Exception):
    """Answer now with this status, body and headers."""

    def __init__(self, status: int, errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None):
        self.status = status
        self.body = {"errors": errors} if errors is not None else None
        self.headers = headers or {}

    @classmethod
    def one(cls, status: int, detail: str, headers: dict[str, str] | None = None, **fields: Any) -> Reply:
        """A reply with one error (`fields`: _error's pointer, parameter, code and title)."""
        return cls(status, [_error(status, detail, **fields)], headers)

    @classmethod
    def throttled(cls, detail: str, header: str, wait: int) -> Reply:
        """A 429 whose `header` (the plan's Retry-After) says how many API seconds to wait."""
        return cls.one(429, detail, {header: str(wait)}, code="throttled", title="Request was throttled.")


@dataclass
class FakeStore:
    """What the fake accepted, as the API would keep it. Thread-safe."""

    identifiers: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    identity: dict[str, str] = field(default_factory=dict)
    records: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, FakeJobRun] = field(default_factory=dict)

    def count(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    def tally(self, name: str, by: int = 1) -> None:
        """count(), taking the lock (for a caller that does not hold it)."""
        with self.lock:
            self.count(name, by)

    def identity_keys(self, attributes: dict[str, Any]) -> list[str]:
        """`name=value` of each identifier the attributes hold: what the API recognises a profile by."""
        return [f"{name}={attributes[name]}" for name in self.identifiers if attributes.get(name) not in (None, "")]

    def resolve(self, attributes: dict[str, Any]) -> tuple[str, bool]:
        """The profile these attributes identify (merged like the API does): (id, created)."""
        keys = self.identity_keys(attributes)
        found = next((self.identity[k] for k in keys if k in self.identity), None)
        created = found is None
        if found is None:
            found = f"FAKE{len(self.profiles) + 1:022d}"
            self.profiles[found] = {}
            self.identity[f"id={found}"] = found  # a request may name it by the id the fake gave it
        for key in keys:
            self.identity.setdefault(key, found)
        return found, created

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "profiles": {pid: dict(attrs) for pid, attrs in self.profiles.items()},
                "records": {kind: [dict(r) for r in entries.values()] for kind, entries in self.records.items()},
                "counters": dict(self.counters),
            }

    def reset(self) -> None:
        with self.lock:
            for kept in (self.profiles, self.identity, self.records, self.requests, self.counters, self.jobs):
                kept.clear()


@dataclass
class FakeJobRun:
    """A bulk job the fake accepted: when (API time), its rows, and the rows it refused."""

    job_id: str
    endpoint: str
    created: float
    total: int
    refused: list[tuple[str, Any, str]]  # (pointer in the bulk body, the row as sent, why)
    polls: int = 0


class FakeServer:
    """The fake API, serving on host:port (port 0: any free port) in a background thread."""

    def __init__(self, plan: DeliveryPlan, options: FakeOptions | None = None, host: str = "127.0.0.1",
                 port: int = 0):
        if plan.spec_path is None:
            raise ValueError(f"mapping set {plan.set_name!r} names no OpenAPI spec; the fake needs one")
        self.plan = plan
        self.config = fake_config(plan)
        self.options = options or FakeOptions()
        self.spec: OpenAPIDocument = load_openapi(str(plan.spec_path))
        self.store = FakeStore(plan.subject_identifiers)
        self._rng = random.Random(self.options.seed)
        self._rng_lock = threading.Lock()
        self._windows: dict[tuple[str, str, int], int] = {}
        self._window_lock = threading.Lock()
        self._fail_items = re.compile(self.options.fail_items_matching) if self.options.fail_items_matching else None
        rows = self.options.fail_job_rows_matching
        self._fail_rows = re.compile(rows) if rows else None
        # which declared endpoint tells a job's state, and which lists its errors (batching.job)
        self._job_pollers: dict[str, str] = {}
        self._job_errors: dict[str, str] = {}
        for batch in plan.batches:
            if batch.job is not None and batch.target.name in self.config.jobs:
                self._job_pollers[batch.job.poll.name] = batch.target.name
                if batch.job.errors is not None:
                    self._job_errors[batch.job.errors.name] = batch.target.name
        self._t0 = time.monotonic()
        self._server = _Server((host, port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> FakeServer:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-api", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C), then close the socket."""
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._server.server_close()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- time and chance ---------------------------------------------------------------------------------
    def api_now(self) -> float:
        return (time.monotonic() - self._t0) * self.options.time_scale

    def chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._rng_lock:
            return self._rng.random() < rate

    def pick(self, choices: list[int]) -> int:
        with self._rng_lock:
            return self._rng.choice(choices)

    # -- the checks, in the API's order ------------------------------------------------------------------
    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any, dict[str, str]]:
        """One request: (status, JSON body or None, headers). Raises _Drop to drop the connection."""
        parts = urlsplit(target)
        path = parts.path
        store = self.store
        store.tally("requests")
        options = self.options
        if self.chance(options.drop_rate / 2):
            store.tally("dropped")
            raise _Drop()
        if self.chance(options.error_rate):
            status = self.pick(self.config.error_statuses)
            store.tally("injected_errors")
            return status, {"errors": [_error(status, "injected failure", code="error", title="Server error")]}, {}
        if self.chance(options.slow_rate):
            store.tally("slow")
            time.sleep(options.slow_seconds)
        try:
            status, body, extra = self._process(method, path, headers, raw, parts.query)
        except Reply as reply:
            store.tally(f"status_{reply.status}")
            return reply.status, reply.body, reply.headers
        if self.chance(options.drop_rate / 2):
            store.tally("dropped_after_processing")
            raise _Drop()
        return status, body, extra

    def _process(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                 raw_query: str = "") -> tuple[int, Any, dict[str, str]]:
        fake = self.config
        operation = self.spec.find(method, path)
        if operation is None:
            raise Reply.one(404, f"no operation {method} {path}", code="not_found", title="Not found.")
        endpoint = self.plan.endpoint_for(method, path)
        name = endpoint.name if endpoint is not None else operation.operation_id
        # authentication, then scopes
        if fake.auth_header:
            value = headers.get(fake.auth_header.lower(), "")
            key = value[len(fake.auth_prefix):] if value.startswith(fake.auth_prefix) else ""
            if not key or (self.options.api_keys is not None and key not in self.options.api_keys):
                raise Reply.one(401, "Missing or invalid private key.", code="not_authenticated",
                                title="Authentication credentials were not provided.")
        if self.options.scopes is not None and self.plan.scopes_extension:
            needed = operation.raw.get(self.plan.scopes_extension) or []
            missing = [s for s in needed if s not in self.options.scopes]
            if missing:
                raise Reply.one(403, f"The API key is missing required scopes: {', '.join(missing)}.",
                                code="permission_denied", title="You do not have permission to perform this action.")
        for header, pattern in fake.headers.items():
            given = headers.get(header.lower())
            if given is None:
                raise Reply.one(400, f"The {header} header is required.", parameter=header)
            if not pattern.match(given):
                raise Reply.one(400, f"Invalid {header} header {given!r}.", parameter=header)
        # rate limits (only requests that would otherwise be served count)
        self._rate_limit(name, endpoint)
        # the body
        if raw and fake.content_types:
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type not in [c.lower() for c in fake.content_types]:
                raise Reply.one(415, f"Unsupported content type {content_type!r}.", code="unsupported_media_type",
                                title="Unsupported media type.")
        if fake.max_body_bytes is not None and len(raw) > fake.max_body_bytes:
            raise Reply.one(413, f"The payload is {len(raw)} bytes; the limit is {fake.max_body_bytes}.",
                            code="payload_too_large", title="Payload too large.")
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise Reply.one(400, f"The body is not JSON: {exc}", pointer="") from None
        problems = self.spec.validate_body(method, path, body)
        if problems:
            raise Reply(400, [_error(400, message, pointer=pointer) for pointer, message in map(_split, problems)])
        if name in self._job_pollers or name in self._job_errors:
            return self._job_answer(name, endpoint, path, raw_query)
        if name in fake.lookups:
            return self._look_up(fake.lookups[name], path, raw_query)
        items = self._split(name, body)
        self._check_items(name, items)
        refused: list[tuple[str, Any, str]] = []
        if name in self.config.jobs and self._fail_rows is not None:
            spec = self.plan.by_target[name]
            kept = []
            for item in items:
                if self._fail_rows.search(canonical(item.single)):
                    refused.append((item.pointer, get_path(item.single, spec.item_path),
                                    "This row was refused (fail_job_rows_matching)."))
                else:
                    kept.append(item)
            items = kept
            self.store.tally("refused_job_rows", len(refused))
        status, answer, extra = self._record(name, endpoint, method, path, body, items)
        if name in self.config.jobs:
            return self._job_created(name, len(items) + len(refused), refused)
        return status, answer, extra

    def _look_up(self, lookup: FakeLookup, path: str, raw_query: str) -> tuple[int, Any, dict[str, str]]:
        """The profiles seen whose identifier equals the filter's value (fake.lookups)."""
        given = parse_qs(raw_query).get(lookup.parameter, [""])[0]
        wanted = lookup.match.match(given)
        if wanted is None or wanted.group("name") not in self.store.identifiers:
            raise Reply.one(400, f"Invalid {lookup.parameter} {given!r}.", parameter=lookup.parameter)
        store = self.store
        with store.lock:
            store.count(f"lookups:{lookup.endpoint}")
            if len(store.requests) < self.options.keep_requests:
                store.requests.append({"method": "GET", "path": path, "status": 200, "items": 0, "json": None,
                                       "query": given})
            profile_id = store.identity.get(f"{wanted.group('name')}={wanted.group('value')}")
            found = [] if profile_id is None else [
                _fill(lookup.item, {"$id": profile_id, "$attributes": dict(store.profiles[profile_id])})]
        return 200, _fill(lookup.response, {"$found": found}), {}

    # -- asynchronous jobs (fake.jobs) -------------------------------------------------------------------
    def _job_created(self, name: str, total: int,
                     refused: list[tuple[str, Any, str]]) -> tuple[int, Any, dict[str, str]]:
        run = FakeJobRun(job_id=uuid.uuid4().hex[:20], endpoint=name, created=self.api_now(), total=total,
                         refused=refused)
        with self.store.lock:
            self.store.jobs[run.job_id] = run
            self.store.count("jobs_created")
        return 202, self._job_body(run), {}

    def _job_body(self, run: FakeJobRun) -> Any:
        spec = self.config.jobs[run.endpoint]
        elapsed = self.api_now() - run.created
        step = len(spec.states) - 1 if spec.seconds <= 0 else min(int(elapsed / spec.seconds), len(spec.states) - 1)
        ended = step == len(spec.states) - 1
        failed = len(run.refused)
        return _fill(spec.response, {
            "$job_id": run.job_id, "$status": spec.states[step], "$total": run.total,
            "$completed": run.total - failed if ended else 0, "$failed": failed if ended else 0,
            "$created_at": _stamp(elapsed), "$completed_at": _stamp(0.0) if ended else None})

    def _job_answer(self, name: str, endpoint: Endpoint | None, path: str,
                    query: str) -> tuple[int, Any, dict[str, str]]:
        identifier = _path_parameter(endpoint.path, path) if endpoint is not None else None
        with self.store.lock:
            run = self.store.jobs.get(identifier or "")
            if run is not None:
                self.store.count("accepted")  # a read that is answered, like any accepted request
                if name in self._job_pollers:
                    run.polls += 1
                    self.store.count("job_polls")
        if run is None:
            raise Reply.one(404, f"No job {identifier!r}.", code="not_found", title="Not found.")
        if name in self._job_pollers:
            return 200, self._job_body(run), {}
        spec = self.config.jobs[run.endpoint]
        cursor_text = parse_qs(query).get("page[cursor]", ["0"])[0]
        cursor = int(cursor_text) if cursor_text.isdigit() else 0
        page = run.refused[cursor:cursor + spec.page_size]
        more = cursor + spec.page_size < len(run.refused)
        errors = [_fill(spec.error, {"$error_id": f"{run.job_id}-{cursor + i}", "$detail": why, "$pointer": pointer,
                                     "$item": row}) for i, (pointer, row, why) in enumerate(page)]
        following = f"{self.url}{path}?page%5Bcursor%5D={cursor + spec.page_size}" if more else None
        return 200, _fill(spec.errors_response, {"$errors": errors, "$next": following,
                                                 "$self": f"{self.url}{path}"}), {}

    def _rate_limit(self, name: str, endpoint: Endpoint | None) -> None:
        options = self.options
        now = self.api_now()
        header = self.plan.retry.retry_after_header
        if options.burst_429_every > 0:
            phase = now % options.burst_429_every
            if phase < options.burst_429_length:
                wait = max(1, math.ceil(options.burst_429_length - phase))
                self.store.tally("burst_429")
                raise Reply.throttled("Request was throttled (injected burst).", header, wait)
        if options.throttle_first and options.throttle_first.get(name, 0) > 0:
            with self.store.lock:
                options.throttle_first[name] -= 1
                self.store.count("rate_limited")
            raise Reply.throttled(f"Request was throttled (throttle_first) on {name}.", header, 1)
        if not options.enforce_rate_limits or endpoint is None or not endpoint.rate_windows:
            return
        with self._window_lock:
            slots = [(w, int(now // w.seconds)) for w in endpoint.rate_windows]
            for window, index in slots:
                used = self._windows.get((name, window.name, index), 0)
                if used >= window.limit:
                    wait = max(1, math.ceil((index + 1) * window.seconds - now))
                    self.store.tally("rate_limited")
                    raise Reply.throttled(f"Request was throttled: {window.limit} per {window.seconds:g}s "
                                          f"({window.name}) on {name}.", header, wait)
            for window, index in slots:
                key = (name, window.name, index)
                self._windows[key] = self._windows.get(key, 0) + 1
            if len(self._windows) > 10_000:
                self._windows = {k: v for k, v in self._windows.items() if k[2] >= int(now // 3600) - 1}

    def _split(self, name: str, body: Any) -> list[SplitItem]:
        spec = self.plan.by_target.get(name)
        if spec is None:
            return [SplitItem("", body)]
        try:
            items = split(spec, body)
        except ValueError as exc:
            raise Reply.one(400, f"The body is not a {spec.name} bulk call: {exc}", pointer="") from None
        if len(items) > spec.max_items:
            raise Reply.one(400, f"{len(items)} items in one call; at most {spec.max_items} are allowed.", pointer="")
        return items

    def _check_items(self, name: str, items: list[SplitItem]) -> None:
        if self._fail_items is not None:
            failing = [i for i in items if self._fail_items.search(canonical(i.single))]
            if failing:
                self.store.tally("failed_items", len(failing))
                raise Reply(400, [_error(400, "This item was refused (fail_items_matching).",
                                         pointer=i.pointer or "/data") for i in failing])
        spec = self.plan.by_target.get(name)
        source = spec.source.name if spec is not None else name
        record = self.config.records.get(source)
        if spec is None or record is None or record.duplicates_in_one_call != "reject":
            return
        seen: dict[tuple[Any, ...], str] = {}
        errors = []
        with self.store.lock:
            for item in items:
                key = self._key(record, spec.source, item.single)
                if key in seen:
                    errors.append(_error(400, f"Duplicate unique key for one profile in one call (first at "
                                              f"{seen[key]}).", pointer=item.pointer, code="duplicate"))
                else:
                    seen[key] = item.pointer
        if errors:
            raise Reply(400, errors)

    def _key(self, record: RecordSpec, endpoint: Endpoint, single: Any) -> tuple[Any, ...]:
        """(profile, *key) for a single request, recording nothing: the profile its attributes identify
        (for one not seen yet, those identifiers themselves)."""
        profiles, profile = endpoint.subjects(single), None
        if profiles:
            known = self.store.identity_keys(profiles[0])
            profile = next((self.store.identity[k] for k in known if k in self.store.identity), canonical(known))
        return (profile, *[expression.search(single) for expression in record.key])

    def _record(self, name: str, endpoint: Endpoint | None, method: str, path: str, body: Any,
                items: list[SplitItem]) -> tuple[int, Any, dict[str, str]]:
        canned = self.config.responses.get(name)  # an endpoint that only reads: its fixed answer
        spec = self.plan.by_target.get(name)
        source_name = spec.source.name if spec is not None else name
        source = self.plan.endpoints.get(source_name)
        record = self.config.records.get(source_name)
        operation = self.spec.find(method, path)
        assert operation is not None
        success = sorted(int(code) for code in operation.raw.get("responses", {}) if str(code).isdigit()
                         and 200 <= int(code) < 300)
        status = success[0] if success else 200
        profile_id: str | None = None
        store = self.store
        with store.lock:
            store.count("accepted")
            store.count("accepted_items", len(items))
            store.count(f"accepted_items:{name}", len(items))  # per endpoint (a lane's share of a mixed run)
            if len(store.requests) < self.options.keep_requests:
                store.requests.append({"method": method, "path": path, "status": status, "items": len(items),
                                       "json": body})
            if record is not None and source is not None:
                entries = store.records.setdefault(record.kind, {})
                for item in items:
                    created = False
                    profile_id = None
                    profiles = source.subjects(item.single)
                    if profiles:
                        profile_id, created = store.resolve(profiles[0])
                        store.profiles[profile_id].update((k, v) for k, v in profiles[0].items() if v is not None)
                    key = (profile_id, *[expression.search(item.single) for expression in record.key])
                    if key in entries and record.repeat == "ignore":
                        store.count(f"{record.kind}_repeats_ignored")
                        continue
                    times = entries[key].get("times", 1) + 1 if key in entries else 1
                    entries[key] = {"key": list(key), "profile": profile_id, "request": item.single, "times": times}
                    answer_status = record.status_created if created else record.status_updated
                    if spec is None and len(items) == 1 and answer_status is not None:
                        status = answer_status
        response_body: Any = canned
        if spec is None and record is not None and record.response is not None:
            response_body = _fill(record.response, {"$profile_id": profile_id})
        return status, response_body, {}


def _path_parameter(template: str, path: str) -> str | None:
    """The value a path gives the template's one {parameter}."""
    names, given = template.split("/"), path.split("/")
    if len(names) != len(given):
        return None
    return next((unquote(value) for name, value in zip(names, given, strict=True) if name.startswith("{")), None)


def _stamp(api_seconds_ago: float) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=api_seconds_ago)
    return moment.isoformat(timespec="microseconds")


def _fill(template: Any, values: dict[str, Any]) -> Any:
    if isinstance(template, str) and template in values:
        return values[template]
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, values) for v in template]
    return template


def _split(problem: str) -> tuple[str, str]:
    """'/a/b: message' (from openapi_check) → ('/a/b', 'message')."""
    pointer, sep, message = problem.partition(": ")
    if not sep or not pointer.startswith("/"):
        return "", problem
    return ("" if pointer == "/" else pointer), message


class _Drop(Exception):
    """Close the connection without an answer."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    fake: FakeServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out) is normal here, not worth a traceback."""
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return

    def _body(self) -> bytes | None:
        """The request body; None when the client went away before sending all of it."""
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0:
            return b""
        data = self.rfile.read(length)
        return data if len(data) == length else None

    def setup(self) -> None:
        super().setup()
        # Answers go out in one write and without Nagle's delay (else a delayed ACK costs 40 ms each).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/vnd.api+json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers_with(data)

    def end_headers_with(self, data: bytes) -> None:
        """end_headers(), with the body in the same write."""
        buffer: list[bytes] = getattr(self, "_headers_buffer", [])
        buffer.append(b"\r\n" + data)
        self.flush_headers()

    def _handle(self) -> None:
        raw = self._body()
        fake = self.server.fake
        if raw is None:
            self.close_connection = True
            fake.store.tally("incomplete_requests")
            return
        path = urlsplit(self.path).path
        if path.startswith("/_fake/"):
            self._control(path, raw)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, body, extra = fake.handle(self.command, self.path, headers, raw)
        except _Drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        except Exception as exc:  # a bug in the fake: answer 500 rather than hang the client
            status, body, extra = 500, {"errors": [_error(500, f"fake server error: {exc!r}", code="error",
                                                          title="Server error")]}, {}
        self._send(status, body, extra)

    def _control(self, path: str, raw: bytes) -> None:
        fake = self.server.fake
        if path == "/_fake/received":
            self._send(200, fake.store.snapshot(), {})
        elif path == "/_fake/requests":
            with fake.store.lock:
                requests = list(fake.store.requests)
            self._send(200, {"requests": requests}, {})
        elif path == "/_fake/reset" and self.command == "POST":
            fake.store.reset()
            self._send(200, {"reset": True}, {})
        elif path == "/_fake/health":
            self._send(200, {"ok": True, "api_time": fake.api_now()}, {})
        else:
            self._send(404, {"errors": [_error(404, "unknown control path", code="not_found", title="Not found.")]}, {})

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle
    do_PATCH = _handle
    do_DELETE = _handle
