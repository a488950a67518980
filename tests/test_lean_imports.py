"""Start-up loads only what a command needs: `import engine`, `map` and `send` (without --fake) never
import the HTTP server, the OpenAPI checker or the database driver; a command's parser built alone
parses and helps exactly as the whole command line's does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli.main import SUBCOMMAND_MODULES, build_parser

ROOT = Path(__file__).resolve().parent.parent

# What only `serve`, `validate`, `test`, `--fake` or a PostgreSQL outbox need.
HEAVY = ("engine.openapi_check", "engine.fake.server", "openapi_schema_validator", "jsonschema", "psycopg",
         "psycopg_pool", "starlette", "uvicorn")

REPORT = """
import json, sys
{run}
loaded = sorted(name for name in sys.modules if name in {heavy!r} or name.split(".")[0] in {heavy!r})
print(json.dumps(loaded))
"""


def loaded_after(run: str, tmp_path: Path) -> list[str]:
    """The heavy modules a fresh interpreter holds after running `run`."""
    script = REPORT.format(run=run, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_import_engine_loads_nothing_heavy(tmp_path: Path) -> None:
    assert loaded_after("import engine", tmp_path) == []


def test_map_loads_nothing_heavy_and_still_maps(tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    events.write_text('{"type": "track", "event": "Signed Up", "userId": "u1", "messageId": "m1"}\n',
                      encoding="utf-8")
    output = tmp_path / "out.ndjson"
    run = (f"from engine.cli.main import main\nimport contextlib\n"
           f"with open({str(output)!r}, 'w') as out, contextlib.redirect_stdout(out):\n"
           f"    code = main(['map', {str(events)!r}, '--set', 'privateKey=pk_test'])\n"
           f"assert code == 0, code")
    assert loaded_after(run, tmp_path) == []
    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [(line["event"], line["rule"], line["method"], line["url"]) for line in lines] == [
        (0, "track/event", "POST", "https://a.klaviyo.com/api/events")]


def test_send_without_fake_loads_neither_the_fake_nor_the_openapi_checker(tmp_path: Path) -> None:
    empty = tmp_path / "empty.ndjson"
    empty.write_text("", encoding="utf-8")
    run = (f"from engine.cli.main import main\n"
           f"code = main(['send', {str(empty)!r}, '--set', 'privateKey=pk_test', '--base-url', "
           f"'http://127.0.0.1:9', '--state', {str(tmp_path / 'state')!r}, '--progress', 'never'])\n"
           f"assert code == 0, code")
    assert loaded_after(run, tmp_path) == []


@pytest.mark.parametrize("command", list(SUBCOMMAND_MODULES))
def test_a_command_parser_built_alone_is_the_whole_ones(command: str) -> None:
    def command_help(parser: object) -> str:
        actions = parser._subparsers._group_actions  # type: ignore[attr-defined]
        return str(actions[0].choices[command].format_help())

    assert command_help(build_parser(command)) == command_help(build_parser())


def test_the_whole_parser_still_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli.main import main

    with pytest.raises(SystemExit):
        main(["--help"])
    shown = capsys.readouterr().out
    assert all(f"    {name}" in shown for name in SUBCOMMAND_MODULES), shown
    names = list(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert names == list(SUBCOMMAND_MODULES)  # every module registers the command it is keyed by
