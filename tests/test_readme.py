"""README.md's examples are tests: the language examples, the library example and the error listing."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from language_harness import assert_outcome, evaluate

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.DOTALL)


def _examples() -> list[dict[str, Any]]:
    examples = []
    for kind, text in BLOCKS:
        if kind == "yaml":
            data = yaml.safe_load(text)
            if isinstance(data, dict) and "value" in data and "event" in data:
                examples.append(data)
    return examples


EXAMPLES = _examples()


def test_readme_has_language_examples() -> None:
    assert len(EXAMPLES) >= 15


@pytest.mark.parametrize("example", EXAMPLES, ids=[str(i) for i in range(len(EXAMPLES))])
def test_language_example(example: dict[str, Any], tmp_path: Path) -> None:
    result = evaluate(example["value"], example["event"], example.get("settings"), tmp_path / "set")
    assert_outcome(result, example, result_key="result", absent_key="result_absent", error_key="error")


def test_library_example_prints_what_the_readme_says() -> None:
    python = next(text for kind, text in BLOCKS if kind == "python" and "engine.Mapper" in text)
    following = README[README.index(python) + len(python):]
    expected = re.search(r"```text\n(.*?)```", following, re.DOTALL)
    assert expected is not None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(python, "README.md", "exec"), {})
    assert out.getvalue() == expected.group(1)


def test_error_listing_is_what_validate_prints() -> None:
    listing = next(text for kind, text in BLOCKS if kind == "text" and "five-mistakes" in text)
    run = subprocess.run([sys.executable, "-m", "engine", "validate", "tests/fixtures/five-mistakes"],
                         cwd=ROOT, capture_output=True, text=True)
    assert listing.splitlines() == run.stdout.splitlines()[:-1]


def test_readme_starts_with_the_two_commands() -> None:
    commands = [text.strip() for kind, text in BLOCKS[:2]]
    assert commands[0].startswith("python3 -m venv .venv && .venv/bin/pip install -e '.[test]'")
    assert commands[1] == ".venv/bin/python -m pytest"
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert commands[0] in ci_lines and commands[1] in ci_lines
