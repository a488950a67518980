"""Mapper behaviours not tied to one directive: robustness, results, constant headers."""

from __future__ import annotations

import dataclasses
import logging

import pytest

import engine
from engine import ir


def test_an_internal_error_rejects_only_that_event(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    mapping_set = engine.load_mapping_set("klaviyo")
    good = {"type": "track", "userId": "u", "event": "E", "messageId": "m"}
    broken_rule = next(rule for rule in mapping_set.rules if rule.name == "track/event")

    def explode(value: str) -> bool:
        raise RuntimeError("boom")

    # a condition whose code calls a function that fails (no origin: the rule's own place is named);
    # rules are frozen: the set gets a copy of the rule with that condition
    broken = dataclasses.replace(broken_rule, when=ir.Encode(None, ir.Literal(None, "x"), explode))
    monkeypatch.setattr(mapping_set, "rules", [broken if rule is broken_rule else rule for rule in mapping_set.rules])
    mapper = engine.Mapper(mapping_set, {"privateKey": "pk"})
    with caplog.at_level(logging.DEBUG, logger="segment-klaviyo.evaluate"):
        result = mapper.map(good, 3)
    assert result.requests == []
    # the rejection names the rule file's line whose generated code failed
    assert result.rejection == ("internal error while mapping (please report it): RuntimeError: boom "
                                "(at mappings/klaviyo/rules/track.yaml:2:5, rule 'track/event')")
    # the traceback is logged at debug level, for the bug report
    [record] = caplog.records
    assert record.levelno == logging.DEBUG and record.getMessage() == "internal error while mapping event 3"
    assert record.exc_info is not None and "boom" in str(record.exc_info[1])
    assert len(mapper.map({**good, "type": "identify"}).requests) == 1  # other events go on
    monkeypatch.undo()
    assert len(engine.Mapper(mapping_set, {"privateKey": "pk"}).map(good).requests) == 1


def test_settings_only_headers_are_computed_once() -> None:
    mapper = engine.Mapper(engine.load_mapping_set("klaviyo"), {"privateKey": "pk_1"})
    assert mapper._code.constant_headers is not None
    assert mapper._code.constant_headers["Authorization"] == "Klaviyo-API-Key pk_1"


def test_base_url_override() -> None:
    mapper = engine.Mapper(engine.load_mapping_set("klaviyo"), {"privateKey": "pk"}, base_url="http://127.0.0.1:9/")
    [request] = mapper.map({"type": "track", "userId": "u", "event": "E", "messageId": "m"}).requests
    assert request.url == "http://127.0.0.1:9/api/events"


def test_unique_id_without_message_id_does_not_depend_on_the_key_or_masking() -> None:
    mapping_set = engine.load_mapping_set("klaviyo")
    event = {"type": "track", "userId": "u", "event": "E", "properties": {"a": 1}}
    ids = {
        engine.Mapper(mapping_set, settings, mask_secrets=mask).map(event).requests[0].body["data"]["attributes"][
            "unique_id"]
        for settings, mask in (({"privateKey": "pk_1"}, False), ({"privateKey": "pk_2"}, False),
                               ({"privateKey": "pk_1"}, True))
    }
    assert len(ids) == 1


NAMED_RULES = """
rules:
  - name: exact
    match: {type: track, event: [Signed Up, Order Completed]}
    skip: "exact {{ event }}"
  - name: pattern
    match: {type: track, event: "Video *"}
    skip: "pattern {{ event }}"
  - name: any
    match: {type: track}
    skip: "any {{ event }}"
"""


@pytest.mark.parametrize(("name", "rules_called", "skipped"), [
    ("Signed Up", ["exact", "pattern", "any"], "exact Signed Up"),
    ("signed_up", ["exact", "pattern", "any"], "exact signed_up"),
    ("ORDER-completed", ["exact", "pattern", "any"], "exact ORDER-completed"),
    ("Video Played", ["pattern", "any"], "pattern Video Played"),
    ("Clicked", ["pattern", "any"], "any Clicked"),
    (7, ["pattern", "any"], "any 7"),
    (None, ["pattern", "any"], "any None"),
])
def test_rules_that_name_events_are_called_for_those_names_only(tmp_path, name, rules_called,  # type: ignore[no-untyped-def]
                                                                skipped) -> None:
    (tmp_path / "mapping.yaml").write_text("name: named\ntitle: t\nbase_url: http://127.0.0.1:9\n"
                                           "include: [rules.yaml]\n", encoding="utf-8")
    (tmp_path / "rules.yaml").write_text(NAMED_RULES, encoding="utf-8")
    mapper = engine.Mapper(engine.load_mapping_set(tmp_path))
    called: list[str] = []
    rules = {rule.name: rule for rule in mapper.mapping_set.rules}
    for rule_name, rule in rules.items():  # wrap each rule's generated function to see it called
        run = mapper._runner(rule, False, (mapper.mapping_set.values,))

        def spy(*args, _run=run, _name=rule_name):  # type: ignore[no-untyped-def]
            called.append(_name)
            return _run(*args)

        mapper._runners[(id(rule), False)] = spy
    result = mapper.map({"type": "track", "event": name, "messageId": "m"})
    assert result.skipped == skipped
    assert called == rules_called[:rules_called.index(skipped.split()[0]) + 1]
