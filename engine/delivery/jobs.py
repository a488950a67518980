"""Asynchronous jobs: what a bulk call's answer, a job's state and its error list say.

A batching whose bulk endpoint starts a job declares `job:` (see config.JobSpec): where the 2xx
answer names the job, the endpoint that tells its state, the states that end it, and the endpoint
listing the rows it refused. The worker polls until an end state; these helpers read the answers
and tie each listed error to the units whose row it refused — by the row as sent (`error_item`),
by its JSON pointer in the bulk body (`error_pointer`), or by the identifiers of its subject.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from .batching import Rendered, canonical, single_request, units_named
from .config import BatchSpec, Endpoint, JobSpec


def job_path(endpoint: Endpoint, job_id: str) -> str:
    """The endpoint's path with its one parameter set to the job's id."""
    head, _, rest = endpoint.path.partition("{")
    return head + quote(job_id, safe="") + rest.partition("}")[2]


def same_origin_path(url: str) -> str:
    """A URL the API handed out (a next page), as a path on the base URL: the key is never sent elsewhere."""
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def read_json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def job_id(job: JobSpec, text: str | None) -> str | None:
    found = job.id.search(read_json(text))
    return str(found) if isinstance(found, (str, int)) and str(found) else None


@dataclass
class JobState:
    status: str | None
    ended: bool
    failed: bool  # ended without importing anything
    failed_count: int


def job_state(job: JobSpec, text: str | None) -> JobState:
    answer = read_json(text)
    status = job.status.search(answer)
    status = str(status) if isinstance(status, str) else None
    count = job.failed_count.search(answer) if job.failed_count is not None else None
    failed_count = count if isinstance(count, int) and not isinstance(count, bool) else 0
    ended = status in job.done or status in job.failed
    return JobState(status, ended, status in job.failed, failed_count)


@dataclass
class ErrorPage:
    errors: list[Any]
    next_url: str | None


def error_page(job: JobSpec, text: str | None) -> ErrorPage:
    answer = read_json(text)
    found = job.error_list.search(answer) if job.error_list is not None else None
    following = job.next_page.search(answer) if job.next_page is not None else None
    return ErrorPage(found if isinstance(found, list) else [],
                     following if isinstance(following, str) and following else None)


@dataclass
class Attribution:
    by_unit: dict[int, list[Any]] = field(default_factory=dict)  # a row's unit → the errors about it
    unmatched: list[Any] = field(default_factory=list)


def attribute_errors(job: JobSpec, spec: BatchSpec, rendered: Rendered, identifiers: list[str],
                     errors: list[Any]) -> Attribution:
    """Which row (its first unit) each listed error is about."""
    body = read_json(rendered.body.decode())
    by_text: dict[str, int] = {}
    by_identity: dict[str, int] = {}
    for pointer, row_unit in rendered.item_units.items():
        row = _at_pointer(body, pointer)
        by_text[canonical(row)] = row_unit
        for key in _identity(spec, row, identifiers):
            by_identity.setdefault(key, row_unit)
    result = Attribution()
    for error in errors:
        unit: int | None = None
        row = job.error_item.search(error) if job.error_item is not None else None
        if isinstance(row, dict):
            unit = by_text.get(canonical(row))
            if unit is None:
                unit = next((by_identity[k] for k in _identity(spec, row, identifiers) if k in by_identity), None)
        if unit is None and job.error_pointer is not None:
            pointer = job.error_pointer.search(error)
            named, all_named = units_named(rendered, [pointer] if isinstance(pointer, str) else [])
            if all_named and len(named) == 1:
                unit = next(iter(named))
        if unit is None:
            result.unmatched.append(error)
        else:
            result.by_unit.setdefault(unit, []).append(error)
    return result


def _identity(spec: BatchSpec, row: Any, identifiers: list[str]) -> list[str]:
    keys = []
    for subject in spec.source.subjects(single_request(spec, row)):
        keys += [f"{name}={subject[name]}" for name in identifiers if subject.get(name) not in (None, "")]
    return keys


def _at_pointer(value: Any, pointer: str) -> Any:
    for step in pointer.split("/")[1:]:
        step = step.replace("~1", "/").replace("~0", "~")
        if isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        elif isinstance(value, dict):
            value = value.get(step)
        else:
            return None
    return value
