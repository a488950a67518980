"""Secrets in settings: a bad key is a settings error (exit 2) before anything is sent, and no error
message shows a secret's value — not even a YAML error on the line that holds it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT

SECRET = "pk_abcdef123456"
WHITE_SPACE = ("bad settings:\nsetting 'privateKey': a secret must not start or end with white space "
               "(a copy-and-paste accident?)")
EVENT = json.dumps({"type": "track", "userId": "u", "event": "E", "messageId": "m"})


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], input=EVENT, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("settings_text,message", [
    (f"privateKey: {SECRET}: oops\nlistId: L1\n",
     "not valid YAML: mapping values are not allowed here (line 1, column 28)"),
    (f'{{"privateKey": "{SECRET}", "listId": }}',
     "not valid JSON: Expecting value (line 1, column 45)"),
    (f'privateKey: " {SECRET}"\nlistId: L1\n',
     WHITE_SPACE),
    (f'privateKey: "{SECRET}\\n"\nlistId: L1\n',
     WHITE_SPACE),
    (f'privateKey: "pk_\\0{SECRET}"\nlistId: L1\n',
     "bad settings:\nsetting 'privateKey': a secret must be printable ASCII without spaces; it has a control "
     "character at character 4"),
    (f'privateKey: "pk_é{SECRET}"\nlistId: L1\n',
     "bad settings:\nsetting 'privateKey': a secret must be printable ASCII without spaces; it has a character "
     "that is not ASCII at character 4"),
    (f'privateKey: "pk_ {SECRET}"\nlistId: L1\n',
     "bad settings:\nsetting 'privateKey': a secret must be printable ASCII without spaces; it has a space at "
     "character 4"),
    (f"privateKey: [{SECRET}]\nlistId: L1\n",
     "bad settings:\nsetting 'privateKey': must be of string type"),
], ids=["yaml-error", "json-error", "leading-space", "trailing-newline", "nul", "non-ascii", "inner-space", "list"])
@pytest.mark.parametrize("command", ["map", "send"])
def test_bad_secret_settings(tmp_path: Path, command: str, settings_text: str, message: str) -> None:
    settings = tmp_path / ("settings.json" if settings_text.startswith("{") else "settings.yaml")
    settings.write_text(settings_text, encoding="utf-8")
    extra = ["--fake", "--state", str(tmp_path / "state")] if command == "send" else []
    run = cli(command, "--settings", str(settings), *extra)
    assert run.returncode == 2
    assert run.stdout == ""  # nothing mapped, nothing sent
    where = f"--settings {settings}: " if message.startswith("not valid") else ""
    assert run.stderr == f"segment-klaviyo: {where}{message}\n"
    assert SECRET not in run.stderr and "abcdef" not in run.stderr
