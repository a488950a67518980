"""Merging single requests into bulk calls, as a mapping set's `batching` section declares.

Two shapes, both declared in YAML (see `config.py`):

- **envelope**: each single request contributes one item (the value at `item`, e.g. `data`) to a
  different, bulk endpoint whose body is built from the `envelope` template; with `group_by`, items
  that share a value (e.g. the profile) form one group that carries that value once
  (`$each_group` … `$group` … `$items`).
- **list merge**: each single request carries a list (`item: a.b.list[]`); requests whose bodies are
  equal but for that list are sent as one request with the lists concatenated.

Requests may share a call only when everything outside their items is equal: URL, headers and the
rest of the body (the *partition*). Bodies are built as text from the items' JSON, so a 1,000-item
call costs one string join, and every item's JSON pointer in the call is known, so an error that
names an item (`/data/attributes/…/data/3`) condemns just that item.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..strict_json import compact_text, sorted_text
from .config import GROUP, ITEMS, BatchSpec, Marker

_ITEMS_TOKEN = "@@batch:items@@"
_GROUP_TOKEN = "@@batch:group@@"
_EACH_TOKEN = "@@batch:each-group@@"
_MISSING = object()


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 characters kept (the form bodies are sent in)."""
    return compact_text(value)


def canonical(value: Any) -> str:
    """JSON with sorted keys: equal values give equal text."""
    return sorted_text(value)


