"""engine/ knows nothing of Klaviyo: every destination fact lives in mappings/."""

from __future__ import annotations

import re
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"
FORBIDDEN = re.compile(r"klaviyo|profile-import|placed order|ordered product|\$email|enforceEmail|useSegmentSpec",
                       re.IGNORECASE)
# The only allowed mention: the name of the default bundled mapping set.
ALLOWED = {'DEFAULT_SET = "klaviyo"'}  # the command's name is derived from it, not spelled again


def test_no_klaviyo_knowledge_in_engine() -> None:
    hits = []
    for path in sorted(ENGINE.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FORBIDDEN.search(line) and line.strip() not in ALLOWED:
                hits.append(f"{path.relative_to(ENGINE.parent)}:{number}: {line.strip()}")
    assert hits == []


CRM_MAPPING = """\
name: crm
base_url: https://crm.example.test
settings:
  team: {type: string, default: sales}
include: [rules.yaml]
"""
CRM_RULES = """\
values:
  email: {select: traits.email}
rules:
  # another target's chain: find the contact by email, then tag each one found
  - name: tag
    match: {type: identify}
    request:
      method: GET
      path: /contacts
      query: {email: {select: vars.email}}
    then:
      order: {lane: contacts, subject: {email: {select: vars.email}}}
      steps:
        - for_each: response.contacts
          as: contact
          skip: "no contact has {{ vars.email }}"
          request:
            method: PUT
            path: "/contacts/{{ contact.id }}/tags"
            json: {tag: {template: "{{ settings.team }}-{{ traits.plan }}"}, found: {select: index}}
"""


def test_another_target_can_use_request_chains(tmp_path: Path) -> None:
    import engine

    (tmp_path / "mapping.yaml").write_text(CRM_MAPPING, encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(CRM_RULES, encoding="utf-8")
    mapper = engine.Mapper(engine.load_mapping_set(tmp_path), {"team": "ops"})
    event = {"type": "identify", "userId": "u1", "traits": {"email": "c@example.test", "plan": "pro"}}
    (first,) = mapper.map(event).requests
    assert (first.method, first.url) == ("GET", "https://crm.example.test/contacts?email=c%40example.test")
    assert first.chain == {"rule": "tag", "step": 0, "event": event,
                           "subject": {"lane": "contacts", "identifiers": {"email": "c@example.test"}}}
    assert first.then == ["step 2, with the previous answer as `response`: PUT /contacts/{{ contact.id }}/tags, "
                          "once per response.contacts (or skip)"]
    requests, skipped, following = mapper.next_step(first.chain, {"contacts": [{"id": 7}, {"id": 9}]})
    assert [(r.method, r.url, r.body) for r in requests] == [
        ("PUT", "https://crm.example.test/contacts/7/tags", {"tag": "ops-pro", "found": 0}),
        ("PUT", "https://crm.example.test/contacts/9/tags", {"tag": "ops-pro", "found": 1})]
    assert (skipped, following) == (None, None)
    assert mapper.next_step(first.chain, {"contacts": []}) == (
        [], "step 2 of rule 'tag' skipped: no contact has c@example.test", None)
