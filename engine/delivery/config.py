"""The delivery section of a mapping set, validated and compiled into a DeliveryPlan.

A mapping set says how its requests are delivered in its `delivery` section (inline in mapping.yaml,
or a file named there, e.g. `delivery: delivery.yaml`): the endpoints it calls with their rate
limits, which single requests may be merged into which bulk call (and the bulk call's envelope),
the order rules, the retry policy and the answers that stop a run. A part another package owns
(the fake API's `fake:`) is registered with its shape and compiler (register_delivery_part).
Nothing about any particular API is written in Python: this module only reads that YAML.

Every problem is reported at its FILE:LINE:COL, like the rest of the engine. `compile_delivery` is
registered as the `delivery` section's compiler, so `load_mapping_set` compiles the section once, at
load; `DeliveryPlan.for_set` hands that plan to the sender, the worker and the fake server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..expressions import ExpressionError, compile_expression
from ..limits import MAX_SPEC_BYTES
from ..mapping_set import MappingSet, register_section_compiler
from ..problems import MappingSetError, Position, ProblemList
from ..schema import HTTP_METHODS, check_shape
from ..strict_json import decode_stored
from ..yaml_loader import PosDict, PosList, ScalarPlace
from .chains import chain_subject
from .outbox import NewUnit
from .partitions import MAX_LANE_PARTITIONS, SEPARATOR, partition_name, stable_index

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|m|h)\s*$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}

_ENDPOINT_SCHEMA: dict[str, Any] = {
    "request": {"type": "string", "required": True, "regex": r"^(GET|POST|PUT|PATCH|DELETE) /\S*$"},
    "rate_limit": {"type": "dict", "valuesrules": {"type": "string", "regex": r"^\s*\d+\s*/\s*[smh]\s*$"}},
    "lane": {"type": "string", "empty": False},
    "subject": {"type": "string", "empty": False},
    "description": {"type": "string"},
}
_BATCH_SCHEMA: dict[str, Any] = {
    "description": {"type": "string"},
    "from": {"type": "string", "required": True},
    "to": {"type": "string"},
    "max_items": {"type": "integer", "min": 1, "required": True},
    "max_bytes": {"type": "integer", "min": 1000},
    "item": {"type": "string", "required": True, "empty": False},
    "group_by": {"type": "string", "empty": False},
    "unique": {"type": "list", "schema": {"type": "string", "empty": False}, "minlength": 1},
    "envelope": {"type": "dict"},
    "when_backlog": {"type": "integer", "min": 1},
    "one_per_subject": {"type": "string", "allowed": ["merge", "split"]},
    "job": {"type": "dict", "schema": {
        "id": {"type": "string", "required": True, "empty": False},
        "poll": {"type": "string", "required": True, "empty": False},
        "status": {"type": "string", "required": True, "empty": False},
        "done": {"type": "list", "required": True, "minlength": 1, "schema": {"type": "string"}},
        "failed": {"type": "list", "schema": {"type": "string"}},
        "failed_count": {"type": "string", "empty": False},
        "errors": {"type": "string", "empty": False},
        "error_list": {"type": "string", "empty": False},
        "error_item": {"type": "string", "empty": False},
        "error_pointer": {"type": "string", "empty": False},
        "error_detail": {"type": "string", "empty": False},
        "next_page": {"type": "string", "empty": False},
        "interval": {"type": "number", "min": 0.01},
    }},
}
_BACKOFF_SCHEMA: dict[str, Any] = {
    "initial": {"type": "number", "min": 0},
    "multiplier": {"type": "number", "min": 1},
    "max": {"type": "number", "min": 0},
    "jitter": {"type": "number", "min": 0, "max": 1},
}
_RETRY_SCHEMA: dict[str, Any] = {
    "statuses": {"type": "list", "schema": {"type": "integer", "min": 100, "max": 599}},
    "network_errors": {"type": "boolean"},
    "max_attempts": {"type": "integer", "min": 1},
    "max_rate_limited": {"type": "integer", "min": 1},
    "backoff": {"type": "dict", "schema": _BACKOFF_SCHEMA},
    "retry_after_header": {"type": "string"},
    "timeout": {"type": "number", "min": 0.1},
    "rate_limit_margin": {"type": "number", "min": 0, "max": 1},
}
_CHECK_SCHEMA: dict[str, Any] = {
    "endpoint": {"type": "string", "required": True, "empty": False},
    "shows": {"type": "string", "empty": False},
}
DELIVERY_SCHEMA: dict[str, Any] = {
    "description": {"type": "string"},
    "spec": {"type": "string"},
    "scopes": {"type": "string"},
    "subject_identifiers": {"type": "list", "schema": {"type": "string"}},
    "endpoints": {"type": "dict", "valuesrules": {"type": "dict", "schema": _ENDPOINT_SCHEMA}},
    "order": {"type": "dict", "schema": {"same_event": {"type": "boolean"}, "same_subject": {"type": "boolean"},
                                         "partitions": {"type": "dict", "keysrules": {"type": "string"},
                                                        "valuesrules": {"type": "integer", "min": 1,
                                                                        "max": MAX_LANE_PARTITIONS}}}},
    "batching": {"type": "dict", "valuesrules": {"type": "dict", "schema": _BATCH_SCHEMA}},
    "retry": {"type": "dict", "schema": _RETRY_SCHEMA},
    "stop": {"type": "dict", "keysrules": {"type": "string", "regex": r"^4\d\d$"},
             "valuesrules": {"type": "string"}},
    "errors": {"type": "dict", "schema": {"list": {"type": "string", "required": True},
                                          "pointer": {"type": "string"},
                                          "detail": {"type": "string"},
                                          "item_status": {"type": "integer", "min": 400, "max": 499}}},
    "check": {"type": "dict", "schema": _CHECK_SCHEMA},
}

# A part of the delivery section that another package owns (the fake API's `fake:`): compiled from
# its node (None when absent) against the declared endpoints, problems added to the list.
DeliveryPartCompiler = Callable[[Any, "dict[str, Endpoint]", ProblemList], object]
DELIVERY_PARTS: dict[str, DeliveryPartCompiler] = {}


def register_delivery_part(key: str, shape: dict[str, Any], compiler: DeliveryPartCompiler) -> None:
    """Let `key` of the delivery section be checked against `shape` and compiled by `compiler`, at
    load, into DeliveryPlan.parts[key]; register before any set is loaded (engine/__init__ does)."""
    DELIVERY_SCHEMA[key] = {"type": "dict", "schema": shape}
    DELIVERY_PARTS[key] = compiler


# -- compiled plan ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RateWindow:
    """At most `limit` requests in any `seconds` (in API time; a time scale shrinks it)."""

    name: str
    limit: int
    seconds: float


@dataclass
class Endpoint:
    name: str
    method: str
    path: str
    pattern: re.Pattern[str]
    rate_windows: list[RateWindow] = field(default_factory=list)
    lane: str | None = None
    # Compiled JMESPath: the attribute object(s) of the subject(s) a request is about (a customer, an
    # account...): requests about one subject keep their order, and a bulk call has one item per subject.
    subject: Any = None
    scopes: list[str] = field(default_factory=list)

    def subjects(self, body: Any) -> list[dict[str, Any]]:
        """The subjects' attribute objects a request body is about ([] when not declared)."""
        if self.subject is None:
            return []
        found = self.subject.search(body)
        if isinstance(found, dict):
            return [found]
        if isinstance(found, list):
            return [p for p in found if isinstance(p, dict)]
        return []


