"""Stage 3, compile: value trees (the right-hand side of every field in a rule) into closures.

A value tree is YAML: a scalar is itself (a string holding `{{ }}` is a Jinja template), a mapping
builds an object, a list builds a list, and a mapping with a directive key (`select`, `first`,
`template`, `literal`, `if`, `fields`, `object`, `merge`, `rest`, `lookup`, `each`, `encode`)
computes a value. Every node is compiled once into a Python closure `scope -> value`; a value that
is absent is `ABSENT`, and an object drops keys whose value is absent (never sending them as null).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .codegen import MAX_INLINE_INDENT, Origin, Source
from .expressions import (
    Expression,
    ExpressionError,
    compile_expression,
    emit_expression,
)
from .functions import CASTS, ENCODINGS, EvalError, a_json_type, json_type
from .problems import Position, ProblemList
from .runtime import (
    ABSENT,
    FieldError,
    is_falsy,
    leave_out_leaves,
    leave_out_leaves_of,
    locate,
    normalize_key,
    not_an_object,
)
from .template_limits import TemplateLimit
from .templates import TemplateError, compile_template, looks_like_template
from .yaml_loader import PosDict, PosList, ScalarPlace, plain_value

Scope = dict[str, Any]
Evaluate = Callable[[Scope], Any]
# Writes a value's code into a generated function: (source, the scope's variable, indent) -> the
# name of the local (or bound constant) holding the value, ABSENT included.
Emit = Callable[[Source, str, int], str]

# Root names the engine puts in every scope; event fields of the same name are shadowed.
RESERVED_ROOTS = ("input", "settings", "vars", "mapping", "item", "index", "response")


NOT_CONSTANT: Any = object()  # Compiled.constant of a value computed per event


@dataclass
class Compiled:
    evaluate: Evaluate
    paths: set[tuple[str, ...]] = field(default_factory=set)  # root paths read directly
    var_refs: set[str] = field(default_factory=set)  # named values read (vars.NAME)
    constant: Any = NOT_CONSTANT  # an immutable scalar when the value is always that scalar
    # select only: rebuild it as one function with a constant default and a cast (default, cast) -> evaluate
    fuse: Callable[[Any, Any], Compiled] | None = None
    # objects only: (key, part) in order, and omit_empty; parents inline it in their generated code
    shape: tuple[tuple[tuple[str, Compiled], ...], bool] | None = None
    # the value's code, for a parent that writes its parts into one generated function; None: the
    # parent calls evaluate
    emit: Emit | None = None
    always_object: bool = False  # its value is always a dict (never ABSENT): parents skip their checks
    origin: Origin | None = None  # where in the rule files it was written (for generated code's places)
    alternatives: tuple[Compiled, ...] = ()  # if: its then and else parts (validate checks each against a spec)

    @property
    def reads_event(self) -> bool:
        """True when the value can differ between events under the same settings."""
        if self.var_refs:
            return True
        return any(path[0] not in ("settings", "mapping") for path in self.paths)


def expression_reads(expressions: list[Expression]) -> tuple[set[tuple[str, ...]], set[str]]:
    """The root paths and the named values (vars.NAME) the expressions read."""
    paths: set[tuple[str, ...]] = set()
    for expression in expressions:
        paths |= expression.info.paths
    return {p for p in paths if p[0] != "vars" or len(p) == 1}, {p[1] for p in paths if p[0] == "vars" and len(p) > 1}


def _merge_deps(parts: list[Compiled]) -> tuple[set[tuple[str, ...]], set[str]]:
    paths: set[tuple[str, ...]] = set()
    refs: set[str] = set()
    for part in parts:
        paths |= part.paths
        refs |= part.var_refs
    return paths, refs


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
    compiled: Compiled | None = None
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
        return _normalize_text_key(key)
    return key


@functools.lru_cache(maxsize=4096)  # lookup keys (event names, plans) repeat from event to event
def _normalize_text_key(key: str) -> str:
    return " ".join(key.replace("_", " ").replace("-", " ").lower().split())


class ValueCompiler:
    """Compiles value trees of one rule file, collecting every problem rather than stopping."""

    def __init__(self, problems: ProblemList, known: Known, file: str):
        self.problems = problems
        self.known = known
        self.file = file
        # Run after every table and value is compiled (rest's except_fields needs them all).
        self.links: list[Callable[[], None]] = []
        self.value_deps: dict[str, Compiled] = {}

    # -- helpers -----------------------------------------------------------------------------------
    def problem(self, position: Position, message: str) -> None:
        self.problems.add(position, message)

    def with_items(self, names: set[str]) -> ValueCompiler:
        child = ValueCompiler(self.problems, Known(self.known.settings, set(self.known.values), self.known.tables,
                                                   self.known.item_names | names), self.file)
        child.links = self.links
        child.value_deps = self.value_deps
        return child

    def expression(self, text: Any, place: ScalarPlace, field_path: str, loose: bool = False) -> Expression | None:
        if not isinstance(text, str):
            self.problem(place.position, f"{field_path}: expected a JMESPath expression (a string), "
                                         f"got {json_type(text)}")
            return None
        try:
            expression = compile_expression(text, loose)
        except ExpressionError as exc:
            self.problem(place.offset_position(text, exc.offset), f"{field_path}: {exc.message}")
            return None
        for path in expression.info.paths:
            self._check_reference(path, text, place, field_path)
        return expression

    def _check_reference(self, path: tuple[str, ...], text: str, place: ScalarPlace, field_path: str) -> None:
        root = path[0]
        offset = text.find(".".join(path[:2]))
        if offset < 0:  # (`vars['name']` in a template)
            offset = max(text.find(path[-1]), 0)
        if root == "settings" and len(path) > 1 and path[1] not in self.known.settings:
            known = ", ".join(sorted(self.known.settings)) or "none"
            self.problem(place.offset_position(text, offset),
                         f"{field_path}: unknown setting '{path[1]}' (declared settings: {known})")
        elif root == "vars" and len(path) > 1 and path[1] not in self.known.values:
            known = ", ".join(sorted(self.known.values)) or "none"
            self.problem(place.offset_position(text, offset),
                         f"{field_path}: unknown named value '{path[1]}' (defined values: {known})")
        elif root in ("item", "index") and root not in self.known.item_names:
            self.problem(place.offset_position(text, offset),
                         f"{field_path}: '{root}' is only defined inside for_each or each")
        elif root == "response" and root not in self.known.item_names:
            self.problem(place.offset_position(text, offset),
                         f"{field_path}: 'response' is only defined in a step of `then` "
                         "(the previous request's answer)")

    def condition(self, text: Any, place: ScalarPlace, field_path: str) -> Compiled | None:
        expression = self.expression(text, place, field_path)
        if expression is None:
            return None
        position = place.position

        # JMESPath truthiness (false, null, "", [] and {} are false; 0 is true), its errors located
        # at this field.
        def emit(source: Source, scope: str, indent: int) -> str:
            value = _emit_condition(source, expression, scope, indent, field_path, position)
            if value in source.known:  # decided now (it reads only fixed roots such as settings)
                return repr(not is_falsy(source.known[value]))
            if value in source.booleans:
                return value
            out = source.temp()
            source.emit(indent, f"{out} = not {source.falsy(value)}")
            source.booleans.add(out)
            return out

        compiled = self._with_deps(emit, [expression])
        compiled.origin = (place.position, field_path)
        return compiled

    @staticmethod
    def _with_deps(emit: Emit, expressions: list[Expression]) -> Compiled:
        """A part written by `emit`, reading what the expressions read."""
        return generated(emit, *expression_reads(expressions))

    # -- value trees ---------------------------------------------------------------------------------
    def value(self, node: Any, place: ScalarPlace, field_path: str) -> Compiled:
        compiled = self._value(node, place, field_path)
        if compiled.origin is None:
            compiled.origin = (place.position, field_path)
        return compiled

    def _value(self, node: Any, place: ScalarPlace, field_path: str) -> Compiled:
        if isinstance(node, PosDict):
            heads = [key for key in node if key in HEADS]
            if len(heads) > 1:
                self.problem(node.position, f"{field_path}: one directive per mapping, found {', '.join(heads)}")
                return Compiled(lambda scope: ABSENT)
            if heads:
                return self.directive(heads[0], node, field_path)
            return self.object(node, field_path, omit_empty=False)
        if isinstance(node, PosList):
            parts = [self.value(item, node.item_places[i], f"{field_path}[{i}]") for i, item in enumerate(node)]

            def emit_list(source: Source, scope: str, indent: int) -> str:
                out = source.temp()
                source.emit(indent, f"{out} = []")
                for part in parts:
                    value = emit_value(part, source, scope, indent)
                    if value != "ABSENT":  # (a part decided now to be absent)
                        source.emit(indent, f"if {value} is not ABSENT:")
                        source.emit(indent + 1, f"{out}.append({value})")
                return out

            return generated(emit_list, *_merge_deps(parts))
        if isinstance(node, str) and looks_like_template(node):
            return self.template(node, place, field_path)
        constant = node
        return Compiled(lambda scope: constant, constant=constant)

    def template(self, text: Any, place: ScalarPlace, field_path: str) -> Compiled:
        if not isinstance(text, str):
            self.problem(place.position, f"{field_path}: template must be a string, got {json_type(text)}")
            return Compiled(lambda scope: ABSENT)
        try:
            template = compile_template(text)
        except TemplateError as exc:
            lines = text.split("\n")
            offset = sum(len(line) + 1 for line in lines[: exc.line - 1])
            self.problem(place.offset_position(text, offset), f"{field_path}: {exc.message}")
            return Compiled(lambda scope: ABSENT)
        for path in sorted(template.reads):
            self._check_reference(path, text, place, field_path)
        render = template.render
        position = place.position
        if not template.roots:  # the same text for every event: a limit it passes is a load-time problem
            try:
                render({})
            except TemplateLimit as exc:
                self.problem(position, f"{field_path}: {exc}")
                return Compiled(lambda scope: ABSENT)
            except EvalError:
                pass  # (any other failure rejects each event, with its reason, as it always has)

        def evaluate(scope: Scope) -> Any:
            try:
                return render(scope)
            except EvalError as exc:
                raise locate(exc, field_path, position) from None

        # Which roots a template reads: a template of settings alone is the same for every event.
        # (Named values read through `vars` count as reading the event.)
        compiled = Compiled(evaluate, {(root,) for root in template.roots if root != "vars"} | (
            {("vars",)} if "vars" in template.roots else set()),
            {path[1] for path in template.reads if path[0] == "vars"})
        fast = template.emit
        if fast is not None:
            compiled.emit = lambda source, scope, indent: fast(source, scope, indent, source.bind(evaluate))
        return compiled

    def object(self, node: PosDict, field_path: str, omit_empty: bool) -> Compiled:
        parts = {
            key: self.value(value, node.value_places[key], f"{field_path}.{key}" if field_path else key)
            for key, value in node.items()
        }
        return _object(tuple(parts.items()), omit_empty, *_merge_deps(list(parts.values())))

    def _option_bool(self, node: PosDict, key: str, field_path: str) -> bool:
        value = node.get(key, False)
        if not isinstance(value, bool):
            self.problem(node.value_places[key].position, f"{field_path}: {key} must be true or false")
            return False
        return value

    def directive(self, head: str, node: PosDict, field_path: str) -> Compiled:
        allowed = (head, *OPTIONS[head])
        for key in node:
            if key not in allowed:
                allowed_text = ", ".join(OPTIONS[head]) or "none"
                self.problem(node.key_positions[key],
                             f"{field_path}: unknown option '{key}' for {head} (allowed: {allowed_text})")
        place = node.value_places[head]
        handler = getattr(self, f"_directive_{head}")
        compiled: Compiled = handler(node, place, field_path)
        default = None
        if "default" in node:
            default = self.value(node["default"], node.value_places["default"], f"{field_path}.default")
        cast_name = node.get("cast")
        cast = CASTS.get(cast_name) if isinstance(cast_name, str) else None
        if compiled.fuse is not None and (default is not None or cast is not None) and (
                default is None or default.constant is not NOT_CONSTANT) and ("cast" not in node or cast):
            # select + constant default + cast in one function: what _defaulted and _cast do, inline.
            return compiled.fuse(NOT_CONSTANT if default is None else default.constant,
                                 None if cast is None else (cast_name, cast, node.value_places["cast"].position))
        if default is not None:
            compiled = self._defaulted(compiled, default)
        if "cast" in node:
            compiled = self._cast(compiled, node["cast"], node.value_places["cast"], field_path)
        return compiled

    @staticmethod
    def _defaulted(compiled: Compiled, default: Compiled) -> Compiled:
        def emit(source: Source, scope: str, indent: int) -> str:
            value = emit_value(compiled, source, scope, indent)
            if value == "ABSENT":  # decided now: the default
                return emit_value(default, source, scope, indent)
            out = source.temp()
            source.emit(indent, f"{out} = {value}")
            source.emit(indent, f"if {out} is ABSENT:")
            source.emit(indent + 1, f"{out} = {emit_value(default, source, scope, indent + 1)}")
            return out

        return generated(emit, *_merge_deps([compiled, default]))

    def _cast(self, compiled: Compiled, cast_name: Any, place: ScalarPlace, field_path: str) -> Compiled:
        cast = CASTS.get(cast_name) if isinstance(cast_name, str) else None
        if cast is None:
            self.problem(place.position, f"{field_path}: unknown cast {cast_name!r} (casts: {', '.join(CASTS)})")
            return compiled
        position = place.position

        def emit(source: Source, scope: str, indent: int) -> str:
            value = emit_value(compiled, source, scope, indent)
            out = source.temp()
            source.emit(indent, f"if {value} is ABSENT:")
            source.emit(indent + 1, f"{out} = ABSENT")
            source.emit(indent, "else:")
            _emit_cast(source, value, out, (cast_name, cast, position), field_path, indent + 1)
            return out

        return generated(emit, compiled.paths, compiled.var_refs)

    # -- directives ----------------------------------------------------------------------------------
    def _directive_select(self, node: PosDict, place: ScalarPlace, field_path: str) -> Compiled:
        keys = node.get("keys", "exact")
        if keys not in ("exact", "loose"):
            self.problem(node.value_places["keys"].position, f"{field_path}: keys must be exact or loose")
        loose = keys == "loose"
        sources = node["select"]
        if isinstance(sources, PosList):
            if not sources:
                self.problem(place.position, f"{field_path}: select needs at least one expression")
            pairs = [(text, sources.item_places[i]) for i, text in enumerate(sources)]
        else:
            pairs = [(sources, place)]
        expressions = [e for e in (self.expression(t, p, field_path, loose) for t, p in pairs) if e is not None]
        # One function for the whole select, plain paths read inline: no call per path.
        position = place.position
        compiled = _select(expressions, field_path, position)
        compiled.fuse = lambda default, cast: _select(expressions, field_path, position, default, cast)
        return compiled

    def _directive_first(self, node: PosDict, place: ScalarPlace, field_path: str) -> Compiled:
        options = node["first"]
        if not isinstance(options, PosList) or not options:
            self.problem(place.position, f"{field_path}: first needs a list of values")
            return Compiled(lambda scope: ABSENT)
        parts = [self.value(v, options.item_places[i], f"{field_path}.first[{i}]") for i, v in enumerate(options)]

        def emit(source: Source, scope: str, indent: int) -> str:
            out = source.temp()
            level = indent
            for part in parts:  # each option only when the ones before it gave nothing
                if level - indent > CHAIN_NESTING:  # a long chain goes on from the outer level
                    source.drop(-1)
                    source.emit(indent, f"if {out} is ABSENT or {out} is None:")
                    level = indent + 1
                source.emit(level, f"{out} = {emit_value(part, source, scope, level)}")
                source.emit(level, f"if {out} is ABSENT or {out} is None:")
                level += 1
            source.emit(level, f"{out} = ABSENT")
            return out

        return generated(emit, *_merge_deps(parts))

    def _directive_template(self, node: PosDict, place: ScalarPlace, field_path: str) -> Compiled:
        return self.template(node["template"], place, field_path)

    def _directive_literal(self, node: PosDict, place: ScalarPlace, field_path: str) -> Compiled:
        constant = plain_value(node["literal"])
        if isinstance(constant, (dict, list)):
            return Compiled(lambda scope: constant)
        return Compiled(lambda scope: constant, constant=constant)

    def _directive_if(self, node: PosDict, place: ScalarPlace, field_path: str) -> Compiled:
        expression = self.expression(node["if"], place, field_path + ".if")
        condition = None if expression is None else Compiled(_nothing, *expression_reads([expression]))
        if "then" not in node:
            self.problem(node.key_positions["if"], f"{field_path}: if needs then")
            return Compiled(lambda scope: ABSENT)
        then = self.value(node["then"], node.value_places["then"], field_path)
        otherwise = (self.value(node["else"], node.value_places["else"], field_path) if "else" in node
                     else None)
        if expression is None or condition is None:
            return Compiled(lambda scope: ABSENT)
        if_path, position = field_path + ".if", place.position

        def emit(source: Source, scope: str, indent: int) -> str:
            value = _emit_condition(source, expression, scope, indent, if_path, position)
            if value in source.known:  # decided now: only the branch taken is written
                chosen_part = otherwise if is_falsy(source.known[value]) else then
                return "ABSENT" if chosen_part is None else emit_value(chosen_part, source, scope, indent)
            out = source.temp()
            source.emit(indent, f"if {source.falsy(value)}:")
            chosen = "ABSENT" if otherwise is None else emit_value(otherwise, source, scope, indent + 1)
            source.emit(indent + 1, f"{out} = {chosen}")
            source.emit(indent, "else:")
            source.emit(indent + 1, f"{out} = {emit_value(then, source, scope, indent + 1)}")
            return out

        compiled = generated(emit, *_merge_deps([condition, then] + ([otherwise] if otherwise else [])))
        compiled.alternatives = (then,) if otherwise is None else (then, otherwise)
        return compiled

    def _table(self, name: Any, place: ScalarPlace, field_path: str, kind: str) -> TableDef | None:
        table = self.known.tables.get(name) if isinstance(name, str) else None
        if table is None or table.kind != kind:
            names = ", ".join(sorted(n for n, t in self.known.tables.items() if t.kind == kind)) or "none"
            self.problem(place.position, f"{field_path}: unknown {kind} table {name!r} ({kind} tables: {names})")
            return None
        return table

    def _directive_fields(self, node: PosDict, place: ScalarPlace, field_path: str) -> Compiled:
        table = self._table(node["fields"], place, field_path, "fields")
        omit_empty = self._option_bool(node, "omit_empty", field_path) if "omit_empty" in node else False
        if table is None:
            return Compiled(lambda scope: ABSENT)
        if table.compiled is not None:
            compiled_table = table.compiled
            if not omit_empty:
                return compiled_table
            if compiled_table.shape is not None:
                return _object(compiled_table.shape[0], True, compiled_table.paths, compiled_table.var_refs)
            build = compiled_table.evaluate

            def evaluate_now(scope: Scope) -> Any:
                out = build(scope)
                return out if out else ABSENT

            return Compiled(evaluate_now, compiled_table.paths, compiled_table.var_refs)
        # A table that refers to a table compiled after it: bind once everything is compiled.
        holder: list[Evaluate] = []
        result = Compiled(lambda scope: ABSENT, {("<table>",)})

        def link() -> None:
            assert table.compiled is not None
            holder.append(table.compiled.evaluate)
            result.paths |= table.compiled.paths
            result.var_refs |= table.compiled.var_refs

        self.links.insert(0, link)

        def evaluate(scope: Scope) -> Any:
            out = holder[0](scope)
            return ABSENT if omit_empty and not out else out

        result.evaluate = evaluate
        return result

    def _directive_object(self, node: PosDict, place: ScalarPlace, field_path: str) -> Compiled:
        body = node["object"]
        if not isinstance(body, PosDict):
            self.problem(place.position, f"{field_path}: object needs a mapping of fields")
            return Compiled(lambda scope: ABSENT)
        omit_empty = self._option_bool(node, "omit_empty", field_path) if "omit_empty" in node else False
        return self.object(body, field_path, omit_empty)

    def _directive_merge(self, node: PosDict, place: ScalarPlace, field_path: str) -> Compiled:
        parts_node = node["merge"]
        if not isinstance(parts_node, PosList) or not parts_node:
            self.problem(place.position, f"{field_path}: merge needs a list of objects")
            return Compiled(lambda scope: ABSENT)
        omit_empty = self._option_bool(node, "omit_empty", field_path) if "omit_empty" in node else False
        parts = [self.value(v, parts_node.item_places[i], field_path) for i, v in enumerate(parts_node)]
        position = place.position

        def emit(source: Source, scope: str, indent: int) -> str:
            out = source.temp()
            source.emit(indent, f"{out} = {{}}")
            for part in parts:
                value = emit_value(part, source, scope, indent)
                if part.always_object:
                    source.emit(indent, f"{out}.update({value})")
                    continue
                if value == "ABSENT":  # (a part decided now to be absent)
                    continue
                source.emit(indent, f"if {value} is not ABSENT:")
                source.emit(indent + 1, f"if not isinstance({value}, dict):")
                source.emit(indent + 2, f"raise {source.bind(not_an_object)}({value}, "
                                        f"{source.bind(field_path)}, {source.bind(position)})")
                source.emit(indent + 1, f"{out}.update({value})")
            _emit_absent_if_empty(source, out, omit_empty, indent)
            return out

        compiled = generated(emit, *_merge_deps(parts))  # (later parts win)
        compiled.always_object = not omit_empty
        return compiled

    def _directive_rest(self, node: PosDict, place: ScalarPlace, field_path: str) -> Compiled:
        keys_option = node.get("keys", "exact")
        if keys_option not in ("exact", "loose"):
            self.problem(node.value_places["keys"].position, f"{field_path}: keys must be exact or loose")
        loose = keys_option == "loose"  # the source is found, and keys are left out, ignoring case and punctuation
        keep_null = self._option_bool(node, "keep_null", field_path) if "keep_null" in node else False
        expression = self.expression(node["rest"], place, field_path, loose)
        if expression is None:
            return Compiled(lambda scope: ABSENT)
        root_paths = list(expression.info.paths)
        excluded: set[str] = set()
        # except_fields' reads deeper than a key (traits.company.name): key -> the paths under it to
        # leave out; the rest of that key's object stays.
        nested: dict[str, set[tuple[str, ...]]] = {}
        if "except" in node:
            keys = node["except"]
            if not isinstance(keys, PosList) or not all(isinstance(k, str) for k in keys):
                self.problem(node.value_places["except"].position, f"{field_path}: except needs a list of keys")
            else:
                excluded |= set(keys)
        if "except_fields" in node:
            names = node["except_fields"]
            names_list = list(names) if isinstance(names, PosList) else [names]
            tables = [self._table(n, node.value_places["except_fields"], field_path, "fields") for n in names_list]
            if len(root_paths) != 1:
                self.problem(place.position, f"{field_path}: except_fields needs rest to be a plain path like traits")
            else:
                prefix = root_paths[0]

                def link() -> None:
                    for table in tables:
                        if table is not None and table.compiled is not None:
                            for path in self.consumed_paths(table.compiled):
                                if path[: len(prefix)] == prefix and len(path) == len(prefix) + 1:
                                    excluded.add(path[len(prefix)])
                                elif path[: len(prefix)] == prefix and len(path) > len(prefix):
                                    nested.setdefault(path[len(prefix)], set()).add(path[len(prefix) + 1:])
                    for key in excluded:  # a key left out whole needs no leaf left out
                        nested.pop(key, None)

                self.links.append(link)
        omit_empty = self._option_bool(node, "omit_empty", field_path) if "omit_empty" in node else False
        position = place.position
        source_text = node["rest"]
        loose_excluded: list[set[str]] = []  # normalized once, after except_fields are linked

        def left_out(key: Any) -> bool:
            if key in excluded:
                return True
            if not loose or not isinstance(key, str):
                return False
            if not loose_excluded:
                loose_excluded.append({normalize_key(k) for k in excluded})
            return normalize_key(key) in loose_excluded[0]

        def emit(source: Source, scope: str, indent: int) -> str:
            found, out = emit_expression(expression, source, scope, indent, scope), source.temp()
            _emit_source_check(source, found, out, "dict", omit_empty, (source_text, field_path, position), indent)
            # `excluded` is bound, not copied: except_fields fill it once every table is compiled.
            # The usual case (exact keys, nulls left out) is one set lookup per key, no call.
            keep = "" if keep_null else "v is not None and "
            kept = f"not {source.bind(left_out)}(k)" if loose else f"k not in {source.bind(excluded)}"
            source.emit(indent + 1, f"{out} = {{k: v for k, v in {found}.items() if {keep}{kept}}}")
            if nested and loose:  # (known now: except_fields are linked before any code is generated)
                source.emit(indent + 1, f"{source.bind(leave_out_leaves)}({out}, {source.bind(nested)}, True)")
            for key, paths in nested.items() if not loose else ():  # a key lookup each, a call only when there
                source.emit(indent + 1, f"if {key!r} in {out}:")
                source.emit(indent + 2, f"{source.bind(leave_out_leaves_of)}({out}, {key!r}, {source.bind(paths)})")
            _emit_absent_if_empty(source, out, omit_empty, indent + 1)
            return out

        compiled = self._with_deps(emit, [expression])
        compiled.always_object = not omit_empty
        return compiled

    def consumed_paths(self, compiled: Compiled) -> set[tuple[str, ...]]:
        """Root paths a value reads, following named values transitively."""
        paths = set(compiled.paths)
        seen: set[str] = set()
        todo = list(compiled.var_refs)
        while todo:
            name = todo.pop()
            if name in seen or name not in self.value_deps:
                continue
            seen.add(name)
            paths |= self.value_deps[name].paths
            todo.extend(self.value_deps[name].var_refs)
        return paths

    def _directive_lookup(self, node: PosDict, place: ScalarPlace, field_path: str) -> Compiled:
        table = self._table(node["lookup"], place, field_path, "lookup")
        if "key" not in node:
            self.problem(node.key_positions["lookup"], f"{field_path}: lookup needs key")
            return Compiled(lambda scope: ABSENT)
        key = self.value(node["key"], node.value_places["key"], field_path + ".key")
        if table is None:
            return Compiled(lambda scope: ABSENT)
        entries = table.lookup
        ignore_case = table.ignore_case

        def emit(source: Source, scope: str, indent: int) -> str:
            value = emit_value(key, source, scope, indent)
            if not entries:  # an empty table: absent (the key is still evaluated, for its errors)
                return "ABSENT"
            out = source.temp()
            source.emit(indent, f"if {value} is ABSENT:")
            source.emit(indent + 1, f"{out} = ABSENT")
            source.emit(indent, "else:")
            source.emit(indent + 1, "try:")
            source.emit(indent + 2, f"{out} = {source.bind(entries)}.get({source.bind(normalize_lookup_key)}"
                                    f"({value}, {ignore_case!r}), ABSENT)")
            source.emit(indent + 1, "except TypeError:  # unhashable: not in the table")
            source.emit(indent + 2, f"{out} = ABSENT")
            return out

        return generated(emit, key.paths, key.var_refs)

    def _directive_each(self, node: PosDict, place: ScalarPlace, field_path: str) -> Compiled:
        expression = self.expression(node["each"], place, field_path)
        name = node.get("as", "item")
        if not isinstance(name, str) or not name.isidentifier():
            self.problem(place.position, f"{field_path}: as must be a name")
            name = "item"
        inner = self.with_items({name, "index"})
        if "value" not in node:
            self.problem(node.key_positions["each"], f"{field_path}: each needs value")
            return Compiled(lambda scope: ABSENT)
        value = inner.value(node["value"], node.value_places["value"], f"{field_path}[]")
        where = inner.condition(node["where"], node.value_places["where"], f"{field_path}.where") \
            if "where" in node else None
        if expression is None:
            return Compiled(lambda scope: ABSENT)
        omit_empty = self._option_bool(node, "omit_empty", field_path) if "omit_empty" in node else False
        position = place.position
        source_text = node["each"]

        def emit(source: Source, scope: str, indent: int) -> str:
            items, out, inner_scope, item = source.temp(), source.temp(), source.temp(), source.temp()
            source.emit(indent, f"{items} = {emit_expression(expression, source, scope, indent, scope)}")
            _emit_source_check(source, items, out, "list", omit_empty, (source_text, field_path, position), indent)
            source.emit(indent + 1, f"{out} = []")
            source.emit(indent + 1, f"{inner_scope} = dict({scope})")
            source.emit(indent + 1, f"for {inner_scope}['index'], {item} in enumerate({items}):")
            level = indent + 2
            source.emit(level, f"{inner_scope}[{name!r}] = {item}")
            if where is not None:
                source.emit(level, f"if not {emit_value(where, source, inner_scope, level)}:")
                source.emit(level + 1, "continue")
            result = emit_value(value, source, inner_scope, level)
            source.emit(level, f"if {result} is not ABSENT:")
            source.emit(level + 1, f"{out}.append({result})")
            _emit_absent_if_empty(source, out, omit_empty, indent + 1)
            return out

        paths, refs = _merge_deps([value] + ([where] if where else []))
        compiled = self._with_deps(emit, [expression])
        compiled.paths |= {p for p in paths if p[0] not in (name, "index")}
        compiled.var_refs |= refs
        return compiled

    def _directive_encode(self, node: PosDict, place: ScalarPlace, field_path: str) -> Compiled:
        encoding = ENCODINGS.get(node["encode"]) if isinstance(node["encode"], str) else None
        if encoding is None:
            self.problem(place.position, f"{field_path}: unknown encoding {node['encode']!r} "
                                         f"(encodings: {', '.join(ENCODINGS)})")
        if "value" not in node:
            self.problem(node.key_positions["encode"], f"{field_path}: encode needs value")
            return Compiled(lambda scope: ABSENT)
        value = self.value(node["value"], node.value_places["value"], field_path)
        if encoding is None:
            return value

        def emit(source: Source, scope: str, indent: int) -> str:
            result, out = emit_value(value, source, scope, indent), source.temp()
            source.emit(indent, f"{out} = ABSENT if {result} is ABSENT else {source.bind(encoding)}({result})")
            return out

        return generated(emit, value.paths, value.var_refs)

    # -- tables --------------------------------------------------------------------------------------
    def fields_table(self, table: TableDef) -> Compiled:
        """A fields table: target key → selector shorthand (string or list) or a value tree."""
        entries: PosDict = table.entries
        parts: dict[str, Compiled] = {}
        for key, entry in entries.items():
            place = entries.value_places[key]
            field_path = f"tables.{table.name}.{key}"
            if isinstance(entry, (str, PosList)) and not (isinstance(entry, str) and looks_like_template(entry)):
                shorthand = PosDict(select=entry)
                shorthand.position = place.position
                shorthand.key_positions = {"select": place.position}
                shorthand.value_places = {"select": place}
                parts[key] = self.directive("select", shorthand, field_path)
            else:
                parts[key] = self.value(entry, place, field_path)
            parts[key].origin = parts[key].origin or (place.position, field_path)
            if table.cast is not None and table.cast_place is not None:
                part = parts[key]
                cast = CASTS.get(table.cast) if isinstance(table.cast, str) else None
                if part.fuse is not None and cast is not None:  # the select casts, in its own function
                    parts[key] = part.fuse(NOT_CONSTANT, (table.cast, cast, table.cast_place.position))
                else:
                    parts[key] = self._cast(part, table.cast, table.cast_place, field_path)
        return _object(tuple(parts.items()), False, *_merge_deps(list(parts.values())))


def generated(emit: Emit, paths: set[tuple[str, ...]], var_refs: set[str]) -> Compiled:
    """A part written by `emit`: its evaluate (for callers outside generated code) is the same code
    as its own function, made on first use."""
    compiled = Compiled(_nothing, paths, var_refs, emit=emit)
    compiled.evaluate = generated_on_first_use(compiled)
    return compiled


def _nothing(scope: Scope) -> Any:
    return ABSENT


def emit_value(part: Compiled, source: Source, scope: str, indent: int) -> str:
    """Write `part`'s code into `source` (its emit, a bound constant, or a call of its evaluate)."""
    if part.constant is not NOT_CONSTANT:
        return source.bind(part.constant)
    outer_place = source.place
    if part.origin is not None:
        source.place = part.origin
    try:
        evaluate = part.evaluate
        if part.emit is not None:
            if indent <= MAX_INLINE_INDENT:
                return part.emit(source, scope, indent)
            evaluate = generate_function(part)  # deep: called, its own function (see codegen)
        out = source.temp()
        source.emit(indent, f"{out} = {source.bind(evaluate)}({scope})")
        return out
    finally:
        source.place = outer_place


