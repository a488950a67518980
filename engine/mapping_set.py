"""Loading a mapping set: a folder of YAML files, read (load), checked (validate) and compiled.

A mapping set is a folder with `mapping.yaml` (name, base URL, revision, settings schema, default
headers, and the ordered `include` list of rule files) and the rule files it includes. Each rule file
may hold `values` (named values), `tables` and `rules`. Every problem in every file is collected and
raised together as one MappingSetError; an invalid set is never returned.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cerberus

from . import ir
from .analyse import reads, table_cycle
from .limits import MAX_FILE_BYTES, MAX_SET_BYTES
from .lower import Known, Lowerer, TableDef, normalize_lookup_key
from .problems import MappingSetError, Position, ProblemList, SettingsError
from .schema import RULE_FILE_SCHEMA, SET_FILE_SCHEMA, check_rules, check_shape
from .yaml_loader import PosDict, YamlError, load_yaml, plain_value

SET_FILE = "mapping.yaml"
DEFAULT_SET = "klaviyo"
PROGRAM = f"segment-{DEFAULT_SET}"  # the command is named after its default mapping set

# A compiler of one of a set's sections beside the rules (the delivery layer's `delivery`): it adds
# every problem of the section to the list and returns the section compiled (None on problems).
# Arguments: the section, the set's folder, the file shown in problems, the problems, the set's name.
SectionCompiler = Callable[[PosDict, Path, str, ProblemList, str], object]
# The layers above the rules register their sections' compilers here (engine/__init__ imports them),
# so this module depends on none of them and each section is compiled once, at load.
SECTION_COMPILERS: dict[str, SectionCompiler] = {}


def register_section_compiler(section: str, compiler: SectionCompiler) -> None:
    SECTION_COMPILERS[section] = compiler


@dataclass
class SettingSpec:
    name: str
    type: str
    default: Any = None
    has_default: bool = False
    secret: bool = False
    required: bool = False
    required_to_send: bool = False
    description: str = ""


@dataclass
class MappingSet:
    """A loaded, validated and compiled mapping set; immutable once built."""

    name: str
    folder: Path
    title: str
    base_url: str
    revision: str | None
    settings: dict[str, SettingSpec]
    rules: list[ir.Rule]
    values: dict[str, ir.Node]
    default_headers: ir.Node | None
    delivery: dict[str, Any]
    compatibility_only: str | None
    # The delivery section as loaded (with YAML positions, for the delivery layer's own checks).
    delivery_source: PosDict | None = None
    delivery_file: str = ""
    files: list[str] = field(default_factory=list)
    _settings_schema: dict[str, Any] = field(default_factory=dict)
    # Sections compiled by their layers' SectionCompilers, by section name (filled at load, or on
    # first use by the layer for a set built in code).
    compiled_sections: dict[str, object] = field(default_factory=dict)

    @property
    def secret_settings(self) -> list[str]:
        return [name for name, spec in self.settings.items() if spec.secret]

    def resolve_settings(self, given: dict[str, Any]) -> dict[str, Any]:
        """Validate destination settings against the set's schema and fill in defaults."""
        if not isinstance(given, dict):
            raise SettingsError(["settings must be an object of key: value pairs"])
        validator = cerberus.Validator(self._settings_schema, allow_unknown=False)
        messages = []
        if not validator.validate(given):
            for key, errors in sorted(validator.errors.items()):
                for error in errors:
                    text = error if isinstance(error, str) else str(error)
                    if text == "unknown field":
                        known = ", ".join(sorted(self.settings))
                        text = f"unknown setting (this mapping set's settings: {known})"
                    messages.append(f"setting '{key}': {text}")
        for name in self.secret_settings:
            value = given.get(name)
            problem = secret_problem(value) if isinstance(value, str) else None
            if problem:
                messages.append(f"setting '{name}': {problem}")
            if value not in (None, ""):  # a secret is never shown, not even in a message about it
                messages = [m.replace(str(value), "***") for m in messages]
        if messages:
            raise SettingsError(messages)
        return dict(validator.document)

    def default_settings(self) -> dict[str, Any]:
        """The settings as declared, defaults filled in and nothing given (unchecked: a required
        setting is left out); what `validate` compiles the rules for."""
        return {name: spec.default for name, spec in self.settings.items() if spec.has_default}

    def missing_to_send(self, settings: dict[str, Any]) -> list[str]:
        return [n for n, spec in self.settings.items() if spec.required_to_send and settings.get(n) in (None, "")]


