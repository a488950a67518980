"""Generated Python source, shared by the compile stage: many compiled parts written into one function.

Why: a rule's value tree evaluated node by node costs a Python call per node, per event; written
out as straight-line code in one function it costs none. The code generator (generate.py) and the
rule runners (evaluate.py) write into a `Source`. Only names made here and keys passed
through repr() reach the text; every other value (functions, constants, messages) is bound in the
function's namespace under a generated name.
"""

from __future__ import annotations

import itertools
import linecache
import re
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .problems import Position
from .runtime import is_falsy

# Deeper than this, a part's code is not written inline but called (its own function or closure):
# Python refuses more than 100 indentation levels and 20 nested blocks (for, try), and a deep value
# tree or a long chain of projections in a rule file must not reach either.
MAX_INLINE_INDENT = 12


class Source:
    """The lines of one generated function, and the namespace its names are bound in."""

    def __init__(self, namespace: dict[str, Any] | None = None):
        self.lines: list[str] = []
        # The rule file's place (and field) each line was written for: set by whoever writes a
        # part's code (see generate.CodeGenerator.value), read back when generated code fails (see origin).
        self.place: Origin | None = None
        self.places: list[Origin | None] = []
        self.namespace: dict[str, Any] = dict(namespace or {})
        self._bound: dict[int, str] = {}
        self._count = 0
        # Writes the read of the named value NAME (`vars.NAME`) and returns the local holding it
        # (None when absent); None: read it from the scope's `vars`.
        self.named: Callable[[str, int], str] | None = None
        self.named_reads = 0  # how many reads `named` wrote
        self.known: dict[str, Any] = {}  # bound names whose value is known while generating
        # locals that hold True, False or None, whose JMESPath truthiness is Python's
        self.booleans: set[str] = set()
        self.numbers: set[str] = set()  # names that hold an int or a float (never a bool)
        # map --explain only: the bound name of the dict that `select` code records its source
        # path in (field path -> the expression that supplied it, or None); None: nothing recorded.
        self.field_sources: str | None = None

    def constant(self, value: Any) -> str:
        """A bound name for `value`, known while generating (see falsy)."""
        name = self.bind(value)
        self.known[name] = value
        return name

    def truthy(self, name: str) -> str:
        """Source testing JMESPath truthiness of `name` (the opposite of falsy)."""
        if name in self.known:
            return repr(not is_falsy(self.known[name]))
        if name in self.booleans:
            return name
        return f"not {self.falsy(name)}"

    def falsy(self, name: str) -> str:
        """Source testing JMESPath falsiness of `name` (false, null, "", [], {}; 0 is true):
        `True` or `False` when its value is known, `(not name)` when it is a boolean."""
        if name in self.known:
            return repr(is_falsy(self.known[name]))
        if name in self.booleans:
            return f"(not {name})"
        return f"({name} is None or {name} is False or (not {name} and isinstance({name}, (str, list, dict))))"

    def bind(self, value: Any) -> str:
        """A name for `value` in the namespace (the same object is bound once)."""
        name = self._bound.get(id(value))
        if name is None or self.namespace.get(name) is not value:
            self._count += 1
            name = self._bound[id(value)] = f"k{self._count}"
            self.namespace[name] = value
        return name

    def temp(self) -> str:
        """A fresh local variable name."""
        self._count += 1
        return f"t{self._count}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)
        self.places.append(self.place)

    def drop(self, start: int, end: int | None = None) -> None:
        """Take back the lines written from `start` (to `end`)."""
        del self.lines[start:end]
        del self.places[start:end]

    def _annotated(self, header: str) -> list[tuple[str, Origin | None]]:
        """The function's lines (`def HEADER:` first), each with its place; a comment naming the
        place goes before the lines where it changes."""
        out: list[tuple[str, Origin | None]] = [(f"def {header}:", None)]
        lines, places = (self.lines, self.places) if self.lines else (["    pass"], [None])
        for line, place in zip(lines, places, strict=True):
            if place is not None and place != out[-1][1]:
                indent = line[: len(line) - len(line.lstrip())]
                # (repr: a key from the rule file cannot end the comment with a newline)
                out.append((indent + "# " + repr(f"{place[0]} {place[1]}")[1:-1], place))
            out.append((line, place))
        return out

    def text(self, header: str) -> str:
        """The function's source, with the rule file's place of its lines as comments."""
        return "\n".join(line for line, _ in self._annotated(header))

    def define(self, header: str, label: str = "") -> Callable[..., Any]:
        """Compile the lines under `def NAME(ARGS):` (the header, without `def` and colon); `label`
        names what it was generated from in tracebacks and profiles. The source is registered with
        linecache (tracebacks show its lines) and each line's place is kept for `origin`."""
        name = header.split("(", 1)[0]
        annotated = self._annotated(header)
        text = "\n".join(line for line, _ in annotated)
        filename = f"<generated {name} {label} #{next(_serial)}>" if label else f"<generated {name} #{next(_serial)}>"
        code = compile(text, filename, "exec")
        exec(code, self.namespace)  # noqa: S102 - see module doc
        function: Callable[..., Any] = self.namespace[name]
        _SOURCES[filename] = [place for _, place in annotated]
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        # Forgotten with the function (a Mapper's code lives as long as the Mapper).
        weakref.finalize(function, _forget, filename)
        return function


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LEGEND_WIDTH = 100  # a constant's text is cut after this many characters


