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


def _place(file: str, node: yaml.Node) -> ScalarPlace:
    style = node.style if isinstance(node, yaml.ScalarNode) else None
    indent = 0
    if style in ("|", ">") and isinstance(node.start_mark.buffer, str):
        lines = node.start_mark.buffer.split("\n")
        content = lines[node.start_mark.line + 1] if node.start_mark.line + 1 < len(lines) else ""
        indent = len(content) - len(content.lstrip(" ")) + 1
    return ScalarPlace(_position(file, node.start_mark), style, indent)


def _position(file: str, mark: yaml.Mark) -> Position:
    return Position(file, mark.line + 1, mark.column + 1)


class _DuplicateKey(Exception):
    def __init__(self, position: Position, key: str):
        self.position = position
        self.key = key


def _build(node: yaml.Node, file: str, loader: yaml.SafeLoader, problems: list[tuple[Position, str]]) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<) safely
        result = PosDict()
        result.position = _position(file, node.start_mark)
        result.key_positions = {}
        result.value_places = {}
        for key_node, value_node in node.value:
            key = _build(key_node, file, loader, problems)
            if not isinstance(key, str):
                key = str(key)
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
    return loader.construct_object(node, deep=True)


class YamlError(Exception):
    def __init__(self, position: Position, message: str):
        self.position = position
        self.message = message
        super().__init__(f"{position}: {message}")


def load_yaml(text: str, file: str) -> tuple[Any, list[tuple[Position, str]]]:
    """Parse one YAML document; returns the positioned tree and any duplicate-key problems.

    Raises YamlError for text that is not YAML.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        problems: list[tuple[Position, str]] = []
        return _build(node, file, loader, problems), problems
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = _position(file, mark) if mark else Position(file, 1, 1)
        raise YamlError(position, f"not valid YAML: {exc.problem or exc.context}") from None
    finally:
        loader.dispose()
