"""Jinja's sandbox, bounded: what one rendering may build and how long it may run (engine/limits.py).

Jinja's sandbox keeps templates away from Python internals, but not from time and memory:
`{{ 'a' * 2000000000 }}` (folded at load by Jinja's optimizer), `2 ** 10 ** 9`, two nested
`range(100000)` loops, a recursive macro doubling a string. Here:

- operators `*`, `**`, `+` and `%` are intercepted (SandboxedEnvironment.call_binop) and refused
  before they build a string or list longer than MAX_TEMPLATE_OUTPUT, or an integer wider than
  MAX_INTEGER_BITS. Intercepted operators are never folded at load, so folding obeys the limits;
- `range` builds at most MAX_TEMPLATE_RANGE items;
- each rendering has a budget: loop iterations and calls together at most MAX_TEMPLATE_STEPS, and
  at most MAX_TEMPLATE_OUTPUT characters written (by the template, its macros and blocks). The
  syntax tree is rewritten at load so that each loop's iterable, each written piece and each `~`
  passes through a counting filter; the budget lives in the rendering's context under a key no
  template can name;
- calls, str.format, and the filters that can amplify (center, indent, format, join, replace,
  wordwrap, batch, slice, sum, tojson, multiply) check their sizes before they build anything.

A template that hits a limit raises TemplateLimit (an EvalError): its event is rejected with a reason
naming the rule and the limit, and the next event renders with a fresh budget.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jinja2 import nodes, pass_context
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from .functions import EvalError
from .limits import (
    MAX_INTEGER_BITS,
    MAX_TEMPLATE_OUTPUT,
    MAX_TEMPLATE_RANGE,
    MAX_TEMPLATE_STEPS,
)

BUDGET_KEY = "rendering budget"  # (not an identifier: no template can read or replace it)
_LOOP_FILTER = "limited loop"
_OUTPUT_FILTER = "limited output"
_CONCAT_FILTER = "limited concat"


class TemplateLimit(EvalError):
    """A template went past one of the limits; the message names it."""


class Budget:
    """What is left of one rendering's steps (loop iterations and calls) and output characters."""

    __slots__ = ("steps_left", "output_left")

    def __init__(self) -> None:
        self.steps_left = MAX_TEMPLATE_STEPS
        self.output_left = MAX_TEMPLATE_OUTPUT

    def step(self) -> None:
        self.steps_left -= 1
        if self.steps_left < 0:
            raise TemplateLimit(f"template runs more than {MAX_TEMPLATE_STEPS} loop iterations and calls; "
                                f"the limit is {MAX_TEMPLATE_STEPS}")

    def write(self, characters: int) -> None:
        self.output_left -= characters
        if self.output_left < 0:
            raise TemplateLimit(f"template writes more than {MAX_TEMPLATE_OUTPUT} characters; "
                                f"the limit is {MAX_TEMPLATE_OUTPUT}")


def _budget(context: Context) -> Budget:
    budget: Budget = context.parent[BUDGET_KEY]
    return budget


def _check_length(what: str, size: int, unit: str = "characters") -> None:
    if size > MAX_TEMPLATE_OUTPUT:
        raise TemplateLimit(f"template: {what} would build {size} {unit}; the limit is {MAX_TEMPLATE_OUTPUT}")


def _unit(sequence: Any) -> str:
    return "characters" if isinstance(sequence, str) else "items"


def text_size(value: Any, limit: int = MAX_TEMPLATE_OUTPUT) -> int:
    """About how many characters str(value) has, counted only up to just past `limit` (a list of a
    million references to one long string is small, its text is not)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return 8 if not isinstance(value, int) or value.bit_length() < 64 else value.bit_length() // 3
    total, stack = 0, [value]
    while stack and total <= limit:
        current = stack.pop()
        if isinstance(current, str):
            total += len(current) + 4
        elif isinstance(current, dict):
            total += 2 + 2 * len(current)
            stack.extend(current.keys())
            stack.extend(current.values())
        elif isinstance(current, (list, tuple, set, frozenset)):
            total += 2 + 2 * len(current)
            stack.extend(current)
        else:
            total += 8
    return total


def _check_integer(what: str, bits: int) -> None:
    if bits > MAX_INTEGER_BITS:
        raise TemplateLimit(f"template: {what} would build an integer of {bits} bits; the limit is {MAX_INTEGER_BITS}")


def _sized(value: Any) -> bool:
    return isinstance(value, (str, list, tuple))


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse `left OPERATOR right` when its result would pass a limit, before computing it."""
    if operator == "*":
        if _sized(left) and isinstance(right, int) or _sized(right) and isinstance(left, int):
            sequence, count = (left, right) if _sized(left) else (right, left)
            _check_length("repetition", len(sequence) * max(count, 0), _unit(sequence))
        elif isinstance(left, int) and isinstance(right, int):
            _check_integer("multiplication", left.bit_length() + right.bit_length())
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _check_integer("a power", left.bit_length() * right)
    elif operator == "+":
        if _sized(left) and _sized(right):
            _check_length("'+'", len(left) + len(right), _unit(left))
    elif operator == "%" and isinstance(left, str):
        check_printf(left, right)


