"""Runtime: what generated code calls (and what its callers need to read its results).

The compile stage writes each rule and named value as Python; that code binds these names, and
nothing else of the engine, besides the functions and casts (functions.py) a rule names.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from .functions import EvalError, a_json_type, describe, json_type, normalize_event_name, to_string
from .problems import Position


class _Absent:
    """The value of a field that is not there: objects leave such keys out."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()


class _Unset:
    """What a named value's local holds before the function has read it."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def normalize_key(key: str) -> str:
    """A key as `keys: loose` compares it: lower case, letters and digits only."""
    return re.sub(r"[^0-9a-z]", "", key.lower())


def left_out_loosely(key: Any, excluded: frozenset[str], normalized: frozenset[str]) -> bool:
    """rest with `keys: loose`: whether `key` is one of those left out, ignoring case and punctuation."""
    if key in excluded:
        return True
    return isinstance(key, str) and normalize_key(key) in normalized


def loose_get(current: Any, key: str) -> Any:
    """`current.key` under `keys: loose`: the exact key, else the first whose normalized form matches."""
    if not isinstance(current, dict):
        return None
    value = current.get(key)
    if value is not None:
        return value
    wanted = normalize_key(key)
    for candidate, candidate_value in current.items():
        if isinstance(candidate, str) and normalize_key(candidate) == wanted:
            return candidate_value
    return None


def jmespath_equals(a: Any, b: Any) -> bool:
    # JMESPath: booleans never equal numbers (Python says True == 1).
    if isinstance(a, bool) != isinstance(b, bool) and (
        isinstance(a, (int, float)) or isinstance(b, (int, float))
    ):
        return False
    return bool(a == b)


def is_falsy(value: Any) -> bool:
    """JMESPath falsiness: false, null, "", [] and {} (0 is true)."""
    return value is None or value is False or (isinstance(value, (str, list, dict)) and not value)


class FieldError(EvalError):
    """An EvalError that knows which field of which rule file it came from."""

    def __init__(self, message: str, field_path: str, position: Position):
        self.field_path = field_path
        self.position = position
        super().__init__(message)


def locate(error: EvalError, field_path: str, position: Position) -> FieldError:
    if isinstance(error, FieldError):
        return error
    return FieldError(str(error), field_path, position)


# A named value's generated function: (its level's scope, its level's Vars) -> the value (None when
# absent), which it also remembers in the Vars (see named_values).
NamedValueFunction = Callable[[dict[str, Any], Any], Any]


class LocatedRender:
    """A template's render whose EvalError is located at the field the template was written for."""

    __slots__ = ("render", "field_path", "position")

    def __init__(self, render: Callable[[dict[str, Any]], Any], field_path: str, position: Position):
        self.render, self.field_path, self.position = render, field_path, position

    def __call__(self, scope: dict[str, Any]) -> Any:
        try:
            return self.render(scope)
        except EvalError as exc:
            raise locate(exc, self.field_path, self.position) from None


class FastPathMiss(Exception):
    """A template's fast path met something it does not handle; Jinja renders the template instead."""


def fast_getattr(obj: Any, attribute: str) -> Any:
    """`obj.attribute` as a template's fast path reads it from anything but a plain dict (as Jinja's
    sandboxed getattr would: a dict's key, never a method)."""
    if not isinstance(obj, dict) or hasattr(type(obj), attribute):
        raise FastPathMiss
    return obj[attribute]  # a KeyError: the caller lets Jinja render


def fast_getitem(obj: Any, item: Any) -> Any:
    if not isinstance(obj, (dict, list)):
        raise FastPathMiss
    try:
        return obj[item]
    except (LookupError, TypeError):
        raise FastPathMiss from None


class Vars(dict[str, Any]):
    """One level's named values, computed on first use per event and then remembered (the level's
    named-value functions remember what they compute here, see named_values)."""

    __slots__ = ("_definitions", "_scope", "_parent")
    # No __init__: one is made per event, rule with values and fanned-out item, so the mapper and
    # generated rules set the three slots themselves (see new_vars), without a Python call.
    _definitions: dict[str, NamedValueFunction]
    _scope: dict[str, Any]
    _parent: Vars | None

    def __missing__(self, name: str) -> Any:
        definition = self._definitions.get(name)
        if definition is None:
            if self._parent is None:
                return None
            # Remembered here too: a parent's value is fixed for the event, and rules read their
            # parents' names many times.
            value = self[name] = self._parent[name]
            return value
        return definition(self._scope, self)

    def get(self, name: str, default: Any = None) -> Any:
        value = self[name]
        return default if value is None else value


def new_vars(definitions: dict[str, NamedValueFunction], scope: dict[str, Any], parent: Vars | None = None) -> Vars:
    named = Vars()
    named._definitions, named._scope, named._parent = definitions, scope, parent
    return named