class Marker:
    """A placeholder in a bulk envelope: where the items, the group value, or the groups go."""

    def __init__(self, name: str, inner: Any = None):
        self.name = name
        self.inner = inner

    def __repr__(self) -> str:
        return f"${self.name}"


ITEMS = Marker("items")
GROUP = Marker("group")


@dataclass
class BatchSpec:
    """Which single requests merge into which bulk call, and how."""

    name: str
    source: Endpoint
    target: Endpoint
    max_items: int
    max_bytes: int
    item_path: tuple[str, ...]
    item_is_list: bool  # `item: a.b[]`: each element of that list is an item (same-endpoint merge)
    group_by: tuple[str, ...] | None
    unique: list[tuple[str, ...]]
    envelope: Any  # the compiled envelope (with Markers), None for a same-endpoint merge
    position: Position
    layout_cache: Any = None  # batching.Layout, computed on first use
    when_backlog: int | None = None  # merge only while this many requests of `source` wait; fewer go singly
    one_per_subject: str | None = None  # merge | split: never two items about one subject in one call
    job: JobSpec | None = None  # the bulk call starts an asynchronous job, followed to its end


@dataclass
class JobSpec:
    """How a bulk call's asynchronous job is followed: where the answer names it, the endpoint that
    tells its state, which states end it, and where the rows it refused are listed."""

    id: Selector  # in the bulk call's 2xx answer: the job's id
    poll: Endpoint  # GET with one path parameter, the job's id
    status: Selector  # in the poll answer
    done: frozenset[str]  # the job ended; its rows were imported but for those listed as errors
    failed: frozenset[str]  # the job ended without importing: every unit is dead-lettered
    failed_count: Selector | None  # in the poll answer: rows refused (0/absent: no need to read errors)
    errors: Endpoint | None  # GET with one path parameter, the job's id: the refused rows
    error_list: Selector | None
    error_item: Selector | None  # in one error: the row as it was sent
    error_pointer: Selector | None  # in one error: the JSON pointer of the row in the bulk body
    error_detail: Selector | None
    next_page: Selector | None  # in an errors answer: the URL of the next page (null on the last)
    interval: float  # seconds (API time) between polls


