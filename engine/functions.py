"""The rule language's closed set of functions and casts.

Every function here is generic (nothing about any one destination) and takes and returns JSON
values. A function given null returns null, so absence flows through a chain of calls. A value that
cannot be converted raises EvalError, which rejects the event with a reason naming the rule.

The same functions are callable from JMESPath expressions (`e164(traits.phone, 'US')`) and from
Jinja templates (`{{ snake_case(name) }}`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import re
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
import phonenumbers

# phonenumbers compiles its metadata's patterns on every call (re.compile's cache lookup: about a
# quarter of e164's time); its own cache, bounded by the metadata, keeps them (where it has one).
getattr(phonenumbers, "enable_pattern_cache", lambda: None)()


class EvalError(Exception):
    """A value could not be produced; the message says what and why."""


def describe(value: Any) -> str:
    """A short, safe rendering of a value for error messages."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def a_json_type(value: Any) -> str:
    """'an array', 'a string', 'null': the JSON type with its article, for messages."""
    name = json_type(value)
    if name == "null":
        return name
    return ("an " if name[0] in "aeiou" else "a ") + name


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def is_email(value: Any) -> bool:
    return isinstance(value, str) and _EMAIL.match(value) is not None


def e164(value: Any, region: Any = None) -> str | None:
    """The phone number in E.164 form, or null when it is not a valid number.

    A national number (no leading +) needs `region`, a two-letter country code.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value).strip()
    try:
        number = phonenumbers.parse(text, region if isinstance(region, str) and region else None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


_WORD_BOUNDARY = re.compile(r"([a-z0-9])([A-Z])")
_NON_WORD = re.compile(r"[^0-9A-Za-z]+")


@functools.lru_cache(maxsize=4096)  # names repeat from event to event: normalise each once
def normalize_event_name(name: str) -> str:
    """Case, underscores and hyphens do not matter: `order_completed` = `Order Completed` (event
    names, and the keys of a lookup table with ignore_case)."""
    return " ".join(re.sub(r"[_\-]+", " ", name).lower().split())


def snake_case(value: Any) -> str | None:
    if value is None:
        return None
    text = _WORD_BOUNDARY.sub(r"\1_\2", str(value))
    return _NON_WORD.sub("_", text).strip("_").lower()


def first_word(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    words = value.split()
    return words[0] if words else None


def rest_words(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    words = value.split()
    return " ".join(words[1:]) if len(words) > 1 else None


_AMOUNT_NOISE = re.compile(r"[\s,_]|^[A-Za-z]{3}(?=[\d.+-])|(?<=[\d.])[A-Za-z]{3}$|[$€£¥₹]")


def parse_amount(value: Any) -> float | int | None:
    """A money amount as a number: 12.5, "12.50", "$12.50", "1,234.50 USD" all parse."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise EvalError(f"{describe(value)} is not an amount")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = _AMOUNT_NOISE.sub("", value.strip())
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise EvalError(f"{describe(value)} is not an amount") from None
        if not number.is_finite():
            raise EvalError(f"{describe(value)} is not an amount")
        return int(number) if number == number.to_integral_value() and "." not in text else float(number)
    raise EvalError(f"{describe(value)} is not an amount")


def multiply(a: Any, b: Any) -> float | int | None:
    """a × b in decimal arithmetic, so that 19.99 × 3 is 59.97, not 59.970000000000006."""
    if a is None or b is None:
        return None
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise EvalError(f"multiply needs numbers, got {describe(v)}")
    product = Decimal(str(a)) * Decimal(str(b))
    if isinstance(a, int) and isinstance(b, int):
        return int(product)
    return float(product)


def unique(value: Any) -> list[Any] | None:
    """The list with repeated items removed, first occurrence kept."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise EvalError(f"unique needs a list, got {describe(value)}")
    seen: list[Any] = []
    for item in value:
        if item not in seen:
            seen.append(item)
    return seen


def as_list(value: Any) -> list[Any] | None:
    """null → null, a list → itself, anything else → a one-item list."""
    if value is None:
        return None
    return value if isinstance(value, list) else [value]


def fingerprint(value: Any) -> str:
    """A stable hex digest of a JSON value: the same input always gives the same id."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def json_length(value: Any) -> float:
    """Bytes of `value` as JSON — never fewer than any string inside it takes in UTF-8, keys included
    (a string is written whole, only escapes added) — or infinity for what JSON cannot write."""
    try:
        return len(msgspec.json.encode(value))
    except (TypeError, ValueError, OverflowError):
        return math.inf


def longest_string(value: Any) -> int:
    """Length in UTF-8 bytes of the longest string anywhere inside a value (keys included)."""
    # A string of n characters takes n to 4n bytes: encode only those that could be the longest,
    # and count ASCII ones without encoding them. Scalars inside objects are looked at in place.
    best = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if len(item) * 4 > best:
                best = max(best, len(item) if item.isascii() else len(item.encode()))
        elif isinstance(item, dict):
            for k, v in item.items():
                key = k if isinstance(k, str) else str(k)
                if len(key) * 4 > best:
                    best = max(best, len(key) if key.isascii() else len(key.encode()))
                if isinstance(v, str):
                    if len(v) * 4 > best:
                        best = max(best, len(v) if v.isascii() else len(v.encode()))
                elif isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)
    return best