def new_source() -> Source:
    """A Source whose namespace has the names every value's code uses."""
    return Source({"ABSENT": ABSENT})


# `select` and `first` try their options one inside the other; past this many levels they go on
# from the outer level (one more test each), so a long list stays within Python's nesting limits.
CHAIN_NESTING = 8


def generated_on_first_use(part: Compiled, name: str = "value") -> Evaluate:
    """`part`'s evaluate, generated (generate_function) when first called, not at load: rules
    write most values into their own functions and never call these, and compiling them all
    was most of the time it took to load a set."""
    if part.emit is None:  # nothing to generate: its evaluate is what there is
        return part.evaluate
    made: list[Evaluate] = []

    def evaluate(scope: Scope) -> Any:
        if not made:
            made.append(generate_function(part, name))
            part.evaluate = made[0]
        return made[0](scope)

    return evaluate


def generate_function(part: Compiled, name: str = "value") -> Evaluate:
    """`part` as one generated function of the scope (its evaluate when it has no code to write);
    named values are read from the scope's `vars`."""
    if part.emit is None:
        return part.evaluate
    source = new_source()
    source.emit(1, f"return {part.emit(source, 'scope', 1)}")
    function: Evaluate = source.define(f"{name}(scope)")
    return function


def _object(parts: tuple[tuple[str, Compiled], ...], omit_empty: bool, paths: set[tuple[str, ...]],
            var_refs: set[str]) -> Compiled:
    shape = (parts, omit_empty)
    compiled = Compiled(lambda scope: ABSENT, paths, var_refs, shape=shape,
                        emit=lambda source, scope, indent: _emit_object(shape, source, scope, indent),
                        always_object=not omit_empty)
    compiled.evaluate = generated_on_first_use(compiled, "build")
    return compiled


