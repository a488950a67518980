"""Many tenants on one shared outbox: the tenants file, serve/worker --tenants, outbox --tenant, metrics.

The file's checks run everywhere; the rest needs PostgreSQL (skipped with the reason otherwise).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from delivery_helpers import PROJECT_ROOT, corpus, expected_event_keys, run_cli

import engine
from engine.delivery.partitions import lane_share
from engine.tenants import TenantsError, load_tenants

KEY_A, KEY_B = "pk_tenant_A_secret_0000000001", "pk_tenant_B_secret_0000000002"
SETTINGS_A = {"privateKey": KEY_A, "listId": "ListA"}
SETTINGS_B = {"privateKey": KEY_B, "listId": "ListB"}
TENANTS = """\
tenants:
  alpha:
    write_keys: [wk-alpha]
    settings:
      privateKey: {env: ALPHA_KLAVIYO_KEY}
      listId: ListA
  beta:
    write_keys: [{env: BETA_WRITE_KEY}]
    settings: {privateKey: KEY_B, listId: ListB}
""".replace("KEY_B", KEY_B)
ENVIRONMENT = {"ALPHA_KLAVIYO_KEY": KEY_A, "BETA_WRITE_KEY": "wk-beta"}
LEASE_TTL = "3"


def klaviyo() -> engine.MappingSet:
    return engine.load_mapping_set("klaviyo")


def test_a_tenants_file_is_read_with_environment_references(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(TENANTS, encoding="utf-8")
    alpha, beta = load_tenants(path, klaviyo(), ENVIRONMENT)
    assert (alpha.name, alpha.write_keys, alpha.settings) == ("alpha", ["wk-alpha"], SETTINGS_A)
    assert (beta.name, beta.write_keys, beta.settings) == ("beta", ["wk-beta"], SETTINGS_B)
    assert alpha.resolved["privateKey"] == KEY_A and alpha.resolved["sendPageEvents"] is not None
    assert KEY_A not in repr(alpha) and repr(alpha) == "Tenant('alpha')"


def test_every_problem_of_a_tenants_file_is_named_at_once_without_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("""\
tenants:
  Alpha Co:
    write_keys: [wk-1, {env: MISSING_KEY}]
    settings:
      privateKey: "not a key at all"
      colour: blue
  beta:
    write_keys: [wk-1]
    settings: {listId: L}