def lower(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) else None


def upper(value: Any) -> str | None:
    return value.upper() if isinstance(value, str) else None


def trim(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) else None


# --- casts: explicit type conversions, named in rules by `cast: NAME` -----------------------------

def to_number(value: Any) -> int | float:
    if isinstance(value, bool):
        raise EvalError(f"{describe(value)} is not a number")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise EvalError(f"{describe(value)} is not a number") from None
        if not number.is_finite():
            raise EvalError(f"{describe(value)} is not a number")
        text = value.strip()
        if number == number.to_integral_value() and not any(c in text for c in ".eE"):
            return int(number)
        return float(number)
    raise EvalError(f"{describe(value)} is not a number")


def to_integer(value: Any) -> int:
    number = to_number(value)
    if isinstance(number, float):
        if not number.is_integer():
            raise EvalError(f"{describe(value)} is not a whole number")
        return int(number)
    return number


def to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    raise EvalError(f"{describe(value)} is {a_json_type(value)}, not a string")


_TRUE = {"true", "yes", "1", "on"}
_BOOLEAN_WORDS = _TRUE | {"false", "no", "0", "off"}


def to_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS:
        return value.strip().lower() in _TRUE
    raise EvalError(f"{describe(value)} is not a boolean")


_REDUCED_DATE = re.compile(r"^(\d{4})(?:-(\d{2}))?$")


def _parse_time(value: Any) -> datetime:
    if isinstance(value, bool):
        raise EvalError(f"{describe(value)} is not a date-time")
    if isinstance(value, (int, float)):
        seconds = value / 1000 if abs(value) >= 100_000_000_000 else value  # milliseconds, as JS sends
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    if isinstance(value, str):
        text = value.strip()
        reduced = _REDUCED_DATE.match(text) if len(text) <= 7 else None  # (it takes 4 or 7 characters)
        if reduced:  # ISO-8601 reduced precision: "2014" is 2014-01-01, "2014-05" is 2014-05-01
            text = f"{reduced.group(1)}-{reduced.group(2) or '01'}-01"
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise EvalError(f"{describe(value)} is not an ISO-8601 date-time") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)  # Segment's timestamps without offset are UTC
        return parsed
    raise EvalError(f"{describe(value)} is not a date-time")


def to_iso8601(value: Any) -> str:
    """An ISO-8601 date-time with its offset, to the second or finer: 2026-11-01T12:00:00+00:00."""
    return _parse_time(value).isoformat()


def to_unix_seconds(value: Any) -> int:
    return int(_parse_time(value).timestamp())


def base64_json(value: Any) -> str:
    """JSON text of a value, base64-encoded (as some query-string APIs want it)."""
    return base64.b64encode(json_text(value).encode()).decode("ascii")


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


CASTS: dict[str, Callable[[Any], Any]] = {
    "number": to_number,
    "integer": to_integer,
    "string": to_string,
    "boolean": to_boolean,
    "iso8601": to_iso8601,
    "unix_seconds": to_unix_seconds,
}

# Encodings a value tree can be turned into with `encode:`.
ENCODINGS: dict[str, Callable[[Any], str]] = {
    "json": json_text,
    "base64_json": base64_json,
}


def _cast_function(cast: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def call(value: Any) -> Any:
        return None if value is None else cast(value)

    call.__doc__ = cast.__doc__
    return call


# name → (python function, minimum arguments, maximum arguments or None for any number)
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "coalesce": (lambda *args: next((a for a in args if a is not None), None), 1, None),
    "is_email": (is_email, 1, 1),
    "e164": (e164, 1, 2),
    "snake_case": (snake_case, 1, 1),
    "first_word": (first_word, 1, 1),
    "rest_words": (rest_words, 1, 1),
    "parse_amount": (parse_amount, 1, 1),
    "multiply": (multiply, 2, 2),
    "unique": (unique, 1, 1),
    "as_list": (as_list, 1, 1),
    "fingerprint": (fingerprint, 1, 1),
    "longest_string": (longest_string, 1, 1),
    "lower": (lower, 1, 1),
    "upper": (upper, 1, 1),
    "trim": (trim, 1, 1),
    "iso8601": (_cast_function(to_iso8601), 1, 1),
    "unix_seconds": (_cast_function(to_unix_seconds), 1, 1),
    "to_integer": (_cast_function(to_integer), 1, 1),
    "to_boolean": (_cast_function(to_boolean), 1, 1),
}

# name → a cheap upper bound of that one-argument function's value (pure, never raising): generated
# code tests `f(x) <= LIMIT` as `bound(x) <= LIMIT or f(x) <= LIMIT`, skipping the walk when the
# bound already answers (most events are far under a size limit).
UPPER_BOUNDS: dict[str, Callable[[Any], float]] = {
    "longest_string": json_length,
}
