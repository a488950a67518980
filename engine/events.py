"""Reading Segment events: one JSON object, a JSON array, NDJSON, or a batch envelope {"batch": [...]}.

NDJSON is streamed line by line, so memory does not grow with the input. A line that is not JSON
becomes an InputError at its event index; reading goes on with the next line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any


@dataclass
class InputError:
    """An input event that could not be read; `reason` says where and why."""

    reason: str


def _unwrap(document: Any) -> list[Any]:
    if isinstance(document, list):
        return document
    if isinstance(document, dict) and isinstance(document.get("batch"), list) and "type" not in document:
        return list(document["batch"])
    return [document]


def read_events(stream: IO[str]) -> Iterator[Any]:
    """Yield each input event (or an InputError in its place), in order."""
    first_line = ""
    line_number = 0
    for raw in stream:
        line_number += 1
        if raw.strip():
            first_line = raw
            break
    if not first_line:
        return
    if first_line.lstrip().startswith("{"):
        try:
            document = json.loads(first_line)
        except json.JSONDecodeError:
            document = None
        if document is not None:
            rest = stream.readline()
            rest_number = line_number + 1
            while rest and not rest.strip():
                rest = stream.readline()
                rest_number += 1
            if not rest:  # a single object (or batch envelope) on one line
                yield from _unwrap(document)
                return
            # NDJSON: the first line was one event; stream the others.
            yield from _unwrap(document) if isinstance(document, dict) and "batch" in document else [document]
            yield from _ndjson_lines(rest, stream, rest_number)
            return
    text = first_line + stream.read()
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        yield InputError(f"input is not JSON, a JSON array or NDJSON: line {exc.lineno + line_number - 1}, "
                         f"column {exc.colno}: {exc.msg}")
        return
    yield from _unwrap(document)


def _ndjson_lines(first: str, stream: IO[str], first_number: int) -> Iterator[Any]:
    number = first_number
    line = first
    while line:
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                yield InputError(f"input line {number}: not JSON ({exc.msg} at column {exc.colno})")
        line = stream.readline()
        number += 1
