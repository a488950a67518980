"""The klaviyo-classic set against the 15 conformance vectors of Segment's last public server-side
Klaviyo integration (tests/data/conformance/segment-classic-server.json; read NOTE.md beside it).

Each vector runs through the real CLI, `segment-klaviyo map --mappings klaviyo-classic
--show-secrets`, with its settings in a JSON file. Compared exactly: the number and order of
requests, each method and URL (without the query), the `data` query parameter of a GET decoded from
base64 JSON (deep-equal, key order free, true is not 1), every form field (the `properties` field
parsed as JSON; other values as form encoding writes them: true → "true"), and rejections (the
reason on the errors stream, no request on the output).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import PROJECT_ROOT, TEST_DATA

VECTORS_FILE = TEST_DATA / "conformance" / "segment-classic-server.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))


def map_with_cli(settings: dict[str, Any], event: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(settings), encoding="utf-8")
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(event), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "engine", "map", str(event_file), "--mappings", "klaviyo-classic",
         "--settings", str(settings_file), "--show-secrets"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )


def same_json(got: Any, want: Any, where: str = "$") -> None:
    """Deep equality of JSON values: key order free, 5 == 5.0 (one JSON number), but true != 1."""
    if isinstance(want, bool) or isinstance(got, bool):
        assert type(got) is type(want) and got == want, f"{where}: got {got!r}, want {want!r}"
    elif isinstance(want, (int, float)):
        assert isinstance(got, (int, float)) and got == want, f"{where}: got {got!r}, want {want!r}"
    elif isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: got {got!r}, want an object"
        assert sorted(got) == sorted(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            same_json(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: got {got!r}, want {want!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            same_json(g, w, f"{where}[{i}]")
    else:
        assert type(got) is type(want) and got == want, f"{where}: got {got!r}, want {want!r}"


def form_text(value: Any) -> str:
    """A form field as the integration's HTTP client encoded it: booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check_request(got: dict[str, Any], want: dict[str, Any], label: str) -> None:
    assert got["method"] == want["method"], label
    url = urlsplit(got["url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == want["url"], label
    query = parse_qs(url.query, keep_blank_values=True, strict_parsing=bool(url.query))
    if "decoded_data" in want:
        assert sorted(query) == sorted(want["query"]) == ["data"], f"{label}: query {sorted(query)}"
        assert len(query["data"]) == 1, label
        decoded = json.loads(base64.b64decode(query["data"][0], validate=True).decode("utf-8"))
        same_json(decoded, want["decoded_data"], f"{label} data")
        assert "form" not in got and "json" not in got, f"{label}: a GET with a body"
    if "form" in want:
        assert not query, f"{label}: the List API call has no query"
        assert "form" in got, f"{label}: no form body"
        form = got["form"]
        assert sorted(form) == sorted(want["form"]), f"{label}: form fields {sorted(form)}"
        for key, value in want["form"].items():
            if key == "properties":
                same_json(json.loads(form[key]), json.loads(value), f"{label} form.properties")
            else:
                assert form[key] == form_text(value), f"{label} form.{key}: {form[key]!r}"
        if "content_type" in want:
            assert got["headers"].get("Content-Type") == want["content_type"], label


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"].split("/", 1)[1] for v in VECTORS])
def test_conformance_vector(vector: dict[str, Any], tmp_path: Path) -> None:
    process = map_with_cli(vector["settings"], vector["input"], tmp_path)
    requests = [json.loads(line) for line in process.stdout.splitlines() if line.strip()]
    errors = [json.loads(line) for line in process.stderr.splitlines() if line.strip()]
    rejections = [e for e in errors if "reason" in e]

    if "expected_error" in vector:
        assert process.returncode == 1, process.stderr
        assert requests == [], "a rejected event must produce no request"
        assert len(rejections) == 1, process.stderr
        assert vector["expected_error"] in rejections[0]["reason"]
        return

    assert process.returncode == 0, process.stderr
    assert rejections == [], process.stderr
    assert not any("skipped" in e for e in errors), process.stderr
    expected = vector["expected"]
    assert len(requests) == len(expected), f"{len(requests)} requests, want {len(expected)}: {process.stdout}"
    for i, (got, want) in enumerate(zip(requests, expected, strict=True)):
        check_request(got, want, f"request {i}")


def test_all_fifteen_vectors_are_here() -> None:
    assert len(VECTORS) == 15
    assert len({v["id"] for v in VECTORS}) == 15


@pytest.mark.parametrize("vector", [v for v in VECTORS if any("form" in r for r in v.get("expected", []))],
                         ids=lambda v: v["id"].split("/", 1)[1])
def test_list_properties_text_is_byte_for_byte(vector: dict[str, Any], tmp_path: Path) -> None:
    """Beyond the parsed comparison: the properties JSON text keeps the integration's own key order."""
    process = map_with_cli(vector["settings"], vector["input"], tmp_path)
    got = json.loads(process.stdout.splitlines()[0])["form"]["properties"]
    assert got == vector["expected"][0]["form"]["properties"]
