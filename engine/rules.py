"""Stage 3, compile: rules (match, when, values, require, for_each, and one action) into a plan."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import ir
from .expressions import Expression
from .functions import normalize_event_name
from .lower import Lowerer
from .problems import Position
from .yaml_loader import PosDict, PosList, ScalarPlace


@dataclass(frozen=True, slots=True)
class Requirement:
    test: ir.Node  # true when the requirement is met
    reason: ir.Node
    position: Position


@dataclass(frozen=True, slots=True)
class Warning_:
    test: ir.Node  # true when the warning applies
    message: ir.Node


@dataclass(frozen=True, slots=True)
class RequestPlan:
    method: str
    url: ir.Node  # absolute URL, or a path joined to the base URL
    url_is_path: bool
    query: ir.Node | None
    headers: ir.Node | None
    body_kind: str | None  # "json", "form" or None
    body: ir.Node | None


@dataclass(frozen=True, slots=True)
class ChainStep:
    """A step of a request chain: run with the previous request's answer as `response`."""

    position: Position
    description: str
    when: ir.Condition | None  # false: the chain ends here, skipped with `skip`
    skip: ir.Node | None
    for_each: Expression | None  # a request per item (none: skipped with `skip`)
    item_name: str
    request: RequestPlan
    target: str = ""  # the request's path (or url) as written, for map's description of the step

    def describe(self, number: int) -> str:
        """What the step (the chain's `number`th) will do with the previous answer, in one line (map's `then`)."""
        what = self.description or f"{self.request.method} {self.target}"
        each = f", once per {self.for_each.source}" if self.for_each is not None else ""
        unless = " (or skip)" if self.when is not None or self.for_each is not None else ""
        return f"step {number}, with the previous answer as `response`: {what}{each}{unless}"


@dataclass(frozen=True, slots=True, eq=False)  # (each rule is one place in a rule file)
class Rule:
    name: str
    position: Position
    file: str
    types: frozenset[str] | None = None
    event_names: frozenset[str] | None = None
    event_globs: tuple[str, ...] = ()
    when: ir.Node | None = None
    when_source: str = ""  # the condition's text, for map --explain
    final: bool = False
    values: dict[str, ir.Node] = field(default_factory=dict)  # (a level's key: see MapperCode)
    for_each: Expression | None = None
    item_name: str = "item"
    requires: tuple[Requirement, ...] = ()
    warns: tuple[Warning_, ...] = ()
    action: str = "request"  # request | reject | skip | group
    message: ir.Node | None = None  # for reject and skip
    request: RequestPlan | None = None
    children: tuple[Rule, ...] = ()
    steps: tuple[ChainStep, ...] = ()  # then.steps: after the request, in order
    order_lane: str | None = None  # then.order: the subject whose order the whole chain holds
    order_subject: ir.Node | None = None

    def start_chain(self, subject_of: Callable[[dict[str, Any]], Any] | None, request: Any,
                    scope: dict[str, Any]) -> None:
        """(Called by the code of the chain's first request) what the next step needs, and what follows."""
        subject: dict[str, Any] | None = None
        if self.order_lane is not None and subject_of is not None:
            found = subject_of(scope)
            identifiers = {k: v for k, v in found.items() if v is not None} if isinstance(found, dict) else {}
            subject = {"lane": self.order_lane, "identifiers": identifiers}
        request.chain = {"rule": self.name, "step": 0, "event": scope["input"], "subject": subject}
        request.then = [step.describe(number + 2) for number, step in enumerate(self.steps)]

    def matches(self, event_type: Any, event_name: Any) -> bool:
        if self.types is not None and event_type not in self.types:
            return False
        if self.event_names is None and not self.event_globs:
            return True
        if not isinstance(event_name, str):
            return False
        normalized = normalize_event_name(event_name)
        if self.event_names is not None and normalized in self.event_names:
            return True
        return any(fnmatch.fnmatchcase(normalized, pattern) for pattern in self.event_globs)


def _as_list(node: Any) -> list[Any]:
    return list(node) if isinstance(node, list) else [node]