_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def check_printf(form: str, arguments: Any) -> None:
    """`form % arguments`: widths and precisions within the limit, and none taken from the arguments."""
    for match in _PRINTF.finditer(form):
        for size in match.groups():
            if size == "*":
                raise TemplateLimit("template: a '*' width or precision in a % format is not allowed")
            if size is not None:
                _check_length("a % format's width", int(size))
    _check_length("a % format", len(form) + text_size(arguments))


def check_format(form: str) -> None:
    """str.format: widths within the limit, and none taken from the arguments (`{:{w}}`)."""
    try:
        fields = list(string.Formatter().parse(form))
    except ValueError:
        return  # str.format raises the same error itself
    for _text, _name, spec, _conversion in fields:
        if not spec:
            continue
        if "{" in spec:
            raise TemplateLimit("template: a format width taken from an argument ({:{w}}) is not allowed")
        for size in re.findall(r"\d+", spec):
            _check_length("a format's width", int(size))


def _integer_arguments(args: Iterable[Any], what: str) -> None:
    for argument in args:
        if isinstance(argument, int) and not isinstance(argument, bool):
            _check_length(what, argument)


def check_call(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Calls of methods of strings and numbers (a template can reach them as attributes): sizes
    given as arguments (ljust, center, zfill, expandtabs, to_bytes), replace and join."""
    owner = getattr(function, "__self__", None)
    if not isinstance(owner, (str, bytes, int, float)):
        return
    name = getattr(function, "__name__", "")
    _integer_arguments((*args, *kwargs.values()), f"{name}()")
    if isinstance(owner, str) and name == "replace" and len(args) >= 2 and isinstance(args[0], str):
        count = owner.count(args[0]) if args[0] else len(owner) + 1
        _check_length("replace()", len(owner) + count * len(str(args[1])))
    elif isinstance(owner, str) and name == "join" and args:
        _check_length("join()", len(owner) * text_size(args[0]) + text_size(args[0]))


def check_result(value: Any) -> None:
    if isinstance(value, (str, list, tuple, dict)):
        _check_length("a call", len(value), _unit(value))
    elif isinstance(value, int) and not isinstance(value, bool):
        _check_integer("a call", value.bit_length())


def limited_range(*args: int) -> range:
    """range(), at most MAX_TEMPLATE_RANGE items."""
    numbers = range(*args)
    if len(numbers) > MAX_TEMPLATE_RANGE:
        raise TemplateLimit(f"template: range() of {len(numbers)} items; the limit is {MAX_TEMPLATE_RANGE}")
    return numbers


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the checks above."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's form)
        budget = _budget(__context)
        budget.step()
        if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level: counted too
            args = (_counted(budget, args[0]), *args[1:])
        check_call(__obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        check_result(result)
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        formatter = super().wrap_str_format(value)
        if formatter is None:
            return None
        form = value.__self__
        checked_formatter: Callable[..., str] = formatter

        def checked(*args: Any, **kwargs: Any) -> str:
            check_format(form)
            _check_length("format()", len(form) + text_size((args, kwargs)))
            return checked_formatter(*args, **kwargs)

        return checked


# -- filters: the ones that can build more than they are given check first ---------------------------
def _width_filter(name: str, position: int, keyword: str, unit: str = "characters"
                  ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A filter whose argument number `position` (or `keyword`) is a size it builds."""

    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def checked(value: Any, *args: Any, **kwargs: Any) -> Any:
            size = args[position] if len(args) > position else kwargs.get(keyword)
            if isinstance(size, int):
                _check_length(f"{name}'s {keyword}", abs(size) * max(1, str(value).count("\n") + 1), unit)
            result = function(value, *args, **kwargs)
            check_result(result)
            return result

        return checked

    return wrap


def _checked_result(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        check_result(result)
        return result

    return checked


def _join_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def checked(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        items = list(value) if isinstance(value, Iterable) and not isinstance(value, (str, dict)) else value
        if isinstance(items, list):
            _check_length("join", len(str(d)) * len(items) + text_size(items))
        return function(eval_ctx, items, d, attribute)

    return checked


def _format_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def checked(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            check_printf(value, (args, kwargs))
        return function(value, *args, **kwargs)

    return checked


def _replace_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def checked(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> Any:
        text, old_text = str(s), str(old)
        found = text.count(old_text) if old_text else len(text) + 1
        _check_length("replace", len(text) + found * len(str(new)))
        return function(eval_ctx, s, old, new, count)

    return checked


def _wordwrap_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def checked(environment: Any, s: Any, *args: Any, **kwargs: Any) -> Any:
        wrapstring = args[2] if len(args) > 2 else kwargs.get("wrapstring")
        _check_length("wordwrap", len(str(s)) * (1 + len(str(wrapstring or "\n"))))
        return function(environment, s, *args, **kwargs)

    return checked


def _sum_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def checked(environment: Any, iterable: Any, *args: Any, **kwargs: Any) -> Any:
        items = list(iterable)
        _check_length("sum", sum(len(item) for item in items if _sized(item)))
        result = function(environment, items, *args, **kwargs)
        check_result(result)
        return result

    return checked


def _multiply_function(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def checked(*args: Any) -> Any:
        if all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            _check_integer("multiply", sum(a.bit_length() for a in args))
        return function(*args)

    return checked


_FILTER_CHECKS: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    "center": _width_filter("center", 0, "width"),
    "indent": _width_filter("indent", 0, "width"),
    "batch": _width_filter("batch", 0, "linecount", "items"),
    "slice": _width_filter("slice", 0, "slices", "items"),
    "tojson": _width_filter("tojson", 0, "indent"),
    "truncate": _checked_result,
    "join": _join_filter,
    "format": _format_filter,
    "replace": _replace_filter,
    "wordwrap": _wordwrap_filter,
    "sum": _sum_filter,
    "multiply": _multiply_function,
}


def _counted(budget: Budget, iterable: Any) -> Iterator[Any]:
    for item in iterable:
        budget.step()
        yield item


@pass_context
def _limited_loop(context: Context, iterable: Any) -> Iterator[Any]:
    return _counted(_budget(context), iterable)


@pass_context
def _limited_output(context: Context, value: Any) -> str:
    size = text_size(value)
    _budget(context).write(size)
    return value if isinstance(value, str) else str(value)


@pass_context
def _limited_concat(context: Context, parts: list[Any]) -> str:
    _check_length("'~'", sum(text_size(part) for part in parts))
    return "".join([str(part) for part in parts])


def limited_environment(**options: Any) -> LimitedSandbox:
    """The environment templates are compiled in: the checks above installed."""
    environment = LimitedSandbox(**options)
    environment.globals["range"] = limited_range
    for name, check in _FILTER_CHECKS.items():
        if name in environment.filters:
            environment.filters[name] = check(environment.filters[name])
    environment.filters[_LOOP_FILTER] = _limited_loop
    environment.filters[_OUTPUT_FILTER] = _limited_output
    environment.filters[_CONCAT_FILTER] = _limited_concat
    return environment


def check_function(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A function also installed as a filter (engine/functions.py), checked when it can amplify."""
    check = _FILTER_CHECKS.get(name)
    return check(function) if check is not None else function


def count_in_rendering(tree: nodes.Template) -> nodes.Template:
    """Rewrite a parsed template so that its rendering spends the budget: each loop's iterable, each
    piece it writes (its constant text too) and each `~`."""
    counted: nodes.Template = _Counting().visit(tree)
    return counted


class _Counting(NodeTransformer):
    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _filtered(node.iter, _LOOP_FILTER)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _filtered(nodes.List(node.nodes, lineno=node.lineno), _CONCAT_FILTER)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [_filtered(piece, _OUTPUT_FILTER) for piece in node.nodes]
        return node


def _filtered(node: nodes.Node, name: str) -> nodes.Filter:
    if isinstance(node, nodes.TemplateData):
        node = nodes.Const(node.data, lineno=node.lineno)
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)