""", encoding="utf-8")
    with pytest.raises(TenantsError) as caught:
        load_tenants(path, klaviyo(), {})
    problems = caught.value.problems
    file = str(path)
    assert problems[0] == (f"{file}:2:3: tenant name 'Alpha Co': use 1 to 63 lower-case letters, digits, '-' or '_', "
                           "starting with a letter or digit")
    assert problems[1] == (f"{file}:3:24: tenant 'Alpha Co': write key 2: the environment variable MISSING_KEY is "
                           "not set (or empty)")
    assert problems[2] == (f"{file}:5:7: tenant 'Alpha Co': setting 'privateKey': a secret must be printable ASCII "
                           "without spaces; it has a space at character 4")
    assert problems[3].startswith(f"{file}:6:7: tenant 'Alpha Co': setting 'colour': unknown setting")
    assert problems[4] == (f"{file}:8:18: tenant 'beta': write key 1 is also a write key of tenant 'Alpha Co' (a "
                           "key routes to one tenant)")
    assert problems[5] == f"{file}:9:5: tenant 'beta': missing setting(s) needed to send: privateKey"
    assert len(problems) == 6 and not any("not a key at all" in p for p in problems)


def test_the_shape_of_a_tenants_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  alpha:\n    write_keys: []\n    settings: {}\n    extra: 1\n", encoding="utf-8")
    with pytest.raises(TenantsError) as caught:
        load_tenants(path, klaviyo(), {})
    assert [p.split(": ")[0] for p in caught.value.problems] == [f"{path}:3:17", f"{path}:5:5"]


def test_the_tenants_schema_takes_the_readme_example_and_refuses_mistakes() -> None:
    import jsonschema
    import yaml

    from engine.json_schema import json_schema

    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n# tenants.yaml.*?\n(tenants:.*?)```", readme, re.S)
    assert example is not None
    validator = jsonschema.Draft202012Validator(json_schema("tenants"))
    assert list(validator.iter_errors(yaml.safe_load(example.group(1)))) == []
    mistakes = {"tenants": {"a": {"write_keys": [{"env": "1X"}], "settings": {}, "lists": []}}}
    assert sorted(e.message for e in validator.iter_errors(mistakes)) == [
        "Additional properties are not allowed ('lists' was unexpected)",
        "{'env': '1X'} is not valid under any of the given schemas"]


def test_the_readme_tenants_example_loads(tmp_path: Path) -> None:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(# tenants.yaml.*?)```", readme, re.S)
    assert example is not None
    path = tmp_path / "tenants.yaml"
    path.write_text(example.group(1), encoding="utf-8")
    environment = {"ACME_WRITE_KEY": "wk-acme", "ACME_KLAVIYO_KEY": KEY_A, "GLOBEX_KLAVIYO_KEY": KEY_B}
    acme, globex = load_tenants(path, klaviyo(), environment)
    assert acme.write_keys == ["wk-acme"] and acme.settings == {"privateKey": KEY_A, "listId": "XyZ123"}
    assert globex.write_keys == ["wk_globex_1", "wk_globex_2"] and globex.resolved["sendPageEvents"] is False


def test_tenants_need_a_shared_outbox_and_their_own_keys(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(TENANTS, encoding="utf-8")
    refused = run_cli("serve", "--tenants", path, "--state", tmp_path / "state")
    assert refused.returncode == 2
    assert "--tenants needs a shared outbox (--state postgresql://…)" in refused.stderr
    refused = run_cli("serve", "--tenants", path, "--state", "postgresql://nobody@127.0.0.1:1/x", "--settings", path)
    assert refused.returncode == 2 and "--tenants gives each tenant its settings" in refused.stderr
    refused = run_cli("outbox", "status", "--state", tmp_path / "state", "--tenant", "alpha")
    assert refused.returncode == 2 and "only a shared outbox (--state postgresql://…) has tenants" in refused.stderr


# -- against PostgreSQL ------------------------------------------------------------------------------------
def _events(seed: int, prefix: str) -> list[dict[str, Any]]:
    events = corpus(40, seed=seed, users=12)
    for event in events:
        if "userId" in event:
            event["userId"] = prefix + event["userId"]
            traits = event.get("traits")
            if traits and "email" in traits:
                traits["email"] = prefix + traits["email"]
    return events


def _start(command: list[str], log: Path, env: dict[str, str], pattern: str) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen([sys.executable, "-m", "engine", *command], cwd=PROJECT_ROOT, env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not (found := re.search(pattern, log.read_text())):
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()
        time.sleep(0.05)
    return process, found.group(1)


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


def _lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_two_tenants_never_see_each_other_s_events_limits_or_dead_letters(postgres_url: str, tmp_path: Path,
                                                                         fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(enforce_rate_limits=False, api_keys=[KEY_A, KEY_B], fail_items_matching="beta-user-1[01]@")
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(TENANTS, encoding="utf-8")
    only_alpha = tmp_path / "alpha.yaml"
    only_alpha.write_text(TENANTS.split("  beta:")[0], encoding="utf-8")
    env = {**os.environ, **ENVIRONMENT}
    events_a, events_b = _events(1, "alpha-"), _events(2, "beta-")
    server, url = _start(["serve", "--port", "0", "--no-worker", "--state", postgres_url, "--tenants", str(tenants),
                          "--base-url", fake.url], tmp_path / "serve.log", env, r"listening on (http://[\d.:]+)")
    try:
        assert httpx.post(url + "/v1/batch", json={"batch": events_a}, auth=("wk-alpha", ""), timeout=30).json() \
            == {"success": True}
        assert httpx.post(url + "/v1/batch", json={"batch": events_b}, auth=("wk-beta", ""), timeout=30).json() \
            == {"success": True}
        unknown = httpx.post(url + "/v1/batch", json={"batch": events_b}, auth=("wk-gamma", ""), timeout=30)
        assert unknown.status_code == 401 and unknown.json()["message"] == "unknown write key"
        metrics = httpx.get(url + "/metrics", timeout=10).text
        backlog = dict(re.findall(r'segment_klaviyo_backlog\{lane="[^"]*",tenant="(\w+)"\} (\d+)', metrics))
        assert set(backlog) == {"alpha", "beta"}, metrics
        health = httpx.get(url + "/health", timeout=10).json()
        assert set(health["tenants"]) == {"alpha", "beta"} and health["outbox_depth"] > 0
    finally:
        assert _stop(server) == 0
    assert not [line for line in (tmp_path / "serve.log").read_text().splitlines() if KEY_A in line or KEY_B in line]

    # A worker with alpha's settings only delivers alpha, and says once that beta is not its own.
    alpha_worker = subprocess.run([sys.executable, "-m", "engine", "worker", "--state", postgres_url, "--tenants",
                                   str(only_alpha), "--base-url", fake.url, "--lease-ttl", LEASE_TTL, "--until-empty"],
                                  cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert alpha_worker.returncode == 0, alpha_worker.stderr
    assert alpha_worker.stderr.count("tenant 'beta' has requests in the outbox, but this worker has no settings") == 1
    status = {t: _lines(run_cli("outbox", "status", "--state", postgres_url, "--tenant", t))[-1]
              for t in ("alpha", "beta")}
    assert status["alpha"]["events"]["pending"] == 0 and status["alpha"]["tenant"] == "alpha"
    assert status["beta"]["events"]["pending"] > 0 and status["beta"]["events"]["delivered"] == 0
    delivered = {(r["key"][1], r["key"][2]) for r in fake.store.snapshot()["records"]["events"]}
    assert delivered == expected_event_keys(events_a, SETTINGS_A)

    both = subprocess.run([sys.executable, "-m", "engine", "worker", "--state", postgres_url, "--tenants",
                           str(tenants), "--base-url", fake.url, "--lease-ttl", LEASE_TTL, "--until-empty"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert both.returncode == 1, both.stderr  # some of beta's requests were refused: dead-lettered
    assert KEY_A not in both.stderr and KEY_B not in both.stderr
    dead_a = _lines(run_cli("outbox", "dead-letters", "--state", postgres_url, "--tenant", "alpha"))
    dead_b = _lines(run_cli("outbox", "dead-letters", "--state", postgres_url, "--tenant", "beta"))
    assert dead_a == [] and dead_b
    assert all(re.search("beta-user-1[01]@", json.dumps(letter)) for letter in dead_b)
    delivered = {(r["key"][1], r["key"][2]) for r in fake.store.snapshot()["records"]["events"]}
    assert expected_event_keys(events_a, SETTINGS_A) | expected_event_keys(events_b, SETTINGS_B) >= delivered
    assert expected_event_keys(events_b, SETTINGS_B) & delivered
    profiles = fake.store.snapshot()["profiles"].values()
    for profile in profiles:  # each tenant's profiles only ever from its own events
        email = str(profile.get("email") or "")
        assert not email or email.startswith(("alpha-", "beta-")), profile
    with psycopg.connect(postgres_url) as db:
        partitions = db.execute("SELECT tenant, partition FROM leases ORDER BY 1, 2").fetchall()
        text = json.dumps(db.execute("SELECT tenant, headers, body FROM units").fetchall())
    assert {t for t, _ in partitions} == {"alpha", "beta"}
    # own leases, in the same lanes (which parts of the split events lane each has depends on its profiles)
    lanes = {tenant: sorted({lane_share(p)[0] for t, p in partitions if t == tenant}) for tenant in ("alpha", "beta")}
    assert lanes["alpha"] == lanes["beta"] and "events" in lanes["alpha"], partitions
    assert KEY_A not in text and KEY_B not in text


def test_a_worker_s_metrics_show_its_leases_and_every_tenant_s_backlog(postgres_url: str, tmp_path: Path,
                                                                        fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(enforce_rate_limits=False)
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(TENANTS, encoding="utf-8")
    env = {**os.environ, **ENVIRONMENT}
    process, url = _start(["worker", "--state", postgres_url, "--tenants", str(tenants), "--base-url", fake.url,
                           "--lease-ttl", LEASE_TTL, "--metrics-port", "0"], tmp_path / "worker.log", env,
                          r"metrics on (http://[\d.:]+)/metrics")
    try:
        first = httpx.get(url + "/metrics", timeout=10).text
        assert "# TYPE segment_klaviyo_backlog gauge" in first
        assert "segment_klaviyo_job_polls_total 0" in first and "segment_klaviyo_lease_takeovers_total 0" in first
        assert httpx.get(url + "/other", timeout=10).status_code == 404
    finally:
        assert _stop(process) == 0
    assert "delivering" in (tmp_path / "worker.log").read_text()


def _record(url: str, tenant: str, settings: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """Record events for one tenant the way `serve --tenants --no-worker` does."""
    from engine.delivery.config import DeliveryPlan
    from engine.delivery.ingest import Ingester
    from engine.delivery.postgres_outbox import PostgresOutbox
    from engine.delivery.sealing import Sealer

    mapping_set = klaviyo()
    with PostgresOutbox(url, tenant=tenant, partition_of=DeliveryPlan.for_set(mapping_set).lane_of) as store:
        store.init_meta("mapping_set", mapping_set.name)
        sealer = Sealer({"privateKey": settings["privateKey"]}, store.init_meta("seal_nonce", Sealer.new_nonce()))
        Ingester(mapping_set, settings, store, sealer).ingest(events, "test")


def test_a_tenant_whose_key_is_refused_stops_alone(postgres_url: str, tmp_path: Path, fake_klaviyo: Any) -> None:
    fake = fake_klaviyo(enforce_rate_limits=False, api_keys=[KEY_A])  # beta's key is refused (401)
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(TENANTS, encoding="utf-8")
    events_a, events_b = _events(3, "alpha-"), _events(4, "beta-")
    _record(postgres_url, "alpha", SETTINGS_A, events_a)
    _record(postgres_url, "beta", SETTINGS_B, events_b)
    run = subprocess.run([sys.executable, "-m", "engine", "worker", "--state", postgres_url, "--tenants", str(tenants),
                          "--base-url", fake.url, "--lease-ttl", LEASE_TTL, "--until-empty"],
                         cwd=PROJECT_ROOT, env={**os.environ, **ENVIRONMENT}, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2, run.stderr
    assert "tenant 'beta': configuration error, its delivery stopped" in run.stderr
    assert KEY_B not in run.stderr
    delivered = {(r["key"][1], r["key"][2]) for r in fake.store.snapshot()["records"]["events"]}
    assert delivered == expected_event_keys(events_a, SETTINGS_A)
    beta = _lines(run_cli("outbox", "status", "--state", postgres_url, "--tenant", "beta"))[-1]
    assert beta["events"]["pending"] > 0 and beta["events"]["dead"] == 0 and beta["events"]["delivered"] == 0
