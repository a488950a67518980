"""The bundled sets' cases (mappings/<set>/tests/*.yaml), read by engine.case_runner: the runner
`segment-klaviyo test` uses, so the project's pytest and an author's command agree."""

from __future__ import annotations

from conftest import PROJECT_ROOT

from engine.case_runner import Case, case_files, read_case

MAPPINGS = PROJECT_ROOT / "mappings"
BUNDLED_SETS = ("klaviyo", "klaviyo-classic")


def load_cases(set_name: str | None = None) -> list[Case]:
    return [read_case(path) for name in ([set_name] if set_name else BUNDLED_SETS)
            for path in case_files(MAPPINGS / name)]


def case_id(case: Case) -> str:
    return f"{case.path.parent.parent.name}/{case.name}"