@dataclass
class RetryPolicy:
    statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    network_errors: bool = True
    max_attempts: int = 8
    max_rate_limited: int = 50
    initial: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.5
    retry_after_header: str = "Retry-After"
    timeout: float = 30.0
    rate_limit_margin: float = 0.03


@dataclass
class KeyCheck:
    """How `check` tests a key: one call to `endpoint`; `shows` picks what to print of a 2xx answer."""

    endpoint: Endpoint
    shows: Selector | None


@dataclass
class DeliveryPlan:
    """A mapping set's delivery section, compiled. Built by `DeliveryPlan.for_set`."""

    set_name: str
    folder: Path
    spec_path: Path | None
    scopes_extension: str | None
    subject_identifiers: list[str]
    endpoints: dict[str, Endpoint]
    batches: list[BatchSpec]
    same_event: bool
    same_subject: bool
    retry: RetryPolicy
    stop: dict[int, str]
    item_error_status: int | None  # a bulk call's answer whose errors may name items
    error_list: Selector | None  # the list of errors in an error answer's body
    error_pointer: Selector | None  # in one error: the JSON pointer of what it is about
    error_detail: Selector | None  # in one error: the text to show
    key_check: KeyCheck | None = None
    # order.partitions: a shared outbox splits these lanes into this many partitions (partitions.py)
    lane_partitions: dict[str, int] = field(default_factory=dict)
    # Parts of the section other packages own, compiled by them (see register_delivery_part).
    parts: dict[str, object] = field(default_factory=dict)
    by_source: dict[str, BatchSpec] = field(default_factory=dict)
    by_target: dict[str, BatchSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_source = {b.source.name: b for b in self.batches}
        # Several batchings may merge into one bulk endpoint (single requests merged into it, and that
        # endpoint's own calls merged together); the fake splits what it receives by the first declared.
        self.by_target = {}
        for batch in self.batches:
            self.by_target.setdefault(batch.target.name, batch)
        self._exact = {(e.method, e.path): e for e in self.endpoints.values() if "{" not in e.path}

    def endpoint_for(self, method: str, path: str) -> Endpoint | None:
        """The declared endpoint a request goes to (path without query), or None."""
        found = self._exact.get((method.upper(), path))
        return found or next((endpoint for endpoint in self.endpoints.values()
                              if endpoint.method == method.upper() and endpoint.pattern.match(path)), None)

    def lane_of(self, method: str, url: str, unit: NewUnit | None = None) -> str:
        """The lane of the endpoint a stored request calls ('' for none); given the request itself, the
        shared outbox's partition it is recorded under: the lane, or for a lane split by
        `order.partitions` the part its ordering key hashes to (partitions.py)."""
        endpoint = self.endpoint_for(method, url.partition("?")[0]) if url.startswith("/") else None
        lane = endpoint.lane or "" if endpoint is not None else ""
        count = self.lane_partitions.get(lane, 1) if lane else 1
        if unit is None or count <= 1 or endpoint is None:
            return lane
        return partition_name(lane, stable_index(self.ordering_key(endpoint, unit), count), count)

    def ordering_key(self, endpoint: Endpoint, unit: NewUnit) -> str:
        """What a split lane partitions a request by: `NAME=VALUE` of the first subject identifier (in
        `subject_identifiers` order) of its first subject, or of the subject its chain holds. Requests
        about no identified subject all share the key '' (one partition): an event's requests in one lane
        then never wait on each other across partitions."""
        if self.same_subject:
            identified: dict[str, Any] | None = None
            if unit.chain is not None:
                held = chain_subject(unit.chain)
                identified = held[1] if held is not None else None
            elif endpoint.subject is not None and unit.body_kind == "json" and unit.body is not None:
                try:
                    subjects = endpoint.subjects(decode_stored(unit.body))
                except ValueError:
                    subjects = []
                identified = subjects[0] if subjects else None
            if identified:
                for name in self.subject_identifiers:
                    value = identified.get(name)
                    if value not in (None, ""):
                        return f"{name}={value}"
        return ""

    @staticmethod
    def for_set(mapping_set: MappingSet) -> DeliveryPlan:
        """A loaded mapping set's delivery section, compiled once per set (at load when the set has
        one; an empty section, or one built in code, on first use). Raises MappingSetError on problems."""
        compiled = mapping_set.compiled_sections.get("delivery")
        if isinstance(compiled, DeliveryPlan):
            return compiled
        problems = ProblemList()
        source = mapping_set.delivery_source
        if source is None:
            source = _positioned(mapping_set.delivery, mapping_set.delivery_file)
        plan = compile_delivery(source, mapping_set.folder, mapping_set.delivery_file, problems,
                                set_name=mapping_set.name)
        if problems or plan is None:
            raise MappingSetError(problems.sorted())
        mapping_set.compiled_sections["delivery"] = plan
        return plan


# -- compiling -----------------------------------------------------------------------------------------
def _positioned(plain: Any, file: str) -> PosDict:
    """Give a plain dict (a delivery section built in code) positions, so checks can point somewhere."""
    start = Position(file, 1, 1)

    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            result = PosDict((str(key), convert(item)) for key, item in value.items())
            result.position = start
            result.key_positions = dict.fromkeys(result, start)
            result.value_places = dict.fromkeys(result, ScalarPlace(start, None))
            return result
        if isinstance(value, list):
            items = PosList(convert(v) for v in value)
            items.position = start
            items.item_places = [ScalarPlace(start, None)] * len(items)
            return items
        return value
    converted = convert(plain or {})
    assert isinstance(converted, PosDict)
    return converted


def value_at(node: PosDict, key: str) -> Position:
    """Where the value of `key` stands (or the mapping itself)."""
    if key in node.value_places:
        return node.value_places[key].position
    return node.position


def key_at(node: PosDict, key: str) -> Position:
    return node.key_positions.get(key, node.position)


def parse_path(text: str) -> tuple[tuple[str, ...], bool]:
    """`a.b.c` → (('a','b','c'), False); `a.b[]` → (('a','b'), True)."""
    is_list = text.endswith("[]")
    core = text[:-2] if is_list else text
    parts = tuple(core.split("."))
    if not core or any(not p for p in parts):
        raise ValueError(f"{text!r} is not a dotted path (keys separated by dots, optionally ending in [])")
    return parts, is_list


class Selector:
    """A JMESPath expression compiled by the engine (to closures: fast on every request)."""

    def __init__(self, source: str):
        self.source = source
        self.search = compile_expression(source).evaluate


def compile_selector(text: Any, position: Position, what: str, problems: ProblemList) -> Selector | None:
    try:
        return Selector(str(text))
    except ExpressionError as exc:
        problems.add(position, f"{what}: not a JMESPath expression: {exc.message}")
        return None


def _lane_partitions(order: PosDict, endpoints: dict[str, Endpoint], batches: list[BatchSpec],
                     problems: ProblemList) -> dict[str, int]:
    """order.partitions, checked: each names a lane, and no part gets less than one request a window
    of an endpoint the lane calls (a worker's share of a limit is m/K of it, rounded down)."""
    raw = order.get("partitions") or PosDict()
    result: dict[str, int] = {}
    for lane, count in raw.items():
        where = value_at(raw, lane)
        own = [e for e in endpoints.values() if e.lane == lane]
        if not own:
            lanes = sorted({e.lane for e in endpoints.values() if e.lane})
            problems.add(key_at(raw, lane), f"order.partitions: no endpoint is in lane {lane!r} "
                                            f"(lanes: {', '.join(lanes) or 'none'})")
            continue
        called = {e.name: e for e in own}
        for batch in batches:
            if batch.source.lane == lane:
                called[batch.target.name] = batch.target
                if batch.job is not None:
                    called[batch.job.poll.name] = batch.job.poll
                    if batch.job.errors is not None:
                        called[batch.job.errors.name] = batch.job.errors
        tight = [(w.limit, e.name, w.name) for e in called.values() for w in e.rate_windows if w.limit < int(count)]
        if tight:
            limit, endpoint, window = min(tight)
            problems.add(where, f"order.partitions.{lane}: {count} partitions would leave each less than one "
                                f"request of {endpoint}'s {window} limit ({limit}); at most {limit}")
            continue
        result[str(lane)] = int(count)
    return result


def _rate_windows(node: PosDict, problems: ProblemList) -> list[RateWindow]:
    windows = []
    for name, text in node.items():
        match = _RATE.match(str(text))
        if match is None:
            problems.add(value_at(node, name), f"rate limit {name}: {text!r} is not COUNT/s, COUNT/m or COUNT/h")
            continue
        windows.append(RateWindow(name, int(match.group(1)), _UNIT_SECONDS[match.group(2)]))
    return windows


def _load_spec(path: Path, position: Position, problems: ProblemList) -> dict[str, Any] | None:
    if not path.is_file():  # (a FIFO or a device would block the read, or never end)
        problems.add(position, f"spec {path.name}: not a file")
        return None
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_SPEC_BYTES + 1)  # (never more: the file may be huge)
    except OSError as exc:
        problems.add(position, f"spec {path.name}: cannot read: {exc.strerror}")
        return None
    if len(data) > MAX_SPEC_BYTES:
        problems.add(position, f"spec {path.name}: file is larger than {MAX_SPEC_BYTES} bytes; "
                               f"the limit is {MAX_SPEC_BYTES}")
        return None
    try:
        spec = json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as exc:
        problems.add(position, f"spec {path.name}: not JSON: {exc.msg} (line {exc.lineno})")
        return None
    except UnicodeDecodeError as exc:
        problems.add(position, f"spec {path.name}: not UTF-8 text: byte {data[exc.start]:#04x} at offset "
                               f"{exc.start} cannot be decoded")
        return None
    except RecursionError:
        problems.add(position, f"spec {path.name}: JSON nested too deeply to read")
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("paths"), dict):
        problems.add(position, f"spec {path.name}: not an OpenAPI document (no paths)")
        return None
    return spec


