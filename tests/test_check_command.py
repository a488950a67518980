"""`segment-klaviyo check`: the key check the klaviyo set declares (GET /api/accounts), against the
fake Klaviyo on 127.0.0.1; every answer's report and exit code, and the key never printed."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import KLAVIYO_SPEC
from delivery_helpers import run_cli
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource

from engine.cli.main import main
from engine.delivery.config import DeliveryPlan
from engine.delivery.key_check import scopes_needed
from engine.fake.config import fake_config
from engine.mapping_set import load_mapping_set

KEY = "pk_check_5e3d1f0a9b"
SCOPES = [
    "the mapping set's endpoints need these scopes (the API names one a key lacks only when a call needs it, "
    "with a 403):",
    "  accounts:read        get_accounts",
    "  data-privacy:write   request_profile_deletion",
    "  events:write         create_event, bulk_create_events",
    "  lists:read           get_bulk_import_profiles_job",
    "  lists:write          bulk_import_profiles, bulk_subscribe_profiles, bulk_unsubscribe_profiles,"
    " remove_profiles_from_list",
    "  profiles:read        get_bulk_import_profiles_job, get_errors_for_bulk_import_profiles_job, get_profiles",
    "  profiles:write       create_or_update_profile, bulk_import_profiles,"
    " bulk_subscribe_profiles, bulk_unsubscribe_profiles, remove_profiles_from_list",
    "  subscriptions:write  bulk_subscribe_profiles, bulk_unsubscribe_profiles",
]

# (what the fake is told, exit code, the report's first line)
ANSWERS = [
    ({}, 0, "the key works: GET /api/accounts answered 200 (account: Fake Klaviyo account)"),
    ({"api_keys": ["pk_another_key"]}, 2,
     "the key cannot be used: HTTP 401 on GET /api/accounts (get_accounts): Klaviyo refused the private key "
     "(setting privateKey): it is missing, mistyped or revoked — the API said: Missing or invalid private key."),
    ({"scopes": ["events:write", "profiles:write"]}, 2,
     "the key cannot be used: HTTP 403 on GET /api/accounts (get_accounts): the private key lacks a scope that "
     "get_accounts needs: give the key accounts:read (Account > Settings > API keys) — the API said: The API key "
     "is missing required scopes: accounts:read."),
    ({"burst_429_every": 1000.0, "burst_429_length": 1000.0}, 1,
     "could not check the key: HTTP 429 on GET /api/accounts (get_accounts): the answer says nothing about the "
     "key; try again later — the API said: Request was throttled (injected burst)."),
]


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


@pytest.mark.parametrize(("options", "code", "first"), ANSWERS, ids=["works", "401", "403", "429"])
def test_each_answer_is_reported_with_its_exit_code(capsys: pytest.CaptureFixture[str], fake_klaviyo: Any,
                                                    options: dict[str, Any], code: int, first: str) -> None:
    fake = fake_klaviyo(**options)
    got_code, lines, err = check(capsys, "--set", f"privateKey={KEY}", "--base-url", fake.url)
    assert (got_code, lines, err) == (code, [first, *SCOPES], "")
    assert fake.store.counters["requests"] == 1  # one call, and it changed nothing
    assert fake.store.snapshot()["records"] == {}


def test_no_answer_is_not_a_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    code, lines, _ = check(capsys, "--set", f"privateKey={KEY}", "--base-url", f"http://127.0.0.1:{port}")
    assert code == 1
    assert lines[0].startswith(f"could not check the key: GET /api/accounts got no answer from "
                               f"http://127.0.0.1:{port}: ConnectError: ")
    assert lines[1:] == SCOPES


def test_the_key_is_sent_but_never_printed(capsys: pytest.CaptureFixture[str], fake_klaviyo: Any) -> None:
    # The fake answers 401 quoting the key it got: the report masks it.
    fake = fake_klaviyo(api_keys=["pk_another_key"])
    original = fake.handle

    def echo_key(method: str, target: str, headers: dict[str, str], raw: bytes) -> Any:
        status, body, extra = original(method, target, headers, raw)
        body["errors"][0]["detail"] = f"Key {headers['authorization']} is invalid."
        return status, body, extra

    fake.handle = echo_key  # type: ignore[method-assign]
    code, lines, err = check(capsys, "--set", f"privateKey={KEY}", "--base-url", fake.url)
    assert code == 2
    assert lines[0].endswith("— the API said: Key Klaviyo-API-Key *** is invalid.")
    assert KEY not in "\n".join(lines) + err


@pytest.mark.parametrize(("args", "message"), [
    ([], "segment-klaviyo: missing setting(s) needed to send: privateKey (--settings FILE or --set privateKey=…)"),
    (["--set", f"privateKey={KEY}", "--set", "revision=soon"],
     "segment-klaviyo: bad settings:\n"
     "setting 'revision': value does not match regex '^\\d{4}-\\d{2}-\\d{2}(\\.pre)?$'"),
    (["--set", "apiKey=AbC123", "--mappings", "klaviyo-classic", "--allow-compatibility-only"],
     "segment-klaviyo: mapping set 'klaviyo-classic' declares no key check (a check: entry in its delivery "
     "section naming the endpoint to call)"),
], ids=["no-key", "bad-setting", "set-without-check"])
def test_bad_usage_exits_2_with_one_message(capsys: pytest.CaptureFixture[str], args: list[str],
                                            message: str) -> None:
    code, lines, err = check(capsys, *args)
    assert (code, lines, err.rstrip("\n")) == (2, [], message)


def test_check_with_fake_runs_as_a_command() -> None:
    result = run_cli("check", "--set", f"privateKey={KEY}", "--fake")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [ANSWERS[0][2], *SCOPES]


def test_the_readme_check_example_prints_what_it_shows() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    line = "segment-klaviyo check --settings examples/settings.yaml --fake"
    after = readme[readme.index(f"```sh\n{line}\n```"):]
    shown = re.search(r"```text\n(.*?)```", after, re.DOTALL)
    assert shown is not None
    result = run_cli(*line.split()[1:])
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == shown.group(1)


def test_the_scopes_are_the_endpoints_published_ones() -> None:
    plan = DeliveryPlan.for_set(load_mapping_set("klaviyo"))
    spec = json.loads(KLAVIYO_SPEC.read_text(encoding="utf-8"))
    published: dict[str, set[str]] = {}
    for item in spec["paths"].values():
        for operation in item.values():
            for scope in operation.get("x-klaviyo-scopes", []):
                published.setdefault(scope, set()).add(operation["operationId"])
    assert {scope: set(names) for scope, names in scopes_needed(plan).items()} == published


def test_the_fakes_account_answer_fits_klaviyos_spec() -> None:
    plan = DeliveryPlan.for_set(load_mapping_set("klaviyo"))
    spec = json.loads(Path(KLAVIYO_SPEC).read_text(encoding="utf-8"))
    registry: Registry[Any] = Registry().with_resource("urn:spec", Resource.opaque(spec))
    schema = spec["paths"]["/api/accounts"]["get"]["responses"]["200"]["content"]["application/vnd.api+json"]["schema"]
    validator = OAS30Validator({"$ref": "urn:spec" + schema["$ref"]}, registry=registry)
    answer = fake_config(plan).responses["get_accounts"]
    assert [e.message for e in validator.iter_errors(answer)] == []
    assert [e.message for e in validator.iter_errors({"data": [{"type": "account"}]})] != []  # it can fail