def _emit_object(shape: tuple[tuple[tuple[str, Compiled], ...], bool], source: Source, scope: str,
                 indent: int) -> str:
    """An object's code: keys inserted in order, constants as they are, computed parts only when not
    ABSENT (each part evaluated at its key's turn); with omit_empty, ABSENT when empty. A leading
    run of constant keys starts as a copy of a ready dict."""
    parts, omit_empty = shape
    out = source.temp()
    leading = 0
    while leading < len(parts) and parts[leading][1].constant is not NOT_CONSTANT:
        leading += 1
    if leading:
        source.emit(indent, f"{out} = {source.bind({key: part.constant for key, part in parts[:leading]})}.copy()")
    else:
        source.emit(indent, f"{out} = {{}}")
    for key, part in parts[leading:]:
        value = emit_value(part, source, scope, indent)
        if part.constant is not NOT_CONSTANT or part.always_object:
            source.emit(indent, f"{out}[{key!r}] = {value}")  # never ABSENT
        elif value != "ABSENT":  # (else a part decided now to be absent)
            source.emit(indent, f"if {value} is not ABSENT:")
            source.emit(indent + 1, f"{out}[{key!r}] = {value}")
    _emit_absent_if_empty(source, out, omit_empty, indent)
    return out


def _emit_absent_if_empty(source: Source, out: str, omit_empty: bool, indent: int) -> None:
    """omit_empty: an empty object or list is ABSENT."""
    if omit_empty:
        source.emit(indent, f"if not {out}:")
        source.emit(indent + 1, f"{out} = ABSENT")


