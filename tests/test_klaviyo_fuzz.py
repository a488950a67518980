"""Random and mutated Segment events through the whole klaviyo set: each event is either mapped to
requests that Klaviyo's spec accepts, or rejected with a reason — never a crash, never a bad request."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from klaviyo_contract import contract_violations

import engine

KLAVIYO = engine.load_mapping_set("klaviyo")

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=20),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)

timestamps = st.one_of(
    st.datetimes(timezones=st.just(__import__("datetime").timezone.utc)).map(lambda d: d.isoformat()),
    st.sampled_from(["2026-11-01T12:00:00Z", "2026-11-01T12:00:00.123+02:00", "yesterday", "", "2026-13-45"]),
    json_values,
)
known_traits = st.fixed_dictionaries({}, optional={
    "email": st.one_of(st.emails(), json_values), "phone": st.one_of(st.just("+14155552671"), json_values),
    "phoneNumber": json_values, "phones": json_values, "firstName": json_values, "lastName": json_values,
    "name": json_values, "title": json_values, "position": json_values, "jobTitle": json_values,
    "organization": json_values, "avatar": json_values, "city": json_values, "state": json_values,
    "zip": json_values, "postalCode": json_values, "country": json_values, "timezone": json_values,
    "address": st.one_of(json_values, st.fixed_dictionaries({}, optional={
        "city": json_values, "state": json_values, "postalCode": json_values, "street": json_values})),
    "custom": json_values,
})
products = st.lists(st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "id": json_values, "product_id": json_values, "sku": json_values, "name": json_values, "price": json_values,
    "quantity": json_values, "category": json_values, "productUrl": json_values, "image_url": json_values,
})), max_size=4)
properties = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "revenue": json_values, "total": json_values, "currency": json_values, "orderId": json_values,
    "eventId": json_values, "email": json_values, "phone": json_values, "products": st.one_of(products, json_values),
    "url": json_values, "misc": json_values,
}))
events = st.fixed_dictionaries({}, optional={
    "type": st.one_of(st.sampled_from(["identify", "track", "page", "screen", "group", "alias", "delete"]),
                      json_values),
    "userId": st.one_of(st.text(min_size=1, max_size=12), st.emails(), json_values),
    "anonymousId": json_values,
    "messageId": st.one_of(st.text(min_size=1, max_size=12), json_values),
    "timestamp": timestamps,
    "event": st.one_of(st.sampled_from(["Order Completed", "completed_order", "Signed Up",
                                      "User Subscribed", "user_unsubscribed", "Product Viewed"]), json_values),
    "name": json_values,
    "traits": st.one_of(known_traits, json_values),
    "properties": properties,
    "context": st.one_of(json_values, st.fixed_dictionaries({}, optional={
        "timezone": json_values, "traits": st.one_of(known_traits, json_values)})),
    "integrations": st.one_of(json_values, st.fixed_dictionaries({"Klaviyo": st.fixed_dictionaries({}, optional={
        "listId": json_values, "confirmOptin": json_values})})),
})
destination_settings = st.fixed_dictionaries({"privateKey": st.just("pk_fuzz")}, optional={
    "listId": st.sampled_from(["Y6nRLr", ""]), "confirmOptin": st.booleans(), "enforceEmail": st.booleans(),
    "sendAnonymous": st.booleans(), "useSegmentSpec": st.booleans(), "sendPageEvents": st.booleans(),
    "defaultPhoneRegion": st.sampled_from(["US", "GB"]), "useKlaviyoMetricNames": st.booleans(),
})


def _check(event: Any, chosen: dict[str, Any]) -> None:
    result = engine.Mapper(KLAVIYO, chosen).map(event)
    if result.rejection is not None:
        assert result.rejection.strip() and not result.requests
        return
    for rejection in result.item_rejections:
        assert rejection.reason.strip()
    for request in result.requests:
        assert contract_violations(request) == [], (request.rule, request.body)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=events, chosen=destination_settings)
def test_random_events_map_to_valid_requests_or_rejections(event: dict[str, Any], chosen: dict[str, Any]) -> None:
    _check(event, chosen)


@settings(max_examples=100, deadline=None)
@given(event=json_values, chosen=destination_settings)
def test_any_json_value_is_mapped_or_rejected(event: Any, chosen: dict[str, Any]) -> None:
    _check(event, chosen)
