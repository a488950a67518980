"""Stage 2, validate: the shape of mapping-set files, checked with cerberus before anything compiles.

Value trees (request bodies, values, table entries) are free-form here; the compiler checks them.
Each cerberus error is turned into a Problem at the YAML position of the offending key or value.
"""

from __future__ import annotations

import difflib
from typing import Any

import cerberus

from .events import MESSAGE_TYPES
from .problems import Position, ProblemList
from .yaml_loader import PosDict, PosList

HTTP_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
SETTING_TYPES = ["string", "boolean", "integer", "number", "list", "dict"]

SETTING_SCHEMA: dict[str, Any] = {
    "type": {"type": "string", "allowed": SETTING_TYPES, "required": True},
    "default": {"nullable": True},
    "secret": {"type": "boolean"},
    "required": {"type": "boolean"},
    "required_to_send": {"type": "boolean"},
    "description": {"type": "string"},
    "allowed": {"type": "list"},
    "regex": {"type": "string"},
    "nullable": {"type": "boolean"},
}

REQUEST_SCHEMA: dict[str, Any] = {
    "method": {"type": "string", "allowed": HTTP_METHODS, "required": True},
    "path": {"type": "string", "excludes": "url"},
    "url": {"type": "string", "excludes": "path"},
    "query": {"type": "dict"},
    "headers": {"type": "dict"},
    "json": {"nullable": True, "excludes": "form"},
    "form": {"type": "dict", "excludes": "json"},
}

# A request chain: steps after a rule's request, each reading the previous answer as `response`.
STEP_SCHEMA: dict[str, Any] = {
    "description": {"type": "string"},
    "when": {"type": "string"},
    "skip": {"type": "string"},
    "for_each": {"type": "string"},
    "as": {"type": "string", "regex": "^[A-Za-z_][A-Za-z0-9_]*$"},
    "request": {"type": "dict", "schema": REQUEST_SCHEMA, "required": True},
}
THEN_SCHEMA: dict[str, Any] = {
    "order": {"type": "dict", "schema": {"lane": {"type": "string", "required": True, "empty": False},
                                         "subject": {"type": "dict", "required": True}}},
    "steps": {"type": "list", "required": True, "minlength": 1, "schema": {"type": "dict", "schema": STEP_SCHEMA}},
}

REQUIREMENT_SCHEMA: dict[str, Any] = {
    "check": {"type": "string"},
    "one_of": {"type": "list", "schema": {"type": "string"}, "minlength": 1},
    "present": {"type": "list", "schema": {"type": "string"}, "minlength": 1},
    "reason": {"type": "string"},
}

RULE_SCHEMA: dict[str, Any] = {
    "name": {"type": "string", "required": True, "empty": False},
    "description": {"type": "string"},
    "match": {
        "type": "dict",
        "schema": {
            "type": {"type": ["string", "list"], "allowed": list(MESSAGE_TYPES), "schema": {"type": "string"}},
            "event": {"type": ["string", "list"], "schema": {"type": "string"}},
        },
    },
    "when": {"type": "string"},
    "final": {"type": "boolean"},
    "values": {"type": "dict"},
    "for_each": {"type": "string"},
    "as": {"type": "string", "regex": "^[A-Za-z_][A-Za-z0-9_]*$"},
    "require": {"type": "list", "schema": {"type": "dict", "schema": REQUIREMENT_SCHEMA}},
    "warn": {
        "type": "list",
        "schema": {"type": "dict", "schema": {"when": {"type": "string", "required": True},
                                              "message": {"type": "string", "required": True}}},
    },
    "request": {"type": "dict", "schema": REQUEST_SCHEMA},
    "then": {"type": "dict", "schema": THEN_SCHEMA},
    "reject": {"type": "string"},
    "skip": {"type": "string"},
    "rules": {"type": "list", "schema": {"type": "dict", "schema": "rule"}},
}
cerberus.schema_registry.add("rule", RULE_SCHEMA)

TABLE_SCHEMA: dict[str, Any] = {
    "description": {"type": "string"},
    "fields": {"type": "dict", "excludes": "lookup"},
    "lookup": {"type": "dict", "excludes": "fields"},
    "ignore_case": {"type": "boolean"},
    "cast": {"type": "string"},  # fields tables: a cast applied to every field
}

# Each rule is checked on its own (check_rules), so that one bad rule does not hide the problems
# of the others: all of them are compiled and reported together.
RULE_FILE_SCHEMA: dict[str, Any] = {
    "description": {"type": "string"},
    "values": {"type": "dict"},
    "tables": {"type": "dict", "valuesrules": {"type": "dict", "schema": TABLE_SCHEMA}},
    "rules": {"type": "list", "schema": {"type": "dict"}},
}

SET_FILE_SCHEMA: dict[str, Any] = {
    **RULE_FILE_SCHEMA,
    "name": {"type": "string", "required": True, "regex": "^[a-z0-9][a-z0-9_-]*$"},
    "title": {"type": "string"},
    "base_url": {"type": "string", "required": True, "regex": "^https?://.+"},
    "revision": {"type": "string"},
    "compatibility_only": {"type": "string"},
    "settings": {"type": "dict", "valuesrules": {"type": "dict", "schema": SETTING_SCHEMA}},
    "defaults": {"type": "dict", "schema": {"headers": {"type": "dict"}}},
    "include": {"type": "list", "schema": {"type": "string"}},
    # Read by the delivery layer, which validates the contents: inline, or the name of a YAML file.
    "delivery": {"type": ["dict", "string"]},
}

