"""Reading Segment events: one JSON object, a JSON array, NDJSON, or a batch envelope {"batch": [...]}.

NDJSON is streamed line by line, so memory does not grow with the input. Each line stands alone: a
line that is not UTF-8, not JSON, or not a sane event becomes an InputError at its event index and
reading goes on with the next line. Which format the input is does not depend on what the first line
holds: when the first non-blank line is a complete JSON value and another line follows, the input is
NDJSON; a first line that is the start of a longer JSON text makes it one JSON document.

Events are also checked for what JSON allows but no destination can take (`event_problem`): nesting
deeper than MAX_DEPTH, numbers of more than MAX_NUMBER_DIGITS digits or beyond a double's range,
NaN and Infinity, strings that are not Unicode text (a lone surrogate such as "\\ud800"). The check
costs one regular-expression scan of the text when the text has none of them.

Text is decoded by msgspec first (twice as fast as the standard library here; CONTRIBUTING.md
"Libraries, and why"). It refuses everything the standard library refuses, and also NaN, numbers
beyond a double's range and lone surrogates; whatever it refuses, or whatever looks unusual (a run of
65 digits, many brackets, an escaped surrogate), is decoded again by the standard library, which
says what is wrong and where. So msgspec only ever decodes text that both take the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

import msgspec

# Segment's message types: the Tracking API's six calls, and `delete` (a user asks to be forgotten).
MESSAGE_TYPES = ("identify", "track", "page", "screen", "group", "alias", "delete")
MAX_DEPTH = 200  # objects and arrays inside each other
MAX_NUMBER_DIGITS = 64  # an integer's digits (a double holds 17 significant ones)
KEPT_RAW_CHARACTERS = 256 * 1024  # how much of a bad line is kept with its rejection

_BOM = "\ufeff"
# An escaped surrogate in JSON text: "\ud83d\ude00" is an emoji, a lone "\ud800" is not text. Events
# whose text has one, or many brackets, or a number the decoder flags, are walked by event_problem.
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
# Nesting too deep for the decoder is cut out of the text before decoding and replaced by this string.
_TOO_DEEP = "\x00nested too deep\x00"
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
# What sends a text that msgspec decoded to the careful path all the same (see the docstring): an
# escaped surrogate, or a run of more than MAX_NUMBER_DIGITS digits (found as a run of "0" once every
# digit is "0": bytes.translate and `in` cost far less than a regular expression counting digits).
# The same translation makes every "[" a "{", so that one count bounds the nesting.
_ESCAPED_SURROGATE_BYTES = re.compile(_ESCAPED_SURROGATE.pattern.encode("ascii"))
_DIGITS_AS_ZERO_OPENERS_AS_BRACE = bytes.maketrans(b"123456789[", b"000000000{")
_TOO_MANY_DIGITS = b"0" * (MAX_NUMBER_DIGITS + 1)
_fast_decode = msgspec.json.Decoder().decode
NOT_QUICK: Any = object()  # quick_decode's answer for a text it leaves to the careful path


@dataclass
class InputError:
    """An input event that could not be read, or that no destination can take; `reason` says where
    and why. `raw` is its text (at most KEPT_RAW_CHARACTERS, invalid bytes shown as \\xNN)."""

    reason: str
    raw: str | None = None
    message_id: str | None = None


class _Unusual(Exception):
    """A number the fast decoder does not take; the text is decoded again, marking it."""


class _BadNumber:
    """Stands for a number that no destination takes, until event_problem reports it with its field."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"<{self.reason}>"


