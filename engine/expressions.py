"""JMESPath selectors: parsed and checked at load time, compiled to plain Python closures.

jmespath.py walks its syntax tree on every search. The paths rules use most (`traits.email`,
`traits.phones[0]`, function calls, comparisons) are compiled here into closures once, at load time;
anything rarer (projections, filters, slices) is handed to jmespath's own interpreter, so the
language is always full JMESPath.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jmespath
from jmespath import exceptions as jexc
from jmespath import functions as jfunctions
from jmespath import visitor as jvisitor
from jmespath.parser import Parser

from .functions import FUNCTIONS, EvalError

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
_INTERPRETER = jvisitor.TreeInterpreter(jmespath.Options(custom_functions=_FUNCTIONS_INSTANCE))
_BUILTINS: dict[str, Any] = dict(jfunctions.Functions.FUNCTION_TABLE)


def is_truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null, "", [] and {} are false; 0 is true."""
    if value is None or value is False:
        return False
    if isinstance(value, (str, list, dict)) and not value:
        return False
    return True


def _normalize_key(key: str) -> str:
    return re.sub(r"[^0-9a-z]", "", key.lower())


def _field(key: str, loose: bool) -> Evaluator:
    if not loose:
        def get(current: Any) -> Any:
            return current.get(key) if isinstance(current, dict) else None

        return get
    wanted = _normalize_key(key)

    def get_loose(current: Any) -> Any:
        if not isinstance(current, dict):
            return None
        value = current.get(key)
        if value is not None:
            return value
        for candidate, candidate_value in current.items():
            if isinstance(candidate, str) and _normalize_key(candidate) == wanted:
                return candidate_value
        return None

    return get_loose


def _equals(a: Any, b: Any) -> bool:
    # JMESPath: booleans never equal numbers (Python says True == 1).
    if isinstance(a, bool) != isinstance(b, bool) and (
        isinstance(a, (int, float)) or isinstance(b, (int, float))
    ):
        return False
    return bool(a == b)


def _ordering(op: str) -> Callable[[Any, Any], Any]:
    import operator

    python_op = {"lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge}[op]

    def compare(a: Any, b: Any) -> Any:
        numbers = (int, float)
        if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
            return python_op(a, b)
        return None

    return compare


def _compile(node: dict[str, Any], loose: bool) -> Evaluator:
    kind = node["type"]
    children = node["children"]
    if kind == "field":
        return _field(node["value"], loose)
    if kind == "subexpression":
        steps = [_compile(child, loose) for child in children]
        if all(child["type"] == "field" for child in children) and not loose:
            keys = [child["value"] for child in children]

            def chain(current: Any) -> Any:
                for key in keys:
                    if not isinstance(current, dict):
                        return None
                    current = current.get(key)
                return current

            return chain

        def subexpression(current: Any) -> Any:
            for step in steps:
                if current is None:
                    return None
                current = step(current)
            return current

        return subexpression
    if kind == "index_expression" and children[1]["type"] == "index":
        left = _compile(children[0], loose)
        index = children[1]["value"]

        def indexed(current: Any) -> Any:
            value = left(current)
            if isinstance(value, list) and -len(value) <= index < len(value):
                return value[index]
            return None

        return indexed
    if kind == "literal":
        constant = node["value"]
        return lambda current: constant
    if kind == "current" or kind == "identity":
        return lambda current: current
    if kind == "comparator":
        left, right = (_compile(child, loose) for child in children)
        op = node["value"]
        if op == "eq":
            return lambda current: _equals(left(current), right(current))
        if op == "ne":
            return lambda current: not _equals(left(current), right(current))
        ordering = _ordering(op)
        return lambda current: ordering(left(current), right(current))
    if kind == "and_expression":
        left, right = (_compile(child, loose) for child in children)

        def and_(current: Any) -> Any:
            value = left(current)
            return right(current) if is_truthy(value) else value

        return and_
    if kind == "or_expression":
        left, right = (_compile(child, loose) for child in children)

        def or_(current: Any) -> Any:
            value = left(current)
            return value if is_truthy(value) else right(current)

        return or_
    if kind == "not_expression":
        operand = _compile(children[0], loose)
        return lambda current: not is_truthy(operand(current))
    if kind == "pipe":
        left, right = (_compile(child, loose) for child in children)
        return lambda current: right(left(current))
    if kind == "multi_select_list":
        parts = [_compile(child, loose) for child in children]
        return lambda current: None if current is None else [part(current) for part in parts]
    if kind == "function_expression" and node["value"] in FUNCTIONS and all(
        child["type"] != "expref" for child in children
    ):
        python_function = FUNCTIONS[node["value"]][0]
        arguments = [_compile(child, loose) for child in children]
        if len(arguments) == 1:
            only = arguments[0]
            return lambda current: python_function(only(current))
        return lambda current: python_function(*[argument(current) for argument in arguments])
    if kind == "function_expression" and all(child["type"] != "expref" for child in children):
        name = node["value"]
        arguments = [_compile(child, loose) for child in children]
        return lambda current: _FUNCTIONS_INSTANCE.call_function(name, [a(current) for a in arguments])
    # Projections, filters, slices, hashes, exprefs: jmespath's interpreter, on the same tree.
    return lambda current: _INTERPRETER.visit(node, current)


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


_PARSER = Parser()


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
    found: list[ExpressionError] = []
    _check_tree(ast, source, found)
    if found:
        raise found[0]
    info = ExpressionInfo()
    _collect(ast, info)
    compiled = _compile(ast, loose_keys)

    def evaluate(current: Any) -> Any:
        try:
            return compiled(current)
        except EvalError:
            raise
        except jexc.JMESPathError as exc:
            raise EvalError(f"{source}: {exc}") from None

    return Expression(source, evaluate, info, ast)
