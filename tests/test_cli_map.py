"""`segment-klaviyo map`: input formats, the output and errors streams, exit codes, secrets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACK = {"type": "track", "userId": "u1", "event": "Clicked", "messageId": "m1", "timestamp": "2026-11-01T12:00:00Z"}
SECRET = "pk_live_SECRET_9f8e7d"


def run_map(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "map", "--set", f"privateKey={SECRET}", *args],
                          cwd=ROOT, input=stdin, capture_output=True, text=True)


def lines(text: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_one_object() -> None:
    run = run_map(json.dumps(TRACK))
    assert run.returncode == 0, run.stderr
    [request] = lines(run.stdout)
    assert request["event"] == 0 and request["rule"] == "track/event" and request["method"] == "POST"
    assert request["url"] == "https://a.klaviyo.com/api/events"
    assert request["headers"]["Authorization"] == "Klaviyo-API-Key ***"
    assert request["json"]["data"]["attributes"]["unique_id"] == "m1"
    assert set(request) == {"event", "rule", "method", "url", "headers", "json"}


def test_array_ndjson_and_batch_envelope_give_the_same_requests() -> None:
    second = dict(TRACK, messageId="m2")
    outputs = [run_map(text).stdout for text in (
        json.dumps([TRACK, second]),
        json.dumps(TRACK) + "\n\n" + json.dumps(second) + "\n",
        json.dumps({"batch": [TRACK, second]}),
        json.dumps({"batch": [TRACK, second]}, indent=2),
    )]
    assert [r["event"] for r in lines(outputs[0])] == [0, 1]
    assert outputs[1] == outputs[0] and outputs[2] == outputs[0] and outputs[3] == outputs[0]


def test_rejections_and_skips_go_to_the_errors_stream_with_exit_1() -> None:
    events = [TRACK, {"type": "track", "event": "x", "messageId": "m9"}, {"type": "screen", "userId": "u"}, "junk"]
    run = run_map("\n".join(json.dumps(e) for e in events))
    assert run.returncode == 1
    assert [r["event"] for r in lines(run.stdout)] == [0]
    assert lines(run.stderr) == [
        {"event": 1, "messageId": "m9",
         "reason": "userId is required if you disable sending anonymous data (rule 'identity/user-id-required')"},
        {"event": 2, "skipped": "screen calls are not sent to Klaviyo"},
        {"event": 3, "messageId": None, "reason": "event is a string, not an object"},
    ]


def test_a_bad_ndjson_line_is_rejected_and_the_rest_is_mapped(tmp_path: Path) -> None:
    errors = tmp_path / "errors.ndjson"
    run = run_map(json.dumps(TRACK) + "\n{not json\n" + json.dumps(dict(TRACK, messageId="m3")) + "\n",
                  "--errors", str(errors))
    assert run.returncode == 1
    assert [r["event"] for r in lines(run.stdout)] == [0, 2]
    [error] = lines(errors.read_text())
    assert error["event"] == 1 and error["reason"].startswith("input line 2: not JSON")


def test_skips_alone_exit_0() -> None:
    assert run_map(json.dumps({"type": "group", "userId": "u"})).returncode == 0


def test_secrets_never_printed_unless_asked() -> None:
    event = {"type": "identify", "userId": "u", "traits": {"email": "a@b.co"}, "timestamp": "2026-11-01T00:00:00Z"}
    masked = run_map(json.dumps(event), "--set", "listId=L1")
    assert SECRET not in masked.stdout + masked.stderr
    shown = run_map(json.dumps(event), "--set", "listId=L1", "--show-secrets")
    assert f"Klaviyo-API-Key {SECRET}" in shown.stdout


def test_settings_file_and_set_overrides(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("useSegmentSpec: true\nsendPageEvents: true\n")
    run = run_map(json.dumps({"type": "page", "userId": "u", "name": "Home", "messageId": "p"}),
                  "--settings", str(settings), "--set", "sendPageEvents=false")
    assert run.returncode == 0 and run.stdout == ""
    assert "sendPageEvents is on" in run.stderr


def test_bad_settings_exit_2_before_reading_events(tmp_path: Path) -> None:
    run = run_map("", "--set", "confirmOptin=maybe", "--set", "listid=L1")
    assert run.returncode == 2
    assert "setting 'confirmOptin': must be of boolean type" in run.stderr
    assert "setting 'listid': unknown setting" in run.stderr


def test_unknown_mapping_set_is_usage_error() -> None:
    run = run_map("", "--mappings", "nope")
    assert run.returncode == 2 and "no mapping set 'nope'" in run.stderr


def test_python_dash_m_and_console_script_agree() -> None:
    via_module = run_map(json.dumps(TRACK)).stdout
    script = Path(sys.executable).parent / "segment-klaviyo"
    if script.exists():
        via_script = subprocess.run([str(script), "map", "--set", f"privateKey={SECRET}"], cwd=ROOT,
                                    input=json.dumps(TRACK), capture_output=True, text=True).stdout
        assert via_script == via_module


def test_example_file_maps() -> None:
    run = subprocess.run([sys.executable, "-m", "engine", "map", "examples/events.ndjson", "--settings",
                          "examples/settings.yaml"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rules = [r["rule"] for r in lines(run.stdout)]
    assert rules == ["identify/profile", "identify/subscribe", "track/event", "order/placed",
                     "order/ordered-product", "order/ordered-product", "track/event"]
    assert "pk_example_not_a_real_key" not in run.stdout
