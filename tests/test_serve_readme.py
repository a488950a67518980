"""The three `serve` commands of the README (start the fake, start serve, send with Segment's client)
run as written: only the executable's path, the ports (any free one) and the state folder change."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
EXECUTABLE = ".venv/bin/segment-klaviyo"


def _documentation() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks() -> tuple[str, str, str]:
    blocks = re.findall(r"```(\w+)\n(.*?)```", _documentation(), re.DOTALL)
    fake = [text for kind, text in blocks if kind == "sh" and f"{EXECUTABLE} fake-klaviyo" in text]
    serve = [text for kind, text in blocks if kind == "sh" and f"{EXECUTABLE} serve " in text]
    client = [text for kind, text in blocks if kind == "python" and "segment.analytics" in text]
    assert len(fake) == len(serve) == len(client) == 1, "the README shows each of the three commands once"
    return fake[0].strip(), serve[0].strip(), client[0]


def _command(text: str, replace: dict[str, str]) -> list[str]:
    words = shlex.split(text)
    assert words[0] == EXECUTABLE
    out = [sys.executable, "-m", "engine"]
    for previous, word in zip(words, words[1:], strict=False):
        out.append(replace.get(previous, word))
    return out


def _listening(process: subprocess.Popen[str], log: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            return found.group(1)
        assert process.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(log.read_text())


def test_readme_serve_commands_work_as_written(tmp_path: Path) -> None:
    fake_text, serve_text, client_text = _blocks()
    processes: list[subprocess.Popen[str]] = []
    try:
        fake_log = tmp_path / "fake.log"
        with open(fake_log, "w") as out:
            fake = subprocess.Popen(_command(fake_text, {"--port": "0"}), cwd=ROOT, stdout=out, stderr=out, text=True)
        processes.append(fake)
        fake_url = _listening(fake, fake_log)

        assert "--base-url http://127.0.0.1:8765" in serve_text and "fake-klaviyo --port 8765" in fake_text
        serve_log = tmp_path / "serve.log"
        with open(serve_log, "w") as out:
            serve = subprocess.Popen(
                _command(serve_text, {"--port": "0", "--base-url": fake_url, "--state": str(tmp_path / "state")}),
                cwd=ROOT, stdout=out, stderr=out, text=True)
        processes.append(serve)
        serve_url = _listening(serve, serve_log)

        assert 'analytics.host = "http://127.0.0.1:8080"' in client_text
        code = client_text.replace("http://127.0.0.1:8080", serve_url)
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr

        deadline = time.monotonic() + 30
        while httpx.get(serve_url + "/health").json()["events"]["delivered"] < 2:
            assert time.monotonic() < deadline, serve_log.read_text()
            time.sleep(0.1)
        received = httpx.get(fake_url + "/_fake/received").json()
        [profile] = received["profiles"].values()
        assert profile["external_id"] == "user-1" and profile["email"] == "ada@example.com"
        assert "subscriptions" in profile
        metrics = sorted(r["key"][1] for r in received["records"]["events"])
        assert metrics == ["Order Completed", "Ordered Product"]
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
    assert processes[-1].returncode == 0  # serve stops cleanly on SIGTERM