class RuleCompiler:
    def __init__(self, values: Lowerer, file: str):
        self.values = values
        self.file = file

    def compile(self, node: PosDict, parent_name: str = "") -> Rule:
        name = f"{parent_name}/{node['name']}" if parent_name else str(node["name"])
        # The rule's fields as they are compiled (a Rule is frozen: made once, at the end)
        rule: dict[str, Any] = {"name": name, "position": node.position, "file": self.file, "values": {}}
        warns: list[Warning_] = []
        values = self.values
        match = node.get("match")
        if isinstance(match, PosDict):
            if "type" in match:
                rule["types"] = frozenset(str(t) for t in _as_list(match["type"]))
            if "event" in match:
                patterns = [normalize_event_name(str(p)) for p in _as_list(match["event"])]
                exact = frozenset(p for p in patterns if not any(c in p for c in "*?["))
                rule["event_names"] = exact or None
                rule["event_globs"] = tuple(p for p in patterns if p not in exact)
        if "when" in node:
            rule["when"] = values.condition(node["when"], node.value_places["when"], f"rule '{name}' when")
            rule["when_source"] = str(node["when"])
        rule["final"] = bool(node.get("final", False))

        item_names: set[str] = set()
        if "for_each" in node:
            rule["item_name"] = str(node.get("as", "item"))
            item_names = {rule["item_name"], "index"}
            expression = values.expression(node["for_each"], node.value_places["for_each"], f"rule '{name}' for_each")
            rule["for_each"] = expression
        values = values.with_items(item_names)  # a child scope: rule-level names stay in this rule

        if "values" in node and isinstance(node["values"], PosDict):
            rule_values = node["values"]
            values.known.values |= set(rule_values)
            for key, entry in rule_values.items():
                compiled = values.value(entry, rule_values.value_places[key], f"rule '{name}' values.{key}")
                rule["values"][key] = compiled
                values.named[key] = compiled

        requires = tuple(self._requirement(requirement, node["require"].item_places[i], name, values)
                         for i, requirement in enumerate(node.get("require", []) or []))
        for warning in node.get("warn", []) or []:
            test = values.condition(warning["when"], warning.value_places["when"], f"rule '{name}' warn")
            message = values.value(warning["message"], warning.value_places["message"], f"rule '{name}' warn")
            if test is not None:
                warns.append(Warning_(test, message))

        actions = [key for key in ("request", "reject", "skip", "rules") if key in node]
        if len(actions) != 1:
            what = "found " + ", ".join(actions) if actions else "found none"
            values.problem(node.position,
                           f"rule '{name}': needs exactly one of request, reject, skip or rules ({what})")
            return Rule(**rule, requires=requires, warns=tuple(warns))
        action = actions[0]
        if "then" in node and action != "request":
            values.problem(node.key_positions["then"], f"rule '{name}': then (a request chain) follows a request")
        if "for_each" in node and action != "request":
            values.problem(node.key_positions["for_each"], f"rule '{name}': for_each goes on a rule with a request")
        if action == "request":
            rule["request"] = self._request(node["request"], name, values)
            if "then" in node:
                self._chain(rule, node["then"], values)
        elif action in ("reject", "skip"):
            rule["action"] = action
            rule["message"] = values.value(node[action], node.value_places[action], f"rule '{name}' {action}")
        else:
            rule["action"] = "group"
            child_compiler = RuleCompiler(values, self.file)
            rule["children"] = tuple(child_compiler.compile(child, name) for child in node["rules"])
        return Rule(**rule, requires=requires, warns=tuple(warns))

    def _requirement(self, node: PosDict, place: ScalarPlace, name: str, values: Lowerer) -> Requirement:
        kinds = [k for k in ("check", "one_of", "present") if k in node]
        field_path = f"rule '{name}' require"
        if len(kinds) != 1:
            values.problem(place.position, f"{field_path}: needs exactly one of check, one_of or present")
            return Requirement(ir.Literal(None, True), ir.Literal(None, ""), place.position)
        kind = kinds[0]
        test: ir.Node
        if kind == "check":
            test = values.condition(node["check"], node.value_places["check"], field_path) or ir.Literal(None, True)
            default_reason = f"check failed: {node['check']}"
        else:
            sources: PosList = node[kind]
            test = values.presence(sources, field_path, kind == "one_of")
            names = ", ".join(str(s) for s in sources)
            default_reason = f"needs one of {names}; none is present" if kind == "one_of" else f"needs {names}"
        if "reason" in node:
            reason = values.value(node["reason"], node.value_places["reason"], field_path + ".reason")
        else:
            reason = ir.Literal((place.position, field_path), default_reason)
        return Requirement(test, reason, place.position)

    def _chain(self, rule: dict[str, Any], node: PosDict, values: Lowerer) -> None:
        name, steps = rule["name"], []
        if rule.get("for_each") is not None:
            values.problem(node.position, f"rule '{name}': then (a request chain) goes on a rule without for_each")
            return
        order = node.get("order")
        if isinstance(order, PosDict):
            rule["order_lane"] = str(order["lane"])
            rule["order_subject"] = values.value(order["subject"], order.value_places["subject"],
                                                 f"rule '{name}' then.order.subject")
        for number, step in enumerate(node["steps"]):
            field_path = f"rule '{name}' then.steps[{number}]"
            item_names = {"response"}
            item_name = str(step.get("as", "item"))
            if "for_each" in step:
                item_names |= {item_name, "index"}
            reads = values.with_items(item_names)
            answer = values.with_items({"response"})
            for_each = answer.expression(step["for_each"], step.value_places["for_each"], field_path + ".for_each") \
                if "for_each" in step else None
            when = answer.condition(step["when"], step.value_places["when"], field_path + ".when") \
                if "when" in step else None
            skip = answer.value(step["skip"], step.value_places["skip"], field_path + ".skip") \
                if "skip" in step else None
            if skip is None and (when is not None or for_each is not None):
                values.problem(step.position, f"{field_path}: needs skip (the reason given when "
                                              f"{'when is false' if when is not None else 'for_each finds nothing'})")
            steps.append(ChainStep(step.position, str(step.get("description", "")), when, skip, for_each,
                                        item_name, self._request(step["request"], f"{name} then.steps[{number}]",
                                                                 reads),
                                        str(step["request"].get("path") or step["request"].get("url") or "")))
        rule["steps"] = tuple(steps)

    def _request(self, node: PosDict, name: str, values: Lowerer) -> RequestPlan:
        field_path = f"rule '{name}' request"
        if "path" in node:
            url = values.value(node["path"], node.value_places["path"], field_path + ".path")
            url_is_path = True
        elif "url" in node:
            url = values.value(node["url"], node.value_places["url"], field_path + ".url")
            url_is_path = False
        else:
            values.problem(node.position, f"{field_path}: needs path or url")
            url, url_is_path = ir.Absent((node.position, field_path)), True
        query = values.value(node["query"], node.value_places["query"], "query") if "query" in node else None
        headers = values.value(node["headers"], node.value_places["headers"], "headers") if "headers" in node else None
        body_kind = "json" if "json" in node else "form" if "form" in node else None
        body = values.value(node[body_kind], node.value_places[body_kind], body_kind) if body_kind else None
        return RequestPlan(str(node["method"]), url, url_is_path, query, headers, body_kind, body)