def _emit_source_check(source: Source, found: str, out: str, kind: str, omit_empty: bool,
                       where: tuple[str, str, Position], indent: int) -> None:
    """What rest (kind dict) and each (kind list) do with their source before using it: null or
    missing is empty (ABSENT with omit_empty); another type is an error naming the source text.
    Ends with `else:`, under which (at indent + 1) the caller writes its work on `found`."""
    source_text, field_path, position = where
    source.emit(indent, f"if {found} is None:")
    source.emit(indent + 1, f"{out} = ABSENT" if omit_empty else f"{out} = {kind}()")
    source.emit(indent, f"elif not isinstance({found}, {kind}):")
    not_kind = source.bind(", not an object" if kind == "dict" else ", not a list")
    source.emit(indent + 1, f"raise {source.bind(FieldError)}({source.bind(source_text)} + ' is ' + "
                            f"{source.bind(a_json_type)}({found}) + {not_kind}, "
                            f"{source.bind(field_path)}, {source.bind(position)})")
    source.emit(indent, "else:")


def _emit_condition(source: Source, expression: Expression, scope: str, indent: int, field_path: str,
                    position: Position) -> str:
    """The expression's value (not yet its truthiness), its errors located at this field."""
    start = len(source.lines)
    source.emit(indent, "try:")
    value = emit_expression(expression, source, scope, indent + 1, scope)  # usable after the try
    if len(source.lines) == start + 1:  # nothing to run (a constant, or the scope itself)
        source.drop(start)
        return value
    source.emit(indent, f"except {source.bind(EvalError)} as exc:")
    source.emit(indent + 1, f"raise {source.bind(locate)}(exc, {source.bind(field_path)}, {source.bind(position)}) "
                            "from None")
    return value


