"""Every request any klaviyo golden case produces is valid for Klaviyo: spec-valid and complete."""

from __future__ import annotations

import pytest
from golden_cases import case_id, load_cases
from klaviyo_contract import contract_violations

import engine

CASES = [c for c in load_cases("klaviyo") if c.data.get("expect")]


@pytest.fixture(scope="module")
def klaviyo_set() -> engine.MappingSet:
    return engine.load_mapping_set("klaviyo")


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_golden_requests_fit_klaviyo(case, klaviyo_set) -> None:  # type: ignore[no-untyped-def]
    mapper = engine.Mapper(klaviyo_set, case.data.get("settings") or {})
    result = mapper.map(case.data["event"])
    assert result.requests
    for request in result.requests:
        assert contract_violations(request) == [], request.rule


def test_contract_check_can_fail(klaviyo_set) -> None:  # type: ignore[no-untyped-def]
    mapper = engine.Mapper(klaviyo_set, {"privateKey": "pk_x"})
    request = mapper.map({"type": "track", "userId": "u", "event": "E", "messageId": "m"}).requests[0]
    request.body["data"]["attributes"]["metric"]["data"]["attributes"]["name"] = "n" * 130
    request.body["data"]["attributes"]["time"] = "not a time"
    request.body["data"]["type"] = "events"
    problems = contract_violations(request)
    assert any("not a 'date-time'" in p for p in problems)
    assert any("'events' is not one of ['event']" in p for p in problems)
    assert any("metric name" in p for p in problems)


def test_subscription_and_deletion_contracts_can_fail(klaviyo_set) -> None:  # type: ignore[no-untyped-def]
    mapper = engine.Mapper(klaviyo_set, {"privateKey": "pk_x"})
    unsubscribe = mapper.map({"type": "track", "event": "User Unsubscribed", "messageId": "m",
                              "properties": {"email": "a@example.com"}}).requests[0]
    unsubscribe.body["data"]["attributes"]["profiles"]["data"][0]["attributes"]["phone_number"] = "555"
    unsubscribe.body["data"]["attributes"]["profiles"]["data"] *= 101
    problems = contract_violations(unsubscribe)
    assert "101 profiles in one job (1 to 100)" in problems
    assert "phone_number '555' is not E.164" in problems
    assert "the sms channel goes with phone_number, and only with it" in problems
    deletion = mapper.map({"type": "delete", "messageId": "m", "userId": "u",
                           "traits": {"email": "a@example.com"}}).requests[0]
    deletion.body["data"]["attributes"]["profile"]["data"]["attributes"]["phone_number"] = "+15005550006"
    assert contract_violations(deletion) == \
        ["a deletion names exactly one of email, phone_number, not ['email', 'phone_number']"]


def test_at_least_forty_golden_cases() -> None:
    assert len(load_cases("klaviyo")) >= 40
