"""Stage 3, compile: lowering a JMESPath expression. jmespath's parse tree (dicts with a type)
becomes IR (ir.py's JMESPath section) once, in one walk that also measures its depth and checks
what jmespath accepts but the rule language refuses (function names and argument counts, `!a.b`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jmespath.functions import Functions

from . import ir
from .codegen import Origin
from .functions import FUNCTIONS

BUILTINS: dict[str, Any] = dict(Functions.FUNCTION_TABLE)


def lower_tree(tree: dict[str, Any], text: str, origin: Origin | None) -> tuple[ir.Node, int, list[tuple[str, int]]]:
    """The tree as IR, its depth, and its mistakes (message, offset in `text`) in the order they
    are written. Without recursion: `a || b || …` nests as deep as it is long."""
    made: list[Any] = []  # lowered children, in order, waiting for their parent
    problems: list[tuple[str, int]] = []
    deepest, stack = 0, [(tree, 1, False)]
    while stack:
        node, depth, children_done = stack.pop()
        children = [child for child in node["children"] if isinstance(child, dict)]
        if children_done:
            parts = made[len(made) - len(children):]
            del made[len(made) - len(children):]
            made.append(_node(node, parts, origin))
            continue
        deepest = max(deepest, depth)
        _check(node, text, problems)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in reversed(children))
    return made[0], deepest, problems


def _node(node: dict[str, Any], parts: list[Any], origin: Origin | None) -> Any:
    kind, children = node["type"], node["children"]
    if kind == "index_expression" and all(child["type"] == "index" for child in children[1:]):
        return ir.JmesIndex(origin, parts[0], tuple(int(child["value"]) for child in children[1:]))
    if kind == "function_expression" and all(child["type"] != "expref" for child in children):
        return ir.JmesCall(origin, node["value"], tuple(parts))
    lower = _LOWER.get(kind)
    if lower is None:  # (a slice, a function given an expref: jmespath's interpreter runs them)
        return ir.JmesInterpreted(origin, node, tuple(part for part in parts if part is not None))
    return lower(node, parts, origin)


Lower = Callable[[dict[str, Any], list[Any], Origin | None], Any]
_LOWER: dict[str, Lower] = {
    "field": lambda node, parts, origin: ir.JmesField(origin, node["value"]),
    "subexpression": lambda node, parts, origin: ir.JmesSubexpression(origin, tuple(parts)),
    "index": lambda node, parts, origin: None,  # (read by its index_expression)
    "slice": lambda node, parts, origin: None,  # (its index_expression is interpreted)
    "literal": lambda node, parts, origin: ir.Literal(origin, node["value"]),
    "current": lambda node, parts, origin: ir.JmesCurrent(origin),
    "identity": lambda node, parts, origin: ir.JmesCurrent(origin),
    "comparator": lambda node, parts, origin: ir.JmesComparator(origin, node["value"], parts[0], parts[1]),
    "and_expression": lambda node, parts, origin: ir.JmesAndOr(origin, parts[0], parts[1], True),
    "or_expression": lambda node, parts, origin: ir.JmesAndOr(origin, parts[0], parts[1], False),
    "not_expression": lambda node, parts, origin: ir.JmesNot(origin, parts[0]),
    "pipe": lambda node, parts, origin: ir.JmesPipe(origin, parts[0], parts[1]),
    "multi_select_list": lambda node, parts, origin: ir.JmesMultiSelect(origin, tuple(parts), None),
    "key_val_pair": lambda node, parts, origin: parts[0],  # (its key is read by its multi_select_dict)
    "multi_select_dict": lambda node, parts, origin: ir.JmesMultiSelect(
        origin, tuple(parts), tuple(child["value"] for child in node["children"])),
    "flatten": lambda node, parts, origin: ir.JmesFlatten(origin, parts[0]),
    "projection": lambda node, parts, origin: ir.JmesProjection(origin, parts[0], parts[1], None, False),
    "value_projection": lambda node, parts, origin: ir.JmesProjection(origin, parts[0], parts[1], None, True),
    "filter_projection": lambda node, parts, origin: ir.JmesProjection(origin, parts[0], parts[1], parts[2], False),
    "expref": lambda node, parts, origin: parts[0],  # (what it reads; the call holding it is interpreted)
}


def _check(node: dict[str, Any], text: str, problems: list[tuple[str, int]]) -> None:
    if node["type"] in ("subexpression", "index_expression") and node["children"][0]["type"] == "not_expression":
        # JMESPath binds `!` tighter than `.`: `!a.b` is `(!a).b`, which is always null.
        problems.append(("'!a.b' means '(!a).b' in JMESPath (always null); write '!(a.b)'", max(text.find("!"), 0)))
    if node["type"] != "function_expression":
        return
    name, count = node["value"], len(node["children"])
    offset = max(text.find(name + "("), 0)
    if name in FUNCTIONS:
        _, low, high = FUNCTIONS[name]
        if count < low or (high is not None and count > high):
            expected = f"{low}" if low == high else f"{low} to {high}" if high else f"at least {low}"
            problems.append((f"function {name}() takes {expected} arguments, got {count}", offset))
    elif name in BUILTINS:
        signature = BUILTINS[name]["signature"]
        variadic = bool(signature) and signature[-1].get("variadic")
        if (variadic and count < len(signature)) or (not variadic and count != len(signature)):
            problems.append((f"function {name}() takes {len(signature)} arguments, got {count}", offset))
    else:
        known = ", ".join(sorted(set(FUNCTIONS) | set(BUILTINS)))
        problems.append((f"unknown function {name}() (known: {known})", offset))
