"""JSON text out: what is printed or sent is strict JSON and valid UTF-8, whatever a rule built.

Events are checked when they are read (events.py), so what is not strict JSON can only come from a
mapping set (a constant, a function's result); such a request rejects its event instead of being
printed or sent.
"""

from __future__ import annotations

import json
from typing import Any


class NotStrictJSON(ValueError):
    """A value that has no strict JSON text: NaN or Infinity, or a string that is not Unicode."""


def strict_dumps(value: Any, compact: bool = False) -> str:
    """The value's JSON text; raises NotStrictJSON saying what in it JSON does not allow."""
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


def json_line(value: Any) -> str:
    """One line of a report (errors, dead letters): UTF-8 printable whatever it quotes."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value)  # (\u escapes for what UTF-8 cannot hold)
    return text