def _plain_path(expression: Expression) -> tuple[str, ...] | None:
    """The keys of an expression that is a plain path (`a`, `a.b.c`), else None."""
    ast = expression.ast
    if ast["type"] == "field":
        return (ast["value"],)
    if ast["type"] == "subexpression" and all(child["type"] == "field" for child in ast["children"]):
        return tuple(child["value"] for child in ast["children"])
    return None


Cast = tuple[str, Callable[[Any], Any], Position]  # (name, function, position of the option)


def _emit_cast(source: Source, value: str, out: str, cast: Cast, field_path: str, indent: int) -> None:
    """out = cast(value); its error names the cast and is located at the option."""
    cast_name, function, position = cast
    if function is CASTS["string"]:
        source.emit(indent, f"if {value}.__class__ is str:")
        source.emit(indent + 1, f"{out} = {value}")
        source.emit(indent, "else:")
        indent += 1
    source.emit(indent, "try:")
    source.emit(indent + 1, f"{out} = {source.bind(function)}({value})")
    source.emit(indent, f"except {source.bind(EvalError)} as exc:")
    message = source.bind(f"cannot cast to {cast_name}: ")
    source.emit(indent + 1, f"raise {source.bind(FieldError)}({message} + str(exc), "
                            f"{source.bind(field_path)}, {source.bind(position)}) from None")