# A test case of a mapping set (<set>/tests/*.yaml): settings, one event or several, and what must
# come out. An `expect_*` key holds the outcome as `map` reports it (see README and case_runner.py);
# with `events`, a rejection and a skip are one line per event, so a list.
CASE_SCHEMA: dict[str, Any] = {
    "description": {"type": "string"},
    "settings": {"type": "dict"},
    "event": {"nullable": True, "excludes": "events"},
    "events": {"type": "list", "excludes": "event"},
    "expect": {"type": "list", "schema": {"type": "dict"}},
    "expect_error": {"type": ["string", "list"], "schema": {"type": "string"}},
    "expect_item_errors": {"type": "list", "schema": {"type": "string"}},
    "expect_skipped": {"type": ["string", "list"], "schema": {"type": "string"}},
    "expect_warnings": {"type": "list", "schema": {"type": "string"}},
}


def _position_of(document: Any, path: tuple[Any, ...], at_key: bool) -> Position | None:
    node = document
    position: Position | None = getattr(document, "position", None)
    for step in path:
        if isinstance(node, PosDict) and step in node:
            position = node.key_positions[step] if at_key else node.value_places[step].position
            node = node[step]
        elif isinstance(node, PosList) and isinstance(step, int) and step < len(node):
            position = node.item_places[step].position
            node = node[step]
        else:
            break
    return position


def _parent_schema(schema: dict[str, Any], schema_path: tuple[Any, ...]) -> dict[str, Any]:
    """The fields' schema an error's `schema_path` leads to (a registered name such as "rule" resolved)."""
    node: Any = schema
    for step in schema_path:
        node = node.get(step) if isinstance(node, dict) else None
        if isinstance(node, str):
            node = cerberus.schema_registry.get(node)
    return node if isinstance(node, dict) else {}


def _unknown_key(field: str, fields: dict[str, Any]) -> str:
    """Why a key is unknown, in the words that help: a near miss, the section it belongs under, or
    what may stand here."""
    close = difflib.get_close_matches(field, [k for k in fields if k != field], n=1, cutoff=0.75)
    if close:
        return f"unknown key '{field}' (did you mean '{close[0]}'?)"
    homes = [name for name, rules in fields.items() if isinstance(rules.get("schema"), dict)
             and field in rules["schema"] and rules.get("type") == "dict"]
    if homes:
        return f"'{field}' does not go here: it belongs under '{homes[0]}'"
    return f"unknown key '{field}' (keys here: {', '.join(fields)})"


def _describe_error(error: Any, schema: dict[str, Any]) -> str:
    """One cerberus error in plain words, naming the key."""
    field = error.field
    rule = error.rule
    constraint = error.constraint
    if rule == "required":
        return f"missing required key '{field}'"
    if error.code == cerberus.errors.UNKNOWN_FIELD.code:
        return _unknown_key(str(field), _parent_schema(schema, tuple(error.schema_path)))
    if rule == "type":
        expected = " or ".join(constraint) if isinstance(constraint, list) else constraint
        return f"'{field}' must be a {expected}"
    if rule == "allowed":
        given = error.value if isinstance(error.value, list) else [error.value]
        wrong = [v for v in given if v not in constraint]
        choices = [str(c) for c in constraint]
        close = difflib.get_close_matches(str(wrong[0]), choices, n=1, cutoff=0.75) if wrong else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"'{field}': {', '.join(map(repr, wrong))} is not one of {', '.join(map(str, constraint))}{hint}"
    if rule == "regex":
        return f"'{field}': {error.value!r} does not match {constraint}"
    if rule == "excludes":
        other = constraint if isinstance(constraint, str) else constraint[0]
        return f"'{field}' cannot be used together with '{other}'"
    if rule == "empty":
        return f"'{field}' must not be empty"
    if rule == "nullable":
        return f"'{field}' needs a value (it is empty)"
    if rule == "minlength":
        return f"'{field}' needs at least {constraint} item(s)"
    if rule == "min":
        return f"'{field}' must be at least {constraint}"
    if rule == "max":
        return f"'{field}' must be at most {constraint}"
    return f"'{field}' is not valid here ({rule}: {constraint!r})"


def _leaf_errors(errors: Any) -> list[Any]:
    out = []
    for error in errors:
        if error.is_group_error:
            out.extend(_leaf_errors(error.child_errors))
        else:
            out.append(error)
    return out


def check_rules(document: PosDict, file: str, problems: ProblemList) -> list[PosDict]:
    """Check each rule of a file on its own; returns the rules whose shape is right."""
    good = []
    for rule in document.get("rules") or []:
        if check_shape(rule, RULE_SCHEMA, file, problems, what="a rule"):
            good.append(rule)
    return good


_VALIDATORS: dict[int, tuple[dict[str, Any], cerberus.Validator]] = {}


def check_shape(document: Any, schema: dict[str, Any], file: str, problems: ProblemList,
                what: str = "the file") -> bool:
    """Validate one file's (or one rule's) structure; adds every problem found, returns True if none."""
    if not isinstance(document, PosDict):
        position = getattr(document, "position", Position(file, 1, 1))
        problems.add(position, f"{what} must be a mapping (key: value pairs)")
        return False
    cached = _VALIDATORS.get(id(schema))
    if cached is None or cached[0] is not schema:  # (made once per schema: it costs more than a rule's check)
        cached = _VALIDATORS[id(schema)] = (schema, cerberus.Validator(schema, allow_unknown=False))
    validator = cached[1]
    if validator.validate(document):
        return True
    for error in _leaf_errors(validator._errors):
        path = tuple(error.document_path)
        at_key = error.code == cerberus.errors.UNKNOWN_FIELD.code
        position = _position_of(document, path if error.rule != "required" else path[:-1], at_key)
        problems.add(position or Position(file, 1, 1), _describe_error(error, schema))
    return False
