"""`validate` teaches: a rule's shape errors come with its expressions' and templates' mistakes, at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MAPPING = ("name: shape\nbase_url: https://api.example.test\nsettings:\n  listId: {type: string}\n"
           "include: [rules.yaml]\n")
RULES = """\
rules:
  - name: profile
    match: {type: identify}
    final: maybe
    when: "settings.listID"
    require:
      - check: "traits.email =="
    request:
      method: POST
      path: /profiles
      json:
        name: "{{ traits.name | upper }"
        email: {select: traits.email, cast: email}
  - name: event
    match: {type: track}
    when: "event == "
    reqest:
      method: POST
      path: /events
  - name: nothing
    match: {typ: track}
    skip: "{{ oops }"
  - name: broken-request
    request: {path: "{{ x }"}
  - name: typed
    when: 5
    skip: x
"""


def test_a_shape_error_does_not_hide_the_rest_of_the_rule(tmp_path: Path) -> None:
    (tmp_path / "mapping.yaml").write_text(MAPPING)
    (tmp_path / "rules.yaml").write_text(RULES)
    run = subprocess.run([sys.executable, "-m", "engine", "validate", "."], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(ROOT)})
    assert run.returncode == 1, run.stderr
    assert run.stdout.splitlines() == [
        "rules.yaml:4:12: 'final' must be a boolean",
        "rules.yaml:5:12: rule 'profile' when: unknown setting 'listID' (declared settings: listId)",
        "rules.yaml:7:31: rule 'profile' require: invalid JMESPath: the expression ends too early",
        "rules.yaml:12:16: json.name: invalid template: unexpected '}'",
        "rules.yaml:13:45: json.email: unknown cast 'email' (casts: number, integer, string, boolean, iso8601, "
        "unix_seconds)",
        "rules.yaml:16:19: rule 'event' when: invalid JMESPath: the expression ends too early",
        "rules.yaml:17:5: unknown key 'reqest' (did you mean 'request'?)",
        "rules.yaml:21:13: unknown key 'typ' (did you mean 'type'?)",
        "rules.yaml:22:12: rule 'nothing' skip: invalid template: unexpected '}'",
        "rules.yaml:24:14: missing required key 'method'",
        "rules.yaml:24:22: rule 'broken-request' request.path: invalid template: unexpected '}'",
        "rules.yaml:26:11: 'when' must be a string",  # (said once: compiling it would say it again)
        ".: invalid, 12 problem(s)",
    ]


def test_validate_checks_each_request_against_the_sets_api_spec(tmp_path: Path) -> None:
    """A path the API does not have, and a constant body part without a member the operation
    requires (whatever the event holds), are validation errors at the rule file's place."""
    run = subprocess.run([sys.executable, "-m", "engine", "init", "copy"], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    rules = tmp_path / "copy" / "rules"
    identify = (rules / "identify.yaml").read_text()
    (rules / "identify.yaml").write_text(identify.replace("path: /api/profile-import\n",
                                                          "path: /api/profile-imports\n"))
    subscription = (rules / "subscription.yaml").read_text().splitlines(keepends=True)
    assert subscription[87].strip() == "id: {select: vars.list_id, cast: string}"
    (rules / "subscription.yaml").write_text("".join(subscription[:87] + subscription[88:]))
    run = subprocess.run([sys.executable, "-m", "engine", "validate", "copy", "klaviyo"], cwd=tmp_path,
                         capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    assert (run.returncode, run.stderr) == (1, "")
    assert run.stdout.splitlines() == [
        "copy/rules/identify.yaml:16:13: rule 'identify/profile': POST /api/profile-imports is not an operation "
        "of klaviyo-openapi-stable-2026-07-15.trimmed.json",
        "copy/rules/subscription.yaml:87:23: rule 'subscription/unsubscribe': json.data.relationships.list.data "
        "has no 'id', which the API requires here",
        "copy: invalid, 2 problem(s)",
        "klaviyo: valid (21 rules in 12 files, 11 settings, 14 named values)",
    ]
