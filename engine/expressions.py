"""JMESPath selectors: parsed and checked at load time, compiled to plain Python.

jmespath.py walks its syntax tree on every search. Here each expression is parsed and checked
once, at load time, and `_Codegen` writes its steps as Python (paths, indexes, comparisons,
and/or/not, pipes, lists, objects, function calls, projections, filters, flattening), into a rule's
generated function or, for a caller outside generated code, an expression's own function made on
its first use. Anything rarer (slices, exprefs such as sort_by(&x)) is handed to jmespath's own
interpreter, so the language is always full JMESPath.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jmespath
from jmespath import exceptions as jexc
from jmespath import functions as jfunctions
from jmespath import visitor as jvisitor
from jmespath.lexer import Lexer
from jmespath.parser import Parser

from .codegen import MAX_INLINE_INDENT, Source
from .functions import FUNCTIONS, EvalError
from .limits import MAX_EXPRESSION_DEPTH
from .runtime import is_falsy, normalize_key

Evaluator = Callable[[Any], Any]


def _custom_functions_class() -> type[jfunctions.Functions]:
    attrs: dict[str, Any] = {}
    for name, (python_function, low, high) in FUNCTIONS.items():
        def method(self: Any, *args: Any, _f: Callable[..., Any] = python_function) -> Any:
            return _f(*args)

        signature: list[dict[str, Any]]
        if high is None:
            signature = [{"types": []}] * low
            signature[-1] = {"types": [], "variadic": True}
        else:
            signature = [{"types": []}] * high  # optional trailing arguments are checked by us
        attrs[f"_func_{name}"] = jfunctions.signature(*signature)(method)
    return type("RuleFunctions", (jfunctions.Functions,), attrs)


_FUNCTIONS_INSTANCE = _custom_functions_class()()
# jmespath with the rule language's functions: what generated code must agree with (its tests
# search with these options), and what runs the rarer nodes.
JMESPATH_OPTIONS = jmespath.Options(custom_functions=_FUNCTIONS_INSTANCE)
_INTERPRETER = jvisitor.TreeInterpreter(JMESPATH_OPTIONS)
_BUILTINS: dict[str, Any] = dict(jfunctions.Functions.FUNCTION_TABLE)


def _loose_get(current: Any, key: str) -> Any:
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


def _equals(a: Any, b: Any) -> bool:
    # JMESPath: booleans never equal numbers (Python says True == 1).
    if isinstance(a, bool) != isinstance(b, bool) and (
        isinstance(a, (int, float)) or isinstance(b, (int, float))
    ):
        return False
    return bool(a == b)


def _only_indexes(children: list[dict[str, Any]]) -> bool:
    """An index_expression of plain indexes (`a[0]`, `a[0][1]`), not a slice."""
    return all(child["type"] == "index" for child in children[1:])


def _direct_builtin(name: str, count: int) -> tuple[Callable[..., Any], list[frozenset[str] | None]] | None:
    """A builtin's function and, per argument, the Python type names its signature allows (None: any).

    None for builtins whose checks are not that simple (variadic, typed array elements): those go
    through jmespath's call_function, which checks everything.
    """
    spec = _BUILTINS.get(name)
    if spec is None or name in FUNCTIONS:
        return None
    signature = spec["signature"]
    if len(signature) != count or any(parameter.get("variadic") for parameter in signature):
        return None
    allowed: list[frozenset[str] | None] = []
    for parameter in signature:
        types = parameter["types"]
        if any("-" in t for t in types):
            return None
        allowed.append(frozenset(n for t in types for n in jfunctions.REVERSE_TYPES_MAP[t]) if types else None)
    return spec["function"], allowed


# Node kinds written out that never raise jmespath's errors (function calls and the interpreter
# may: expressions holding those keep a guard that turns the error into an EvalError).
_UNGUARDED_KINDS = frozenset({"field", "subexpression", "literal", "current", "identity", "comparator",
                              "and_expression", "or_expression", "not_expression", "pipe", "multi_select_list",
                              "projection", "filter_projection", "flatten", "value_projection",
                              "multi_select_dict", "key_val_pair", "index"})


def _needs_guard(node: dict[str, Any]) -> bool:
    kind = node["type"]
    if kind == "function_expression":
        if node["value"] not in FUNCTIONS or any(child["type"] == "expref" for child in node["children"]):
            return True
    elif kind == "index_expression":
        if not _only_indexes(node["children"]):
            return True
    elif kind not in _UNGUARDED_KINDS:
        return True
    return any(_needs_guard(child) for child in node["children"] if isinstance(child, dict))


class _Codegen:
    """Writes a JMESPath tree's code into a generated function (a codegen.Source).

    It does what jmespath's interpreter does, node for node and in the same order, without a call
    per node: paths, indexes, literals, comparisons, and/or/not, pipes, lists, objects,
    projections, filters, flattening and function calls become straight-line Python (a loose key
    is one call); slices and exprefs call the interpreter on their node. Keys and names reach the
    source only through repr(); every other value (literals, functions) is bound in the
    function's namespace.
    """

    def __init__(self, loose: bool, source: Source, named_root: str | None = None):
        self.loose = loose
        self.source = source
        self.source.namespace.update(_equals=_equals, _instance=_FUNCTIONS_INSTANCE)
        self.bind = self.source.bind
        self.temp = self.source.temp
        self.emit = self.source.emit
        # The scope's variable when the caller's scope holds named values under `vars` (a dict that
        # computes a name on first use): `vars.NAME` read from it by key, not by a .get() call.
        self.named_root = named_root

    def falsy(self, name: str) -> str:
        return self.source.falsy(name)

    def root_constant(self, node: dict[str, Any], cur: str) -> str | None:
        """A read of a fixed scope root (Source.roots), done now: `settings.x` -> its value, bound."""
        if cur != self.named_root or self.loose:
            return None
        steps = [node] if node["type"] == "field" else node["children"] if node["type"] == "subexpression" else []
        if not steps or any(step["type"] != "field" for step in steps) or steps[0]["value"] not in self.source.roots:
            return None
        value = self.source.roots[steps[0]["value"]]
        for step in steps[1:]:
            value = value.get(step["value"]) if isinstance(value, dict) else None
        return self.source.constant(value)

    def gen(self, node: dict[str, Any], cur: str, indent: int) -> str:
        """Emit statements computing `node` on the value named `cur`; return the name holding it."""
        kind = node["type"]
        children = node["children"]
        if kind == "literal":
            name = self.source.constant(node["value"])
            if isinstance(node["value"], (int, float)) and not isinstance(node["value"], bool):
                self.source.numbers.add(name)
            return name
        if kind in ("current", "identity"):
            return cur
        fixed = self.root_constant(node, cur)
        if fixed is not None:
            return fixed
        if indent > MAX_INLINE_INDENT:  # deep: the node as its own function, called (see codegen)
            out = self.temp()
            self.emit(indent, f"{out} = {self.bind(_generate(node, self.loose, ''))}({cur})")
            return out
        if kind == "field":
            out = self.temp()
            if self.loose:
                self.emit(indent, f"{out} = {self.bind(_loose_get)}({cur}, {node['value']!r})")
            elif cur == self.named_root:  # the scope: always a dict
                self.emit(indent, f"{out} = {cur}.get({node['value']!r})")
            else:
                self.emit(indent, f"{out} = {cur}.get({node['value']!r}) if isinstance({cur}, dict) else None")
            return out
        if kind == "subexpression" and cur == self.named_root and not self.loose and _is_named_value(node):
            name = children[1]["value"]
            if self.source.named is not None:
                out = self.source.named(name, indent)
            else:
                out = self.temp()
                self.emit(indent, f"{out} = {cur}.get('vars')")
                self.emit(indent, f"{out} = None if {out} is None else {out}[{name!r}]")
            if len(children) > 2:  # a copy: the next steps must not overwrite the named value's local
                value, out = out, self.temp()
                self.emit(indent, f"{out} = {value}")
            for child in children[2:]:
                if child["type"] != "field" or self.loose:
                    self.emit(indent, f"if {out} is not None:")
                    value = self.gen(child, out, indent + 1)
                    self.emit(indent + 1, f"{out} = {value}")
                else:
                    self.emit(indent, f"{out} = {out}.get({child['value']!r}) if isinstance({out}, dict) else None")
            return out
        if kind == "subexpression":
            out = self.temp()
            depth = indent
            if cur != self.named_root:  # (the scope is never null)
                self.emit(indent, f"{out} = None")
                self.emit(indent, f"if {cur} is not None:")
                depth += 1
            value = self.gen(children[0], cur, depth)
            for child in children[1:]:
                if child["type"] == "field" and not self.loose:
                    # (the first step reads the first child's value, not a copy of it)
                    self.emit(depth, f"{out} = {value}.get({child['value']!r}) if isinstance({value}, dict) else None")
                    value = out
                    continue
                if value != out:
                    self.emit(depth, f"{out} = {value}")
                    value = out
                self.emit(depth, f"if {out} is not None:")
                value = self.gen(child, out, depth + 1)
                self.emit(depth + 1, f"{out} = {value}")
                value = out
                if depth < MAX_INLINE_INDENT:  # (deeper, the next steps test `out` again instead)
                    depth += 1
            if value != out:
                self.emit(depth, f"{out} = {value}")
            return out
        if kind == "index_expression" and _only_indexes(children):
            value = self.gen(children[0], cur, indent)
            for child in children[1:]:
                index = int(child["value"])
                out = self.temp()
                self.emit(indent, f"{out} = {value}[{index}] if isinstance({value}, list) and "
                                  f"-len({value}) <= {index} < len({value}) else None")
                value = out
            return value
        if kind == "comparator":
            return self.comparator(node, cur, indent)
        if kind in ("and_expression", "or_expression"):
            left = self.gen(children[0], cur, indent)
            if left in self.source.known:  # decided now: the left side, or the right side alone
                left_falsy = is_falsy(self.source.known[left])
                if left_falsy == (kind == "and_expression"):
                    return left
                return self.gen(children[1], cur, indent)
            out = self.temp()
            self.emit(indent, f"{out} = {left}")
            test = self.source.truthy(left) if kind == "and_expression" else self.falsy(left)
            self.emit(indent, f"if {test}:")
            right = self.gen(children[1], cur, indent + 1)
            self.emit(indent + 1, f"{out} = {right}")
            if left in self.source.booleans and (right in self.source.booleans or right in self.source.known
                                                 and isinstance(self.source.known[right], bool)):
                self.source.booleans.add(out)
            return out
        if kind == "not_expression":
            operand = self.gen(children[0], cur, indent)
            if operand in self.source.known:
                return self.source.constant(is_falsy(self.source.known[operand]))
            out = self.temp()
            self.emit(indent, f"{out} = {self.falsy(operand)}")
            self.source.booleans.add(out)
            return out
        if kind == "pipe":
            left = self.gen(children[0], cur, indent)
            return self.gen(children[1], left, indent)
        if kind == "multi_select_list":
            out = self.temp()
            self.emit(indent, f"if {cur} is None:")
            self.emit(indent + 1, f"{out} = None")
            self.emit(indent, "else:")
            parts = [self.gen(child, cur, indent + 1) for child in children]
            self.emit(indent + 1, f"{out} = [{', '.join(parts)}]")
            return out
        if kind == "function_expression" and all(child["type"] != "expref" for child in children):
            return self.function(node, cur, indent)
        if kind in ("projection", "filter_projection", "value_projection"):
            return self.projection(node, cur, indent)
        if kind == "flatten":
            base, out, element = self.gen(children[0], cur, indent), self.temp(), self.temp()
            self.emit(indent, f"if not isinstance({base}, list):")
            self.emit(indent + 1, f"{out} = None")
            self.emit(indent, "else:")
            self.emit(indent + 1, f"{out} = []")
            self.emit(indent + 1, f"for {element} in {base}:")
            self.emit(indent + 2, f"if isinstance({element}, list):")
            self.emit(indent + 3, f"{out}.extend({element})")
            self.emit(indent + 2, "else:")
            self.emit(indent + 3, f"{out}.append({element})")
            return out
        if kind == "multi_select_dict":
            out = self.temp()
            self.emit(indent, f"if {cur} is None:")
            self.emit(indent + 1, f"{out} = None")
            self.emit(indent, "else:")
            pairs = [(child["value"], self.gen(child["children"][0], cur, indent + 1)) for child in children]
            self.emit(indent + 1, f"{out} = {{{', '.join(f'{key!r}: {value}' for key, value in pairs)}}}")
            return out
        # Slices, exprefs: jmespath's interpreter, on the same tree (keys there are exact).
        out = self.temp()
        self.emit(indent, f"{out} = {self.bind(_INTERPRETER.visit)}({self.bind(node)}, {cur})")
        return out

    def comparator(self, node: dict[str, Any], cur: str, indent: int) -> str:
        left_node, right_node = node["children"]
        left = self.gen(left_node, cur, indent)
        right = self.gen(right_node, cur, indent)
        op = node["value"]
        out = self.temp()
        constant = right_node["value"] if right_node["type"] == "literal" else _NOT_LITERAL
        if op in ("eq", "ne"):
            if constant is None or isinstance(constant, str):
                # A string or null equals only itself: JMESPath's booleans-are-not-numbers rule can't apply.
                if constant is None:
                    self.emit(indent, f"{out} = {left} is {'' if op == 'eq' else 'not '}None")
                else:
                    self.emit(indent, f"{out} = {left} {'==' if op == 'eq' else '!='} {right}")
            elif isinstance(constant, bool):
                # true/false equals only itself (never 1 or 0): an identity test, without _equals' call.
                test = f"{left} is {constant!r}"
                self.emit(indent, f"{out} = {test}" if op == "eq" else f"{out} = not ({test})")
            else:
                call = f"_equals({left}, {right})"
                self.emit(indent, f"{out} = {call}" if op == "eq" else f"{out} = not {call}")
            self.source.booleans.add(out)
            return out
        python_op = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}[op]
        number = "isinstance({0}, (int, float)) and not isinstance({0}, bool)"
        # (a side known to be a number, such as length()'s result or a number literal, is not tested)
        tests = [number.format(side) for side in (left, right) if side not in self.source.numbers]
        if not tests:
            self.emit(indent, f"{out} = {left} {python_op} {right}")
        else:
            self.emit(indent, f"{out} = ({left} {python_op} {right}) if {' and '.join(tests)} else None")
        self.source.booleans.add(out)
        return out

    def projection(self, node: dict[str, Any], cur: str, indent: int) -> str:
        """`a[*].b`, `a[?cond].b` and `a.*.b`: b of each element of the list a (for which cond is
        true), or of each value of the object a, nulls left out."""
        children = node["children"]
        base = self.gen(children[0], cur, indent)
        out, element = self.temp(), self.temp()
        of_object = node["type"] == "value_projection"
        self.emit(indent, f"if not isinstance({base}, {'dict' if of_object else 'list'}):")
        self.emit(indent + 1, f"{out} = None")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"{out} = []")
        self.emit(indent + 1, f"for {element} in {base}{'.values()' if of_object else ''}:")
        level = indent + 2
        if node["type"] == "filter_projection":
            condition = self.gen(children[2], element, level)
            self.emit(level, f"if {self.falsy(condition)}:")
            self.emit(level + 1, "continue")
        value = self.gen(children[1], element, level)
        self.emit(level, f"if {value} is not None:")
        self.emit(level + 1, f"{out}.append({value})")
        return out

    def function(self, node: dict[str, Any], cur: str, indent: int) -> str:
        name = node["value"]
        arguments = [self.gen(child, cur, indent) for child in node["children"]]
        out = self.temp()
        listed = ", ".join(arguments)
        if name in FUNCTIONS:
            function = self.bind(FUNCTIONS[name][0])
            self.emit(indent, f"{out} = {function}({listed})")
            return out
        call_function = f"_instance.call_function({name!r}, [{listed}])"
        inline = _INLINE_BUILTINS.get(name)
        if inline is not None and len(arguments) == 1:
            # The common case written out; any other argument goes through jmespath (its checks, its errors).
            self.source.namespace["_JSON_TYPES"] = _JSON_TYPES
            test, value = inline
            argument = arguments[0]
            self.emit(indent, f"{out} = {value.format(argument)} if {test.format(argument)} else {call_function}")
            if name == "length":  # an int, or jmespath's error
                self.source.numbers.add(out)
            return out
        direct = _direct_builtin(name, len(arguments))
        if direct is None:
            self.emit(indent, f"{out} = {call_function}")
            return out
        builtin, allowed = direct
        function = self.bind(builtin)
        checks = [f"type({argument}).__name__ in {self.bind(types)}"
                  for argument, types in zip(arguments, allowed, strict=True) if types is not None]
        direct_call = f"{function}(_instance, {listed})"
        if not checks:
            self.emit(indent, f"{out} = {direct_call}")
        else:
            self.emit(indent, f"{out} = {direct_call} if {' and '.join(checks)} else {call_function}")
        return out


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


def _is_named_value(node: dict[str, Any]) -> bool:
    """`vars.NAME...`: a subexpression whose first two steps are the field vars and a field."""
    children = node["children"]
    return (len(children) >= 2 and children[0]["type"] == "field" and children[0]["value"] == "vars"
            and children[1]["type"] == "field")


def _generate(ast: dict[str, Any], loose: bool, text: str) -> Evaluator:
    """One Python function for the expression (see _Codegen); `text` names it in jmespath's errors
    ("": a part of an expression, whose caller's guard names the whole)."""
    source = Source()
    value = _emit(ast, loose, text, source, "cur", 1, None) if text else _Codegen(loose, source).gen(ast, "cur", 1)
    source.emit(1, f"return {value}")
    function: Evaluator = source.define("expression(cur)")
    return function


def emit_expression(expression: Expression, source: Source, cur: str, indent: int,
                    named_root: str | None = None) -> str:
    """Write the expression's code into `source`, computing it on the variable `cur`; return the
    name holding its value. jmespath's own errors become EvalErrors naming the source, as in
    compile_expression. With `named_root` (the scope's variable), `vars.NAME` is read by key."""
    return _emit(expression.ast, expression.loose, expression.source, source, cur, indent, named_root)


def _emit(ast: dict[str, Any], loose: bool, text: str, source: Source, cur: str, indent: int,
          named_root: str | None) -> str:
    codegen = _Codegen(loose, source, named_root)
    if not _needs_guard(ast):
        return codegen.gen(ast, cur, indent)
    source.emit(indent, "try:")
    start = len(source.lines)
    value = codegen.gen(ast, cur, indent + 1)  # assigned inside the try, or a constant: usable after it
    if len(source.lines) == start:
        source.emit(indent + 1, "pass")
    source.emit(indent, f"except {source.bind(jexc.JMESPathError)} as exc:")
    source.emit(indent + 1, f"raise {source.bind(EvalError)}({source.bind(text + ': ')} + str(exc)) from None")
    return value


@dataclass
class ExpressionInfo:
    """What an expression reads: field paths from the root, and names under reserved roots."""

    paths: set[tuple[str, ...]] = field(default_factory=set)


def _root_path(node: dict[str, Any]) -> tuple[str, ...] | None:
    kind = node["type"]
    if kind == "field":
        return (node["value"],)
    if kind == "subexpression":
        path: list[str] = []
        for child in node["children"]:
            part = _root_path(child) if not path else _step(child)
            if part is None:
                break
            path.extend(part)
        return tuple(path) if path else None
    if kind == "index_expression":
        return _root_path(node["children"][0])
    return None


def _step(node: dict[str, Any]) -> tuple[str, ...] | None:
    if node["type"] == "field":
        return (node["value"],)
    if node["type"] == "index_expression":
        return _root_path(node["children"][0])
    return None


def _collect(node: dict[str, Any], info: ExpressionInfo) -> None:
    path = _root_path(node)
    if path is not None:
        info.paths.add(path)
        return
    kind = node["type"]
    if kind in ("projection", "flatten", "filter_projection", "value_projection", "pipe", "slice"):
        # Only the left side is read from the root; the right side reads each element.
        if node["children"]:
            _collect(node["children"][0], info)
        return
    for child in node["children"]:
        if isinstance(child, dict):
            _collect(child, info)


class ExpressionError(Exception):
    def __init__(self, message: str, offset: int):
        self.message = message
        self.offset = offset
        super().__init__(message)


@dataclass
class Expression:
    """A compiled JMESPath selector."""

    source: str
    evaluate: Evaluator
    info: ExpressionInfo
    ast: dict[str, Any]
    loose: bool = False  # keys: loose (field names matched ignoring case and punctuation)


class _TooDeep(Exception):
    def __init__(self, offset: int):
        self.offset = offset


class _DepthLimitedParser(Parser):  # type: ignore[misc]
    """jmespath's recursive-descent parser, stopped at MAX_EXPRESSION_DEPTH nested sub-expressions
    (`((((a))))`, `!!!!a`), long before Python's recursion limit."""

    _depth = 0

    def _expression(self, binding_power: int = 0) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_EXPRESSION_DEPTH:
                raise _TooDeep(self._lookahead_token(0)["start"])
            return super()._expression(binding_power)
        finally:
            self._depth -= 1


def _tree_depth(node: dict[str, Any]) -> int:
    """The syntax tree's depth (without recursion: chains such as a[0][0]… or a || b || … nest)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in current["children"] if isinstance(child, dict))
    return deepest


_PARSER = _DepthLimitedParser()
_LEXER = Lexer()


_LITERAL_WORDS = frozenset({"null", "true", "false"})


def _check_words(source: str, problems: list[ExpressionError]) -> None:
    """A bare null, true or false is a field of that name in JMESPath, not the literal: `a == null`
    compares a with the event's field "null" and `a == true` is never true. After a dot (a.null)
    it is plainly a field, and allowed."""
    previous = None
    for token in _LEXER.tokenize(source):
        if token["type"] == "unquoted_identifier" and token["value"] in _LITERAL_WORDS and previous != "dot":
            word = token["value"]
            problems.append(ExpressionError(
                f"'{word}' here is a field named {word}, not the literal: write `{word}` (in backticks), "
                f"or \"{word}\" for the field", token["start"]))
        previous = token["type"]


def _check_tree(node: dict[str, Any], source: str, problems: list[ExpressionError]) -> None:
    if node["type"] in ("subexpression", "index_expression") and node["children"][0]["type"] == "not_expression":
        # JMESPath binds `!` tighter than `.`: `!a.b` is `(!a).b`, which is always null.
        offset = max(source.find("!"), 0)
        problems.append(ExpressionError("'!a.b' means '(!a).b' in JMESPath (always null); write '!(a.b)'", offset))
    if node["type"] == "function_expression":
        name = node["value"]
        count = len(node["children"])
        offset = max(source.find(name + "("), 0)
        if name in FUNCTIONS:
            _, low, high = FUNCTIONS[name]
            if count < low or (high is not None and count > high):
                expected = f"{low}" if low == high else f"{low} to {high}" if high else f"at least {low}"
                problems.append(ExpressionError(f"function {name}() takes {expected} arguments, got {count}", offset))
        elif name in _BUILTINS:
            signature = _BUILTINS[name]["signature"]
            variadic = bool(signature) and signature[-1].get("variadic")
            if (variadic and count < len(signature)) or (not variadic and count != len(signature)):
                problems.append(
                    ExpressionError(f"function {name}() takes {len(signature)} arguments, got {count}", offset)
                )
        else:
            known = ", ".join(sorted(set(FUNCTIONS) | set(_BUILTINS)))
            problems.append(ExpressionError(f"unknown function {name}() (known: {known})", offset))
    for child in node["children"]:
        if isinstance(child, dict):
            _check_tree(child, source, problems)


def compile_expression(source: str, loose_keys: bool = False) -> Expression:
    """Parse, check and compile one JMESPath expression; raises ExpressionError with the offset."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("empty expression", 0)
    try:
        ast = _PARSER.parse(source).parsed
    except jexc.ParseError as exc:
        offset = exc.lex_position if isinstance(exc.lex_position, int) else 0
        offset = min(offset, max(len(source.rstrip()) - 1, 0))  # point at text, not past trailing space
        if exc.token_type == "eof" or exc.token_value is None:
            raise ExpressionError("invalid JMESPath: the expression ends too early", offset) from None
        token = f" at {exc.token_value!r}" if exc.token_value not in (None, "") else ""
        raise ExpressionError(f"invalid JMESPath: unexpected token{token}", offset) from None
    except jexc.LexerError as exc:
        raise ExpressionError(f"invalid JMESPath: {exc.msg}", exc.lexer_position) from None
    except RecursionError:  # a `JSON literal` nested deeper than Python's json reads
        raise ExpressionError(f"expression nests more than {MAX_EXPRESSION_DEPTH} levels deep; "
                              f"the limit is {MAX_EXPRESSION_DEPTH}", 0) from None
    except ValueError:  # a number of more digits than Python converts (sys.get_int_max_str_digits)
        raise ExpressionError(f"invalid JMESPath: a number has more than {sys.get_int_max_str_digits()} digits",
                              0) from None
    except _TooDeep as exc:
        raise ExpressionError(f"expression nests more than {MAX_EXPRESSION_DEPTH} levels deep; "
                              f"the limit is {MAX_EXPRESSION_DEPTH}", exc.offset) from None
    depth = _tree_depth(ast)
    if depth > MAX_EXPRESSION_DEPTH:
        raise ExpressionError(f"expression nests {depth} levels deep; the limit is {MAX_EXPRESSION_DEPTH}", 0)
    found: list[ExpressionError] = []
    _check_words(source, found)
    _check_tree(ast, source, found)
    if found:
        raise found[0]
    info = ExpressionInfo()
    _collect(ast, info)
    made: list[Evaluator] = []

    def evaluate(current: Any) -> Any:
        # Generated on first use: a rule writes the expression into its own code (emit_expression)
        # and never calls this, so most expressions are never generated twice.
        if not made:
            made.append(_generate(ast, loose_keys, source))
            expression.evaluate = made[0]
        return made[0](current)

    expression = Expression(source, evaluate, info, ast, loose_keys)
    return expression
