"""`validate` against the set's API spec: each rule's method and path exist, and the constant parts of
each body hold the members the operation's schema requires.

Only what is fixed when the rules are written is checked: a path written as a template, or a body
part computed per event (select, merge, rest, if …), is left to the per-request check (`test`, the
fake server). Generic: the spec is whatever OpenAPI document the set's delivery section names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from . import ir
from .openapi_check import OpenAPIDocument
from .problems import Position, Problem

MAX_DEPTH = 32  # (a schema's $refs can loop: a tree deeper than this is not followed further)


def spec_problems(rules: list[ir.Rule], spec: OpenAPIDocument) -> list[Problem]:
    """Every rule request the spec has no operation for, and every required member that a constant
    part of a body leaves out, at the rule file's place."""
    problems: list[Problem] = []
    for rule in _with_requests(rules):
        plan = rule.request
        assert plan is not None
        path = plan.url.value if isinstance(plan.url, ir.Literal) else None
        if not plan.url_is_path or not isinstance(path, str) or "{{" in path:
            continue
        where = plan.url.origin[0] if plan.url.origin is not None else rule.position
        operation = spec.find(plan.method, path.split("?", 1)[0]) or spec.find(plan.method, path.rstrip("/") + "/")
        if operation is None:
            problems.append(Problem(where, f"rule '{rule.name}': {plan.method} {path} is not an operation of "
                                           f"{spec.path.name}"))
            continue
        if plan.body is not None and operation.body_schema is not None:
            problems += _missing_members(plan.body, _resolve(spec, operation.body_schema), spec, rule.name,
                                         plan.body_kind or "json", 0)
    return problems


def _with_requests(rules: Iterable[ir.Rule]) -> Iterator[ir.Rule]:
    for rule in rules:
        if rule.request is not None:
            yield rule
        yield from _with_requests(rule.children)


def _resolve(spec: OpenAPIDocument, schema: Any) -> dict[str, Any]:
    """The schema with its $ref followed and its allOf parts' properties and required merged."""
    for _ in range(MAX_DEPTH):
        if not isinstance(schema, dict) or "$ref" not in schema:
            break
        target: Any = spec.spec
        for key in str(schema["$ref"]).lstrip("#/").split("/"):
            target = target.get(key, {}) if isinstance(target, dict) else {}
        schema = target
    if not isinstance(schema, dict):
        return {}
    if "allOf" in schema:
        merged: dict[str, Any] = {"properties": dict(schema.get("properties", {})),
                                  "required": list(schema.get("required", []))}
        for part in schema["allOf"]:
            resolved = _resolve(spec, part)
            merged["properties"].update(resolved.get("properties", {}))
            merged["required"] += resolved.get("required", [])
        return merged
    return schema


def _missing_members(part: ir.Node, schema: dict[str, Any], spec: OpenAPIDocument, rule: str, where: str,
                     depth: int) -> list[Problem]:
    """The required members of `schema` that the object `part` (its keys fixed in the rule file)
    does not have; then the same for each of its members that is such an object too."""
    if isinstance(part, ir.If) and depth <= MAX_DEPTH:  # (if: each branch that may be sent)
        branches = (part.then,) if part.otherwise is None else (part.then, part.otherwise)
        return [problem for branch in branches
                for problem in _missing_members(branch, schema, spec, rule, where, depth + 1)]
    fields = part.table.lowered if isinstance(part, ir.TableFields) else part
    if not isinstance(fields, ir.Object) or depth > MAX_DEPTH or schema.get("type", "object") != "object":
        return []  # computed per event (or not an object): the request check sees it
    members = dict(fields.fields)
    position: Position = part.origin[0] if part.origin is not None else Position("?", 0, 0)
    path = part.origin[1] if part.origin is not None else where
    problems = [Problem(position, f"rule '{rule}': {path} has no '{name}', which the API requires here")
                for name in schema.get("required", []) if name not in members]
    properties = schema.get("properties", {})
    for name, member in members.items():
        if name in properties and not (isinstance(member, ir.Literal) and member.is_scalar):
            problems += _missing_members(member, _resolve(spec, properties[name]), spec, rule, where, depth + 1)
    return problems
