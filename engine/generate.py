"""Stage 3, compile: the code generator. One visitor writes the Python of every IR node (ir.py).

Why generated code: a rule's value tree evaluated node by node costs a Python call per node, per
event; written out as straight-line code in one function it costs none. A node's code is written
into a `Source` (codegen.py) by `visit_<NodeClass>`, which returns the name of the local (or bound
constant) holding the value, ABSENT included; "ABSENT" itself when the value is known now to be
absent. Each line is marked with the rule file's place of the node it was written for, so
tracebacks and internal errors name the YAML line. There is no other way a node is evaluated:
`function` generates a node as a function of the scope for callers outside generated code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jmespath.exceptions import JMESPathError

from . import ir
from .analyse import always_object, children, consumed_paths
from .codegen import MAX_INLINE_INDENT, Source
from .explain import RuleRecorder
from .expressions import INTERPRETER, JMESPATH_FUNCTIONS, Expression, direct_builtin
from .functions import CASTS, FUNCTIONS, UPPER_BOUNDS, EvalError, a_json_type, normalize_event_name
from .limits import MAX_TEMPLATE_OUTPUT
from .lower import normalize_lookup_key
from .named_values import NamedReads, emit_levels
from .optimise import Optimiser
from .problems import Position
from .runtime import (
    ABSENT,
    FastPathMiss,
    FieldError,
    NamedValueFunction,
    Vars,
    event_name_matches,
    fast_getattr,
    fast_getitem,
    form_body,
    headers_object,
    is_falsy,
    jmespath_equals,
    leave_out_leaves,
    leave_out_leaves_of,
    left_out_loosely,
    locate,
    loose_get,
    message_text,
    new_vars_source,
    normalize_key,
    not_a_url,
    not_an_object,
    start_chain,
    with_query,
)

Evaluate = Callable[[dict[str, Any]], Any]
Levels = tuple[dict[str, ir.Node], ...]  # named values: the set's, then each enclosing rule's that has some

# `select` and `first` try their options one inside the other; past this many levels they go on
# from the outer level (one more test each), so a long list stays within Python's nesting limits.
CHAIN_NESTING = 8


def jmespath_function(tree: ir.Node, loose: bool, text: str) -> Evaluate:
    """A JMESPath tree as one generated function of the value it is computed on; `text` names it in
    jmespath's errors ("": a part of an expression, whose caller's guard names the whole)."""
    source = Source()
    source.emit(1, f"return {CodeGenerator(source).guarded(tree, loose, text, 'cur', 1, None)}")
    made: Evaluate = source.define("expression(cur)")
    return made


def generate_function(node: ir.Node, name: str = "value", optimiser: Optimiser | None = None) -> Evaluate:
    """`node` folded (by a Mapper's optimiser, or with no fixed roots) as one generated function of the
    scope; named values are read from the scope's `vars`."""
    source = Source({"ABSENT": ABSENT})  # (the name every value's code uses)
    source.emit(1, f"return {CodeGenerator(source).value((optimiser or Optimiser({})).visit(node), 'scope', 1)}")
    made: Evaluate = source.define(f"{name}(scope)")
    return made


class MapperCode:
    """One Mapper's code (rules, chain steps, named values: each written once, by a CodeGenerator)
    and what it needs of the Mapper (evaluate.py imports this module, not the other way round)."""

    def __init__(self, roots: dict[str, Any], field_sources: dict[str, str | None] | None, base_url: str,
                 default_headers: ir.Node | None, runner: Callable[[ir.Rule, bool, Levels], Callable[..., bool]],
                 results: tuple[type, type, Callable[[ir.Rule, EvalError], str]]):
        """roots: the fixed scope roots (settings, mapping); field_sources: what map --explain records (None:
        nothing); runner: a group's rule's function; results: evaluate's Request, ItemRejection, _reason."""
        self.field_sources, self.base_url, self.runner = field_sources, base_url, runner
        self.request, self.item_rejection, self.reason = results
        self.optimiser = Optimiser(roots)  # (every node is folded before its code is written)
        self.default_headers = None if default_headers is None else self.optimiser.visit(default_headers)
        self.constant_headers: dict[str, str] | None = None  # the default headers, when they read no event
        self._tables: dict[int, dict[str, NamedValueFunction]] = {}
        self._levels: list[dict[str, ir.Node]] = []  # (keeps the keys' dicts alive)

    def new_source(self) -> Source:
        """A Source for one of the Mapper's functions, recording if explaining."""
        source = Source({"ABSENT": ABSENT})
        if self.field_sources is not None:
            source.field_sources = source.bind(self.field_sources)
        return source

    def rule(self, rule: ir.Rule, check_type: bool, outer: Levels, recorder: RuleRecorder | None = None) -> tuple[
            Callable[..., bool], str, dict[str, Any], list[Callable[..., tuple[list[Any], str | None]]]]:
        """The rule's function (see CodeGenerator.visit_Rule), its source, the namespace it binds,
        and each step of its request chain as one function (see CodeGenerator.visit_ChainStep)."""
        rule = self.optimiser.visit(rule)
        steps = []
        for number, step in enumerate(rule.steps):
            source = self.new_source()
            CodeGenerator(source, self).visit(step, number, rule)
            steps.append(source.define("build(scope, result)", f"for rule {rule.name!r} step {number + 2}"))
        source = self.new_source()
        CodeGenerator(source, self).visit(rule, check_type, outer, recorder)
        header = "run(scope, event_type, event_name, result)"
        return source.define(header, f"for rule {rule.name!r}"), source.text(header), source.namespace, steps

    def functions(self, chain: tuple[dict[str, ir.Node], ...]) -> dict[str, NamedValueFunction]:
        """Every named value of the innermost level of `chain` (outermost level first), generated."""
        for name in chain[-1]:
            self.function(chain, name)
        return self._table(chain[-1])

    def function(self, chain: tuple[dict[str, ir.Node], ...], name: str) -> NamedValueFunction:
        """The function of the named value `name` of the innermost level of `chain`."""
        table = self._table(chain[-1])
        function = table.get(name)
        if function is None:
            function = table[name] = self._generate(chain, name)
        return function

    def _table(self, definitions: dict[str, ir.Node]) -> dict[str, NamedValueFunction]:
        table = self._tables.get(id(definitions))
        if table is None:
            table = self._tables[id(definitions)] = {}
            self._levels.append(definitions)
        return table

    def _generate(self, chain: tuple[dict[str, ir.Node], ...], name: str) -> NamedValueFunction:
        inner = len(chain) - 1
        source = self.new_source()
        levels = emit_levels(source, chain, f"S{inner}")  # (the outer levels' lines are dropped when unread)
        setup_end = len(source.lines)
        reads = NamedReads(source, levels, self)
        value = CodeGenerator(source).value(self.optimiser.visit(chain[inner][name]), f"S{inner}", 1)
        source.emit(1, f"value = None if {value} is ABSENT else {value}")
        source.emit(1, f"V{inner}[{name!r}] = value")
        source.emit(1, "return value")
        reads.finish()
        if not any(number < inner for number in reads.read_levels):  # no outer level was read
            source.drop(0, setup_end)
        function: NamedValueFunction = source.define(f"named_value(S{inner}, V{inner})", f"for values.{name}")
        return function


IS_NUMBER = "isinstance({0}, (int, float)) and not isinstance({0}, bool)"  # (JMESPath: true is not a number)


class CodeGenerator:
    """Writes nodes' code into one Source."""

    def __init__(self, source: Source, mapper: MapperCode | None = None):
        self.source = source
        self.mapper = mapper  # (rules and requests need it)
        # the JMESPath expression being written: keys: loose, and the scope's variable (see expression)
        self.loose = False
        self.named_root: str | None = None

    def visit(self, node: ir.Node, *context: Any) -> Any:
        """The node's `visit_<NodeClass>`: a value's (scope, indent), a rule's, a chain step's context."""
        return getattr(self, f"visit_{type(node).__name__}")(node, *context)

    def value(self, node: ir.Node, scope: str, indent: int) -> str:
        """The node's code (a deep node is its own function, called), lines marked with its place."""
        source = self.source
        if isinstance(node, ir.Literal) and node.is_scalar:
            return source.bind(node.value)
        outer_place = source.place
        if node.origin is not None:
            source.place = node.origin
        try:
            if indent <= MAX_INLINE_INDENT:
                visited: str = getattr(self, f"visit_{type(node).__name__}")(node, scope, indent)
                return visited
            out = source.temp()  # deep: its own function (see codegen.MAX_INLINE_INDENT)
            made = generate_function(node, "value", None if self.mapper is None else self.mapper.optimiser)
            source.emit(indent, f"{out} = {source.bind(made)}({scope})")
            return out
        finally:
            source.place = outer_place

    # -- plain values ------------------------------------------------------------------------------
    def visit_Literal(self, node: ir.Literal, scope: str, indent: int) -> str:
        return self.source.bind(node.value)  # (a `literal:` object or list: the same object each time)

    def visit_Absent(self, node: ir.Absent, scope: str, indent: int) -> str:
        return "ABSENT"

    def visit_ListOf(self, node: ir.ListOf, scope: str, indent: int) -> str:
        source = self.source
        out = source.temp()
        source.emit(indent, f"{out} = []")
        for part in node.items:
            value = self.value(part, scope, indent)
            if value != "ABSENT":  # (a part decided now to be absent)
                source.emit(indent, f"if {value} is not ABSENT:")
                source.emit(indent + 1, f"{out}.append({value})")
        return out

    def visit_Object(self, node: ir.Object, scope: str, indent: int) -> str:
        """Keys inserted in order, constants as they are, computed parts only when not ABSENT (each
        part evaluated at its key's turn); with omit_empty, ABSENT when empty. A leading run of
        constant keys starts as a copy of a ready dict."""
        source, fields = self.source, node.fields
        out = source.temp()
        leading = 0
        while leading < len(fields) and _scalar(fields[leading][1]):
            leading += 1
        if leading:
            ready = {key: part.value for key, part in fields[:leading] if isinstance(part, ir.Literal)}
            source.emit(indent, f"{out} = {source.bind(ready)}.copy()")
        else:
            source.emit(indent, f"{out} = {{}}")
        for key, part in fields[leading:]:
            value = self.value(part, scope, indent)
            if _scalar(part) or always_object(part):
                source.emit(indent, f"{out}[{key!r}] = {value}")  # never ABSENT
            elif value != "ABSENT":  # (else a part decided now to be absent)
                source.emit(indent, f"if {value} is not ABSENT:")
                source.emit(indent + 1, f"{out}[{key!r}] = {value}")
        self.absent_if_empty(out, node.omit_empty, indent)
        return out

    def absent_if_empty(self, out: str, omit_empty: bool, indent: int) -> None:
        """omit_empty: an empty object or list is ABSENT."""
        if omit_empty:
            self.source.emit(indent, f"if not {out}:")
            self.source.emit(indent + 1, f"{out} = ABSENT")

    # -- templates -----------------------------------------------------------------------------------
    def visit_Template(self, node: ir.Template, scope: str, indent: int) -> str:
        """Jinja's rendering, called; or the fast subset's code, falling back to it for anything unusual."""
        source = self.source
        out = source.temp()
        if node.pieces is None:
            source.emit(indent, f"{out} = {source.bind(node.render)}({scope})")
            return out
        source.emit(indent, "try:")
        pieces = [source.bind(piece.value) if isinstance(piece, ir.Literal) and isinstance(piece.value, str)
                  else f"str({self.value(piece, scope, indent + 1)})" for piece in node.pieces]
        source.emit(indent + 1, f"{out} = {' + '.join(pieces) if pieces else repr('')}")
        if len(pieces) > 1:  # (one value alone is not limited: it is the event's)
            source.emit(indent + 1, f"if len({out}) > {MAX_TEMPLATE_OUTPUT}: raise {source.bind(FastPathMiss)}")
        source.emit(indent, f"except ({source.bind(KeyError)}, {source.bind(FastPathMiss)}):")
        source.emit(indent + 1, f"{out} = {source.bind(node.render)}({scope})")
        return out

    def visit_JinjaName(self, node: ir.JinjaName, scope: str, indent: int) -> str:
        out = self.source.temp()
        self.source.emit(indent, f"{out} = {scope}[{node.name!r}]")
        return out

    def visit_JinjaAttribute(self, node: ir.JinjaAttribute, scope: str, indent: int) -> str:
        source = self.source
        if isinstance(node.value, ir.JinjaName) and node.value.name == "vars" and source.named is not None:
            return source.named(node.attribute, indent)  # a named value: as the rule's code reads it
        inner, out = self.value(node.value, scope, indent), source.temp()
        source.emit(indent, f"{out} = {inner}[{node.attribute!r}] if {inner}.__class__ is dict else "
                            f"{source.bind(fast_getattr)}({inner}, {node.attribute!r})")
        return out

    def visit_JinjaItem(self, node: ir.JinjaItem, scope: str, indent: int) -> str:
        source = self.source
        inner, out = self.value(node.value, scope, indent), source.temp()
        source.emit(indent, f"{out} = {source.bind(fast_getitem)}({inner}, {source.bind(node.key)})")
        return out

    def visit_JinjaChoice(self, node: ir.JinjaChoice, scope: str, indent: int) -> str:
        source = self.source
        out = source.temp()
        source.emit(indent, f"{out} = {self.value(node.left, scope, indent)}")
        source.emit(indent, f"if {'not ' if node.is_or else ''}{out}:")
        source.emit(indent + 1, f"{out} = {self.value(node.right, scope, indent + 1)}")
        return out

    def visit_JinjaNot(self, node: ir.JinjaNot, scope: str, indent: int) -> str:
        out = self.source.temp()
        self.source.emit(indent, f"{out} = not {self.value(node.value, scope, indent)}")
        return out

    # -- choices -------------------------------------------------------------------------------------
    def visit_Select(self, node: ir.Select, scope: str, indent: int) -> str:
        """The first present value (not null, not missing), else ABSENT (or the constant default).

        Plain paths are read inline (`scope.get('traits')`, then `.get('email')` while the value is
        an object), the same reads JMESPath makes; `vars.NAME` is read by key (see NamedReads); any
        other expression is written out too. Each expression is tried only when the ones before it
        found nothing. With a cast, found values and the default are cast."""
        source, field_path, cast = self.source, _field_path(node), node.cast
        out, value = source.temp(), source.temp()
        source.emit(indent, f"{out} = ABSENT")
        source.emit(indent, "try:")
        level = indent + 1
        roots: dict[tuple[str, ...], str] = {}  # path (prefix) -> the local holding it, once read
        for expression in node.expressions:
            if level - indent > CHAIN_NESTING:  # a long chain goes on from the outer level
                source.drop(-1)  # (the else:)
                source.emit(indent + 1, f"if {out} is ABSENT:")
                level = indent + 2
            path = ir.plain_path(expression.tree)
            if expression.loose and path is not None and path[0] != "vars":  # (keys: loose: matched as JMESPath's are)
                path = None
            if path is None:
                found = self.expression(expression, scope, level, scope)
            else:
                found = self.read_path(path, roots, value, scope, level)
            if found in source.known:  # a constant (a literal, or a setting the optimiser read)
                if source.known[found] is None:
                    continue  # never present: the next expression is tried
                self.field_source(field_path, expression.source, level)
                self.cast(found, out, cast, field_path, level)
                break  # found: no later expression is tried
            source.emit(level, f"if {found} is not None:")
            self.field_source(field_path, expression.source, level + 1)
            self.cast(found, out, cast, field_path, level + 1)
            source.emit(level, "else:")
            level += 1
        if source.lines[-1].endswith("else:"):  # nothing more to try
            source.drop(-1)
        if source.lines[-1].endswith("try:"):  # nothing at all to try (settings that are not set)
            source.emit(indent + 1, "pass")
        self.located(field_path, node.position, indent)
        if source.field_sources is not None:  # (map --explain) none of the paths was present
            source.emit(indent, f"if {out} is ABSENT:")
            self.field_source(field_path, None, indent + 1)
        if node.default is not ir.NO_DEFAULT:  # the default is cast too (outside the select's own error handling)
            source.emit(indent, f"if {out} is ABSENT:")
            if cast is None:
                source.emit(indent + 1, f"{out} = {source.bind(node.default)}")
            else:
                source.emit(indent + 1, f"{value} = {source.bind(node.default)}")
                self.cast(value, out, cast, field_path, indent + 1)
        return out

    def read_path(self, path: tuple[str, ...], roots: dict[tuple[str, ...], str], value: str, scope: str,
                  level: int) -> str:
        """A plain path's value, read key by key; inner objects kept in `roots` for later paths."""
        source, steps = self.source, path[1:]
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
        return found

    def field_source(self, field_path: str, supplied_by: str | None, indent: int) -> None:
        """map --explain: record which expression supplied the field (None: none was present)."""
        source = self.source
        if source.field_sources is not None:
            source.emit(indent, f"{source.field_sources}[{source.bind(field_path)}] = {source.bind(supplied_by)}")

    def cast(self, value: str, out: str, cast: ir.Cast | None, field_path: str, indent: int) -> None:
        """out = cast(value) (value itself without a cast); its error names the cast, at the option."""
        source = self.source
        if cast is None:
            source.emit(indent, f"{out} = {value}")
            return
        if cast.function is CASTS["string"]:
            source.emit(indent, f"if {value}.__class__ is str:")
            source.emit(indent + 1, f"{out} = {value}")
            source.emit(indent, "else:")
            indent += 1
        source.emit(indent, "try:")
        source.emit(indent + 1, f"{out} = {source.bind(cast.function)}({value})")
        source.emit(indent, f"except {source.bind(EvalError)} as exc:")
        message = source.bind(f"cannot cast to {cast.name}: ")
        source.emit(indent + 1, f"raise {source.bind(FieldError)}({message} + str(exc), "
                                f"{source.bind(field_path)}, {source.bind(cast.position)}) from None")

    def located(self, field_path: str, position: Position, indent: int) -> None:
        """The handler closing a `try:` at `indent`: an EvalError is located at this field."""
        source = self.source
        source.emit(indent, f"except {source.bind(EvalError)} as exc:")
        source.emit(indent + 1, f"raise {source.bind(locate)}(exc, {source.bind(field_path)}, {source.bind(position)}) "
                                "from None")

    def visit_First(self, node: ir.First, scope: str, indent: int) -> str:
        source = self.source
        out = source.temp()
        level = indent
        for part in node.options:  # each option only when the ones before it gave nothing
            if level - indent > CHAIN_NESTING:  # a long chain goes on from the outer level
                source.drop(-1)
                source.emit(indent, f"if {out} is ABSENT or {out} is None:")
                level = indent + 1
            source.emit(level, f"{out} = {self.value(part, scope, level)}")
            source.emit(level, f"if {out} is ABSENT or {out} is None:")
            level += 1
        source.emit(level, f"{out} = ABSENT")
        return out

    def visit_Default(self, node: ir.Default, scope: str, indent: int) -> str:
        source = self.source
        value = self.value(node.value, scope, indent)
        if value == "ABSENT":  # decided now: the default
            return self.value(node.default, scope, indent)
        out = source.temp()
        source.emit(indent, f"{out} = {value}")
        source.emit(indent, f"if {out} is ABSENT:")
        source.emit(indent + 1, f"{out} = {self.value(node.default, scope, indent + 1)}")
        return out

    def visit_CastTo(self, node: ir.CastTo, scope: str, indent: int) -> str:
        source = self.source
        value = self.value(node.value, scope, indent)
        out = source.temp()
        source.emit(indent, f"if {value} is ABSENT:")
        source.emit(indent + 1, f"{out} = ABSENT")
        source.emit(indent, "else:")
        self.cast(value, out, node.cast, _field_path(node), indent + 1)
        return out

    # -- conditions ----------------------------------------------------------------------------------
    def condition_value(self, node: ir.Condition, scope: str, indent: int) -> str:
        """The condition's expression's value (not yet its truthiness), its errors located at its field."""
        source = self.source
        start = len(source.lines)
        source.emit(indent, "try:")
        value = self.expression(node.expression, scope, indent + 1, scope)  # usable after the try
        if len(source.lines) == start + 1:  # nothing to run (a constant, or the scope itself)
            source.drop(start)
            return value
        self.located(_field_path(node), node.position, indent)
        return value

    def visit_Condition(self, node: ir.Condition, scope: str, indent: int) -> str:
        source = self.source
        value = self.condition_value(node, scope, indent)
        if value in source.known:  # decided now (it reads only fixed roots such as settings)
            return repr(not is_falsy(source.known[value]))
        if value in source.booleans:
            return value
        out = source.temp()
        source.emit(indent, f"{out} = not {source.falsy(value)}")
        source.booleans.add(out)
        return out

    def visit_Presence(self, node: ir.Presence, scope: str, indent: int) -> str:
        """Each expression tried only while the answer is open."""
        source, any_one = self.source, node.any_one
        out = source.temp()
        source.emit(indent, f"{out} = {not any_one}")
        for number, expression in enumerate(node.expressions):
            level = indent
            if number:  # (flat, not nested: a long list stays within Python's nesting limits)
                source.emit(indent, f"if {'not ' if any_one else ''}{out}:")
                level += 1
            value = self.expression(expression, scope, level, scope)
            source.emit(level, f"{out} = {value} is not None")
        source.booleans.add(out)
        return out

    def visit_If(self, node: ir.If, scope: str, indent: int) -> str:
        source = self.source
        value = self.condition_value(node.condition, scope, indent)
        if value in source.known:  # decided now: only the branch taken is written
            chosen_part = node.otherwise if is_falsy(source.known[value]) else node.then
            return "ABSENT" if chosen_part is None else self.value(chosen_part, scope, indent)
        out = source.temp()
        source.emit(indent, f"if {source.falsy(value)}:")
        chosen = "ABSENT" if node.otherwise is None else self.value(node.otherwise, scope, indent + 1)
        source.emit(indent + 1, f"{out} = {chosen}")
        source.emit(indent, "else:")
        source.emit(indent + 1, f"{out} = {self.value(node.then, scope, indent + 1)}")
        return out

    # -- objects from objects ------------------------------------------------------------------------
    def visit_Merge(self, node: ir.Merge, scope: str, indent: int) -> str:
        source, field_path = self.source, _field_path(node)
        out = source.temp()
        source.emit(indent, f"{out} = {{}}")
        for part in node.parts:  # (later parts win)
            value = self.value(part, scope, indent)
            if always_object(part):
                source.emit(indent, f"{out}.update({value})")
                continue
            if value == "ABSENT":  # (a part decided now to be absent)
                continue
            source.emit(indent, f"if {value} is not ABSENT:")
            source.emit(indent + 1, f"if not isinstance({value}, dict):")
            source.emit(indent + 2, f"raise {source.bind(not_an_object)}({value}, "
                                    f"{source.bind(field_path)}, {source.bind(node.position)})")
            source.emit(indent + 1, f"{out}.update({value})")
        self.absent_if_empty(out, node.omit_empty, indent)
        return out

    def source_check(self, found: str, out: str, kind: str, node: ir.Rest | ir.Each, indent: int) -> None:
        """What rest (kind dict) and each (kind list) do with their source before using it: null or
        missing is empty (ABSENT with omit_empty); another type is an error naming the source text.
        Ends with `else:`, under which (at indent + 1) the caller writes its work on `found`."""
        source = self.source
        source.emit(indent, f"if {found} is None:")
        source.emit(indent + 1, f"{out} = ABSENT" if node.omit_empty else f"{out} = {kind}()")
        source.emit(indent, f"elif not isinstance({found}, {kind}):")
        not_kind = source.bind(", not an object" if kind == "dict" else ", not a list")
        source.emit(indent + 1, f"raise {source.bind(FieldError)}({source.bind(node.expression.source)} + ' is ' + "
                                f"{source.bind(a_json_type)}({found}) + {not_kind}, "
                                f"{source.bind(_field_path(node))}, {source.bind(node.position)})")
        source.emit(indent, "else:")

    def visit_Rest(self, node: ir.Rest, scope: str, indent: int) -> str:
        source = self.source
        excluded, nested = _left_out(node)
        found, out = self.expression(node.expression, scope, indent, scope), source.temp()
        self.source_check(found, out, "dict", node, indent)
        # The usual case (exact keys, nulls left out) is one set lookup per key, no call.
        keep = "" if node.keep_null else "v is not None and "
        if node.loose:
            normalized = frozenset(normalize_key(k) for k in excluded)
            kept = f"not {source.bind(left_out_loosely)}(k, {source.bind(excluded)}, {source.bind(normalized)})"
        else:
            kept = f"k not in {source.bind(excluded)}"
        source.emit(indent + 1, f"{out} = {{k: v for k, v in {found}.items() if {keep}{kept}}}")
        if nested and node.loose:
            source.emit(indent + 1, f"{source.bind(leave_out_leaves)}({out}, {source.bind(nested)}, True)")
        for key, paths in nested.items() if not node.loose else ():  # a key lookup each, a call only when there
            source.emit(indent + 1, f"if {key!r} in {out}:")
            source.emit(indent + 2, f"{source.bind(leave_out_leaves_of)}({out}, {key!r}, {source.bind(paths)})")
        self.absent_if_empty(out, node.omit_empty, indent + 1)
        return out

    def visit_Each(self, node: ir.Each, scope: str, indent: int) -> str:
        source = self.source
        items, out, inner_scope, item = source.temp(), source.temp(), source.temp(), source.temp()
        source.emit(indent, f"{items} = {self.expression(node.expression, scope, indent, scope)}")
        self.source_check(items, out, "list", node, indent)
        source.emit(indent + 1, f"{out} = []")
        source.emit(indent + 1, f"{inner_scope} = dict({scope})")
        source.emit(indent + 1, f"for {inner_scope}['index'], {item} in enumerate({items}):")
        level = indent + 2
        source.emit(level, f"{inner_scope}[{node.name!r}] = {item}")
        if node.where is not None:
            source.emit(level, f"if not {self.value(node.where, inner_scope, level)}:")
            source.emit(level + 1, "continue")
        result = self.value(node.value, inner_scope, level)
        source.emit(level, f"if {result} is not ABSENT:")
        source.emit(level + 1, f"{out}.append({result})")
        self.absent_if_empty(out, node.omit_empty, indent + 1)
        return out

    # -- tables and encodings ------------------------------------------------------------------------
    def visit_Lookup(self, node: ir.Lookup, scope: str, indent: int) -> str:
        source = self.source
        value = self.value(node.key, scope, indent)
        if not node.entries:  # an empty table: absent (the key is still evaluated, for its errors)
            return "ABSENT"
        out = source.temp()
        source.emit(indent, f"if {value} is ABSENT:")
        source.emit(indent + 1, f"{out} = ABSENT")
        source.emit(indent, "else:")
        source.emit(indent + 1, "try:")
        source.emit(indent + 2, f"{out} = {source.bind(node.entries)}.get({source.bind(normalize_lookup_key)}"
                                f"({value}, {node.ignore_case!r}), ABSENT)")
        source.emit(indent + 1, "except TypeError:  # unhashable: not in the table")
        source.emit(indent + 2, f"{out} = ABSENT")
        return out

    def visit_Encode(self, node: ir.Encode, scope: str, indent: int) -> str:
        source = self.source
        result, out = self.value(node.value, scope, indent), source.temp()
        source.emit(indent, f"{out} = ABSENT if {result} is ABSENT else {source.bind(node.encoding)}({result})")
        return out

    # -- JMESPath ------------------------------------------------------------------------------------
    # An expression's tree (ir.py's JMESPath nodes) is written node for node, in the order jmespath's
    # interpreter visits it, by `visit_Jmes<Node>`: paths, indexes, literals, comparisons, and/or/not,
    # pipes, lists, objects, projections, filters, flattening and function calls become straight-line
    # Python (a loose key is one call); what is left to jmespath's interpreter (JmesInterpreted: slices,
    # exprefs) calls it on its parse tree, so the language is always full JMESPath.
    def expression(self, expression: Expression, cur: str, indent: int, named_root: str | None = None) -> str:
        """The expression computed on the variable `cur`; jmespath's own errors become EvalErrors
        naming its text. With `named_root` (the scope's variable), `vars.NAME` is read by key."""
        return self.guarded(expression.tree, expression.loose, expression.source, cur, indent, named_root)

    def guarded(self, tree: ir.Node, loose: bool, text: str, cur: str, indent: int, named_root: str | None) -> str:
        source = self.source
        self.loose, self.named_root = loose, named_root
        source.namespace.update(_equals=jmespath_equals, _instance=JMESPATH_FUNCTIONS)
        if not text or not _needs_guard(tree):  # ("": a part of an expression, whose caller's guard names the whole)
            return self.jmespath(tree, cur, indent)
        source.emit(indent, "try:")
        start = len(source.lines)
        value = self.jmespath(tree, cur, indent + 1)  # assigned inside the try, or a constant: usable after it
        if len(source.lines) == start:
            source.emit(indent + 1, "pass")
        source.emit(indent, f"except {source.bind(JMESPathError)} as exc:")
        source.emit(indent + 1, f"raise {source.bind(EvalError)}({source.bind(text + ': ')} + str(exc)) from None")
        return value

    def jmespath(self, node: ir.Node, cur: str, indent: int) -> str:
        """Statements computing `node` on the value named `cur`; the name holding it."""
        if isinstance(node, ir.Literal):
            name = self.source.constant(node.value)
            if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
                self.source.numbers.add(name)
            return name
        if isinstance(node, ir.JmesCurrent):
            return cur
        if indent > MAX_INLINE_INDENT:  # deep: the node as its own function, called (see codegen)
            out = self.source.temp()
            made = jmespath_function(node, self.loose, "")
            self.source.emit(indent, f"{out} = {self.source.bind(made)}({cur})")
            return out
        visited: str = getattr(self, f"visit_{type(node).__name__}")(node, cur, indent)
        return visited

    def visit_JmesInterpreted(self, node: ir.JmesInterpreted, cur: str, indent: int) -> str:
        """Slices, exprefs: jmespath's interpreter, on its parse tree (keys there are exact)."""
        out = self.source.temp()
        self.source.emit(indent, f"{out} = {self.source.bind(INTERPRETER.visit)}({self.source.bind(node.tree)}, {cur})")
        return out

    def visit_JmesField(self, node: ir.JmesField, cur: str, indent: int) -> str:
        source = self.source
        out = source.temp()
        if self.loose:
            source.emit(indent, f"{out} = {source.bind(loose_get)}({cur}, {node.name!r})")
        elif cur == self.named_root:  # the scope: always a dict
            source.emit(indent, f"{out} = {cur}.get({node.name!r})")
        else:
            source.emit(indent, f"{out} = {cur}.get({node.name!r}) if isinstance({cur}, dict) else None")
        return out

    def visit_JmesSubexpression(self, node: ir.JmesSubexpression, cur: str, indent: int) -> str:
        source, steps = self.source, node.steps
        name = _named_value(steps) if cur == self.named_root and not self.loose else None
        if name is not None:
            return self.named_value_path(steps, name, cur, indent)
        out = source.temp()
        depth = indent
        if cur != self.named_root:  # (the scope is never null)
            source.emit(indent, f"{out} = None")
            source.emit(indent, f"if {cur} is not None:")
            depth += 1
        value = self.jmespath(steps[0], cur, depth)
        for step in steps[1:]:
            if isinstance(step, ir.JmesField) and not self.loose:
                # (the first step reads the first step's value, not a copy of it)
                source.emit(depth, f"{out} = {value}.get({step.name!r}) if isinstance({value}, dict) else None")
                value = out
                continue
            if value != out:
                source.emit(depth, f"{out} = {value}")
                value = out
            source.emit(depth, f"if {out} is not None:")
            value = self.jmespath(step, out, depth + 1)
            source.emit(depth + 1, f"{out} = {value}")
            value = out
            if depth < MAX_INLINE_INDENT:  # (deeper, the next steps test `out` again instead)
                depth += 1
        if value != out:
            source.emit(depth, f"{out} = {value}")
        return out

    def named_value_path(self, steps: tuple[ir.Node, ...], name: str, cur: str, indent: int) -> str:
        """`vars.NAME...` on the scope: the named value read by key (see NamedReads), then its steps."""
        source = self.source
        if source.named is not None:
            out = source.named(name, indent)
        else:
            out = source.temp()
            source.emit(indent, f"{out} = {cur}.get('vars')")
            source.emit(indent, f"{out} = None if {out} is None else {out}[{name!r}]")
        if len(steps) > 2:  # a copy: the next steps must not overwrite the named value's local
            value, out = out, source.temp()
            source.emit(indent, f"{out} = {value}")
        for step in steps[2:]:
            if not isinstance(step, ir.JmesField) or self.loose:
                source.emit(indent, f"if {out} is not None:")
                value = self.jmespath(step, out, indent + 1)
                source.emit(indent + 1, f"{out} = {value}")
            else:
                source.emit(indent, f"{out} = {out}.get({step.name!r}) if isinstance({out}, dict) else None")
        return out

    def visit_JmesIndex(self, node: ir.JmesIndex, cur: str, indent: int) -> str:
        value = self.jmespath(node.value, cur, indent)
        for index in node.indexes:
            out = self.source.temp()
            self.source.emit(indent, f"{out} = {value}[{index}] if isinstance({value}, list) and "
                                     f"-len({value}) <= {index} < len({value}) else None")
            value = out
        return value

    def visit_JmesAndOr(self, node: ir.JmesAndOr, cur: str, indent: int) -> str:
        source, is_and = self.source, node.is_and
        left = self.jmespath(node.left, cur, indent)
        if left in source.known:  # decided now: the left side, or the right side alone
            if is_falsy(source.known[left]) == is_and:
                return left
            return self.jmespath(node.right, cur, indent)
        out = source.temp()
        source.emit(indent, f"{out} = {left}")
        source.emit(indent, f"if {source.truthy(left) if is_and else source.falsy(left)}:")
        right = self.jmespath(node.right, cur, indent + 1)
        source.emit(indent + 1, f"{out} = {right}")
        if left in source.booleans and (right in source.booleans or right in source.known
                                        and isinstance(source.known[right], bool)):
            source.booleans.add(out)
        return out

    def visit_JmesNot(self, node: ir.JmesNot, cur: str, indent: int) -> str:
        source = self.source
        operand = self.jmespath(node.value, cur, indent)
        if operand in source.known:
            return source.constant(is_falsy(source.known[operand]))
        out = source.temp()
        source.emit(indent, f"{out} = {source.falsy(operand)}")
        source.booleans.add(out)
        return out

    def visit_JmesPipe(self, node: ir.JmesPipe, cur: str, indent: int) -> str:
        return self.jmespath(node.right, self.jmespath(node.left, cur, indent), indent)

    def visit_JmesMultiSelect(self, node: ir.JmesMultiSelect, cur: str, indent: int) -> str:
        source = self.source
        out = source.temp()
        source.emit(indent, f"if {cur} is None:")
        source.emit(indent + 1, f"{out} = None")
        source.emit(indent, "else:")
        items = [self.jmespath(item, cur, indent + 1) for item in node.items]
        if node.keys is None:
            source.emit(indent + 1, f"{out} = [{', '.join(items)}]")
        else:
            pairs = ", ".join(f"{key!r}: {value}" for key, value in zip(node.keys, items, strict=True))
            source.emit(indent + 1, f"{out} = {{{pairs}}}")
        return out

    def visit_JmesComparator(self, node: ir.JmesComparator, cur: str, indent: int) -> str:
        source = self.source
        function, limit = node.left, node.right
        if node.operator in ("lt", "lte") and isinstance(function, ir.JmesCall) and function.name in UPPER_BOUNDS \
                and len(function.arguments) == 1 and isinstance(limit, ir.Literal) \
                and isinstance(limit.value, (int, float)) and not isinstance(limit.value, bool):
            return self.bounded_comparison(function, node.operator, limit.value, cur, indent)
        left = self.jmespath(node.left, cur, indent)
        right = self.jmespath(node.right, cur, indent)
        op = node.operator
        out = source.temp()
        constant = node.right.value if isinstance(node.right, ir.Literal) else _NOT_LITERAL
        if op in ("eq", "ne"):
            if constant is None or isinstance(constant, str):
                # A string or null equals only itself: JMESPath's booleans-are-not-numbers rule can't apply.
                if constant is None:
                    source.emit(indent, f"{out} = {left} is {'' if op == 'eq' else 'not '}None")
                else:
                    source.emit(indent, f"{out} = {left} {'==' if op == 'eq' else '!='} {right}")
            elif isinstance(constant, bool):
                # true/false equals only itself (never 1 or 0): an identity test, without _equals' call.
                test = f"{left} is {constant!r}"
                source.emit(indent, f"{out} = {test}" if op == "eq" else f"{out} = not ({test})")
            else:
                call = f"_equals({left}, {right})"
                source.emit(indent, f"{out} = {call}" if op == "eq" else f"{out} = not {call}")
            source.booleans.add(out)
            return out
        python_op = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}[op]
        # (a side known to be a number, such as length()'s result or a number literal, is not tested)
        tests = [IS_NUMBER.format(side) for side in (left, right) if side not in source.numbers]
        if not tests:
            source.emit(indent, f"{out} = {left} {python_op} {right}")
        else:
            source.emit(indent, f"{out} = ({left} {python_op} {right}) if {' and '.join(tests)} else None")
        source.booleans.add(out)
        return out

    def bounded_comparison(self, call: ir.JmesCall, operator: str, limit: float, cur: str, indent: int) -> str:
        """`f(x) <= LIMIT` for a function with an upper bound (functions.UPPER_BOUNDS): true without
        calling f when the bound is within the limit; f's own comparison otherwise."""
        source = self.source
        argument = self.jmespath(call.arguments[0], cur, indent)
        python_op = "<" if operator == "lt" else "<="
        out, value = source.temp(), source.temp()
        source.emit(indent, f"if {source.bind(UPPER_BOUNDS[call.name])}({argument}) {python_op} {limit!r}:")
        source.emit(indent + 1, f"{out} = True")
        source.emit(indent, "else:")
        source.emit(indent + 1, f"{value} = {source.bind(FUNCTIONS[call.name][0])}({argument})")
        source.emit(indent + 1, f"{out} = ({value} {python_op} {limit!r}) if {IS_NUMBER.format(value)} else None")
        source.booleans.add(out)
        return out

    def visit_JmesProjection(self, node: ir.JmesProjection | ir.JmesFlatten, cur: str, indent: int) -> str:
        """`a[*].b`, `a[?cond].b` and `a.*.b`: b of each element of the list a (for which cond is
        true), or of each value of the object a, nulls left out; `a[]`: a's elements, lists spread."""
        source = self.source
        base = self.jmespath(node.base, cur, indent)
        out, element = source.temp(), source.temp()
        of_object = isinstance(node, ir.JmesProjection) and node.of_object
        source.emit(indent, f"if not isinstance({base}, {'dict' if of_object else 'list'}):")
        source.emit(indent + 1, f"{out} = None")
        source.emit(indent, "else:")
        source.emit(indent + 1, f"{out} = []")
        source.emit(indent + 1, f"for {element} in {base}{'.values()' if of_object else ''}:")
        level = indent + 2
        if isinstance(node, ir.JmesFlatten):
            source.emit(level, f"if isinstance({element}, list):")
            source.emit(level + 1, f"{out}.extend({element})")
            source.emit(level, "else:")
            source.emit(level + 1, f"{out}.append({element})")
            return out
        if node.condition is not None:
            condition = self.jmespath(node.condition, element, level)
            source.emit(level, f"if {source.falsy(condition)}:")
            source.emit(level + 1, "continue")
        value = self.jmespath(node.value, element, level)
        source.emit(level, f"if {value} is not None:")
        source.emit(level + 1, f"{out}.append({value})")
        return out

    visit_JmesFlatten = visit_JmesProjection

    def visit_JmesCall(self, node: ir.JmesCall, cur: str, indent: int) -> str:
        source, name = self.source, node.name
        arguments = [self.jmespath(argument, cur, indent) for argument in node.arguments]
        out = source.temp()
        listed = ", ".join(arguments)
        if name in FUNCTIONS:
            source.emit(indent, f"{out} = {source.bind(FUNCTIONS[name][0])}({listed})")
            return out
        call_function = f"_instance.call_function({name!r}, [{listed}])"
        inline = _INLINE_BUILTINS.get(name)
        if inline is not None and len(arguments) == 1:
            # The common case written out; any other argument goes through jmespath (its checks, its errors).
            source.namespace["_JSON_TYPES"] = _JSON_TYPES
            test, value = inline
            argument = arguments[0]
            source.emit(indent, f"{out} = {value.format(argument)} if {test.format(argument)} else {call_function}")
            if name == "length":  # an int, or jmespath's error
                source.numbers.add(out)
            return out
        direct = direct_builtin(name, len(arguments))
        if direct is None:
            source.emit(indent, f"{out} = {call_function}")
            return out
        builtin, allowed = direct
        function = source.bind(builtin)
        checks = [f"type({argument}).__name__ in {source.bind(types)}"
                  for argument, types in zip(arguments, allowed, strict=True) if types is not None]
        direct_call = f"{function}(_instance, {listed})"
        if not checks:
            source.emit(indent, f"{out} = {direct_call}")
        else:
            source.emit(indent, f"{out} = {direct_call} if {' and '.join(checks)} else {call_function}")
        return out

    # -- rules and requests ------------------------------------------------------------------------
    def visit_Rule(self, rule: ir.Rule, check_type: bool, outer: Levels, recorder: RuleRecorder | None) -> None:
        """The body of `run(scope, event_type, event_name, result) -> bool`: True when no later rule may run
        (final, or a terminal action); a rejection or a skip is written on the result, not raised (that costs
        more than the rest of a skipped event). Only the steps the rule has are written, its values inline.
        check_type: a nested rule (no dispatch filtered its type); `outer`: the named values of the set, then
        of each enclosing group with some; a recorder (map --explain): what explains the outcome is recorded."""
        source, emit, context = self.source, self.source.emit, self.mapper
        assert context is not None  # (a CodeGenerator for rules is given its Mapper's)
        source.place = rule.origin
        source.namespace.update({
            "rule": rule, "types": rule.types, "names": rule.event_names, "matches": event_name_matches,
            "normalize": normalize_event_name, "suffix": f" (rule '{rule.name}')", "text": message_text,
            "Vars": Vars, "EvalError": EvalError, "_reason": context.reason, "final": rule.final,
            "ItemRejection": context.item_rejection,
        })
        if check_type and rule.types is not None:
            emit(1, "if event_type not in types: return False")
        if rule.event_globs:
            emit(1, f"if not matches(event_name, names, {source.bind(rule.event_globs)}): return False")
        elif rule.event_names is not None:
            emit(1, "if not isinstance(event_name, str) or normalize(event_name) not in names: return False")
        # The Vars of each level (see NamedReads); the innermost level's scope is the one `run` is given.
        setup = len(source.lines)
        emit(1, f"V{len(outer) - 1} = scope['vars']")
        levels = emit_levels(source, outer, "scope")
        setup_end = len(source.lines)
        reads = NamedReads(source, levels, context)
        inner = len(outer)  # the number of this rule's own level, when it has values
        if rule.values:
            source.namespace["values"] = context.functions((*outer, rule.values))
        emit(1, "try:")  # inside: an EvalError of any step rejects the event
        if rule.when is not None:
            emit(2, f"if not {self.value(rule.when, 'scope', 2)}:")
            if recorder is not None:
                emit(3, f"{source.bind(recorder.condition_false)}()")
            emit(3, "return False  # a rule that does not run ends nothing")
        if rule.for_each is not None:
            self.fan_out(rule, reads, inner, recorder)
        else:
            here = "scope"  # the rule's scope: its own copy when it has values
            if rule.values:
                here = "rule_scope"
                emit(2, "rule_scope = dict(scope)")
                self.own_values(rule, reads, inner, "rule_scope", "scope['vars']", 2)
            self.checks(rule, here, 2, "result.rejection = {} + suffix", "return True")
            if rule.action in ("reject", "skip"):
                message = self.message(rule.message, here)
                emit(2, f"result.rejection = {message} + suffix" if rule.action == "reject" else f"skipped = {message}")
                if rule.action == "skip":
                    emit(2, "if not result.requests:")
                    emit(3, "result.skipped = skipped")
                emit(2, "return True")
            elif rule.action == "group":
                for child in rule.children:
                    run_child = context.runner(child, True, (*outer, rule.values) if rule.values else outer)
                    emit(2, f"if {source.bind(run_child)}({here}, event_type, event_name, result):")
                    emit(3, "return True")
            else:
                assert rule.request is not None
                request = self.visit(rule.request, here, 2)
                if rule.steps:
                    subject = None if rule.order_subject is None else \
                        generate_function(rule.order_subject, "subject", context.optimiser)
                    emit(2, f"{source.bind(start_chain)}(rule, {source.bind(subject)}, {request}, {here})")
                emit(2, f"result.requests.append({request})")
                if recorder is not None:
                    emit(2, f"{source.bind(recorder.request_built)}()")
        emit(1, "except EvalError as error:")
        emit(2, "result.rejection = _reason(rule, error)")
        emit(2, "return True")
        emit(1, "return final")
        reads.finish()
        if not source.named_reads:  # the rule reads no named value: it needs no Vars of outer levels
            source.drop(setup, setup_end)

    def fan_out(self, rule: ir.Rule, reads: NamedReads, inner: int, recorder: RuleRecorder | None) -> None:
        """for_each: the request once per item; an item that fails its requirements (or whose values
        fail) is rejected alone, with its index."""
        assert rule.for_each is not None and rule.request is not None  # (lowering sees to both)
        source, emit = self.source, self.source.emit
        source.namespace["_not_a_list"] = lambda items: EvalError(
            f"for_each {rule.for_each.source}: is {a_json_type(items)}, not a list")
        emit(2, f"items = {self.expression(rule.for_each, 'scope', 2, 'scope')}")
        emit(2, "if items is None:")
        emit(3, "return final")
        emit(2, "if not isinstance(items, list):")
        emit(3, "raise _not_a_list(items)")
        emit(2, "parent_vars = scope['vars']")
        emit(2, "for index, item in enumerate(items):")
        emit(3, "item_scope = dict(scope)")
        emit(3, f"item_scope[{rule.item_name!r}] = item")
        emit(3, "item_scope['index'] = index")
        if rule.values:
            self.own_values(rule, reads, inner, "item_scope", "parent_vars", 3)
        emit(3, "try:")
        self.checks(rule, "item_scope", 4,
                    "result.item_rejections.append(ItemRejection(rule.name, index, {} + suffix))", "continue")
        emit(4, f"result.requests.append({self.visit(rule.request, 'item_scope', 4)})")
        if recorder is not None:
            emit(4, f"{source.bind(recorder.request_built)}()")
        emit(3, "except EvalError as error:")
        emit(4, "result.item_rejections.append(ItemRejection(rule.name, index, _reason(rule, error)))")

    def own_values(self, rule: ir.Rule, reads: NamedReads, inner: int, scope: str, parent: str, indent: int) -> None:
        """The rule's own level of named values: a Vars (`V<inner>`) in its scope, read from here on."""
        self.source.emit(indent, new_vars_source(f"V{inner}", "values", scope, parent))
        self.source.emit(indent, f"{scope}['vars'] = V{inner}")
        reads.start([(rule.values, f"V{inner}", scope)], indent)

    def checks(self, rule: ir.Rule, scope: str, indent: int, reject: str, leave: str) -> None:
        """require and warn: a requirement not met writes `reject` (formatted with its reason's
        code), then `leave`; a warning that applies is added to the result."""
        source = self.source
        for requirement in rule.requires:
            source.place = requirement.origin
            source.emit(indent, f"if not {self.value(requirement.test, scope, indent)}:")
            source.emit(indent + 1, reject.format(self.message(requirement.reason, scope)))
            source.emit(indent + 1, leave)
        source.place = rule.origin  # (what follows is the rule's again)
        for warning in rule.warns:
            source.emit(indent, f"if {self.value(warning.test, scope, indent)}:")
            source.emit(indent + 1, f"result.warnings.append({self.message(warning.message, scope)} + suffix)")

    def message(self, message: ir.Node | None, scope: str) -> str:
        """A message's text (a reason, a warning): its own function, called only when it is given."""
        if isinstance(message, ir.Literal) and message.is_scalar:
            return self.source.bind(str(message.value))
        optimiser = None if self.mapper is None else self.mapper.optimiser
        made = None if message is None else generate_function(message, "message", optimiser)
        return f"text({self.source.bind(made)}, {scope})"

    def visit_ChainStep(self, step: ir.ChainStep, number: int, rule: ir.Rule) -> None:
        """The body of `build(scope, result) -> (requests, why none)`: the step's when, for_each and requests,
        written like a rule's (named values read through the scope's Vars); why none: the step's skip."""
        source, emit = self.source, self.source.emit
        source.place = step.origin
        source.namespace.update({"rule": rule, "text": message_text})
        skipped = source.bind(f"step {number + 2} of rule '{rule.name}' skipped: ")
        skipped += f" + {self.message(step.skip, 'scope')}"
        if step.when is not None:
            emit(1, f"if not {self.value(step.when, 'scope', 1)}:")
            emit(2, f"return [], {skipped}")
        if step.for_each is None:
            emit(1, f"return [{self.visit(step.request, 'scope', 1)}], None")
            return
        what = f"then.steps[{number}].for_each {step.for_each.source}: is "
        source.namespace["_not_a_list"] = lambda items, what=what: EvalError(f"{what}{a_json_type(items)}, not a list")
        emit(1, f"items = {self.expression(step.for_each, 'scope', 1, 'scope')}")
        emit(1, "if items is not None and not isinstance(items, list):")
        emit(2, "raise _not_a_list(items)")
        emit(1, "requests = []")
        emit(1, "for index, item in enumerate(items or ()):")
        emit(2, f"item_scope = {{**scope, {step.item_name!r}: item, 'index': index}}")
        emit(2, f"requests.append({self.visit(step.request, 'item_scope', 2)})")
        emit(1, f"return (requests, None) if requests else ([], {skipped})")

    def visit_RequestPlan(self, plan: ir.RequestPlan, scope: str, indent: int) -> str:
        """The plan's request (url, query, headers, body, in that order): the local holding it. A constant
        URL is joined to the base URL here, once; constant headers are copied from a ready dict."""
        source, emit, bind, context = self.source, self.source.emit, self.source.bind, self.mapper
        assert context is not None  # (a CodeGenerator for rules is given its Mapper's)
        url = source.temp()
        constant = plan.url.value if isinstance(plan.url, ir.Literal) else None
        if isinstance(constant, str) and constant:  # joined once; any other constant fails as below, each time
            joined = context.base_url + (constant if constant.startswith("/") else "/" + constant) \
                if plan.url_is_path else constant
            emit(indent, f"{url} = {bind(joined)}")
        else:
            emit(indent, f"{url} = {self.value(plan.url, scope, indent)}")
            emit(indent, f"if not isinstance({url}, str) or not {url}:")
            emit(indent + 1, f"raise {bind(not_a_url)}({url})")
            if plan.url_is_path:
                emit(indent, f"{url} = {bind(context.base_url)} + ({url} if {url}.startswith('/') else '/' + {url})")
        if plan.query is not None:
            emit(indent, f"{url} = {bind(with_query)}({url}, {self.value(plan.query, scope, indent)})")
        headers = source.temp()
        if context.constant_headers is not None:
            emit(indent, f"{headers} = {bind(context.constant_headers)}.copy()")
        elif context.default_headers is not None:
            value = self.value(context.default_headers, scope, indent)  # (before binding: k-names in order)
            emit(indent, f"{headers} = {bind(headers_object)}({value})")
        else:
            emit(indent, f"{headers} = {{}}")
        if plan.headers is not None:
            value = self.value(plan.headers, scope, indent)
            emit(indent, f"{headers}.update({bind(headers_object)}({value}))")
        out = source.temp()
        request = f"{bind(context.request)}(rule.name, {bind(plan.method)}, {url}, {headers}, {{}}, {{}}, " \
                  f"result.index, {'index' if plan.per_item else 'None'})"
        if plan.body is None:
            emit(indent, f"{out} = " + request.format(bind(plan.body_kind), "None"))
            return out
        value = self.value(plan.body, scope, indent)
        if not always_object(plan.body):
            emit(indent, f"if {value} is ABSENT:")
            emit(indent + 1, f"{out} = " + request.format("None", "None"))
            emit(indent, "else:")
            indent += 1
        if plan.body_kind == "form":
            emit(indent, f"{value} = {bind(form_body)}({value})")
        emit(indent, f"{out} = " + request.format(bind(plan.body_kind), value))
        return out

