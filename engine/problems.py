"""Problems found in a mapping set, each with the place it was found (FILE:LINE:COL)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Position:
    """A place in a rule file: 1-based line and column."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, order=True)
class Problem:
    position: Position
    message: str

    def __str__(self) -> str:
        return f"{self.position}: {self.message}"


@dataclass
class ProblemList:
    """Collects every problem of a load, so that all of them are reported at once."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, position: Position, message: str) -> None:
        self.problems.append(Problem(position, message))

    def __bool__(self) -> bool:
        return bool(self.problems)

    def sorted(self) -> list[Problem]:
        return sorted(set(self.problems))


class MappingSetError(Exception):
    """The mapping set is invalid; `problems` holds every problem found, in file order."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SettingsError(Exception):
    """Destination settings do not fit the mapping set's settings schema."""

    def __init__(self, messages: list[str]):
        self.messages = messages
        super().__init__("; ".join(messages))