def secret_problem(value: str) -> str | None:
    """Why a secret (an API key) cannot be sent in an HTTP header as it is, without showing it; None
    when it can. Keys are printable ASCII: anything else is a copy-and-paste accident."""
    if value != value.strip():
        return "a secret must not start or end with white space (a copy-and-paste accident?)"
    for position, character in enumerate(value, 1):
        if not " " < character < "\x7f":
            what = ("a space" if character == " " else "a control character" if character < " " or character == "\x7f"
                    else "a character that is not ASCII")
            return f"a secret must be printable ASCII without spaces; it has {what} at character {position}"
    return None


def bundled_sets_folder() -> Path:
    """Where the bundled mapping sets are: inside the installed package, or the checkout's mappings/."""
    packaged = Path(str(resources.files("engine"))) / "_bundled_mappings"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "mappings"


def bundled_set_names() -> list[str]:
    folder = bundled_sets_folder()
    return sorted(p.name for p in folder.iterdir() if (p / SET_FILE).is_file()) if folder.is_dir() else []


def resolve_set_folder(name_or_folder: str | os.PathLike[str]) -> Path:
    """A bundled set's name or a folder path."""
    text = str(name_or_folder)
    candidate = Path(text)
    if (candidate / SET_FILE).is_file():
        return candidate
    bundled = bundled_sets_folder() / text
    if os.sep not in text and (bundled / SET_FILE).is_file():
        return bundled
    known = ", ".join(bundled_set_names()) or "none"
    raise FileNotFoundError(f"no mapping set '{text}': not a folder with {SET_FILE}, nor a bundled set ({known})")


class _ReadBudget:
    """Bytes the set's YAML files may still take (MAX_SET_BYTES): loading time grows with them."""

    def __init__(self) -> None:
        self.left = MAX_SET_BYTES


def _read(path: Path, shown: str, problems: ProblemList, budget: _ReadBudget) -> Any:
    try:
        with path.open("rb") as stream:  # (callers have checked it is a regular file, not a FIFO)
            data = stream.read(MAX_FILE_BYTES + 1)  # (never more: the file may be huge)
    except OSError as exc:
        problems.add(Position(shown, 1, 1), f"cannot read: {exc.strerror}")
        return None
    if len(data) > MAX_FILE_BYTES:
        problems.add(Position(shown, 1, 1),
                     f"file is larger than {MAX_FILE_BYTES} bytes; the limit is {MAX_FILE_BYTES}")
        return None
    budget.left -= len(data)
    if budget.left < 0:
        problems.add(Position(shown, 1, 1), f"the set's files are larger than {MAX_SET_BYTES} bytes together; "
                                            f"the limit is {MAX_SET_BYTES}")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        problems.add(Position(shown, data.count(b"\n", 0, exc.start) + 1, exc.start - line_start + 1),
                     f"not UTF-8 text: byte {data[exc.start]:#04x} cannot be decoded")
        return None
    try:
        document, duplicates = load_yaml(text, shown)
    except YamlError as exc:
        problems.add(exc.position, exc.message)
        return None
    for position, message in duplicates:
        problems.add(position, message)
    return document


def _settings_schema(specs: dict[str, SettingSpec], declared: PosDict) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    for name, spec in specs.items():
        entry: dict[str, Any] = {"type": spec.type, "nullable": True}
        raw = declared[name]
        for key in ("allowed", "regex"):
            if key in raw:
                entry[key] = plain_value(raw[key])
        if spec.has_default:
            entry["default"] = spec.default
        if spec.required:
            entry["required"] = True
            entry["nullable"] = bool(raw.get("nullable", False))
        schema[name] = entry
    return schema