def _scalar(node: ir.Node) -> bool:
    return isinstance(node, ir.Literal) and node.is_scalar


def _field_path(node: ir.Node) -> str:
    return "" if node.origin is None else node.origin[1]


def _left_out(node: ir.Rest) -> tuple[frozenset[str], dict[str, set[tuple[str, ...]]]]:
    """rest's keys left out whole, and (from except_fields' reads deeper than a key, such as
    traits.company.name) key -> the paths under it to leave out; the rest of that key's object stays."""
    excluded = set(node.except_keys)
    nested: dict[str, set[tuple[str, ...]]] = {}
    prefixes = list(node.expression.info.paths)
    if len(prefixes) == 1:
        prefix = prefixes[0]
        for table in node.except_tables:
            for path in consumed_paths(table.lowered, node.named):
                if path[: len(prefix)] == prefix and len(path) == len(prefix) + 1:
                    excluded.add(path[len(prefix)])
                elif path[: len(prefix)] == prefix and len(path) > len(prefix):
                    nested.setdefault(path[len(prefix)], set()).add(path[len(prefix) + 1:])
    for key in excluded:  # a key left out whole needs no leaf left out
        nested.pop(key, None)
    return frozenset(excluded), nested


_NOT_LITERAL: Any = object()

# JMESPath type names of the exact Python classes JSON decodes to (subclasses go through jmespath).
_JSON_TYPES: dict[type, str] = {str: "string", int: "number", float: "number", bool: "boolean", list: "array",
                                dict: "object", type(None): "null"}
# builtin -> (the test its argument must pass, the value then), each a format of the argument's name
_INLINE_BUILTINS: dict[str, tuple[str, str]] = {
    "type": ("{0}.__class__ in _JSON_TYPES", "_JSON_TYPES[{0}.__class__]"),
    "length": ("isinstance({0}, (str, list, dict))", "len({0})"),
    "keys": ("isinstance({0}, dict)", "list({0})"),
}

def _needs_guard(node: ir.Node) -> bool:
    """Whether jmespath's errors can come out of the node's code: the interpreter's, and those of
    a builtin function (ours return null rather than fail on a wrong type)."""
    if isinstance(node, ir.JmesInterpreted) or isinstance(node, ir.JmesCall) and node.name not in FUNCTIONS:
        return True
    return any(_needs_guard(child) for child in children(node))


def _named_value(steps: tuple[ir.Node, ...]) -> str | None:
    """NAME, when a subexpression's first two steps are the fields vars and NAME (`vars.NAME...`)."""
    if len(steps) >= 2 and isinstance(steps[0], ir.JmesField) and steps[0].name == "vars" \
            and isinstance(steps[1], ir.JmesField):
        return steps[1].name
    return None
