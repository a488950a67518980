"""The delivery documentation's commands work as written: the fake in one process, send in another,
and `send --fake`; the outbox commands it lists exist; its YAML excerpt uses the real format."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.delivery.config import DELIVERY_SCHEMA

ROOT = Path(__file__).resolve().parent.parent


def documentation() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


DOC = documentation()
SH = [block.strip() for block in re.findall(r"```sh\n(.*?)```", DOC, re.DOTALL)]


def command(line: str, port: int, state: Path) -> list[str]:
    words = shlex.split(line.replace("8765", str(port)))
    assert words[0] == "segment-klaviyo"
    return [sys.executable, "-m", "engine", *[str(state) if w == "state/" else w for w in words[1:]]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_two_terminal_commands_work_as_written(tmp_path: Path) -> None:
    fake_line = next(b for b in SH if b.startswith("segment-klaviyo fake-klaviyo"))
    send_line = next(b for b in SH if b.startswith("segment-klaviyo send") and "--base-url" in b)
    assert fake_line == "segment-klaviyo fake-klaviyo --port 8765"
    assert send_line == ("segment-klaviyo send examples/events.ndjson --settings examples/settings.yaml "
                         "--base-url http://127.0.0.1:8765 --state state/")
    port = free_port()
    fake = subprocess.Popen(command(fake_line, port, tmp_path), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert fake.stderr is not None
        assert "listening on" in fake.stderr.readline()
        sent = subprocess.run(command(send_line, port, tmp_path / "state"), cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        after_send = DOC[DOC.index(send_line):]  # the output shown right after the send command
        documented = re.search(r"```text\n(.*?)```", after_send, re.DOTALL)
        assert documented is not None
        expected = documented.group(1).strip().splitlines()
        got = sent.stderr.strip().splitlines()
        assert got[:-1] == expected[:-1]
        assert re.sub(r"\d+\.\ds$", "", got[-1]) == re.sub(r"\d+\.\ds$", "", expected[-1])
        for line in SH:
            if line.startswith("segment-klaviyo outbox"):
                for each in line.splitlines():
                    words = command(each.split("#")[0].strip(), port, tmp_path / "state")
                    result = subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=60,
                                            env={**os.environ, "KLAVIYO_BASE_URL": f"http://127.0.0.1:{port}"})
                    assert result.returncode == 0, (each, result.stderr)
    finally:
        fake.terminate()
        fake.wait(timeout=10)


def test_send_fake_works_as_written(tmp_path: Path) -> None:
    line = next(b for b in SH if b.startswith("segment-klaviyo send") and b.endswith("--fake"))
    result = subprocess.run(command(line, 0, tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('"status": 20') == len(result.stdout.splitlines()) == 3


@pytest.mark.parametrize("block", [b for b in re.findall(r"```yaml\n(.*?)```", DOC, re.DOTALL) if "batching:" in b])
def test_the_yaml_excerpt_uses_the_real_format(block: str) -> None:
    excerpt = yaml.safe_load(block)
    assert set(excerpt) <= set(DELIVERY_SCHEMA)
    real = yaml.safe_load((ROOT / "mappings" / "klaviyo" / "delivery.yaml").read_text(encoding="utf-8"))
    assert excerpt["batching"]["events"]["envelope"] == real["batching"]["events"]["envelope"]
    assert excerpt["retry"] == real["retry"]
    for name, endpoint in excerpt["endpoints"].items():
        assert endpoint == real["endpoints"][name]