def get_path(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:  # (exact types first: bodies decoded from JSON hold plain dicts and lists)
        if type(value) is dict and type(step) is str:
            value = value.get(step, _MISSING)
            if value is _MISSING:
                return _MISSING
        elif isinstance(value, dict) and isinstance(step, str) and step in value:
            value = value[step]
        elif isinstance(value, list) and isinstance(step, int) and -len(value) <= step < len(value):
            value = value[step]
        else:
            return _MISSING
    return value


def set_path(value: dict[str, Any], path: tuple[str, ...], new: Any) -> None:
    node = value
    for step in path[:-1]:
        child = node.get(step)
        if not isinstance(child, dict):
            child = {}
            node[step] = child
        node = child
    node[path[-1]] = new


def pop_path(value: Any, path: tuple[str, ...]) -> Any:
    node = get_path(value, path[:-1])
    if isinstance(node, dict) and path[-1] in node:
        return node.pop(path[-1])
    return _MISSING


def json_pointer(path: tuple[Any, ...]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _find_marker(tree: Any, marker_name: str, path: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    if isinstance(tree, Marker):
        return path if tree.name == marker_name else None
    if isinstance(tree, dict):
        for key, value in tree.items():
            found = _find_marker(value, marker_name, path + (key,))
            if found is not None:
                return found
    if isinstance(tree, list):
        for index, value in enumerate(tree):
            found = _find_marker(value, marker_name, path + (index,))
            if found is not None:
                return found
    return None


def _to_text(tree: Any) -> str:
    def swap(value: Any) -> Any:
        if isinstance(value, Marker):
            return {"items": _ITEMS_TOKEN, "group": _GROUP_TOKEN, "each_group": _EACH_TOKEN}[value.name]
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value
    return dumps(swap(tree))


@dataclass
class Layout:
    """Where the items (and groups) stand in a bulk body, and the body's text around them."""

    outer: str  # the body text; holds the items token, or the groups token
    items_at: tuple[Any, ...]  # path of the item list (inside a group, when grouped)
    groups_at: tuple[Any, ...] | None = None
    group_value_at: tuple[Any, ...] | None = None  # inside a group
    group_text: str | None = None  # one group's text, with the group and items tokens

    # (computed once: every unit placed in a call asks for them)
    @cached_property
    def overhead(self) -> int:
        return len((self.outer.replace(f'"{_ITEMS_TOKEN}"', "[]").replace(f'"{_EACH_TOKEN}"', "[]")).encode())

    @cached_property
    def group_overhead(self) -> int:
        if self.group_text is None:
            return 0
        text = self.group_text.replace(f'"{_ITEMS_TOKEN}"', "[]").replace(f'"{_GROUP_TOKEN}"', "")
        return len(text.encode()) + 1


def envelope_layout(spec: BatchSpec) -> Layout:
    """The layout of an envelope-built bulk body (cached per spec)."""
    cached = spec.layout_cache
    if isinstance(cached, Layout):
        return cached
    tree = spec.envelope
    if spec.group_by is None:
        items_at = _find_marker(tree, "items")
        assert items_at is not None
        layout = Layout(outer=_to_text(tree), items_at=items_at)
    else:
        groups_at = _find_marker(tree, "each_group")
        assert groups_at is not None
        each = get_path(tree, groups_at)
        assert isinstance(each, Marker)
        inner = each.inner
        items_at = _find_marker(inner, "items")
        group_at = _find_marker(inner, "group")
        assert items_at is not None and group_at is not None
        layout = Layout(outer=_to_text(tree), items_at=items_at, groups_at=groups_at,
                        group_value_at=group_at, group_text=_to_text(inner))
    spec.layout_cache = layout
    return layout


def list_layout(spec: BatchSpec, body: Any) -> Layout:
    """The layout of a list-merged body: this request's body with its item list swapped out."""
    frame = copy.copy(body)
    _replace_path(frame, spec.item_path, _ITEMS_TOKEN)  # (what _to_text makes of ITEMS, without a walk)
    return Layout(outer=dumps(frame), items_at=spec.item_path)


def _replace_path(value: dict[str, Any], path: tuple[str, ...], new: Any) -> None:
    """Set `path` to `new`, copying the dicts on the way so the original body is left untouched."""
    node = value
    for step in path[:-1]:
        child = dict(node[step])
        node[step] = child
        node = child
    node[path[-1]] = new


@dataclass
class Prepared:
    """What one single request contributes to a bulk call."""

    partition: str
    items: list[str]  # item JSON texts (one in envelope mode)
    group: str | None  # the group value's canonical JSON (grouped envelopes)
    unique: str | None  # de-duplication key within the call, None when the item has none
    size: int  # bytes the items add to a body
    layout: Layout
    subject: frozenset[str] = frozenset()  # `name=value` of each identifier (one_per_subject only)


def merge_values(earlier: Any, later: Any) -> Any:
    """Two upserts as one: objects merge key by key (recursively), anything else takes the later value."""
    if isinstance(earlier, dict) and isinstance(later, dict):
        merged = dict(earlier)
        for key, value in later.items():
            merged[key] = merge_values(merged[key], value) if key in merged else value
        return merged
    return later


def subject_keys(spec: BatchSpec, body: Any, identifiers: list[str],
                 subjects: list[dict[str, Any]] | None = None) -> frozenset[str]:
    """The identifiers of the subject a single request is about (empty unless one_per_subject);
    `subjects`: the body's, when the caller has them already (`spec.source.subjects(body)`)."""
    if spec.one_per_subject is None:
        return frozenset()
    keys: set[str] = set()
    for subject in spec.source.subjects(body) if subjects is None else subjects:
        keys.update(f"{name}={subject[name]}" for name in identifiers if subject.get(name) not in (None, ""))
    return frozenset(keys)


def prepare(spec: BatchSpec, body: Any, context: str, identifiers: list[str] | None = None,
            subjects: list[dict[str, Any]] | None = None) -> Prepared | None:
    """Split a single request's body into its part of a bulk call; None if it has not the shape.

    `context` is what else must match for two requests to share a call (URL, headers); `subjects`,
    when given, are the body's (`spec.source.subjects(body)`, found already by the caller)."""
    if not isinstance(body, dict):
        return None
    found = get_path(body, spec.item_path)
    if found is _MISSING:
        return None
    if spec.item_is_list:
        if not isinstance(found, list) or not found:
            return None
        layout = list_layout(spec, body)
        texts = [dumps(item) for item in found]
        return Prepared(partition=context + "\n" + layout.outer, items=texts, group=None, unique=None,
                        size=sum(len(t.encode()) + 1 for t in texts), layout=layout)
    item = found
    group_text: str | None = None
    if spec.group_by is not None:
        if not isinstance(item, dict):
            return None
        item = _copy_along(item, spec.group_by)
        group_value = pop_path(item, spec.group_by)
        if group_value is _MISSING or group_value is None:
            return None
        group_text = canonical(group_value)
    unique: str | None = None
    if spec.unique:
        parts = [get_path(item, path) for path in spec.unique]
        if all(p is not _MISSING and p is not None for p in parts):
            unique = "\x1f".join(p if isinstance(p, str) else canonical(p) for p in parts)
    text = dumps(item)
    rest = _without(body, spec.item_path)
    partition = context + "\n" + (canonical(rest) if rest else "")
    return Prepared(partition=partition, items=[text], group=group_text, unique=unique,
                    size=len(text.encode()) + 1, layout=envelope_layout(spec),
                    subject=subject_keys(spec, body, identifiers or [], subjects))


def _copy_along(item: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """A copy of `item` whose dicts along `path` are copies too (so popping leaves the original)."""
    top = dict(item)
    node = top
    for step in path[:-1]:
        child = node.get(step)
        if not isinstance(child, dict):
            break
        child = dict(child)
        node[step] = child
        node = child
    return top


def _without(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    frame = copy.copy(body)
    if len(path) == 1:
        frame.pop(path[0], None)
        return frame
    _replace_path(frame, path, None)
    return frame


@dataclass
class Entry:
    unit: int
    prepared: Prepared


@dataclass
class Rendered:
    """A bulk body, and which unit each item (and each group) of it came from."""

    body: bytes
    item_units: dict[str, int]  # JSON pointer of an item → unit
    group_units: dict[str, list[int]] = field(default_factory=dict)  # JSON pointer of a group → its units
    items_prefix: str = ""  # pointer of the list holding the items (or the groups)
    grouped: bool = False
    items_in_group: str = ""  # pointer of the item list inside a group


class BatchBuilder:
    """Collects single requests of one partition into one bulk call, within the declared caps."""

    def __init__(self, spec: BatchSpec, partition: str, layout: Layout):
        self.spec = spec
        self.partition = partition
        self.layout = layout
        self.entries: list[Entry] = []
        self.duplicates: list[int] = []  # units whose item is already in the call (same group and key)
        self.count = 0
        self.size = layout.overhead
        self._groups: dict[str, int] = {}  # group text → number of entries
        self._unique: dict[str, str | None] = {}  # unique key → group text
        self._subjects: dict[str, Entry] = {}  # subject identifier → the entry about it (one_per_subject)
        self.merged: dict[int, list[int]] = {}  # an entry's unit → later units merged into its item

    def accepts(self, prepared: Prepared) -> str:
        """'add', 'duplicate' (same item already in: ride along, don't send twice), 'merge' (an item
        about the same subject is in: fold this one into it) or 'no'."""
        if prepared.unique is not None and prepared.unique in self._unique:
            return "duplicate" if self._unique[prepared.unique] == prepared.group else "no"
        if prepared.subject and self._subjects:
            about = {id(self._subjects[k]) for k in prepared.subject if k in self._subjects}
            if about:  # never two rows about one subject: merge into the one row, or the next call
                if len(about) > 1 or self.spec.one_per_subject != "merge" \
                        or self.size + prepared.size > self.spec.max_bytes:
                    return "no"
                return "merge"
        count = self.count + len(prepared.items)
        size = self.size + prepared.size
        if prepared.group is not None and prepared.group not in self._groups:
            size += self.layout.group_overhead + len(prepared.group.encode())
        if self.entries and (count > self.spec.max_items or size > self.spec.max_bytes):
            return "no"
        return "add"

    def add(self, unit: int, prepared: Prepared) -> None:
        if prepared.group is not None and prepared.group not in self._groups:
            self.size += self.layout.group_overhead + len(prepared.group.encode())
            self._groups[prepared.group] = 0
        if prepared.group is not None:
            self._groups[prepared.group] += 1
        if prepared.unique is not None:
            self._unique[prepared.unique] = prepared.group
        self.count += len(prepared.items)
        self.size += prepared.size
        entry = Entry(unit, prepared)
        self.entries.append(entry)
        for key in prepared.subject:
            self._subjects[key] = entry

    def add_duplicate(self, unit: int) -> None:
        self.duplicates.append(unit)

    def merge(self, unit: int, prepared: Prepared) -> None:
        """Fold a later request about a subject into the item already in the call (later values win)."""
        entry = next(self._subjects[k] for k in prepared.subject if k in self._subjects)
        text = dumps(merge_values(json.loads(entry.prepared.items[0]), json.loads(prepared.items[0])))
        size = len(text.encode()) + 1
        self.size += size - entry.prepared.size
        entry.prepared = Prepared(partition=entry.prepared.partition, items=[text], group=None, unique=None,
                                  size=size, layout=entry.prepared.layout,
                                  subject=entry.prepared.subject | prepared.subject)
        for key in prepared.subject:
            self._subjects[key] = entry
        self.merged.setdefault(entry.unit, []).append(unit)

    @property
    def full(self) -> bool:
        return self.count >= self.spec.max_items or self.size >= self.spec.max_bytes

    def remove(self, units: set[int]) -> None:
        """Drop units (after an error named them); the caps bookkeeping is rebuilt."""
        kept = [e for e in self.entries if e.unit not in units]
        self.entries, self.count, self.size = [], 0, self.layout.overhead
        self._groups, self._unique, self._subjects = {}, {}, {}
        self.merged = {u: m for u, m in self.merged.items() if u not in units}
        for entry in kept:
            self.add(entry.unit, entry.prepared)

    def render(self) -> Rendered:
        """The bulk body: items in unit order; groups in order of their first item."""
        entries = sorted(self.entries, key=lambda e: e.unit)
        layout = self.layout
        item_units: dict[str, int] = {}
        if layout.groups_at is None:
            prefix = json_pointer(layout.items_at)
            texts: list[str] = []
            for entry in entries:
                for text in entry.prepared.items:
                    item_units[f"{prefix}/{len(texts)}"] = entry.unit
                    texts.append(text)
            body = layout.outer.replace(f'"{_ITEMS_TOKEN}"', "[" + ",".join(texts) + "]", 1)
            return Rendered(body.encode(), item_units, items_prefix=prefix)
        groups: dict[str, list[Entry]] = {}
        for entry in entries:
            assert entry.prepared.group is not None
            groups.setdefault(entry.prepared.group, []).append(entry)
        prefix = json_pointer(layout.groups_at)
        inner = json_pointer(layout.items_at)
        assert layout.group_text is not None
        group_texts: list[str] = []
        group_units: dict[str, list[int]] = {}
        for index, (group, members) in enumerate(groups.items()):
            group_pointer = f"{prefix}/{index}"
            group_units[group_pointer] = [m.unit for m in members]
            texts = []
            for member in members:
                for text in member.prepared.items:
                    item_units[f"{group_pointer}{inner}/{len(texts)}"] = member.unit
                    texts.append(text)
            group_texts.append(layout.group_text.replace(f'"{_GROUP_TOKEN}"', group, 1)
                               .replace(f'"{_ITEMS_TOKEN}"', "[" + ",".join(texts) + "]", 1))
        body = layout.outer.replace(f'"{_EACH_TOKEN}"', "[" + ",".join(group_texts) + "]", 1)
        return Rendered(body.encode(), item_units, group_units, items_prefix=prefix, grouped=True,
                        items_in_group=inner)


def units_named(rendered: Rendered, pointers: list[str]) -> tuple[set[int], bool]:
    """The units that error pointers name, and whether every pointer named some item or group."""
    named: set[int] = set()
    all_named = bool(pointers)
    for pointer in pointers:
        if not isinstance(pointer, str) or not pointer.startswith(rendered.items_prefix + "/"):
            all_named = False
            continue
        rest = pointer[len(rendered.items_prefix) + 1:]
        index, _, below = rest.partition("/")
        if not index.isdigit():
            all_named = False
            continue
        head = f"{rendered.items_prefix}/{index}"
        if not rendered.grouped:
            unit = rendered.item_units.get(head)
            if unit is None:
                all_named = False
            else:
                named.add(unit)
            continue
        members = rendered.group_units.get(head)
        if members is None:
            all_named = False
            continue
        below = "/" + below if below else ""
        if below.startswith(rendered.items_in_group + "/"):
            item_index = below[len(rendered.items_in_group) + 1:].partition("/")[0]
            unit = rendered.item_units.get(f"{head}{rendered.items_in_group}/{item_index}")
            if unit is not None:
                named.add(unit)
                continue
        named.update(members)  # an error about the group (its profile): every item of the group
    return named, all_named


# -- the other way: a received bulk body back into single requests (the fake server) -------------------
@dataclass
class SplitItem:
    pointer: str
    single: Any  # the single request body this item stands for
    group_pointer: str | None = None


def split(spec: BatchSpec, body: Any) -> list[SplitItem]:
    """The single requests a bulk body carries (raises ValueError when it has not the shape)."""
    if spec.envelope is None:
        items = get_path(body, spec.item_path)
        if not isinstance(items, list):
            raise ValueError(f"no list at {json_pointer(spec.item_path)}")
        prefix = json_pointer(spec.item_path)
        result = []
        for index, item in enumerate(items):
            single = copy.copy(body)
            _replace_path(single, spec.item_path, [item])
            result.append(SplitItem(f"{prefix}/{index}", single))
        return result
    layout = envelope_layout(spec)
    if layout.groups_at is None:
        items = get_path(body, layout.items_at)
        if not isinstance(items, list):
            raise ValueError(f"no list at {json_pointer(layout.items_at)}")
        prefix = json_pointer(layout.items_at)
        return [SplitItem(f"{prefix}/{i}", _single(spec, item, None)) for i, item in enumerate(items)]
    groups = get_path(body, layout.groups_at)
    if not isinstance(groups, list):
        raise ValueError(f"no list at {json_pointer(layout.groups_at)}")
    assert layout.group_value_at is not None
    prefix = json_pointer(layout.groups_at)
    result = []
    for g, group in enumerate(groups):
        value = get_path(group, layout.group_value_at)
        items = get_path(group, layout.items_at)
        if value is _MISSING or not isinstance(items, list):
            raise ValueError(f"group {prefix}/{g} has not the envelope's shape")
        for i, item in enumerate(items):
            pointer = f"{prefix}/{g}{json_pointer(layout.items_at)}/{i}"
            result.append(SplitItem(pointer, _single(spec, item, value), f"{prefix}/{g}"))
    return result


def single_request(spec: BatchSpec, item: Any) -> Any:
    """The single request body an (ungrouped) item of a bulk call stands for."""
    return _single(spec, item, None)


def _single(spec: BatchSpec, item: Any, group: Any) -> Any:
    if spec.group_by is not None and isinstance(item, dict):
        item = _copy_along(item, spec.group_by)
        set_path(item, spec.group_by, group)
    single: dict[str, Any] = {}
    set_path(single, spec.item_path, item)
    return single


def marker_tree_items(tree: Any) -> Any:
    """For tests and docs: the envelope with its placeholders shown as `$items`, `$group`."""
    if isinstance(tree, Marker):
        if tree.name == "each_group":
            return {"$each_group": marker_tree_items(tree.inner)}
        return f"${tree.name}"
    if isinstance(tree, dict):
        return {k: marker_tree_items(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [marker_tree_items(v) for v in tree]
    return tree


__all__ = ["GROUP", "ITEMS", "BatchBuilder", "Prepared", "Rendered", "SplitItem", "canonical", "dumps",
           "prepare", "split", "units_named"]
