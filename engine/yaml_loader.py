"""Stage 1, load: YAML read safely into plain dicts, lists and strings that remember where they stood.

Rule files are only ever read with PyYAML's SafeLoader (no Python objects can be built from YAML).
Every mapping becomes a `PosDict` and every sequence a `PosList`; they record the position of each key
and each value, so that later stages can point at FILE:LINE:COL, and at the line inside a multi-line
expression.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from .limits import MAX_YAML_ALIASES, MAX_YAML_DEPTH, MAX_YAML_NODES
from .problems import Position


@dataclass(frozen=True)
class ScalarPlace:
    """Where a scalar's text starts, and how it was written (plain, quoted or block)."""

    position: Position
    style: str | None
    block_indent: int = 0  # for block scalars (| and >): the column where their content starts

    def offset_position(self, text: str, offset: int) -> Position:
        """The position of character `offset` of the scalar's value.

        Exact for plain and quoted one-line scalars and for literal blocks (`|`); for folded
        scalars the line is exact to within the folding.
        """
        before = text[:offset]
        newlines = before.count("\n")
        pos = self.position
        if self.style in ("|", ">"):
            # Block content starts on the line after the indicator, at the block's indentation.
            return Position(pos.file, pos.line + 1 + newlines, self.block_indent + len(before.split("\n")[-1]))
        quote = 1 if self.style in ("'", '"') else 0
        if newlines == 0:
            return Position(pos.file, pos.line, pos.column + quote + offset)
        return Position(pos.file, pos.line + newlines, 1 + len(before.split("\n")[-1]))


class PosDict(dict[str, Any]):
    """A dict that knows where it, its keys and its values stand in the file."""

    position: Position
    key_positions: dict[str, Position]
    value_places: dict[str, ScalarPlace]


class PosList(list[Any]):
    position: Position
    item_places: list[ScalarPlace]


