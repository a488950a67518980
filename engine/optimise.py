"""Stage 3, compile: the optimiser. A pass over a whole rule (or value) tree that folds what is known
before its code is written, as Jinja's optimizer does: children first, then the node.

- select/default/cast: a select with a constant default and a cast becomes one Select that tries its
  paths, falls back to the default and casts, in one piece of code (not three each testing ABSENT);
- absent values: an Absent option, item, field or part is left out (of first, a list, an object,
  merge), a default of nothing is its value, and a cast, encoding or lookup of nothing is Absent;
- settings: it runs per Mapper (generate.MapperCode), whose settings and mapping are fixed, so a
  condition that reads only those is decided: an `if` keeps only its branch, a rule's `when` that
  holds is dropped, a requirement met and a warning that never applies are left out. (Conditions
  that read settings and the event, and paths under `settings` in a select, are folded by the code
  generator from the same fixed roots, Source.roots: a select records which path supplied a field.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import ir
from .expressions import INTERPRETER
from .runtime import is_falsy

# JMESPath node kinds whose value depends only on their children (and never fail).
_PURE_KINDS = frozenset({"literal", "not_expression", "and_expression", "or_expression", "comparator"})


class Optimiser:
    """`Optimiser(roots).visit(node)`: the node folded; a node nothing folds in is returned itself.
    `roots` are the scope roots fixed for the code being written (a Mapper's settings and mapping)."""

    def __init__(self, roots: dict[str, Any]):
        self.roots = roots
        self.folded: dict[int, ir.Node] = {}  # id(node) -> the node folded (a folded node maps to itself)
        self.seen: list[ir.Node] = []  # (keeps the keys' nodes alive)

    def visit(self, node: Any) -> Any:
        found = self.folded.get(id(node))
        if found is None:
            changed = {name: value for name in node.__dataclass_fields__
                       if (value := self.children(getattr(node, name))) is not getattr(node, name)}
            found = dataclasses.replace(node, **changed) if changed else node
            method = getattr(self, f"visit_{type(found).__name__}", None)
            found = found if method is None else method(found)
            self.folded[id(node)] = self.folded[id(found)] = found
            self.seen += (node, found)
        return found

    def children(self, value: Any) -> Any:
        """A field's value with the nodes in it folded (a node, a tuple of nodes or of (key, node) pairs)."""
        if isinstance(value, ir.Node):
            return self.visit(value)
        if not isinstance(value, tuple) or not value:
            return value
        items = tuple(self.visit(item) if isinstance(item, ir.Node) else (item[0], self.visit(item[1]))
                      if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], ir.Node) else item
                      for item in value)
        return value if all(new is old for new, old in zip(items, value, strict=True)) else items

    def decided(self, node: ir.Node | None) -> bool | None:
        """A condition's truth when it reads only the fixed roots (None: not known before an event)."""
        if not isinstance(node, ir.Condition) or node.expression.loose or not self.fixed(node.expression.ast):
            return None
        return not is_falsy(INTERPRETER.visit(node.expression.ast, self.roots))

    def fixed(self, ast: dict[str, Any]) -> bool:
        """Whether a JMESPath tree reads nothing but the fixed roots (plain paths under them, literals,
        comparisons, and/or/not)."""
        steps = [ast] if ast["type"] == "field" else ast["children"] if ast["type"] == "subexpression" else None
        if steps is not None:
            return all(step["type"] == "field" for step in steps) and steps[0]["value"] in self.roots
        return ast["type"] in _PURE_KINDS and all(self.fixed(child) for child in ast["children"])

    # -- select/default/cast, and absent values ------------------------------------------------------
    def visit_CastTo(self, node: ir.CastTo) -> ir.Node:
        if isinstance(node.value, ir.Absent):
            return node.value
        if isinstance(node.value, ir.Select) and node.value.cast is None:  # (the default is cast too)
            return dataclasses.replace(node.value, origin=node.origin, cast=node.cast)
        return node

    def visit_Default(self, node: ir.Default) -> ir.Node:
        value, default = node.value, node.default
        if isinstance(value, ir.Absent) or isinstance(default, ir.Absent):
            return default if isinstance(value, ir.Absent) else value
        if isinstance(value, ir.Select) and value.cast is None and value.default is ir.NO_DEFAULT \
                and isinstance(default, ir.Literal) and default.is_scalar:
            return dataclasses.replace(value, origin=node.origin, default=default.value)
        return node

    def visit_First(self, node: ir.First) -> ir.Node:
        options = tuple(option for option in node.options if not isinstance(option, ir.Absent))
        return ir.Absent(node.origin) if not options else node if len(options) == len(node.options) else \
            dataclasses.replace(node, options=options)

    def visit_ListOf(self, node: ir.ListOf) -> ir.Node:
        items = tuple(item for item in node.items if not isinstance(item, ir.Absent))
        return node if len(items) == len(node.items) else dataclasses.replace(node, items=items)

    def visit_Object(self, node: ir.Object) -> ir.Node:
        fields = tuple((key, part) for key, part in node.fields if not isinstance(part, ir.Absent))
        return node if len(fields) == len(node.fields) else dataclasses.replace(node, fields=fields)

    def visit_Merge(self, node: ir.Merge) -> ir.Node:
        parts = tuple(part for part in node.parts if not isinstance(part, ir.Absent))
        return node if len(parts) == len(node.parts) else dataclasses.replace(node, parts=parts)

    def visit_Encode(self, node: ir.Encode) -> ir.Node:
        return node.value if isinstance(node.value, ir.Absent) else node

    def visit_Lookup(self, node: ir.Lookup) -> ir.Node:
        return node.key if isinstance(node.key, ir.Absent) else node

    def visit_TableFields(self, node: ir.TableFields) -> ir.Node:
        """The table's object, built in place (its fields folded once, for every use of the table)."""
        assert node.table.lowered is not None  # (set once every table is lowered)
        return ir.Object(node.origin, self.visit(node.table.lowered).fields, node.omit_empty)

    # -- settings ------------------------------------------------------------------------------------
    def visit_If(self, node: ir.If) -> ir.Node:
        holds = self.decided(node.condition)
        if holds is None:
            return node
        chosen = node.then if holds else node.otherwise
        return ir.Absent(node.origin) if chosen is None else chosen

    def visit_Rule(self, rule: ir.Rule) -> ir.Node:
        requires = tuple(requirement for requirement in rule.requires if self.decided(requirement.test) is not True)
        warns = tuple(warning for warning in rule.warns if self.decided(warning.test) is not False)
        when = None if self.decided(rule.when) is True else rule.when
        if when is rule.when and len(requires) == len(rule.requires) and len(warns) == len(rule.warns):
            return rule
        return dataclasses.replace(rule, when=when, requires=requires, warns=warns)