def load_mapping_set(name_or_folder: str | os.PathLike[str] = DEFAULT_SET) -> MappingSet:
    """Load, validate and compile a mapping set. Raises MappingSetError listing every problem."""
    folder = resolve_set_folder(name_or_folder)
    problems = ProblemList()

    def shown(path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    set_path = folder / SET_FILE
    budget = _ReadBudget()
    head = _read(set_path, shown(set_path), problems, budget)
    if head is None or not check_shape(head, SET_FILE_SCHEMA, shown(set_path), problems):
        raise MappingSetError(problems.sorted())

    documents: list[tuple[str, PosDict]] = [(shown(set_path), head)]
    good_rules: dict[int, list[PosDict]] = {id(head): check_rules(head, shown(set_path), problems)}
    for i, include in enumerate(head.get("include", [])):
        path = folder / include
        place = head["include"].item_places[i]
        if not path.resolve().is_relative_to(folder.resolve()):
            problems.add(place.position, f"include {include!r} is outside the mapping set's folder")
            continue
        if not path.is_file():
            problems.add(place.position, f"include {include!r}: no such file in {shown(folder)}")
            continue
        document = _read(path, shown(path), problems, budget)
        if document is not None and check_shape(document, RULE_FILE_SCHEMA, shown(path), problems):
            documents.append((shown(path), document))
            good_rules[id(document)] = check_rules(document, shown(path), problems)
    listed = {(folder / inc).resolve() for inc in head.get("include", [])} | {set_path.resolve()}
    delivery: Any = head.get("delivery") or {}
    delivery_file: str | None = None
    if isinstance(delivery, str):
        delivery_path = folder / delivery
        listed.add(delivery_path.resolve())
        delivery_file = shown(delivery_path)
        if not delivery_path.resolve().is_relative_to(folder.resolve()):
            problems.add(head.value_places["delivery"].position,
                         f"delivery {delivery!r} is outside the mapping set's folder")
            delivery, delivery_file = {}, None
        elif not delivery_path.is_file():
            problems.add(head.value_places["delivery"].position, f"delivery {delivery!r}: no such file")
            delivery = {}
        else:
            delivery = _read(delivery_path, delivery_file, problems, budget) or {}
            if not isinstance(delivery, dict):
                problems.add(Position(delivery_file, 1, 1), "the delivery file must hold a mapping")
                delivery = {}
    for stray in sorted(folder.rglob("*.yaml")):
        if stray.resolve() not in listed and "tests" not in stray.relative_to(folder).parts:
            problems.add(Position(shown(stray), 1, 1), f"rule file not listed in {SET_FILE} include, so never used")

    # Settings: the schema is checked here so that rules can refer to settings by name.
    specs: dict[str, SettingSpec] = {}
    declared = head.get("settings", PosDict())
    if not isinstance(declared, PosDict):
        declared = PosDict()
    for name, raw in declared.items():
        spec = SettingSpec(name=name, type=str(raw["type"]), secret=bool(raw.get("secret", False)),
                           required=bool(raw.get("required", False)),
                           required_to_send=bool(raw.get("required_to_send", False)),
                           description=str(raw.get("description", "")))
        if "default" in raw:
            spec.default, spec.has_default = plain_value(raw["default"]), True
        specs[name] = spec
    settings_schema = _settings_schema(specs, declared) if declared else {}
    try:
        cerberus.Validator(settings_schema)
    except cerberus.SchemaError as exc:
        problems.add(declared.position, f"settings schema: {exc}")

    # Names defined anywhere in the set, so references can be checked in any order.
    tables: dict[str, TableDef] = {}
    value_names: set[str] = set()
    for _file, document in documents:
        for table_name, raw in (document.get("tables") or {}).items():
            position = document["tables"].key_positions[table_name]
            if table_name in tables:
                problems.add(position, f"table '{table_name}' is defined twice (also at {tables[table_name].position})")
                continue
            kind = "fields" if "fields" in raw else "lookup" if "lookup" in raw else None
            if kind is None:
                problems.add(position, f"table '{table_name}' needs fields or lookup")
                continue
            table = TableDef(table_name, position, kind, raw[kind], bool(raw.get("ignore_case", False)))
            if "cast" in raw:
                if kind != "fields":
                    problems.add(raw.key_positions["cast"], f"table '{table_name}': cast goes with fields tables")
                table.cast, table.cast_place = str(raw["cast"]), raw.value_places["cast"]
            if kind == "lookup":
                table.lookup = {normalize_lookup_key(k, table.ignore_case): plain_value(v)
                                for k, v in raw[kind].items()}
            tables[table_name] = table
        for value_name in (document.get("values") or {}):
            if value_name in value_names:
                problems.add(document["values"].key_positions[value_name], f"value '{value_name}' is defined twice")
            value_names.add(value_name)

    known = Known(settings=set(specs), values=value_names, tables=tables)
    lowered_values: dict[str, ir.Node] = {}  # (rule-level values join them: what rest's except_fields follow)
    root_compiler = Lowerer(problems, known, shown(set_path), lowered_values)
    named_values: dict[str, ir.Node] = {}
    rules: list[ir.Rule] = []
    for file, document in documents:
        compiler = Lowerer(problems, known, file, lowered_values)
        for table in tables.values():
            if table.kind == "fields" and table.position.file == file:
                table.lowered = compiler.with_items({"item", "index"}).fields_table(table)
        values_node = document.get("values") or PosDict()
        for value_name, entry in values_node.items():
            lowered = compiler.value(entry, values_node.value_places[value_name], f"values.{value_name}")
            named_values[value_name] = lowered_values[value_name] = lowered
    for file, document in documents:
        lowerer = Lowerer(problems, known, file, lowered_values)
        for rule_node in good_rules[id(document)]:
            rules.append(lowerer.rule(rule_node))
        for rule_node in document.get("rules") or []:
            if isinstance(rule_node, PosDict) and all(rule_node is not good for good in good_rules[id(document)]):
                _salvage(rule_node, file, known, problems)
    default_headers = None
    defaults = head.get("defaults")
    if isinstance(defaults, PosDict) and "headers" in defaults:
        default_headers = root_compiler.value(defaults["headers"], defaults.value_places["headers"], "defaults.headers")
    _check_cycles(named_values, problems, documents)
    for table in tables.values():
        cycle = table_cycle(table) if table.lowered is not None else None
        if cycle is not None:
            problems.add(table.position, f"table '{table.name}' holds itself: {' -> '.join(cycle)}")
    _check_rule_names(rules, problems)
    compiled_sections: dict[str, object] = {}
    delivery_compiler = SECTION_COMPILERS.get("delivery")
    if isinstance(delivery, PosDict) and delivery and delivery_compiler is not None:
        compiled_sections["delivery"] = delivery_compiler(delivery, folder, delivery_file or shown(set_path),
                                                          problems, str(head["name"]))

    if problems:
        raise MappingSetError(problems.sorted())
    return MappingSet(
        name=str(head["name"]),
        folder=folder,
        title=str(head.get("title", head["name"])),
        base_url=str(head["base_url"]),
        revision=str(head["revision"]) if "revision" in head else None,
        settings=specs,
        rules=rules,
        values=named_values,
        default_headers=default_headers,
        delivery=plain_value(delivery),
        delivery_source=delivery if isinstance(delivery, PosDict) else None,
        delivery_file=delivery_file or shown(set_path),
        compatibility_only=str(head["compatibility_only"]) if "compatibility_only" in head else None,
        files=[file for file, _ in documents],
        _settings_schema=settings_schema,
        compiled_sections=compiled_sections,
    )


# What compiling a rule of the wrong shape says about its shape again (in other words): left out.
_SHAPE_AGAIN = ("needs exactly one of request, reject, skip or rules", "needs path or url", "must be a name",
                "needs exactly one of check, one_of or present")


def _salvage(rule_node: PosDict, file: str, known: Known, problems: ProblemList) -> None:
    """A rule whose shape is wrong is compiled all the same, to report its expressions' and
    templates' mistakes with its shape's, not after the shape is fixed; what that says about the
    shape again (a missing action, a problem at the place a shape problem names) is left out, and a part whose
    shape stops the compiler just adds nothing."""
    found = ProblemList()
    compiler = Lowerer(found, Known(known.settings, set(known.values), known.tables), file)
    try:
        compiler.rule(rule_node)
    except Exception:  # noqa: BLE001 - the shape is wrong: what was found before this part stands
        pass
    named = {p.position for p in problems.problems}
    for problem in found.problems:
        if problem.position not in named and \
                not any(text in problem.message for text in _SHAPE_AGAIN):
            problems.add(problem.position, problem.message)


def _check_cycles(values: dict[str, ir.Node], problems: ProblemList,
                  documents: list[tuple[str, PosDict]]) -> None:
    positions: dict[str, Position] = {}
    for _, document in documents:
        node = document.get("values") or PosDict()
        for name in node:
            positions[name] = node.key_positions[name]
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2 or name not in values:
            return
        if state.get(name) == 1:
            cycle = " -> ".join(trail[trail.index(name):] + [name])
            problems.add(positions[name], f"named values refer to each other in a cycle: {cycle}")
            return
        state[name] = 1
        for ref in sorted(reads(values[name]).names):
            visit(ref, trail + [name])
        state[name] = 2

    for name in values:
        visit(name, [])


def _check_rule_names(rules: list[ir.Rule], problems: ProblemList) -> None:
    seen: dict[str, Position] = {}

    def walk(rule: ir.Rule) -> None:
        if rule.name in seen:
            problems.add(rule.position, f"rule name '{rule.name}' is used twice (also at {seen[rule.name]})")
        seen[rule.name] = rule.position
        for child in rule.children:
            walk(child)

    for rule in rules:
        walk(rule)
