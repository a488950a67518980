"""Stage 3, compile: the optimiser. A pass over a whole rule (or value) tree, children first (as
Jinja's optimizer), folding what is known before its code is written:

- a select's constant default and cast join it: one piece of code, not three each testing ABSENT;
- an Absent option, item, field or part is left out, and a default, cast, encoding or lookup of
  nothing is folded; a fields table becomes its object, built in place;
- settings: the pass runs per Mapper (generate.MapperCode), whose settings and mapping are fixed, so
  a read of them in an expression (on the scope: `settings.x`) becomes its value, and what then is
  constant (not, and/or, a comparison) is folded; a condition so decided is decided now: an `if`
  keeps its branch, a rule's `when` that holds, a requirement met and a warning that never applies go.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable
from typing import Any, TypeVar

from . import ir
from .expressions import Expression
from .runtime import is_falsy, jmespath_equals

N = TypeVar("N", bound=ir.Node)
_ORDERINGS: dict[str, Callable[[Any, Any], Any]] = {
    "lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge}
# A JMESPath node's fields computed on the same value as the node (the scope, at an expression's root).
_ON_SAME_VALUE: dict[type, tuple[str, ...]] = {
    ir.JmesSubexpression: ("steps",), ir.JmesIndex: ("value",), ir.JmesComparator: ("left", "right"),
    ir.JmesAndOr: ("left", "right"), ir.JmesNot: ("value",), ir.JmesPipe: ("left",), ir.JmesMultiSelect: ("items",),
    ir.JmesFlatten: ("base",), ir.JmesProjection: ("base",), ir.JmesCall: ("arguments",)}


class Optimiser:
    """`Optimiser(roots).visit(node)`: the node folded (itself when nothing folds); `roots`: the scope
    roots fixed for the code being written (a Mapper's settings and mapping)."""

    def __init__(self, roots: dict[str, Any]):
        self.roots = roots
        self.folded: dict[ir.Node, Any] = {}  # node -> the node folded (a folded node: itself; nodes hash by identity)
        self.plans: dict[type, tuple[tuple[str, ...], Callable[[Any], Any]]] = {}  # (see plan)

    def visit(self, node: Any) -> Any:
        found = self.folded.get(node)
        if found is None:
            fields, method = self.plans.get(node.__class__) or self.plan(node.__class__)
            changed = {}
            for name in fields:
                value = getattr(node, name)
                folded = self.child(value)
                if folded is not value:
                    changed[name] = folded
            found = method(dataclasses.replace(node, **changed) if changed else node)
            self.folded[node] = self.folded[found] = found
        return found

    def plan(self, cls: type) -> tuple[tuple[str, ...], Callable[[Any], Any]]:
        """A node class's fields that may hold nodes (their annotation names a node class; not origin),
        and its visit_<NodeClass> (or none)."""
        fields = tuple(name for name, spec in cls.__dataclass_fields__.items()  # type: ignore[attr-defined]
                       if name != "origin" and any(word == "Expression" or isinstance(getattr(ir, word, None), type)
                                                   and issubclass(getattr(ir, word), ir.Node)
                                                   for word in re.findall(r"\w+", str(spec.type))))
        self.plans[cls] = fields, getattr(self, f"visit_{cls.__name__}", _same)
        return self.plans[cls]

    def child(self, value: Any) -> Any:
        """A node's field folded: a node, an expression, or a tuple of them (or of (key, node) pairs);
        the value itself when nothing in it folds."""
        if isinstance(value, ir.Node):
            return self.visit(value)
        if isinstance(value, Expression):  # its reads of the fixed roots done (keys: loose: matched at run time)
            tree = value.tree if value.loose else self.on_scope(value.tree)
            return value if tree is value.tree else dataclasses.replace(value, tree=tree)
        if value.__class__ is not tuple:
            return value
        items = tuple(self.child(item) for item in value)
        return value if items == value else items  # (nodes compare by identity)

    def decided(self, node: ir.Node | None) -> bool | None:
        """A (folded) condition's truth when it reads only the fixed roots (None: not known before an event)."""
        if not isinstance(node, ir.Condition) or not isinstance(node.expression.tree, ir.Literal):
            return None
        return not is_falsy(node.expression.tree.value)

    def without_absent(self, node: N, name: str) -> N:
        """`node` with the Absent nodes of its field `name` (nodes, or (key, node) pairs) left out."""
        parts = getattr(node, name)
        if not any(isinstance(part[1] if part.__class__ is tuple else part, ir.Absent) for part in parts):
            return node
        kept = tuple(part for part in parts if not isinstance(part[1] if part.__class__ is tuple else part, ir.Absent))
        return dataclasses.replace(node, **{name: kept})

    # -- select/default/cast, and absent values ------------------------------------------------------
    def visit_CastTo(self, node: ir.CastTo) -> ir.Node:
        if isinstance(node.value, ir.Select) and node.value.cast is None:  # (the default is cast too)
            return dataclasses.replace(node.value, origin=node.origin, cast=node.cast)
        return node.value if isinstance(node.value, ir.Absent) else node

    def visit_Default(self, node: ir.Default) -> ir.Node:
        value, default = node.value, node.default
        if isinstance(value, ir.Select) and value.cast is None and value.default is ir.NO_DEFAULT \
                and isinstance(default, ir.Literal) and default.is_scalar:
            return dataclasses.replace(value, origin=node.origin, default=default.value)
        return default if isinstance(value, ir.Absent) else value if isinstance(default, ir.Absent) else node

    def visit_First(self, node: ir.First) -> ir.Node:
        node = self.without_absent(node, "options")
        return node if node.options else ir.Absent(node.origin)

    def visit_ListOf(self, node: ir.ListOf) -> ir.Node:
        return self.without_absent(node, "items")

    def visit_Object(self, node: ir.Object) -> ir.Node:
        return self.without_absent(node, "fields")

    def visit_Merge(self, node: ir.Merge) -> ir.Node:
        return self.without_absent(node, "parts")

    def visit_Encode(self, node: ir.Encode) -> ir.Node:
        return node.value if isinstance(node.value, ir.Absent) else node

    def visit_Lookup(self, node: ir.Lookup) -> ir.Node:
        return node.key if isinstance(node.key, ir.Absent) else node

    def visit_TableFields(self, node: ir.TableFields) -> ir.Node:
        assert node.table.lowered is not None  # (set once every table is lowered; folded once, for every use)
        return ir.Object(node.origin, self.visit(node.table.lowered).fields, node.omit_empty)

    # -- settings ------------------------------------------------------------------------------------
    def on_scope(self, node: ir.Node) -> ir.Node:
        """A JMESPath node computed on the scope: a plain path under a fixed root becomes its value (a
        Literal), and a node made constant by that is folded."""
        path = ir.plain_path(node)
        if path is not None and path[0] in self.roots:
            value = self.roots[path[0]]
            for key in path[1:]:
                value = value.get(key) if isinstance(value, dict) else None
            return ir.Literal(node.origin, value)
        changed: dict[str, Any] = {}
        for name in _ON_SAME_VALUE.get(node.__class__, ()):
            value = getattr(node, name)
            if value.__class__ is tuple:  # (of a subexpression, only its first step)
                first = 1 if isinstance(node, ir.JmesSubexpression) else len(value)
                folded: Any = tuple(map(self.on_scope, value[:first])) + value[first:]
            else:
                folded = self.on_scope(value)
            if folded != value:  # (nodes compare by identity)
                changed[name] = folded
        return _constant(dataclasses.replace(node, **changed)) if changed else node

    def visit_If(self, node: ir.If) -> ir.Node:
        holds = self.decided(node.condition)
        chosen = node if holds is None else node.then if holds else node.otherwise
        return ir.Absent(node.origin) if chosen is None else chosen

    def visit_Rule(self, rule: ir.Rule) -> ir.Node:
        requires = tuple(requirement for requirement in rule.requires if self.decided(requirement.test) is not True)
        warns = tuple(warning for warning in rule.warns if self.decided(warning.test) is not False)
        when = None if self.decided(rule.when) is True else rule.when
        if when is rule.when and len(requires) == len(rule.requires) and len(warns) == len(rule.warns):
            return rule
        return dataclasses.replace(rule, when=when, requires=requires, warns=warns)


def _same(node: ir.Node) -> ir.Node:
    return node


def _constant(node: ir.Node) -> ir.Node:
    """`!x`, `x && y`, `x || y` with x a Literal, and a comparison of two Literals: computed now."""
    if isinstance(node, ir.JmesNot) and isinstance(node.value, ir.Literal):
        return ir.Literal(node.origin, is_falsy(node.value.value))
    if isinstance(node, ir.JmesAndOr) and isinstance(node.left, ir.Literal):
        return node.left if is_falsy(node.left.value) == node.is_and else node.right
    if isinstance(node, ir.JmesComparator) and isinstance(node.left, ir.Literal) and isinstance(node.right, ir.Literal):
        return ir.Literal(node.origin, _compared(node.operator, node.left.value, node.right.value))
    return node


def _compared(kind: str, left: Any, right: Any) -> bool | None:
    """A comparison as generated code makes it (generate.visit_JmesComparator): equality as JMESPath's
    (true is not 1), ordering of numbers only — anything else is null (jmespath 1.1 would order
    strings, and raise on a string and a number)."""
    if kind in ("eq", "ne"):
        return jmespath_equals(left, right) == (kind == "eq")
    if not all(isinstance(side, (int, float)) and not isinstance(side, bool) for side in (left, right)):
        return None
    return bool(_ORDERINGS[kind](left, right))
