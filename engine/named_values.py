"""Named values (`values:`, read as `vars.NAME`) in generated code: each one's code written once per
Mapper, and computed at most once per event.

A level of named values is the set's `values`, a group rule's, or a rule's own; each level has a
`Vars` (evaluate.Vars) per event (per item, for a fan-out rule's own level) that remembers what was
computed. Each named value of a level is one generated function `(scope, vars) -> value` (None when
absent) that computes it in the level's scope and remembers it in the level's Vars: generated code
calls it on the first read, and `Vars.__missing__` calls it for any other reader (a message, a
header). Inside a generated function, the first read of a name puts it in a local (`var_NAME`);
later reads in the same function test that local, and nothing more.

Why: a named value's code written at every read made a rule's function long (the same select four
times) and tested its Vars at each read; a call per computed value per event costs less than that.
A named value is still computed only when something reads it (a value read under a false condition
is never computed, so neither are its errors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import ir
from .codegen import Source
from .runtime import ABSENT, UNSET

if TYPE_CHECKING:  # (generate imports this module)
    from .generate import MapperCode

# A level's named values, the variable holding its Vars, the variable holding its scope.
Level = tuple[dict[str, ir.Node], str, str]


def emit_levels(source: Source, chain: tuple[dict[str, ir.Node], ...], inner_scope: str) -> list[Level]:
    """The levels of `chain` (outermost first) as a generated function reaches them: the innermost
    level's Vars is held by `V<its number>` and its scope by `inner_scope`; each outer level's Vars
    is its inner level's parent, read into `V<number>` and `S<number>` by the lines written here."""
    inner = len(chain) - 1
    for number in range(inner - 1, -1, -1):
        source.emit(1, f"V{number} = V{number + 1}._parent")
        source.emit(1, f"S{number} = V{number}._scope")
    return [(chain[number], f"V{number}", f"S{number}") for number in range(inner)] + [
        (chain[inner], f"V{inner}", inner_scope)]


class NamedReads:
    """Reads of named values in one generated function (Source.named).

    The first read of a name in the function puts it in a local: from the level's Vars when an
    earlier reader computed it, else by calling its function. The locals start UNSET where the
    level's Vars is made (`start`); `finish` writes those lines."""

    def __init__(self, source: Source, levels: list[Level], functions: MapperCode, indent: int = 1):
        self.source = source
        self.levels: list[Level] = []
        self.functions = functions
        self._locals: dict[tuple[int, str], str] = {}  # (level number, name) -> local
        self._starts: list[tuple[int, int, list[str]]] = []  # (line, indent, locals it sets UNSET)
        self._start_of_level: list[int] = []  # level number -> its entry in _starts
        self.read_levels: set[int] = set()
        self._last_read: dict[str, tuple[int, int]] = {}  # local -> (line, indent) of its last test
        source.namespace.update(ABSENT=ABSENT, UNSET=UNSET)
        source.named = self
        self.start(levels, indent)

    def start(self, levels: list[Level], indent: int) -> None:
        """Add levels whose Vars the function has from here on (at `indent`)."""
        source = self.source
        self._starts.append((len(source.lines), indent, []))
        source.emit(indent, "pass")  # (replaced by finish)
        for level in levels:
            self.levels.append(level)
            self._start_of_level.append(len(self._starts) - 1)

    def __call__(self, name: str, indent: int) -> str:
        source = self.source
        source.named_reads += 1
        for number in range(len(self.levels) - 1, -1, -1):
            if name in self.levels[number][0]:
                break
        else:  # not defined at these levels (an outer rule's, or unknown): as Vars would
            out = source.temp()
            source.emit(indent, f"{out} = {self.levels[-1][1]}[{name!r}]")
            return out
        self.read_levels.add(number)
        _, vars_name, scope_name = self.levels[number]
        local = self._locals.get((number, name))
        if local is None:
            local = f"var{number or ''}_{name}" if name.isidentifier() else f"var{number}_{len(self._locals)}"
            self._locals[(number, name)] = local
            self._starts[self._start_of_level[number]][2].append(local)
        last = self._last_read.get(local)
        if last is not None and _runs_before(source.lines, *last, indent):
            return local  # set on every way here: no test
        function = self.functions.function(tuple(level[0] for level in self.levels[: number + 1]), name)
        self._last_read[local] = (len(source.lines), indent)
        source.emit(indent, f"if {local} is UNSET:")
        source.emit(indent + 1, f"{local} = {vars_name}[{name!r}] if {name!r} in {vars_name} else "
                                f"{source.bind(function)}({scope_name}, {vars_name})")
        return local

    def finish(self) -> None:
        """Write the lines that set the locals UNSET (drop those with none to set)."""
        for line, indent, names in reversed(self._starts):
            if names:
                self.source.lines[line] = "    " * indent + " = ".join(names) + " = UNSET"
            else:
                self.source.drop(line, line + 1)


def _indent_of(line: str) -> int:
    return (len(line) - len(line.lstrip(" "))) // 4


def _runs_before(lines: list[str], start: int, indent: int, here: int) -> bool:
    """Whether the line `start` (at `indent`) ran on every way to a new line at indent `here`: no
    line since left its block, but for a handler of one `raise` after the `try` block it was
    directly in (what generated code does with an error, to name its field)."""
    if here < indent:
        return False
    number = start + 1
    while number < len(lines):
        level = _indent_of(lines[number])
        if level < indent:
            if level != indent - 1 or not lines[number].lstrip().startswith("except "):
                return False
            handler = lines[number + 1: number + 3]  # one line, that raises
            if len(handler) < 1 or _indent_of(handler[0]) != indent or not handler[0].lstrip().startswith("raise ") \
                    or (len(handler) == 2 and _indent_of(handler[1]) > level):
                return False
            indent, number = level, number + 2
            if here < indent:
                return False
            continue
        number += 1
    return True
