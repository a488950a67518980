"""Stage 3, compile: lowering. Value trees (the right-hand side of every field in a rule) and rules
(match, when, values, require, warn, for_each, and one action) become IR (ir.py), every directive
checked here, every problem collected rather than stopping.

A value tree is YAML: a scalar is itself (a string holding `{{ }}` is a Jinja template), a mapping
builds an object, a list builds a list, and a mapping with a directive key (`select`, `first`,
`template`, `literal`, `if`, `fields`, `object`, `merge`, `rest`, `lookup`, `each`, `encode`)
computes a value. A value that is absent is `ABSENT`, and an object drops keys whose value is
absent (never sending them as null). What the nodes compute is written by generate.CodeGenerator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jinja2 import nodes

from . import ir
from .analyse import report_unknown_names
from .codegen import Origin
from .expressions import Expression, ExpressionError, parse_expression
from .functions import CASTS, ENCODINGS, EvalError, json_type, normalize_event_name
from .problems import Position, ProblemList
from .runtime import LocatedRender
from .template_limits import TemplateLimit
from .templates import TemplateError, compile_template, looks_like_template
from .yaml_loader import PosDict, PosList, ScalarPlace, plain_value

HEADS = ("select", "first", "template", "literal", "if", "fields", "object", "merge", "rest", "lookup", "each",
         "encode")
OPTIONS: dict[str, tuple[str, ...]] = {
    "select": ("default", "cast", "keys"),
    "first": ("default", "cast"),
    "template": ("default", "cast"),
    "literal": (),
    "if": ("then", "else", "cast"),
    "fields": ("omit_empty",),
    "object": ("omit_empty",),
    "merge": ("omit_empty",),
    "rest": ("except", "except_fields", "omit_empty", "keys", "keep_null"),
    "lookup": ("key", "default", "cast"),
    "each": ("as", "where", "value", "omit_empty"),
    "encode": ("value",),
}


@dataclass
class TableDef:
    """A table from a rule file: `fields` (target → value) or `lookup` (key → value)."""

    name: str
    position: Position
    kind: str  # "fields" or "lookup"
    entries: Any
    ignore_case: bool = False
    cast: str | None = None
    cast_place: ScalarPlace | None = None
    lowered: ir.Object | None = None
    lookup: dict[Any, Any] = field(default_factory=dict)


@dataclass
class Known:
    """Names a rule may refer to; unknown references are load-time problems."""

    settings: set[str]
    values: set[str]
    tables: dict[str, TableDef]
    item_names: set[str] = field(default_factory=set)


def normalize_lookup_key(key: Any, ignore_case: bool) -> Any:
    if ignore_case and isinstance(key, str):
        return normalize_event_name(key)
    return key


class Lowerer:
    """Lowers the value trees of one rule file to IR, collecting every problem rather than stopping."""

    def __init__(self, problems: ProblemList, known: Known, file: str,
                 named: dict[str, ir.Node] | None = None):
        self.problems = problems
        self.known = known
        self.file = file
        # The set's named values as lowered so far, by name (what rest's except_fields follow).
        self.named: dict[str, ir.Node] = {} if named is None else named

    # -- helpers -----------------------------------------------------------------------------------
    def problem(self, position: Position, message: str) -> None:
        self.problems.add(position, message)

    def with_items(self, names: set[str]) -> Lowerer:
        known = self.known
        return Lowerer(self.problems, Known(known.settings, set(known.values), known.tables, known.item_names | names),
                       self.file, self.named)

    def expression(self, text: Any, place: ScalarPlace, field_path: str, loose: bool = False) -> Expression | None:
        if not isinstance(text, str):
            self.problem(place.position, f"{field_path}: expected a JMESPath expression (a string), "
                                         f"got {json_type(text)}")
            return None
        try:
            expression = parse_expression(text, loose, (place.position, field_path))
        except ExpressionError as exc:
            self.problem(place.offset_position(text, exc.offset), f"{field_path}: {exc.message}")
            return None
        report_unknown_names(expression.info.paths, text, place, field_path, self.known, self.problems)
        return expression

    def condition(self, text: Any, place: ScalarPlace, field_path: str) -> ir.Condition | None:
        """JMESPath truthiness (false, null, "", [] and {} are false; 0 is true), its errors located
        at this field."""
        expression = self.expression(text, place, field_path)
        if expression is None:
            return None
        return ir.Condition((place.position, field_path), expression, place.position)

    def presence(self, sources: PosList, field_path: str, any_one: bool) -> ir.Presence:
        found = [self.expression(s, sources.item_places[i], field_path) for i, s in enumerate(sources)]
        return ir.Presence((sources.position, field_path), tuple(e for e in found if e is not None), any_one)

    # -- value trees ---------------------------------------------------------------------------------
    def value(self, node: Any, place: ScalarPlace, field_path: str) -> ir.Node:
        origin = (place.position, field_path)
        if isinstance(node, PosDict):
            heads = [key for key in node if key in HEADS]
            if len(heads) > 1:
                self.problem(node.position, f"{field_path}: one directive per mapping, found {', '.join(heads)}")
                return ir.Absent(origin)
            if heads:
                return self.directive(heads[0], node, field_path, origin)
            return self.object(node, field_path, False, origin)
        if isinstance(node, PosList):
            return ir.ListOf(origin, tuple(self.value(item, node.item_places[i], f"{field_path}[{i}]")
                                           for i, item in enumerate(node)))
        if isinstance(node, str) and looks_like_template(node):
            return self.template(node, place, field_path)
        return ir.Literal(origin, node)

    def template(self, text: Any, place: ScalarPlace, field_path: str) -> ir.Node:
        origin = (place.position, field_path)
        if not isinstance(text, str):
            self.problem(place.position, f"{field_path}: template must be a string, got {json_type(text)}")
            return ir.Absent(origin)
        try:
            template = compile_template(text)
        except TemplateError as exc:
            lines = text.split("\n")
            offset = sum(len(line) + 1 for line in lines[: exc.line - 1])
            self.problem(place.offset_position(text, offset), f"{field_path}: {exc.message}")
            return ir.Absent(origin)
        report_unknown_names(sorted(template.reads), text, place, field_path, self.known, self.problems)
        render = template.render
        position = place.position
        if not template.roots:  # the same text for every event: a limit it passes is a load-time problem
            try:
                render({})
            except TemplateLimit as exc:
                self.problem(position, f"{field_path}: {exc}")
                return ir.Absent(origin)
            except EvalError:
                pass  # (any other failure rejects each event, with its reason, as it always has)

        pieces = None if template.fast_pieces is None else tuple(
            ir.Literal(origin, piece.data) if isinstance(piece, nodes.TemplateData) else _jinja(piece, origin)
            for piece in template.fast_pieces)
        return ir.Template(origin, template, LocatedRender(render, field_path, position), pieces)

    def object(self, node: PosDict, field_path: str, omit_empty: bool, origin: Origin) -> ir.Object:
        return ir.Object(origin, tuple(
            (key, self.value(value, node.value_places[key], f"{field_path}.{key}" if field_path else key))
            for key, value in node.items()), omit_empty)

    def _option_bool(self, node: PosDict, key: str, field_path: str) -> bool:
        value = node.get(key, False)
        if not isinstance(value, bool):
            self.problem(node.value_places[key].position, f"{field_path}: {key} must be true or false")
            return False
        return value

    def _omit_empty(self, node: PosDict, field_path: str) -> bool:
        return self._option_bool(node, "omit_empty", field_path) if "omit_empty" in node else False

    def directive(self, head: str, node: PosDict, field_path: str, origin: Origin) -> ir.Node:
        allowed = (head, *OPTIONS[head])
        for key in node:
            if key not in allowed:
                allowed_text = ", ".join(OPTIONS[head]) or "none"
                self.problem(node.key_positions[key],
                             f"{field_path}: unknown option '{key}' for {head} (allowed: {allowed_text})")
        place = node.value_places[head]
        lowered: ir.Node = getattr(self, f"_directive_{head}")(node, place, field_path, origin)
        if "default" in node:
            default = self.value(node["default"], node.value_places["default"], f"{field_path}.default")
            lowered = ir.Default(origin, lowered, default)
        if "cast" in node:
            cast = self.cast(node["cast"], node.value_places["cast"], field_path)
            if cast is not None:
                lowered = ir.CastTo(origin, lowered, cast)
        return lowered

    def cast(self, cast_name: Any, place: ScalarPlace, field_path: str) -> ir.Cast | None:
        function = CASTS.get(cast_name) if isinstance(cast_name, str) else None
        if function is None:
            self.problem(place.position, f"{field_path}: unknown cast {cast_name!r} (casts: {', '.join(CASTS)})")
            return None
        return ir.Cast(cast_name, function, place.position)

    # -- directives ----------------------------------------------------------------------------------
    def _directive_select(self, node: PosDict, place: ScalarPlace, field_path: str, origin: Origin) -> ir.Node:
        loose = self._loose_keys(node, field_path)
        sources = node["select"]
        if isinstance(sources, PosList):
            if not sources:
                self.problem(place.position, f"{field_path}: select needs at least one expression")
            pairs = [(text, sources.item_places[i]) for i, text in enumerate(sources)]
        else:
            pairs = [(sources, place)]
        expressions = (self.expression(t, p, field_path, loose) for t, p in pairs)
        return ir.Select(origin, tuple(e for e in expressions if e is not None), place.position)

    def _loose_keys(self, node: PosDict, field_path: str) -> bool:
        """The `keys` option: exact (the default) or loose."""
        keys = node.get("keys", "exact")
        if keys not in ("exact", "loose"):
            self.problem(node.value_places["keys"].position, f"{field_path}: keys must be exact or loose")
        return bool(keys == "loose")

    def _directive_first(self, node: PosDict, place: ScalarPlace, field_path: str, origin: Origin) -> ir.Node:
        options = node["first"]
        if not isinstance(options, PosList) or not options:
            self.problem(place.position, f"{field_path}: first needs a list of values")
            return ir.Absent(origin)
        return ir.First(origin, tuple(self.value(v, options.item_places[i], f"{field_path}.first[{i}]")
                                      for i, v in enumerate(options)))

    def _directive_template(self, node: PosDict, place: ScalarPlace, field_path: str, origin: Origin) -> ir.Node:
        return self.template(node["template"], place, field_path)

    def _directive_literal(self, node: PosDict, place: ScalarPlace, field_path: str, origin: Origin) -> ir.Node:
        return ir.Literal(origin, plain_value(node["literal"]))

    def _directive_if(self, node: PosDict, place: ScalarPlace, field_path: str, origin: Origin) -> ir.Node:
        condition = self.condition(node["if"], place, field_path + ".if")
        if "then" not in node:
            self.problem(node.key_positions["if"], f"{field_path}: if needs then")
            return ir.Absent(origin)
        then = self.value(node["then"], node.value_places["then"], field_path)
        otherwise = self.value(node["else"], node.value_places["else"], field_path) if "else" in node else None
        if condition is None:
            return ir.Absent(origin)
        return ir.If(origin, condition, then, otherwise)

    def _table(self, name: Any, place: ScalarPlace, field_path: str, kind: str) -> TableDef | None:
        table = self.known.tables.get(name) if isinstance(name, str) else None
        if table is None or table.kind != kind:
            names = ", ".join(sorted(n for n, t in self.known.tables.items() if t.kind == kind)) or "none"
            self.problem(place.position, f"{field_path}: unknown {kind} table {name!r} ({kind} tables: {names})")
            return None
        return table

    def _directive_fields(self, node: PosDict, place: ScalarPlace, field_path: str, origin: Origin) -> ir.Node:
        table = self._table(node["fields"], place, field_path, "fields")
        omit_empty = self._omit_empty(node, field_path)
        if table is None:
            return ir.Absent(origin)
        return ir.TableFields(origin, table, omit_empty)

    def _directive_object(self, node: PosDict, place: ScalarPlace, field_path: str, origin: Origin) -> ir.Node:
        body = node["object"]
        if not isinstance(body, PosDict):
            self.problem(place.position, f"{field_path}: object needs a mapping of fields")
            return ir.Absent(origin)
        return self.object(body, field_path, self._omit_empty(node, field_path), origin)

    def _directive_merge(self, node: PosDict, place: ScalarPlace, field_path: str, origin: Origin) -> ir.Node:
        parts = node["merge"]
        if not isinstance(parts, PosList) or not parts:
            self.problem(place.position, f"{field_path}: merge needs a list of objects")
            return ir.Absent(origin)
        omit_empty = self._omit_empty(node, field_path)
        return ir.Merge(origin, tuple(self.value(v, parts.item_places[i], field_path) for i, v in enumerate(parts)),
                        place.position, omit_empty)

    def _directive_rest(self, node: PosDict, place: ScalarPlace, field_path: str, origin: Origin) -> ir.Node:
        # (loose: the source is found, and keys are left out, ignoring case and punctuation)
        loose = self._loose_keys(node, field_path)
        keep_null = self._option_bool(node, "keep_null", field_path) if "keep_null" in node else False
        expression = self.expression(node["rest"], place, field_path, loose)
        if expression is None:
            return ir.Absent(origin)
        excluded: frozenset[str] = frozenset()
        if "except" in node:
            keys = node["except"]
            if not isinstance(keys, PosList) or not all(isinstance(k, str) for k in keys):
                self.problem(node.value_places["except"].position, f"{field_path}: except needs a list of keys")
            else:
                excluded = frozenset(keys)
        tables: tuple[TableDef, ...] = ()
        if "except_fields" in node:
            names = node["except_fields"]
            names_list = list(names) if isinstance(names, PosList) else [names]
            found = (self._table(n, node.value_places["except_fields"], field_path, "fields") for n in names_list)
            tables = tuple(table for table in found if table is not None)
            if len(expression.info.paths) != 1:
                self.problem(place.position, f"{field_path}: except_fields needs rest to be a plain path like traits")
        return ir.Rest(origin, expression, place.position, excluded, tables, self.named, loose,
                       keep_null, self._omit_empty(node, field_path))

    def _directive_lookup(self, node: PosDict, place: ScalarPlace, field_path: str, origin: Origin) -> ir.Node:
        table = self._table(node["lookup"], place, field_path, "lookup")
        if "key" not in node:
            self.problem(node.key_positions["lookup"], f"{field_path}: lookup needs key")
            return ir.Absent(origin)
        key = self.value(node["key"], node.value_places["key"], field_path + ".key")
        if table is None:
            return ir.Absent(origin)
        return ir.Lookup(origin, key, table.lookup, table.ignore_case)

    def _directive_each(self, node: PosDict, place: ScalarPlace, field_path: str, origin: Origin) -> ir.Node:
        expression = self.expression(node["each"], place, field_path)
        name = node.get("as", "item")
        if not isinstance(name, str) or not name.isidentifier():
            self.problem(place.position, f"{field_path}: as must be a name")
            name = "item"
        inner = self.with_items({name, "index"})
        if "value" not in node:
            self.problem(node.key_positions["each"], f"{field_path}: each needs value")
            return ir.Absent(origin)
        value = inner.value(node["value"], node.value_places["value"], f"{field_path}[]")
        where = inner.condition(node["where"], node.value_places["where"], f"{field_path}.where") \
            if "where" in node else None
        if expression is None:
            return ir.Absent(origin)
        return ir.Each(origin, expression, place.position, name, value, where, self._omit_empty(node, field_path))

    def _directive_encode(self, node: PosDict, place: ScalarPlace, field_path: str, origin: Origin) -> ir.Node:
        encoding = ENCODINGS.get(node["encode"]) if isinstance(node["encode"], str) else None
        if encoding is None:
            self.problem(place.position, f"{field_path}: unknown encoding {node['encode']!r} "
                                         f"(encodings: {', '.join(ENCODINGS)})")
        if "value" not in node:
            self.problem(node.key_positions["encode"], f"{field_path}: encode needs value")
            return ir.Absent(origin)
        value = self.value(node["value"], node.value_places["value"], field_path)
        return value if encoding is None else ir.Encode(origin, value, encoding)

    # -- rules ---------------------------------------------------------------------------------------
    def rule(self, node: PosDict, parent_name: str = "") -> ir.Rule:
        name = f"{parent_name}/{node['name']}" if parent_name else str(node["name"])
        origin = (node.position, f"rule '{name}'")
        types: frozenset[str] | None = None
        event_names: frozenset[str] | None = None
        event_globs: tuple[str, ...] = ()
        match = node.get("match")
        if isinstance(match, PosDict):
            if "type" in match:
                types = frozenset(str(t) for t in _as_list(match["type"]))
            if "event" in match:
                patterns = [normalize_event_name(str(p)) for p in _as_list(match["event"])]
                event_names = frozenset(p for p in patterns if not any(c in p for c in "*?[")) or None
                event_globs = tuple(p for p in patterns if p not in (event_names or ()))
        when = self.condition(node["when"], node.value_places["when"], f"rule '{name}' when") \
            if "when" in node else None
        item_name = str(node.get("as", "item"))
        for_each = self.expression(node["for_each"], node.value_places["for_each"], f"rule '{name}' for_each") \
            if "for_each" in node else None
        inner = self.with_items({item_name, "index"} if "for_each" in node else set())  # (its own names stay in it)
        own_values: dict[str, ir.Node] = {}
        if "values" in node and isinstance(node["values"], PosDict):
            rule_values = node["values"]
            inner.known.values |= set(rule_values)
            for key, entry in rule_values.items():
                own_values[key] = inner.named[key] = inner.value(entry, rule_values.value_places[key],
                                                                 f"rule '{name}' values.{key}")
        requires = tuple(inner.requirement(requirement, node["require"].item_places[i], name)
                         for i, requirement in enumerate(node.get("require", []) or []))
        warns = []
        for warning in node.get("warn", []) or []:
            test = inner.condition(warning["when"], warning.value_places["when"], f"rule '{name}' warn")
            text = inner.value(warning["message"], warning.value_places["message"], f"rule '{name}' warn")
            if test is not None:
                warns.append(ir.Warning_((warning.position, f"rule '{name}' warn"), test, text))
        action, message, request = "request", None, None
        children: tuple[ir.Rule, ...] = ()
        steps: tuple[ir.ChainStep, ...] = ()
        order_lane: str | None = None
        order_subject: ir.Node | None = None
        actions = [key for key in ("request", "reject", "skip", "rules") if key in node]
        if len(actions) != 1:
            what = "found " + ", ".join(actions) if actions else "found none"
            self.problem(node.position,
                         f"rule '{name}': needs exactly one of request, reject, skip or rules ({what})")
        elif actions[0] == "request":
            request = inner.request(node["request"], name, for_each is not None)
            if "then" in node and for_each is not None:
                self.problem(node["then"].position, f"rule '{name}': then (a request chain) goes on a rule "
                                                    "without for_each")
            elif "then" in node:
                steps = inner.chain(node["then"], name)
                order = node["then"].get("order")
                if isinstance(order, PosDict):
                    order_lane = str(order["lane"])
                    order_subject = inner.value(order["subject"], order.value_places["subject"],
                                                f"rule '{name}' then.order.subject")
        else:
            action = actions[0]
            if "then" in node:
                self.problem(node.key_positions["then"], f"rule '{name}': then (a request chain) follows a request")
            if "for_each" in node:
                self.problem(node.key_positions["for_each"], f"rule '{name}': for_each goes on a rule with a request")
            if action == "rules":
                action, children = "group", tuple(inner.rule(child, name) for child in node["rules"])
            else:
                message = inner.value(node[action], node.value_places[action], f"rule '{name}' {action}")
        return ir.Rule(origin, name, types, event_names, event_globs, when, bool(node.get("final", False)), own_values,
                       for_each, item_name, requires, tuple(warns), action, message, request, children, steps,
                       order_lane, order_subject)

    def requirement(self, node: PosDict, place: ScalarPlace, name: str) -> ir.Requirement:
        kinds = [k for k in ("check", "one_of", "present") if k in node]
        field_path = f"rule '{name}' require"
        origin = (place.position, field_path)
        if len(kinds) != 1:
            self.problem(place.position, f"{field_path}: needs exactly one of check, one_of or present")
            return ir.Requirement(origin, ir.Literal(None, True), ir.Literal(None, ""))
        kind = kinds[0]
        test: ir.Node
        if kind == "check":
            test = self.condition(node["check"], node.value_places["check"], field_path) or ir.Literal(None, True)
            default_reason = f"check failed: {node['check']}"
        else:
            sources: PosList = node[kind]
            test = self.presence(sources, field_path, kind == "one_of")
            names = ", ".join(str(s) for s in sources)
            default_reason = f"needs one of {names}; none is present" if kind == "one_of" else f"needs {names}"
        if "reason" in node:
            reason = self.value(node["reason"], node.value_places["reason"], field_path + ".reason")
        else:
            reason = ir.Literal(origin, default_reason)
        return ir.Requirement(origin, test, reason)

    def chain(self, node: PosDict, name: str) -> tuple[ir.ChainStep, ...]:
        steps = []
        for number, step in enumerate(node["steps"]):
            field_path = f"rule '{name}' then.steps[{number}]"
            item_name = str(step.get("as", "item"))
            reads = self.with_items({"response", item_name, "index"} if "for_each" in step else {"response"})
            answer = self.with_items({"response"})
            for_each = answer.expression(step["for_each"], step.value_places["for_each"], field_path + ".for_each") \
                if "for_each" in step else None
            when = answer.condition(step["when"], step.value_places["when"], field_path + ".when") \
                if "when" in step else None
            skip = answer.value(step["skip"], step.value_places["skip"], field_path + ".skip") \
                if "skip" in step else None
            if skip is None and (when is not None or for_each is not None):
                self.problem(step.position, f"{field_path}: needs skip (the reason given when "
                                            f"{'when is false' if when is not None else 'for_each finds nothing'})")
            request = reads.request(step["request"], f"{name} then.steps[{number}]", for_each is not None)
            target = step["request"].get("path") or step["request"].get("url") or ""
            steps.append(ir.ChainStep((step.position, field_path), str(step.get("description", "")) or
                                      f"{request.method} {target}", when, skip, for_each, item_name, request))
        return tuple(steps)

    def request(self, node: PosDict, name: str, per_item: bool) -> ir.RequestPlan:
        field_path = f"rule '{name}' request"
        if "path" in node:
            url = self.value(node["path"], node.value_places["path"], field_path + ".path")
            url_is_path = True
        elif "url" in node:
            url = self.value(node["url"], node.value_places["url"], field_path + ".url")
            url_is_path = False
        else:
            self.problem(node.position, f"{field_path}: needs path or url")
            url, url_is_path = ir.Absent((node.position, field_path)), True
        query = self.value(node["query"], node.value_places["query"], "query") if "query" in node else None
        headers = self.value(node["headers"], node.value_places["headers"], "headers") if "headers" in node else None
        body_kind = "json" if "json" in node else "form" if "form" in node else None
        body = self.value(node[body_kind], node.value_places[body_kind], body_kind) if body_kind else None
        return ir.RequestPlan((node.position, field_path), str(node["method"]), url, url_is_path, query, headers,
                              body_kind, body, per_item)

    # -- tables --------------------------------------------------------------------------------------
    def fields_table(self, table: TableDef) -> ir.Object:
        """A fields table: target key → selector shorthand (string or list) or a value tree."""
        entries: PosDict = table.entries
        parts: list[tuple[str, ir.Node]] = []
        for key, entry in entries.items():
            place = entries.value_places[key]
            field_path = f"tables.{table.name}.{key}"
            if isinstance(entry, (str, PosList)) and not (isinstance(entry, str) and looks_like_template(entry)):
                shorthand = PosDict(select=entry)
                shorthand.position = place.position
                shorthand.key_positions = {"select": place.position}
                shorthand.value_places = {"select": place}
                part = self.directive("select", shorthand, field_path, (place.position, field_path))
            else:
                part = self.value(entry, place, field_path)
            if table.cast is not None and table.cast_place is not None:  # (a wrong cast: named at each entry)
                cast = self.cast(table.cast, table.cast_place, field_path)
                part = part if cast is None else ir.CastTo(part.origin, part, cast)
            parts.append((key, part))
        return ir.Object((table.position, f"tables.{table.name}"), tuple(parts))


def _jinja(node: nodes.Node, origin: Origin) -> ir.Node:
    """A read of the fast Jinja subset (templates._fast_handles) as IR."""
    if isinstance(node, nodes.Const):
        return ir.Literal(origin, node.value)
    if isinstance(node, nodes.Name):
        return ir.JinjaName(origin, node.name)
    if isinstance(node, nodes.Getattr):
        return ir.JinjaAttribute(origin, _jinja(node.node, origin), node.attr)
    if isinstance(node, nodes.Getitem):
        assert isinstance(node.arg, nodes.Const)  # (_fast_handles allows no other)
        return ir.JinjaItem(origin, _jinja(node.node, origin), node.arg.value)
    if isinstance(node, (nodes.Or, nodes.And)):
        return ir.JinjaChoice(origin, _jinja(node.left, origin), _jinja(node.right, origin), isinstance(node, nodes.Or))
    assert isinstance(node, nodes.Not)
    return ir.JinjaNot(origin, _jinja(node.node, origin))


def _as_list(node: Any) -> list[Any]:
    return list(node) if isinstance(node, list) else [node]
