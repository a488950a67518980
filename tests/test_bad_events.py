"""Bad input events (tests/data/bad_events.yaml): each rejected alone with its index and reason, the
others mapped — by `map` and by `send`, which must agree — never a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PROJECT_ROOT, TEST_DATA

TABLE = yaml.safe_load((TEST_DATA / "bad_events.yaml").read_text(encoding="utf-8"))
CASES = TABLE["cases"]
SETTINGS = PROJECT_ROOT / "examples" / "settings.yaml"


def case_input(case: dict[str, Any]) -> bytes:
    text = case["input"].replace("{GOOD}", TABLE["good"])
    text = text.replace("{DEEP}", "[" * case.get("deep", 0) + "]" * case.get("deep", 0))
    text = text.replace("{DIGITS}", "7" * case.get("digits", 0))
    return text.encode("latin-1") if case.get("latin1") else text.encode("utf-8")


def cli(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "engine", *args], input=data, cwd=PROJECT_ROOT,
                          capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_map(case: dict[str, Any]) -> None:
    run = cli("map", "--settings", str(SETTINGS), data=case_input(case))
    stderr = run.stderr.decode("utf-8")
    assert "Traceback" not in stderr
    assert [json.loads(line) for line in stderr.splitlines()] == case["errors"]
    assert [[json.loads(line)["event"], json.loads(line)["rule"]] for line in run.stdout.decode("utf-8").splitlines()] \
        == case["requests"]
    assert run.returncode == (1 if case["errors"] else 0)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_send(case: dict[str, Any], tmp_path: Path) -> None:
    errors = tmp_path / "errors.ndjson"
    run = cli("send", "--settings", str(SETTINGS), "--fake", "--state", str(tmp_path / "state"),
              "--errors", str(errors), "--progress", "never", data=case_input(case))
    stderr = run.stderr.decode("utf-8")
    assert "Traceback" not in stderr
    assert [json.loads(line) for line in errors.read_text(encoding="utf-8").splitlines()] == case["errors"]
    delivered = len({event for event, _ in case["requests"]})
    rejected = len(case["errors"])
    summary = re.search(r"^(\d+) events: (\d+) delivered, (\d+) rejected, 0 skipped, 0 dead-lettered", stderr, re.M)
    assert summary is not None, stderr
    assert [int(n) for n in summary.groups()] == [delivered + rejected, delivered, rejected]
    assert run.returncode == 0  # rejections are not delivery failures (README: send's exit codes)


# -- what a rule builds is strict JSON, or the event is rejected ----------------------------------------
UNSENDABLE_SET = {
    "mapping.yaml": "name: unsendable\nbase_url: https://api.example.test\nsettings: {}\ninclude: [rules.yaml]\n",
    "rules.yaml": (
        "rules:\n"
        "  - name: nan\n"
        "    match: {type: track, event: NaN}\n"
        "    request: {method: POST, path: /x, json: {n: {literal: .nan}}}\n"
        "  - name: surrogate\n"
        "    match: {type: track, event: Surrogate}\n"
        "    request: {method: POST, path: /x, json: {s: \"\\ud800\"}}\n"
        "  - name: odd-skip\n"
        "    match: {type: track, event: Skip}\n"
        "    skip: \"skipped \\ud800\"\n"
        "  - name: fine\n"
        "    match: {type: track}\n"
        "    request: {method: POST, path: /x, json: {ok: true}}\n"
    ),
}
UNSENDABLE_REASONS = [
    "rule 'nan' built a request that cannot be sent: it holds NaN or Infinity, which JSON does not allow",
    "rule 'surrogate' built a request that cannot be sent: it holds a string that is not Unicode text (\\ud800)",
]


@pytest.fixture
def unsendable_set(tmp_path: Path) -> Path:
    folder = tmp_path / "unsendable"
    folder.mkdir()
    for name, text in UNSENDABLE_SET.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_map_rejects_an_event_whose_request_is_not_strict_json(unsendable_set: Path) -> None:
    events = b'{"type":"track","event":"NaN"}\n{"type":"track","event":"Surrogate"}\n{"type":"track","event":"Fine"}\n'
    run = cli("map", "--mappings", str(unsendable_set), data=events)
    assert [json.loads(line) for line in run.stderr.decode().splitlines()] == [
        {"event": 0, "messageId": None, "reason": UNSENDABLE_REASONS[0]},
        {"event": 1, "messageId": None, "reason": UNSENDABLE_REASONS[1]},
    ]
    assert [json.loads(line)["json"] for line in run.stdout.decode().splitlines()] == [{"ok": True}]
    assert run.returncode == 1


def test_the_outbox_records_such_an_event_as_rejected(unsendable_set: Path, tmp_path: Path) -> None:
    from engine.delivery.ingest import Ingester
    from engine.delivery.sealing import Sealer
    from engine.delivery.sqlite_outbox import SQLiteOutbox
    from engine.mapping_set import load_mapping_set

    outbox = SQLiteOutbox(tmp_path / "state")
    try:
        ingester = Ingester(load_mapping_set(unsendable_set), {}, outbox, Sealer({}, "0"))
        events = [{"type": "track", "event": name} for name in ("NaN", "Surrogate", "Skip", "Ok")]
        records = ingester.record_batch("test", events)
        assert [(r.status, r.reason) for r, _ in records] == [
            ("rejected", UNSENDABLE_REASONS[0]), ("rejected", UNSENDABLE_REASONS[1]),
            ("skipped", "skipped \\ud800"),  # stored with an escape: SQLite holds UTF-8 text only
            ("pending", None)]
        assert [e["raw"] for e in outbox.events("rejected")] == [{"type": "track", "event": "NaN"},
                                                                 {"type": "track", "event": "Surrogate"}]
    finally:
        outbox.close()