def _int_or_refuse(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS and len(text) - (text[0] == "-") > MAX_NUMBER_DIGITS:
        raise _Unusual
    return int(text)


def _float_or_refuse(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # infinite: too large for a double
        raise _Unusual
    return value


def _refuse(name: str) -> Any:
    raise _Unusual


def _int_or_mark(text: str) -> Any:
    digits = len(text.lstrip("-"))
    if digits > MAX_NUMBER_DIGITS:
        return _BadNumber(f"a number of {digits} digits; the limit is {MAX_NUMBER_DIGITS}")
    return int(text)


def _float_or_mark(text: str) -> Any:
    value = float(text)
    if value - value != 0.0:
        shown = text if len(text) <= 40 else text[:20] + "…"
        return _BadNumber(f"{shown} is beyond a double's range")
    return value


def _mark_constant(name: str) -> Any:
    return _BadNumber(f"{name} is not a number JSON allows")


# Numbers are checked as they are decoded: the hooks cost a call per number, nothing per event.
_decoder = json.JSONDecoder(parse_int=_int_or_refuse, parse_float=_float_or_refuse, parse_constant=_refuse)
_marking_decoder = json.JSONDecoder(parse_int=_int_or_mark, parse_float=_float_or_mark, parse_constant=_mark_constant)


def _cut_deep(text: str) -> str:
    """The text with every object or array nested deeper than MAX_DEPTH replaced by a marker string."""
    depth = 0
    parts: list[str] = []
    last = 0
    cut_from = -1
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token[0] == '"':
            continue
        if token in "[{":
            depth += 1
            if depth == MAX_DEPTH + 1:
                cut_from = match.start()
        else:
            if depth == MAX_DEPTH + 1 and cut_from >= 0:
                parts += [text[last:cut_from], json.dumps(_TOO_DEEP)]
                last = match.end()
                cut_from = -1
            depth -= 1
    parts.append(text[last:])
    return "".join(parts)


def quick_decode(data: str | bytes) -> Any:
    """The value of a plain JSON text (one decode_json would find not suspect), or NOT_QUICK."""
    try:
        if isinstance(data, str):
            data = data.encode("utf-8")
        value = _fast_decode(data)
    except (msgspec.DecodeError, RecursionError, ValueError):  # (UnicodeEncodeError is a ValueError)
        return NOT_QUICK
    if b"\\" in data and _ESCAPED_SURROGATE_BYTES.search(data) is not None:  # (most texts escape nothing)
        return NOT_QUICK
    plain = data.translate(_DIGITS_AS_ZERO_OPENERS_AS_BRACE)
    if _TOO_MANY_DIGITS in plain:
        return NOT_QUICK
    # Counting brackets bounds the depth from above, for free; a text with more of them (a batch of
    # a hundred events has hundreds) has its decoded value measured, which costs a fraction of the
    # careful path's decoding and walking.
    if plain.count(b"{") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        return NOT_QUICK
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` deep in a decoded value (its own level is 1)."""
    level = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for node in level:
            below += [child for child in (node.values() if type(node) is dict else node)
                      if type(child) is dict or type(child) is list]
        level = below
    return False


def decode_json(text: str) -> tuple[Any, bool]:
    """Untrusted JSON text decoded: (value, suspect). Never a RecursionError or a ValueError for a
    number: nesting too deep and numbers no destination takes are left in the value as markers, and
    `suspect` is then True, as it is when the text may hold a string that is not Unicode; pass such a
    value to event_problem. Raises json.JSONDecodeError for text that is not JSON."""
    quick = quick_decode(text)
    if quick is not NOT_QUICK:
        return quick, False
    try:
        value = _decoder.decode(text)
    except json.JSONDecodeError:
        raise
    except (_Unusual, RecursionError, ValueError):
        return _marking_decoder.decode(_cut_deep(text)), True
    suspect = _ESCAPED_SURROGATE.search(text) is not None or text.count("{") + text.count("[") > MAX_DEPTH
    return value, suspect


def _field(path: list[str | int]) -> str:
    out = ""
    if len(path) > 8:  # a deep path: its start, and how deep
        return _field(path[:4]) + f"… ({len(path)} levels down)"
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out or "the event"


def _unicode_problem(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        if 0xDC80 <= code <= 0xDCFF:
            return f"holds a byte that is not UTF-8 (0x{code - 0xDC00:02x})"
        return f"holds a lone surrogate (\\u{code:04x}), which is not Unicode text"
    return None


def event_problem(value: Any) -> str | None:
    """What in a decoded event no destination can take, with the field where it is; None when nothing."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if node == _TOO_DEEP:
                return f"{_field(path)}: nested deeper than {MAX_DEPTH} levels (the limit)"
            problem = _unicode_problem(node)
            if problem:
                return f"{_field(path)}: the string {problem}"
        elif isinstance(node, dict):
            if len(path) >= MAX_DEPTH:
                return f"{_field(path)}: nested deeper than {MAX_DEPTH} levels (the limit)"
            for key in node:
                problem = _unicode_problem(key)
                if problem:
                    return f"{_field(path) if path else 'the event'}: a key {problem}"
            stack.extend((node[key], [*path, key]) for key in reversed(node))
        elif isinstance(node, list):
            if len(path) >= MAX_DEPTH:
                return f"{_field(path)}: nested deeper than {MAX_DEPTH} levels (the limit)"
            stack.extend((node[index], [*path, index]) for index in range(len(node) - 1, -1, -1))
        elif isinstance(node, _BadNumber):
            return f"{_field(path)}: {node.reason}"
    return None


def _kept(raw: str) -> str:
    return raw if len(raw) <= KEPT_RAW_CHARACTERS else raw[:KEPT_RAW_CHARACTERS] + "…"


def _shown(text: str) -> str:
    """Text that can be stored and printed: invalid characters shown as escapes, long text cut."""
    return _kept(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def checked_event(value: Any, where: str = "", text: str | None = None) -> Any:
    """The decoded event, or an InputError when it holds what no destination takes (call it for the
    events of a suspect text; `text`, the event's own text when there is one, is kept with the error)."""
    problem = event_problem(value)
    return value if problem is None else input_error(f"{where}{problem}", value, text)


def input_error(reason: str, value: Any, text: str | None = None) -> InputError:
    """The rejection of a decoded value, keeping its text (`text`, or the value's JSON) and messageId."""
    message_id = value.get("messageId") if isinstance(value, dict) else None
    return InputError(reason, _shown(text if text is not None else _raw_text(value)),
                      message_id if isinstance(message_id, str) else None)


def _raw_text(event: Any) -> str:
    """An event's JSON text, for one taken out of a larger document."""
    return json.dumps(event, ensure_ascii=False, default=repr)


def _unwrap(document: Any) -> list[Any]:
    if isinstance(document, list):
        return document
    if isinstance(document, dict) and isinstance(document.get("batch"), list) and "type" not in document:
        return list(document["batch"])
    return [document]


def _text(raw: str | bytes, number: int) -> str | InputError:
    """A line as text, without its line ending: bytes decoded as UTF-8, a byte-order mark at the start
    of the input dropped."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return InputError(f"input line {number}: not UTF-8 at byte {exc.start + 1} of the line",
                              _kept(raw.rstrip(b"\r\n").decode("utf-8", "backslashreplace")))
    else:
        text = raw
    text = text.rstrip("\r\n")
    return text[1:] if number == 1 and text.startswith(_BOM) else text


def _line_events(text: str | InputError, number: int) -> list[Any]:
    """The events one NDJSON line holds (a batch envelope holds several), or its InputError."""
    if isinstance(text, InputError):
        return [text]
    try:
        value, suspect = decode_json(text)
    except json.JSONDecodeError as exc:
        return [InputError(f"input line {number}: not JSON: {exc.msg}, column {exc.colno}", _shown(text))]
    if suspect:
        value = checked_event(value, f"input line {number}: ", text)
    return _unwrap(value) if isinstance(value, dict) and "batch" in value else [value]


def _incomplete(text: str) -> bool:
    """Whether a line is the start of a longer JSON text (it ends before its value does)."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{":
        return False
    try:
        decode_json(stripped)
    except json.JSONDecodeError as exc:
        return exc.pos >= len(stripped)
    return False


@dataclass
class _Line:
    number: int  # from 1
    text: str | InputError  # an InputError when the line is not UTF-8
    lenient: str  # the text, with bytes that are not UTF-8 as lone surrogates (which the check reports)


def _lines(stream: IO[str] | IO[bytes]) -> Iterator[_Line]:
    """The input's non-blank lines."""
    for number, raw in enumerate(cast("Iterable[str | bytes]", stream), 1):
        text = _text(raw, number)
        if isinstance(text, str):
            if text.strip():
                yield _Line(number, text, text)
        else:
            assert isinstance(raw, bytes)
            yield _Line(number, text, raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape"))


def read_events(stream: IO[str] | IO[bytes]) -> Iterator[Any]:
    """Yield each input event (or an InputError in its place), in order. Read a binary stream where
    you can: then a line that is not UTF-8 is rejected alone instead of stopping the reading."""
    lines = _lines(stream)
    first = next(lines, None)
    if first is None:
        return
    if isinstance(first.text, str) and _incomplete(first.text):
        yield from _document([first, *lines])
        return
    second = next(lines, None)
    if second is None and isinstance(first.text, str):  # one line: one JSON text
        yield from _document([first])
        return
    yield from _line_events(first.text, first.number)
    if second is None:
        return
    yield from _line_events(second.text, second.number)
    # The rest, straight from the stream (`lines` stopped right after the second line): a plain
    # line is decoded at once; any other goes the careful way, as the first two did.
    for number, raw in enumerate(cast("Iterable[str | bytes]", stream), second.number + 1):
        value = quick_decode(raw)
        if value is NOT_QUICK:
            text = _text(raw, number)
            if isinstance(text, InputError) or text.strip():
                yield from _line_events(text, number)
        elif type(value) is dict and "batch" in value:
            yield from _unwrap(value)
        else:
            yield value


def _document(lines: list[_Line]) -> Iterator[Any]:
    """One JSON text (an object, an array, a batch envelope; on one line or several), or, when that
    text is not JSON but most of its lines are on their own, NDJSON whose first line is broken."""
    text = "\n".join(line.lenient for line in lines)
    try:
        document, suspect = decode_json(text)
    except json.JSONDecodeError as exc:
        rest = lines[1:]
        if rest and 2 * sum(_stands_alone(line.text) for line in rest) > len(rest):
            for line in lines:
                yield from _line_events(line.text, line.number)
            return
        number = lines[min(exc.lineno, len(lines)) - 1].number
        yield InputError(f"input is not JSON, a JSON array or NDJSON: line {number}, column {exc.colno}: {exc.msg}",
                         _shown(text) if len(lines) == 1 else None)
        return
    if not suspect and not any(isinstance(line.text, InputError) for line in lines):
        yield from _unwrap(document)
        return
    for event in _unwrap(document):
        yield checked_event(event)


def _stands_alone(line: str | InputError) -> bool:
    if isinstance(line, InputError):
        return True
    try:
        return isinstance(decode_json(line)[0], dict)
    except json.JSONDecodeError:
        return False
