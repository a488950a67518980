"""JSON Schema (draft 2020-12) of the files a mapping set is made of, for editors.

Made from the same cerberus shapes the validator checks (schema.py, delivery/config.py), so the two
cannot disagree: each cerberus rule the shapes use has one translation here, and a shape that uses
a rule with none is an error, not a silently looser schema. Value trees (request bodies, named
values, table entries) are free-form in both.
"""

from __future__ import annotations

import json
from typing import Any

from .delivery.config import DELIVERY_SCHEMA
from .mapping_set import PROGRAM
from .schema import CASE_SCHEMA, RULE_FILE_SCHEMA, RULE_SCHEMA, SET_FILE_SCHEMA
from .tenants import TENANTS_FILE_SCHEMA

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_TYPES = {"string": "string", "boolean": "boolean", "integer": "integer", "number": "number", "dict": "object",
          "list": "array"}
# What each kind of file is, and the cerberus shape it is checked against.
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "mapping": ("mapping.yaml: a mapping set's target API, settings, default headers and rule files", SET_FILE_SCHEMA),
    "rules": ("a rule file: named values, tables and rules", RULE_FILE_SCHEMA),
    "delivery": ("delivery.yaml: how a set's requests are delivered", DELIVERY_SCHEMA),
    "case": ("a test case of a mapping set: settings, event(s), and what must come out", CASE_SCHEMA),
    "tenants": ("a tenants file (serve/worker --tenants): each tenant's write keys and settings", TENANTS_FILE_SCHEMA),
}
_RULE_REF = {"$ref": "#/$defs/rule"}


class UntranslatableShape(ValueError):
    """A cerberus rule in a shape that this module has no JSON Schema for."""


def _pattern(regex: str) -> str:
    # cerberus matches a regex against the whole value; JSON Schema's pattern may match anywhere
    return regex if regex.startswith("^") and regex.endswith("$") else f"^(?:{regex})$"


def _field(rules: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kind = rules.get("type")
    kinds = [kind] if isinstance(kind, str) else list(kind or [])
    types = [_TYPES[k] for k in kinds] + (["null"] if rules.get("nullable") and kinds else [])
    if types:
        out["type"] = types[0] if len(types) == 1 else types
    for rule, value in rules.items():
        if rule in ("type", "nullable", "required", "excludes"):  # (the last two: on the parent object)
            continue
        if rule == "allowed":
            if "list" not in kinds:
                out["enum"] = list(value)
            else:  # (cerberus: each item of a list is one of them; a scalar, itself)
                out.setdefault("allOf", []).append({"if": {"type": "array"}, "then": {"items": {"enum": list(value)}},
                                                    "else": {"enum": list(value)}})
        elif rule == "regex":
            out["pattern"] = _pattern(value)
        elif rule == "empty" and value is False:
            out.update({"string": {"minLength": 1}, "array": {"minItems": 1},
                        "object": {"minProperties": 1}}.get(_TYPES.get(kinds[0], ""), {}) if kinds else {})
        elif rule == "minlength":
            out["minItems" if "list" in kinds else "minLength"] = value
        elif rule == "min":
            out["minimum"] = value
        elif rule == "max":
            out["maximum"] = value
        elif rule == "schema":
            if value == "rule":
                out["items" if "list" in kinds else "allOf"] = _RULE_REF if "list" in kinds else [_RULE_REF]
            elif "list" in kinds:
                out["items"] = _field(value)
            else:
                out.update(_object(value))
        elif rule == "valuesrules":
            out["additionalProperties"] = _field(value)
        elif rule == "keysrules":
            out["propertyNames"] = _field(value)
        elif rule == "anyof":
            out["anyOf"] = [_field(choice) for choice in value]
        else:
            raise UntranslatableShape(f"no JSON Schema for the cerberus rule {rule!r}")
    return out


def _object(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": {name: _field(rules) for name, rules in fields.items()},
                           "additionalProperties": False}
    required = [name for name, rules in fields.items() if rules.get("required")]
    if required:
        out["required"] = required
    exclusions = sorted({tuple(sorted((name, other))) for name, rules in fields.items()
                         for other in ([rules["excludes"]] if isinstance(rules.get("excludes"), str)
                                       else rules.get("excludes", []))})
    if exclusions:
        out["allOf"] = [{"not": {"required": list(pair)}} for pair in exclusions]
    return out


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one kind of file (a key of KINDS)."""
    description, shape = KINDS[kind]
    document: dict[str, Any] = {"$schema": DIALECT, "$id": f"{PROGRAM}/{kind}.schema.json",
                                "title": description, **_object(shape)}
    properties = document["properties"]
    if "rules" in properties:  # rules are checked one by one (schema.check_rules), against RULE_SCHEMA
        properties["rules"]["items"] = _RULE_REF
        document["$defs"] = {"rule": _object(RULE_SCHEMA)}
    if kind == "mapping":  # `delivery:` inline, or the name of a delivery file
        document.setdefault("$defs", {})["delivery"] = _object(DELIVERY_SCHEMA)
        properties["delivery"] = {"oneOf": [{"$ref": "#/$defs/delivery"}, {"type": "string"}]}
    return document


def schema_text(kind: str) -> str:
    return json.dumps(json_schema(kind), indent=2, ensure_ascii=False) + "\n"
