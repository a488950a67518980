"""JMESPath selectors: parsed and checked at load time, compiled to plain Python.

jmespath.py walks its syntax tree on every search. Here each expression is parsed, checked and
lowered to IR once, at load time (lower_jmespath.py); the code generator (generate.py,
`visit_Jmes<Node>`) writes its steps as Python into a rule's generated function or, for a caller
outside generated code (compile_expression), an expression's own function, made at once. Anything
rarer (slices, exprefs such as sort_by(&x)) is handed to jmespath's own interpreter (INTERPRETER),
so the language is always full JMESPath.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jmespath
from jmespath import exceptions as jexc
from jmespath import functions as jfunctions
from jmespath import visitor as jvisitor
from jmespath.lexer import Lexer
from jmespath.parser import Parser

from . import ir
from .analyse import Reads, ReadsOf
from .codegen import Origin
from .functions import FUNCTIONS
from .limits import MAX_EXPRESSION_DEPTH
from .lower_jmespath import BUILTINS, lower_tree

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


def direct_builtin(name: str, count: int) -> tuple[Callable[..., Any], list[frozenset[str] | None]] | None:
    """A builtin's function and, per argument, the Python type names its signature allows (None: any).

    None for builtins whose checks are not that simple (variadic, typed array elements): those go
    through jmespath's call_function, which checks everything.
    """
    spec = BUILTINS.get(name)
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


class ExpressionError(Exception):
    def __init__(self, message: str, offset: int):
        self.message = message
        self.offset = offset
        super().__init__(message)


@dataclass(frozen=True, slots=True, eq=False)
class Expression:
    """A JMESPath selector, parsed, checked and lowered: a rule's generated code computes it."""

    source: str
    tree: ir.Node  # its IR (ir.py's JMESPath section)
    ast: dict[str, Any]  # jmespath's parse tree (what its interpreter reads)
    info: Reads  # the root paths it reads (vars.NAME among them: in JMESPath a path like any)
    loose: bool  # keys: loose (field names matched ignoring case and punctuation)


@dataclass(frozen=True, slots=True, eq=False)
class CompiledExpression(Expression):
    """An expression used outside a rule (delivery.yaml's selectors): its own generated function."""

    evaluate: Evaluator


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


def compile_expression(source: str, loose_keys: bool = False) -> CompiledExpression:
    """An expression and its function, generated now; raises ExpressionError with the offset."""
    from .generate import jmespath_function  # (generate.py writes every expression's code; it imports this module)

    parsed = parse_expression(source, loose_keys)
    return CompiledExpression(source, parsed.tree, parsed.ast, parsed.info, loose_keys,
                              jmespath_function(parsed.tree, loose_keys, source))


def parse_expression(source: str, loose_keys: bool = False, origin: Origin | None = None) -> Expression:
    """Parse, check and lower one JMESPath expression; raises ExpressionError with the offset."""
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
    tree, depth, problems = lower_tree(ast, source, origin)
    if depth > MAX_EXPRESSION_DEPTH:
        raise ExpressionError(f"expression nests {depth} levels deep; the limit is {MAX_EXPRESSION_DEPTH}", 0)
    found: list[ExpressionError] = []
    _check_words(source, found)
    found.extend(ExpressionError(message, offset) for message, offset in problems)
    if found:
        raise found[0]
    return Expression(source, tree, ast, ReadsOf().visit(tree), loose_keys)
