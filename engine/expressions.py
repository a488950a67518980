"""JMESPath selectors: parsed and checked at load time, compiled to plain Python.

jmespath.py walks its syntax tree on every search. Here each expression is parsed and checked
once, at load time; the code generator (generate.py, `jmespath_<type>`) writes its steps as Python
into a rule's generated function or, for a caller outside generated code, an expression's own
function made on its first use. Anything rarer (slices, exprefs such as sort_by(&x)) is handed to
jmespath's own interpreter (INTERPRETER), so the language is always full JMESPath.
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

from .functions import FUNCTIONS
from .limits import MAX_EXPRESSION_DEPTH

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


JMESPATH_FUNCTIONS = _custom_functions_class()()
# jmespath with the rule language's functions: what generated code must agree with (its tests
# search with these options), and what runs the rarer nodes.
JMESPATH_OPTIONS = jmespath.Options(custom_functions=JMESPATH_FUNCTIONS)
INTERPRETER = jvisitor.TreeInterpreter(JMESPATH_OPTIONS)
_BUILTINS: dict[str, Any] = dict(jfunctions.Functions.FUNCTION_TABLE)


def direct_builtin(name: str, count: int) -> tuple[Callable[..., Any], list[frozenset[str] | None]] | None:
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
        # Generated on first use: a rule writes the expression into its own code and never calls
        # this. (generate.py writes every expression's code; it imports this module.)
        if not made:
            from .generate import jmespath_function

            made.append(jmespath_function(ast, loose_keys, source))
            expression.evaluate = made[0]
        return made[0](current)

    expression = Expression(source, evaluate, info, ast, loose_keys)
    return expression