def new_vars_source(target: str, definitions: str, scope: str, parent: str) -> str:
    """The source of `new_vars` inline, for generated rules (names of locals and bound values)."""
    return f"{target} = Vars(); {target}._definitions, {target}._scope, {target}._parent = " \
           f"{definitions}, {scope}, {parent}"


def leave_out_leaves(out: dict[str, Any], nested: dict[str, set[tuple[str, ...]]], loose: bool) -> None:
    """rest … except_fields: leave out of `out` only the leaves a fields table read below a key
    (traits.company.name leaves out company's name, not company); an object left empty goes too."""
    for key in list(out):
        paths = nested.get(key)
        if paths is None and loose:
            paths = next((p for k, p in nested.items() if normalize_key(k) == normalize_key(key)), None)
        if paths is not None:
            leave_out_leaves_of(out, key, paths, loose)


def leave_out_leaves_of(out: dict[str, Any], key: str, paths: set[tuple[str, ...]], loose: bool = False) -> None:
    """The same for one key of `out` (exact keys: the generated code tests that it is there)."""
    value = _without(out[key], paths, loose)
    if value == {}:
        del out[key]
    else:
        out[key] = value


def _without(value: Any, paths: set[tuple[str, ...]], loose: bool) -> Any:
    """`value` (a copy, when it is an object) without the leaves at `paths`; not an object: as it is."""
    if not isinstance(value, dict):
        return value
    here = {p[0] for p in paths if len(p) == 1}
    if loose:
        here = {normalize_key(k) for k in here}
    kept: dict[str, Any] = {}
    for key, item in value.items():
        if (normalize_key(key) if loose and isinstance(key, str) else key) in here:
            continue
        deeper = {p[1:] for p in paths if len(p) > 1 and (p[0] == key or loose and isinstance(key, str)
                                                         and normalize_key(p[0]) == normalize_key(key))}
        if deeper:
            item, emptied = _without(item, deeper, loose), item != {}
            if emptied and item == {}:  # every leaf of it was read
                continue
        kept[key] = item
    return kept


def not_an_object(value: Any, field_path: str, position: Position) -> FieldError:
    return FieldError(f"merge: {describe(value)} is not an object", field_path, position)


def _query_value(key: str, value: Any) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise EvalError(f"query parameter '{key}' is {a_json_type(value)}; encode it first (encode: json)")
    return to_string(value)


def not_a_url(url: Any) -> EvalError:
    return EvalError(f"request url is {describe(None if url is ABSENT else url)}, not a string")


def form_body(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise EvalError(f"form body must be an object, got {json_type(value)}")
    return {k: _query_value(k, v) for k, v in value.items()}


def with_query(url: str, query: Any) -> str:
    if isinstance(query, dict) and query:
        pairs = [(k, _query_value(k, v)) for k, v in query.items()]
        url += ("&" if "?" in url else "?") + urlencode(pairs, quote_via=quote)
    return url


def headers_object(value: Any) -> dict[str, str]:
    if value is ABSENT:
        return {}
    if not isinstance(value, dict):
        raise EvalError(f"headers must be an object, got {json_type(value)}")
    return {str(k): to_string(v) for k, v in value.items() if v is not None}


def message_text(evaluate: Callable[[dict[str, Any]], Any] | None, scope: dict[str, Any]) -> str:
    value = ABSENT if evaluate is None else evaluate(scope)
    return "" if value is ABSENT else str(value)


def start_chain(rule: Any, subject_of: Callable[[dict[str, Any]], Any] | None, request: Any,
                scope: dict[str, Any]) -> None:
    """(Called by the code of an ir.Rule's chain's first request) what the next step needs, and what
    each step will do with the previous answer (map's `then`)."""
    subject: dict[str, Any] | None = None
    if rule.order_lane is not None and subject_of is not None:
        found = subject_of(scope)
        identifiers = {k: v for k, v in found.items() if v is not None} if isinstance(found, dict) else {}
        subject = {"lane": rule.order_lane, "identifiers": identifiers}
    request.chain = {"rule": rule.name, "step": 0, "event": scope["input"], "subject": subject}
    request.then = [f"step {number + 2}, with the previous answer as `response`: {step.description}"
                    f"{'' if step.for_each is None else f', once per {step.for_each.source}'}"
                    f"{' (or skip)' if step.when is not None or step.for_each is not None else ''}"
                    for number, step in enumerate(rule.steps)]


def event_name_matches(event_name: Any, names: frozenset[str] | None, globs: tuple[str, ...]) -> bool:
    """A rule's `match: event`: the name (normalized) is one of `names` or matches a glob of `globs`."""
    if not isinstance(event_name, str):
        return False
    normalized = normalize_event_name(event_name)
    return normalized in (names or ()) or any(fnmatch.fnmatchcase(normalized, pattern) for pattern in globs)
