"""Stage 3, compile: analysis. What a node reads (root paths, named values), templates included.

Used for what is decided at load time: headers that read only settings are computed once, named
values that refer to each other in a cycle are refused, and rest's `except_fields` leaves out what
the named tables read (following named values).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from . import ir
from .expressions import Expression


@dataclass
class Reads:
    paths: set[tuple[str, ...]] = field(default_factory=set)  # root paths read directly (vars.NAME not among them)
    names: set[str] = field(default_factory=set)  # named values read (vars.NAME)

    def add(self, other: Reads) -> None:
        self.paths |= other.paths
        self.names |= other.names

    @property
    def event(self) -> bool:
        """True when the value can differ between events under the same settings."""
        return bool(self.names) or any(path[0] not in ("settings", "mapping") for path in self.paths)


def expression_reads(expressions: Iterable[Expression]) -> Reads:
    out = Reads()
    for expression in expressions:
        for path in expression.info.paths:
            if path[0] == "vars" and len(path) > 1:
                out.names.add(path[1])
            else:
                out.paths.add(path)
    return out


class ReadsOf:
    """The visitor: `ReadsOf().visit(node)` (one method per node class, as CodeGenerator has)."""

    def visit(self, node: ir.Node | None) -> Reads:
        return Reads() if node is None else getattr(self, f"visit_{type(node).__name__}")(node)

    def parts(self, nodes: Iterable[ir.Node | None]) -> Reads:
        out = Reads()
        for node in nodes:
            out.add(self.visit(node))
        return out

    def visit_Literal(self, node: ir.Literal) -> Reads:
        return Reads()

    visit_Absent = visit_Literal

    def visit_ListOf(self, node: ir.ListOf) -> Reads:
        return self.parts(node.items)

    def visit_Object(self, node: ir.Object) -> Reads:
        return self.parts(part for _, part in node.fields)

    def visit_Select(self, node: ir.Select) -> Reads:
        return expression_reads(node.expressions)

    def visit_Condition(self, node: ir.Condition) -> Reads:
        return expression_reads([node.expression])

    def visit_Presence(self, node: ir.Presence) -> Reads:
        return expression_reads(node.expressions)

    def visit_Rest(self, node: ir.Rest) -> Reads:
        return expression_reads([node.expression])

    def visit_First(self, node: ir.First) -> Reads:
        return self.parts(node.options)

    def visit_Merge(self, node: ir.Merge) -> Reads:
        return self.parts(node.parts)

    def visit_Template(self, node: ir.Template) -> Reads:
        # (a template reading `vars` at all counts as reading the event)
        template = node.template
        return Reads({(root,) for root in template.roots},
                     {path[1] for path in template.reads if path[0] == "vars" and len(path) > 1})

    def visit_If(self, node: ir.If) -> Reads:
        return self.parts((node.condition, node.then, node.otherwise))

    def visit_Default(self, node: ir.Default) -> Reads:
        return self.parts((node.value, node.default))

    def visit_CastTo(self, node: ir.CastTo) -> Reads:
        return self.visit(node.value)

    def visit_Encode(self, node: ir.Encode) -> Reads:
        return self.visit(node.value)

    def visit_Lookup(self, node: ir.Lookup) -> Reads:
        return self.visit(node.key)

    def visit_TableFields(self, node: ir.TableFields) -> Reads:
        return self.visit(node.table.lowered)

    def visit_Each(self, node: ir.Each) -> Reads:
        inner = self.parts((node.value, node.where))
        out = expression_reads([node.expression])
        out.paths |= {path for path in inner.paths if path[0] not in (node.name, "index")}
        out.names |= inner.names
        return out


def reads(node: ir.Node | None) -> Reads:
    return ReadsOf().visit(node)


def consumed_paths(node: ir.Node | None, named: Mapping[str, ir.Node]) -> set[tuple[str, ...]]:
    """Root paths a value reads, following named values transitively."""
    found = reads(node)
    paths = set(found.paths)
    seen: set[str] = set()
    todo = list(found.names)
    while todo:
        name = todo.pop()
        if name in seen or name not in named:
            continue
        seen.add(name)
        more = reads(named[name])
        paths |= more.paths
        todo.extend(more.names)
    return paths


def always_object(node: ir.Node) -> bool:
    """Whether the node's value is always a dict (never ABSENT): parents skip their checks."""
    if isinstance(node, (ir.Object, ir.Merge, ir.Rest, ir.TableFields)):
        return not node.omit_empty
    return False