def legend(text: str, namespace: dict[str, Any], defined: str) -> str:
    """`where:` and one line per name of `namespace` that `text` uses (in order of first use), but
    `defined` (the function's own name): what it stands for."""
    lines = ["where:"]
    seen = {defined, "__builtins__"}
    for name in _NAME.findall(text):
        if name in seen or name not in namespace:
            continue
        seen.add(name)
        lines.append(f"    {name} = {describe_bound(namespace[name])}")
    return "\n".join(lines) if len(lines) > 1 else ""


def describe_bound(value: Any) -> str:
    """What a name bound in generated code stands for, in a few words."""
    code = getattr(value, "__code__", None)
    if code is not None and code.co_filename.startswith("<generated "):  # (see Source.define)
        return str(code.co_filename[1:].rsplit(" #", 1)[0])
    if isinstance(value, type):
        return f"class {value.__module__}.{value.__qualname__}"
    if callable(value) and hasattr(value, "__qualname__"):
        owner = getattr(value, "__self__", None)
        if owner is not None and not isinstance(owner, type) and getattr(owner, "__module__", "") != "builtins":
            return f"method {type(owner).__qualname__}.{value.__name__}"
        module = getattr(value, "__module__", None) or "builtins"
        return f"function {module}.{value.__qualname__}"
    if isinstance(value, Position):
        return f"place {value}"
    if isinstance(getattr(value, "name", None), str) and isinstance(getattr(value, "position", None), Position):
        return f"{type(value).__name__.lower()} {value.name!r} at {value.position}"  # (a rule)
    if isinstance(value, dict) and value and all(describe_bound(v).startswith("generated ") for v in value.values()):
        return "the generated functions of " + ", ".join(map(str, value))  # (a level's named values)
    if "__repr__" not in {name for cls in type(value).__mro__[:-1] for name in vars(cls)}:  # (an address)
        return f"instance of {type(value).__module__}.{type(value).__qualname__}"
    text = repr(value)
    return text if len(text) <= _LEGEND_WIDTH else text[: _LEGEND_WIDTH - 1] + "…"


Origin = tuple[Position, str]  # a rule file's place and the field there, e.g. (rules.yaml:7:9, "json.email")
_SOURCES: dict[str, list[Origin | None]] = {}  # generated file name -> the place of each of its lines
_serial = itertools.count(1)


def _forget(filename: str) -> None:
    _SOURCES.pop(filename, None)
    linecache.cache.pop(filename, None)


def origin(traceback: TracebackType | None) -> Origin | None:
    """The rule file's place of the innermost generated line a traceback went through, if any."""
    found: Origin | None = None
    while traceback is not None:
        places = _SOURCES.get(traceback.tb_frame.f_code.co_filename)
        if places is not None:
            number = traceback.tb_lineno - 1  # (line 1 is the def)
            if 0 <= number < len(places) and places[number] is not None:
                found = places[number]
        traceback = traceback.tb_next
    return found


