"""Stage 3, compile: the optimiser. A pass over a whole rule (or value) tree, children first (as
Jinja's optimizer), folding what is known before its code is written:

- a select's constant default and cast join it: one piece of code, not three each testing ABSENT;
- an Absent option, item, field or part is left out, and a default, cast, encoding or lookup of
  nothing is folded; a fields table becomes its object, built in place;
- settings: the pass runs per Mapper (generate.MapperCode), whose settings and mapping are fixed, so
  a condition reading only those is decided: an `if` keeps its branch, a rule's `when` that holds,
  a requirement met and a warning that never applies go. (A condition reading settings and the
  event, and a select's paths under `settings`, are folded by the code generator from the same
  fixed roots, Source.roots, as it writes them: a select records which path supplied a field.)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, TypeVar

from . import ir
from .expressions import INTERPRETER
from .runtime import is_falsy

# JMESPath nodes whose value is their children's, and that never fail.
_PURE_KINDS = frozenset({"literal", "not_expression", "and_expression", "or_expression", "comparator"})
N = TypeVar("N", bound=ir.Node)


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
                if isinstance(value, ir.Node):
                    folded = self.visit(value)
                elif value.__class__ is tuple:
                    folded = self.children(value)
                else:
                    continue
                if folded is not value:
                    changed[name] = folded
            found = method(dataclasses.replace(node, **changed) if changed else node)
            self.folded[node] = self.folded[found] = found
        return found

    def plan(self, cls: type) -> tuple[tuple[str, ...], Callable[[Any], Any]]:
        """A node class's fields that may hold nodes (their annotation names a node class; not origin),
        and its visit_<NodeClass> (or none)."""
        fields = tuple(name for name, spec in cls.__dataclass_fields__.items()  # type: ignore[attr-defined]
                       if name != "origin" and any(isinstance(getattr(ir, word, None), type) and
                                                   issubclass(getattr(ir, word), ir.Node)
                                                   for word in re.findall(r"\w+", str(spec.type))))
        self.plans[cls] = fields, getattr(self, f"visit_{cls.__name__}", _same)
        return self.plans[cls]

    def children(self, value: tuple[Any, ...]) -> tuple[Any, ...]:
        """A tuple of nodes, or of (key, node) pairs, folded; the tuple itself when none of them folds."""
        items = None
        for index, item in enumerate(value):
            if isinstance(item, ir.Node):
                folded = self.visit(item)
            elif item.__class__ is tuple and len(item) == 2 and isinstance(item[1], ir.Node):  # (key, node)
                node = self.visit(item[1])
                folded = item if node is item[1] else (item[0], node)
            else:
                continue
            if folded is not item:
                items = list(value) if items is None else items
                items[index] = folded
        return value if items is None else tuple(items)

    def decided(self, node: ir.Node | None) -> bool | None:
        """A condition's truth when it reads only the fixed roots (None: not known before an event)."""
        if not isinstance(node, ir.Condition) or node.expression.loose or not self.fixed(node.expression.ast):
            return None
        return not is_falsy(INTERPRETER.visit(node.expression.ast, self.roots))

    def fixed(self, ast: dict[str, Any]) -> bool:
        """Whether a JMESPath tree reads only the fixed roots: plain paths under them, literals,
        comparisons, and/or/not."""
        steps = [ast] if ast["type"] == "field" else ast["children"] if ast["type"] == "subexpression" else None
        if steps is not None:
            return all(step["type"] == "field" for step in steps) and steps[0]["value"] in self.roots
        return ast["type"] in _PURE_KINDS and all(self.fixed(child) for child in ast["children"])

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