def _select(expressions: list[Expression], field_path: str, position: Position, default: Any = NOT_CONSTANT,
            cast: Cast | None = None) -> Compiled:
    def emit(source: Source, scope: str, indent: int) -> str:
        return _emit_select(source, scope, indent, expressions, field_path, position, default, cast)

    return generated(emit, *expression_reads(expressions))


def _emit_select(source: Source, scope: str, indent: int, expressions: list[Expression], field_path: str,
                 position: Position, default: Any = NOT_CONSTANT, cast: Cast | None = None) -> str:
    """select's first present value (not null, not missing), else ABSENT (or a constant `default`).

    Plain paths are read inline (`scope.get('traits')`, then `.get('email')` while the value is an
    object), the same reads JMESPath makes; `vars.NAME` is read by key (the named values compute a
    name on first use); any other expression is written out too. Each expression is tried only
    when the ones before it found nothing. With a `cast`, found values and the default are cast.
    """
    out, value = source.temp(), source.temp()
    source.emit(indent, f"{out} = ABSENT")
    source.emit(indent, "try:")
    level = indent + 1
    roots: dict[tuple[str, ...], str] = {}  # path (prefix) -> the local holding it, once read
    for expression in expressions:
        if level - indent > CHAIN_NESTING:  # a long chain goes on from the outer level
            source.drop(-1)  # (the else:)
            source.emit(indent + 1, f"if {out} is ABSENT:")
            level = indent + 2
        path = _plain_path(expression)
        if expression.loose and path is not None and path[0] != "vars":  # (keys: loose: matched as JMESPath's are)
            path = None
        if path is not None and path[0] in source.roots:  # a fixed root (settings): read now
            fixed = source.roots[path[0]]
            for key in path[1:]:
                fixed = fixed.get(key) if isinstance(fixed, dict) else None
            if fixed is None:
                continue  # never present: the next expression is tried
            source.emit(level, f"{value} = {source.constant(fixed)}")
            _emit_field_source(source, field_path, expression.source, level)
            if cast is None:
                source.emit(level, f"{out} = {value}")
            else:
                _emit_cast(source, value, out, cast, field_path, level)
            break  # found: no later expression is tried
        if path is None:
            found = emit_expression(expression, source, scope, level, scope)
        else:
            steps = path[1:]
            if path[0] == "vars" and steps and source.named is not None:  # see NamedReads
                found = source.named(steps[0], level)
                steps = steps[1:]
            else:
                root = roots.get(path[:1])
                if root is None:
                    root = roots[path[:1]] = source.temp()
                    source.emit(level, f"{root} = {scope}.get({path[0]!r})")
                found = root
                if path[0] == "vars" and steps:  # named values: read by key, computed on first use
                    source.emit(level, f"{value} = None if {root} is None else {root}[{steps[0]!r}]")
                    found, steps = value, steps[1:]
                else:  # a prefix an earlier expression read (traits.address) is not read again
                    done = max((n for n in range(1, len(path)) if path[:n] in roots), default=1)
                    found, steps = roots[path[:done]], path[done:]
            for number, key in enumerate(steps):
                if path[0] != "vars" and number < len(steps) - 1:  # an inner object: kept for the next paths
                    step = roots[path[:len(path) - len(steps) + number + 1]] = source.temp()
                else:
                    step = value
                source.emit(level, f"{step} = {found}.get({key!r}) if isinstance({found}, dict) else None")
                found = step
        source.emit(level, f"if {found} is not None:")
        _emit_field_source(source, field_path, expression.source, level + 1)
        if cast is None:
            source.emit(level + 1, f"{out} = {found}")
        else:
            _emit_cast(source, found, out, cast, field_path, level + 1)
        source.emit(level, "else:")
        level += 1
    if source.lines[-1].endswith("else:"):  # nothing more to try
        source.drop(-1)
    if source.lines[-1].endswith("try:"):  # nothing at all to try (settings that are not set)
        source.emit(indent + 1, "pass")
    source.emit(indent, f"except {source.bind(EvalError)} as exc:")
    source.emit(indent + 1, f"raise {source.bind(locate)}(exc, {source.bind(field_path)}, {source.bind(position)}) "
                            "from None")
    if source.field_sources is not None:  # (map --explain) none of the paths was present
        source.emit(indent, f"if {out} is ABSENT:")
        _emit_field_source(source, field_path, None, indent + 1)
    if default is not NOT_CONSTANT:  # the default is cast too (outside the select's own error handling)
        source.emit(indent, f"if {out} is ABSENT:")
        if cast is None:
            source.emit(indent + 1, f"{out} = {source.bind(default)}")
        else:
            source.emit(indent + 1, f"{value} = {source.bind(default)}")
            _emit_cast(source, value, out, cast, field_path, indent + 1)
    return out


def _emit_field_source(source: Source, field_path: str, supplied_by: str | None, indent: int) -> None:
    """map --explain: record which expression supplied the field (None: none was present)."""
    if source.field_sources is not None:
        source.emit(indent, f"{source.field_sources}[{source.bind(field_path)}] = {source.bind(supplied_by)}")
