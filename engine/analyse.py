"""Stage 3, compile: analysis. What a node reads (root paths, named values), templates and JMESPath
trees included.

Used for what is decided at load time: names an expression or template reads that are not defined
where it is are reported, headers that read only settings are computed once, named values that
refer to each other in a cycle are refused, and rest's `except_fields` leaves out what the named
tables read (following named values).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import ir
from .problems import ProblemList

if TYPE_CHECKING:
    from .expressions import Expression
    from .lower import Known
    from .yaml_loader import ScalarPlace


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


def report_unknown_names(paths: Iterable[tuple[str, ...]], text: str, place: ScalarPlace, field_path: str,
                         known: Known, problems: ProblemList) -> None:
    """The settings, named values, `item`/`index` (outside for_each or each) and `response` (outside
    a step of `then`) that an expression's or template's text reads (`paths`) but are not defined
    where it is written, each at the FILE:LINE:COL of its first mention in the text."""
    for path in paths:
        root = path[0]
        offset = text.find(".".join(path[:2]))
        if offset < 0:  # (`vars['name']` in a template)
            offset = max(text.find(path[-1]), 0)
        if root == "settings" and len(path) > 1 and path[1] not in known.settings:
            names = ", ".join(sorted(known.settings)) or "none"
            message = f"unknown setting '{path[1]}' (declared settings: {names})"
        elif root == "vars" and len(path) > 1 and path[1] not in known.values:
            names = ", ".join(sorted(known.values)) or "none"
            message = f"unknown named value '{path[1]}' (defined values: {names})"
        elif root in ("item", "index") and root not in known.item_names:
            message = f"'{root}' is only defined inside for_each or each"
        elif root == "response" and root not in known.item_names:
            message = "'response' is only defined in a step of `then` (the previous request's answer)"
        else:
            continue
        problems.add(place.offset_position(text, offset), f"{field_path}: {message}")


def root_path(node: ir.Node) -> tuple[str, ...] | None:
    """The keys a JMESPath path reads from the value it is computed on (`a.b[0].c`: a, b, c), or None."""
    if isinstance(node, ir.JmesField):
        return (node.name,)
    if isinstance(node, ir.JmesIndex):
        return root_path(node.value)
    if not isinstance(node, ir.JmesSubexpression):
        return None
    path: list[str] = []
    for step in node.steps:
        part = root_path(step)
        if part is None:
            break
        path.extend(part)
    return tuple(path) if path else None


def children(node: ir.Node) -> Iterator[ir.Node]:
    """The nodes a node holds (in fields, tuples, and an object's (key, node) pairs), in order;
    not what it refers to (a table's fields, named values)."""
    for name in node.__dataclass_fields__:
        value = getattr(node, name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], ir.Node):
                item = item[1]
            if isinstance(item, ir.Node):
                yield item


class ReadsOf:
    """The visitor: `ReadsOf().visit(node)`; a node without its own `visit_` method reads what its
    children read."""

    def visit(self, node: ir.Node | None) -> Reads:
        if node is None:
            return Reads()
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is not None:
            found: Reads = method(node)
            return found
        return self.visit_children(node)

    def visit_children(self, node: ir.Node) -> Reads:
        out = Reads()
        for child in children(node):
            out.add(self.visit(child))
        return out

    def visit_Select(self, node: ir.Select | ir.Presence) -> Reads:
        return expression_reads(node.expressions)

    visit_Presence = visit_Select

    # A JMESPath tree reads root paths (vars.NAME among them: expression_reads tells named values apart).
    def visit_JmesField(self, node: ir.JmesField | ir.JmesSubexpression | ir.JmesIndex) -> Reads:
        path = root_path(node)
        if path is not None:
            return Reads({path})
        return self.visit_children(node)

    visit_JmesSubexpression = visit_JmesIndex = visit_JmesField

    def visit_JmesProjection(self, node: ir.JmesProjection) -> Reads:
        return self.visit(node.base)  # (the rest reads each element, not the root)

    def visit_JmesPipe(self, node: ir.JmesPipe) -> Reads:
        return self.visit(node.left)

    def visit_Condition(self, node: ir.Condition | ir.Rest) -> Reads:
        return expression_reads([node.expression])

    visit_Rest = visit_Condition

    def visit_Template(self, node: ir.Template) -> Reads:
        # (a template reading `vars` at all counts as reading the event)
        template = node.template
        return Reads({(root,) for root in template.roots},
                     {path[1] for path in template.reads if path[0] == "vars" and len(path) > 1})

    def visit_TableFields(self, node: ir.TableFields) -> Reads:
        return self.visit(node.table.lowered)

    def visit_Each(self, node: ir.Each) -> Reads:
        inner = self.visit(node.value)
        inner.add(self.visit(node.where))
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
    if isinstance(node, (ir.Object, ir.Merge, ir.Rest)):
        return not node.omit_empty
    return False


def table_cycle(table: Any) -> list[str] | None:
    """The names of a cycle of fields tables that build each other from `table` (a table that holds
    itself, through others), or None."""
    def walk(node: ir.Node | None, trail: list[str]) -> list[str] | None:
        if isinstance(node, ir.TableFields):
            if node.table.name in trail:
                return trail[trail.index(node.table.name):] + [node.table.name]
            return walk(node.table.lowered, trail + [node.table.name])
        for child in () if node is None else children(node):
            found = walk(child, trail)
            if found is not None:
                return found
        return None

    return walk(table.lowered, [table.name])