def _spec_operations(spec: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    found: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for template, item in spec.get("paths", {}).items():
        if not isinstance(item, dict):
            continue
        for method, operation in item.items():
            if method.upper() in HTTP_METHODS and isinstance(operation, dict) and operation.get("operationId"):
                found[str(operation["operationId"])] = (method.upper(), template, operation)
    return found


def _path_pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")


def compile_delivery(document: PosDict, folder: Path, file: str, problems: ProblemList,
                     set_name: str = "") -> DeliveryPlan | None:
    """Validate (cerberus, then cross-references) and compile a delivery section."""
    if not check_shape(document, DELIVERY_SCHEMA, file, problems):
        return None
    before = len(problems.problems)

    spec: dict[str, Any] | None = None
    spec_path: Path | None = None
    if "spec" in document:
        spec_path = folder / str(document["spec"])
        if not spec_path.resolve().is_relative_to(folder.resolve()):
            problems.add(value_at(document, "spec"), "spec must be a file inside the mapping set's folder")
        else:
            spec = _load_spec(spec_path, value_at(document, "spec"), problems)
    operations = _spec_operations(spec) if spec is not None else {}
    scopes_extension = str(document["scopes"]) if "scopes" in document else None

    endpoints: dict[str, Endpoint] = {}
    declared = document.get("endpoints") or PosDict()
    for name, raw in declared.items():
        method, _, path = str(raw["request"]).partition(" ")
        endpoint = Endpoint(name, method, path, _path_pattern(path))
        if "rate_limit" in raw:
            endpoint.rate_windows = _rate_windows(raw["rate_limit"], problems)
        endpoint.lane = str(raw["lane"]) if "lane" in raw else None
        if "subject" in raw:
            endpoint.subject = compile_selector(raw["subject"], value_at(raw, "subject"), f"endpoint {name} subject",
                                                problems)
        if spec is not None:
            operation = operations.get(name)
            if operation is None:
                shown = spec_path.name if spec_path is not None else "the spec"
                problems.add(key_at(declared, name),
                             f"endpoint {name}: no operation with operationId {name!r} in {shown}")
            elif (operation[0], operation[1]) != (method, path):
                problems.add(value_at(raw, "request"), f"endpoint {name}: the spec has {operation[0]} {operation[1]}, "
                                                  f"not {method} {path}")
            elif scopes_extension is not None:
                scopes = operation[2].get(scopes_extension) or []
                endpoint.scopes = [str(s) for s in scopes] if isinstance(scopes, list) else []
        if endpoint.lane is not None and SEPARATOR in endpoint.lane:
            problems.add(value_at(raw, "lane"), f"endpoint {name}: lane {endpoint.lane!r}: a lane's name cannot "
                                                f"hold {SEPARATOR!r} (it names the parts of a split lane)")
        endpoints[name] = endpoint

    identifiers = [str(x) for x in document.get("subject_identifiers") or []]
    order = document.get("order") or PosDict()
    same_event = bool(order.get("same_event", True))
    same_subject = bool(order.get("same_subject", True))
    if same_subject and any(e.subject is not None for e in endpoints.values()) and not identifiers:
        problems.add(value_at(document, "order") if "order" in document else document.position,
                     "order.same_subject needs subject_identifiers (which attributes identify a subject)")

    batches: list[BatchSpec] = []
    batching = document.get("batching") or PosDict()
    sources: dict[str, str] = {}
    for name, raw in batching.items():
        batch = _compile_batch(name, raw, endpoints, problems)
        if batch is None:
            continue
        if batch.source.name in sources:
            problems.add(value_at(raw, "from"), f"batching {name}: {batch.source.name} is already merged by "
                                           f"batching {sources[batch.source.name]}")
            continue
        sources[batch.source.name] = name
        batches.append(batch)
    lane_partitions = _lane_partitions(order, endpoints, batches, problems)

    retry = RetryPolicy()
    raw_retry = document.get("retry") or PosDict()
    if "statuses" in raw_retry:
        retry.statuses = frozenset(int(s) for s in raw_retry["statuses"])
    for key in ("network_errors", "max_attempts", "max_rate_limited", "retry_after_header", "timeout",
                "rate_limit_margin"):
        if key in raw_retry:
            setattr(retry, key, type(getattr(retry, key))(raw_retry[key]))
    backoff = raw_retry.get("backoff") or {}
    for key, attribute in (("initial", "initial"), ("multiplier", "multiplier"), ("max", "max_delay"),
                           ("jitter", "jitter")):
        if key in backoff:
            setattr(retry, attribute, float(backoff[key]))

    stop = {int(k): str(v) for k, v in (document.get("stop") or {}).items()}
    for status in stop:
        if status in retry.statuses:
            problems.add(value_at(document, "stop"), f"stop {status}: the status is also in retry.statuses")

    item_status: int | None = None
    selectors: dict[str, Selector | None] = {"list": None, "pointer": None, "detail": None}
    if "errors" in document:
        raw_errors = document["errors"]
        item_status = int(raw_errors["item_status"]) if "item_status" in raw_errors else None
        for key in selectors:
            if key in raw_errors:
                selectors[key] = compile_selector(raw_errors[key], value_at(raw_errors, key), f"errors.{key}", problems)
        if item_status is not None and "pointer" not in raw_errors:
            problems.add(value_at(raw_errors, "item_status"), "errors.item_status needs errors.pointer")

    parts = {key: compiler(document.get(key), endpoints, problems) for key, compiler in DELIVERY_PARTS.items()}
    key_check = _compile_check(document.get("check"), endpoints, problems)

    if len(problems.problems) > before:
        return None
    return DeliveryPlan(
        set_name=set_name, folder=folder, spec_path=spec_path, scopes_extension=scopes_extension,
        subject_identifiers=identifiers, endpoints=endpoints, batches=batches, same_event=same_event,
        same_subject=same_subject, retry=retry, stop=stop, item_error_status=item_status,
        error_list=selectors["list"], error_pointer=selectors["pointer"], error_detail=selectors["detail"],
        key_check=key_check, parts=parts, lane_partitions=lane_partitions,
    )


def _compile_batch(name: str, raw: PosDict, endpoints: dict[str, Endpoint], problems: ProblemList) -> BatchSpec | None:
    ok = True
    source = endpoints.get(str(raw["from"]))
    if source is None:
        problems.add(value_at(raw, "from"),
                     f"batching {name}: no endpoint {raw['from']!r} (declare it under endpoints)")
        ok = False
    target_name = str(raw.get("to", raw["from"]))
    target = endpoints.get(target_name)
    if target is None:
        problems.add(value_at(raw, "to" if "to" in raw else "from"),
                     f"batching {name}: no endpoint {target_name!r} (declare it under endpoints)")
        ok = False
    elif "{" in target.path and "to" in raw:
        problems.add(value_at(raw, "to"), f"batching {name}: a bulk endpoint with path parameters is not supported")
        ok = False
    try:
        item_path, item_is_list = parse_path(str(raw["item"]))
    except ValueError as exc:
        problems.add(value_at(raw, "item"), f"batching {name}: item: {exc}")
        return None
    group_by: tuple[str, ...] | None = None
    if "group_by" in raw:
        try:
            group_by, group_list = parse_path(str(raw["group_by"]))
        except ValueError as exc:
            problems.add(value_at(raw, "group_by"), f"batching {name}: group_by: {exc}")
            return None
        if group_list:
            problems.add(value_at(raw, "group_by"), f"batching {name}: group_by names one value, not a list ([])")
            ok = False
    unique: list[tuple[str, ...]] = []
    for i, text in enumerate(raw.get("unique") or []):
        try:
            parts, is_list = parse_path(str(text))
        except ValueError as exc:
            problems.add(raw["unique"].item_places[i].position, f"batching {name}: unique: {exc}")
            ok = False
            continue
        unique.append(parts)
    envelope: Any = None
    if "envelope" in raw:
        if item_is_list:
            problems.add(value_at(raw, "envelope"), f"batching {name}: an envelope takes whole items (item without [])")
            ok = False
        envelope = _compile_envelope(raw["envelope"], group_by is not None, name, problems)
        if envelope is None:
            ok = False
    else:
        if not item_is_list:
            problems.add(value_at(raw, "item"), f"batching {name}: without an envelope, item must name a list "
                                           "(ending in []) whose elements the requests' bodies concatenate")
            ok = False
        if "to" in raw and str(raw["to"]) != str(raw["from"]):
            problems.add(value_at(raw, "to"), f"batching {name}: merging into another endpoint needs an envelope")
            ok = False
        if group_by is not None:
            problems.add(value_at(raw, "group_by"), f"batching {name}: group_by needs an envelope with $each_group")
            ok = False
    one_per_subject = str(raw["one_per_subject"]) if "one_per_subject" in raw else None
    if one_per_subject is not None and (source is None or source.subject is None or item_is_list
                                        or group_by is not None):
        problems.add(value_at(raw, "one_per_subject"), f"batching {name}: one_per_subject needs a `from` endpoint "
                                                  "that declares its subject, and whole items (no [] nor group_by)")
        ok = False
    job = _compile_job(name, raw["job"], endpoints, problems) if "job" in raw else None
    if "job" in raw and job is None:
        ok = False
    if not ok or source is None or target is None:
        return None
    return BatchSpec(name=name, source=source, target=target, max_items=int(raw["max_items"]),
                     max_bytes=int(raw.get("max_bytes", 5_000_000)), item_path=item_path,
                     item_is_list=item_is_list, group_by=group_by, unique=unique, envelope=envelope,
                     position=raw.position,
                     when_backlog=int(raw["when_backlog"]) if "when_backlog" in raw else None,
                     one_per_subject=one_per_subject, job=job)


def _job_endpoint(batch: str, raw: PosDict, key: str, endpoints: dict[str, Endpoint],
                  problems: ProblemList) -> Endpoint | None:
    """A job's poll or errors endpoint: declared, GET, with exactly one path parameter (the job's id)."""
    endpoint = endpoints.get(str(raw[key]))
    if endpoint is None:
        problems.add(value_at(raw, key), f"batching {batch}: job.{key}: no endpoint {raw[key]!r} "
                                    "(declare it under endpoints)")
        return None
    if endpoint.method != "GET" or endpoint.path.count("{") != 1:
        problems.add(value_at(raw, key), f"batching {batch}: job.{key}: {endpoint.name} must be a GET with exactly one "
                                    "path parameter (the job's id)")
        return None
    return endpoint


def _compile_job(batch: str, raw: PosDict, endpoints: dict[str, Endpoint], problems: ProblemList) -> JobSpec | None:
    before = len(problems.problems)
    poll = _job_endpoint(batch, raw, "poll", endpoints, problems)
    errors = _job_endpoint(batch, raw, "errors", endpoints, problems) if "errors" in raw else None
    selectors: dict[str, Selector | None] = {}
    for key in ("id", "status", "failed_count", "error_list", "error_item", "error_pointer", "error_detail",
                "next_page"):
        selectors[key] = (compile_selector(raw[key], value_at(raw, key), f"batching {batch}: job.{key}", problems)
                          if key in raw else None)
    done = frozenset(str(s) for s in raw["done"])
    failed = frozenset(str(s) for s in raw.get("failed") or [])
    if done & failed:
        problems.add(value_at(raw, "failed"), f"batching {batch}: job: {', '.join(sorted(done & failed))} "
                                         "cannot be both done and failed")
    if "errors" in raw and ("error_list" not in raw or ("error_item" not in raw and "error_pointer" not in raw)):
        problems.add(value_at(raw, "errors"), f"batching {batch}: job.errors needs error_list and error_item or "
                                         "error_pointer (how an error names its row)")
    if "failed_count" in raw and "errors" not in raw:
        problems.add(value_at(raw, "failed_count"), f"batching {batch}: job.failed_count needs job.errors "
                                               "(where the refused rows are listed)")
    identifier, status = selectors["id"], selectors["status"]
    if len(problems.problems) > before or poll is None or identifier is None or status is None:
        return None
    return JobSpec(id=identifier, poll=poll, status=status, done=done, failed=failed,
                   failed_count=selectors["failed_count"], errors=errors, error_list=selectors["error_list"],
                   error_item=selectors["error_item"], error_pointer=selectors["error_pointer"],
                   error_detail=selectors["error_detail"], next_page=selectors["next_page"],
                   interval=float(raw.get("interval", 1.0)))


def _compile_envelope(node: Any, grouped: bool, name: str, problems: ProblemList) -> Any:
    """YAML envelope → a tree with Markers; checks that items (and groups) appear exactly once."""
    counts = {"items": 0, "group": 0, "each_group": 0}
    ok = True

    def walk(value: Any, in_group: bool, position: Position) -> Any:
        nonlocal ok
        if isinstance(value, str):
            if value == "$items":
                counts["items"] += 1
                if grouped and not in_group:
                    problems.add(position, f"batching {name}: $items must be inside $each_group (group_by is set)")
                    ok = False
                return ITEMS
            if value == "$group":
                counts["group"] += 1
                if not in_group:
                    problems.add(position, f"batching {name}: $group is only meaningful inside $each_group")
                    ok = False
                return GROUP
            if value.startswith("$") and not value.startswith("$$"):
                problems.add(position, f"batching {name}: unknown placeholder {value!r} "
                                       "(known: $items, $group, $each_group; write $$ for a literal $)")
                ok = False
            return value[1:] if value.startswith("$$") else value
        if isinstance(value, PosDict):
            if "$each_group" in value:
                counts["each_group"] += 1
                if len(value) != 1 or in_group or not grouped:
                    problems.add(value.position, f"batching {name}: $each_group must be the only key of its "
                                                 "mapping, not nested, and needs group_by")
                    ok = False
                return Marker("each_group", walk(value["$each_group"], True, value_at(value, "$each_group")))
            return {k: walk(v, in_group, value_at(value, k)) for k, v in value.items()}
        if isinstance(value, PosList):
            return [walk(v, in_group, value.item_places[i].position) for i, v in enumerate(value)]
        return value

    compiled = walk(node, False, node.position)
    expected_groups = 1 if grouped else 0
    if counts["items"] != 1 or counts["each_group"] != expected_groups or counts["group"] != expected_groups:
        problems.add(node.position, f"batching {name}: the envelope needs exactly one $items"
                                    + (", one $each_group and one $group" if grouped else ""))
        ok = False
    return compiled if ok else None


def _compile_check(node: Any, endpoints: dict[str, Endpoint], problems: ProblemList) -> KeyCheck | None:
    if not isinstance(node, PosDict):
        return None
    endpoint = endpoints.get(str(node["endpoint"]))
    if endpoint is None:
        problems.add(value_at(node, "endpoint"), f"check.endpoint: no endpoint {node['endpoint']!r} "
                                            "(declare it under endpoints)")
        return None
    shows = (compile_selector(node["shows"], value_at(node, "shows"), "check.shows", problems)
             if "shows" in node else None)
    return KeyCheck(endpoint, shows)


register_section_compiler("delivery", compile_delivery)
