"""JSON text out: what is printed or sent is strict JSON and valid UTF-8, whatever a rule built.

Events are checked when they are read (events.py), so what is not strict JSON can only come from a
mapping set (a constant, a function's result); such a request rejects its event instead of being
printed or sent.

Text is written by msgspec (5-6x faster than the standard library here; CONTRIBUTING.md "Libraries,
and why"), whose output is the standard library's except that it writes NaN and Infinity as `null`
and a float like 1e16 without the `+`. So a text that holds `null`, or a value msgspec refuses (a
lone surrogate, a type it does not know), is written again by the standard library, which raises
NotStrictJSON saying what is wrong: the fast path can only ever take the same values.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_format = msgspec.json.format
_SORTED = msgspec.json.Encoder(order="sorted").encode


class NotStrictJSON(ValueError):
    """A value that has no strict JSON text: NaN or Infinity, or a string that is not Unicode."""


def strict_bytes(value: Any, compact: bool = False) -> bytes:
    """The value's JSON text as UTF-8 (`compact`: no spaces after , and :), what strict_dumps
    returns, encoded; raises NotStrictJSON the same way."""
    try:
        data = _encode(value)
    except (TypeError, ValueError, OverflowError):  # (UnicodeEncodeError is a ValueError)
        return strict_dumps_slowly(value, compact).encode("utf-8")
    if b"null" in data:  # perhaps a NaN or an Infinity, which msgspec writes as null
        return strict_dumps_slowly(value, compact).encode("utf-8")
    return data if compact else _format(data, indent=0)


def strict_dumps(value: Any, compact: bool = False) -> str:
    """The value's JSON text; raises NotStrictJSON saying what in it JSON does not allow."""
    return strict_bytes(value, compact).decode("utf-8")


def compact_bytes(value: Any) -> bytes:
    """Compact JSON text (UTF-8) of a value that came from JSON text (nothing in it JSON does not allow)."""
    try:
        return _encode(value)
    except (TypeError, ValueError, OverflowError):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def compact_text(value: Any) -> str:
    """compact_bytes as text."""
    try:
        return _encode(value).decode("utf-8")
    except (TypeError, ValueError, OverflowError):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def sorted_text(value: Any) -> str:
    """compact_text with keys sorted: equal values give equal text."""
    try:
        return _SORTED(value).decode("utf-8")
    except (TypeError, ValueError, OverflowError):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def decode_stored(text: str) -> Any:
    """A JSON text this program wrote (strict JSON: a stored request body), decoded."""
    return _decode(text)


def strict_dumps_slowly(value: Any, compact: bool = False) -> str:
    """strict_dumps by the standard library, which says what is wrong."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":") if compact else None)
    except ValueError:
        raise NotStrictJSON("it holds NaN or Infinity, which JSON does not allow") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NotStrictJSON(f"it holds a string that is not Unicode text (\\u{ord(text[exc.start]):04x})") from None
    return text


def unsendable(rule: str, problem: NotStrictJSON) -> str:
    """Why an event is rejected when one of its requests has no strict JSON text."""
    return f"rule '{rule}' built a request that cannot be sent: {problem}"


def printable(text: str) -> str:
    """The text, or, when it holds what UTF-8 cannot (a lone surrogate), the same with escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


# The values whose text msgspec writes exactly as json.dumps does (floats differ: 1e16 against 1e+16).
_SAME_TEXT_TYPES = frozenset((str, int, bool, type(None)))
_STR_TYPE = frozenset((str,))


def json_line(value: Any) -> str:
    """One line of a report (errors, dead letters): UTF-8 printable whatever it quotes."""
    # (the types are checked by frozenset.issuperset, without a Python call per item)
    if type(value) is dict and _STR_TYPE.issuperset(map(type, value)) \
            and _SAME_TEXT_TYPES.issuperset(map(type, value.values())):
        # A flat line (most error lines): msgspec's text, spaced as json.dumps spaces it. A lone
        # surrogate makes it raise, and the line is written the careful way below.
        try:
            return _format(_encode(value), indent=0).decode("utf-8")
        except ValueError:  # (UnicodeEncodeError)
            pass
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value)  # (\u escapes for what UTF-8 cannot hold)
    return text