def plain_value(value: Any) -> Any:
    """A loaded tree without its position bookkeeping (plain dicts, lists and str), to serialise as JSON."""
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_value(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def _place(file: str, node: yaml.Node) -> ScalarPlace:
    style = node.style if isinstance(node, yaml.ScalarNode) else None
    indent = 0
    if style in ("|", ">") and isinstance(node.start_mark.buffer, str):
        # The line after the indicator's (found from the mark, not by splitting the whole file for
        # each block scalar, which is quadratic in a large file of them).
        buffer = node.start_mark.buffer
        start = buffer.find("\n", node.start_mark.pointer)
        end = buffer.find("\n", start + 1) if start >= 0 else -1
        content = "" if start < 0 else buffer[start + 1:end if end >= 0 else len(buffer)]
        indent = len(content) - len(content.lstrip(" ")) + 1
    return ScalarPlace(_position(file, node.start_mark), style, indent)


def _position(file: str, mark: yaml.Mark) -> Position:
    return Position(file, mark.line + 1, mark.column + 1)


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader composing under limits (engine/limits.py), each hit raised at the node or alias.

    A recursive alias (`&a [*a]`) would make the tree a cycle; an alias bomb (anchors of lists of
    aliases, "billion laughs") is small text that expands exponentially. So the composer counts the
    nodes and the nesting the tree will have once its aliases are expanded, without expanding them.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0
        self.alias_uses = 0
        self.deepest = 0  # the deepest level of the node being composed, aliases expanded
        self.expanded = 0  # nodes so far, aliases counted as the nodes they stand for
        self.open_anchors: list[str] = []  # anchors of the nodes being composed (outermost first)
        self.sizes: dict[int, tuple[int, int]] = {}  # id(anchored node) -> (its nodes, its nesting)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            return self._alias(event, parent, index)
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            raise _LimitHit(event.start_mark, f"YAML nests more than {MAX_YAML_DEPTH} levels deep; "
                                              f"the limit is {MAX_YAML_DEPTH}")
        self._count(1, event.start_mark)
        before, outer_deepest, self.deepest = self.expanded, self.deepest, self.depth
        self.open_anchors.append(event.anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self.open_anchors.pop()
        assert node is not None  # (an event was there: peek_event)
        if event.anchor is not None:
            self.sizes[id(node)] = (self.expanded - before + 1, self.deepest - self.depth + 1)
        self.depth -= 1
        self.deepest = max(outer_deepest, self.deepest)
        return node

    def _alias(self, event: Any, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if event.anchor in self.open_anchors:
            raise _LimitHit(event.start_mark, f"alias *{event.anchor} is used inside its own anchor "
                                              f"&{event.anchor} (a recursive alias)")
        self.alias_uses += 1
        if self.alias_uses > MAX_YAML_ALIASES:
            raise _LimitHit(event.start_mark, f"more than {MAX_YAML_ALIASES} aliases in one file; "
                                              f"the limit is {MAX_YAML_ALIASES}")
        node = super().compose_node(parent, index)  # (an undefined alias: PyYAML's error)
        assert node is not None
        nodes, nesting = self.sizes.get(id(node), (1, 1))
        self._count(nodes, event.start_mark)
        if self.depth + nesting > MAX_YAML_DEPTH:
            raise _LimitHit(event.start_mark, f"alias *{event.anchor} makes YAML nest more than {MAX_YAML_DEPTH} "
                                              f"levels deep; the limit is {MAX_YAML_DEPTH}")
        self.deepest = max(self.deepest, self.depth + nesting)
        return node

    def _count(self, nodes: int, mark: Any) -> None:
        self.expanded += nodes
        if self.expanded > MAX_YAML_NODES:
            raise _LimitHit(mark, f"aliases expand this file to more than {MAX_YAML_NODES} nodes; "
                                  f"the limit is {MAX_YAML_NODES}")


class _LimitHit(Exception):
    def __init__(self, mark: Any, message: str):
        self.mark = mark
        self.message = message


def _build(node: yaml.Node, file: str, loader: yaml.SafeLoader, problems: list[tuple[Position, str]]) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_object(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<) safely
        result = PosDict()
        result.position = _position(file, node.start_mark)
        result.key_positions = {}
        result.value_places = {}
        for key_node, value_node in node.value:
            key = str(_build(key_node, file, loader, problems))
            key_pos = _position(file, key_node.start_mark)
            if key in result:
                problems.append((key_pos, f"duplicate key '{key}' (first at line {result.key_positions[key].line})"))
                continue
            result[key] = _build(value_node, file, loader, problems)
            result.key_positions[key] = key_pos
            result.value_places[key] = _place(file, value_node)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = PosList(_build(child, file, loader, problems) for child in node.value)
        items.position = _position(file, node.start_mark)
        items.item_places = [_place(file, child) for child in node.value]
        return items
    raise TypeError(f"not a YAML node: {node!r}")


class YamlError(Exception):
    def __init__(self, position: Position, message: str):
        self.position = position
        self.message = message
        super().__init__(f"{position}: {message}")


def load_yaml(text: str, file: str) -> tuple[Any, list[tuple[Position, str]]]:
    """Parse one YAML document; returns the positioned tree and any duplicate-key problems.

    Raises YamlError for text that is not YAML, or that passes a limit (engine/limits.py).
    """
    try:
        loader = _LimitedLoader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (a NUL, a control character)
        before = text[:exc.position]
        position = Position(file, before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1)
        raise YamlError(position, f"not valid YAML: character {exc.character:#06x} is not allowed") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        problems: list[tuple[Position, str]] = []
        return _build(node, file, loader, problems), problems
    except _LimitHit as exc:
        raise YamlError(_position(file, exc.mark), exc.message) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = _position(file, mark) if mark else Position(file, 1, 1)
        raise YamlError(position, f"not valid YAML: {exc.problem or exc.context}") from None
    finally:
        loader.dispose()
