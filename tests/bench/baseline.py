"""The bundled `klaviyo` mapping set, written by hand in plain Python: the benchmarks' yardstick.

`KlaviyoBaseline(settings).map(event, index)` returns the requests the `klaviyo` set produces for the
event, as `map` prints them (`Request.to_output()`): a list of dicts, empty when the event is
skipped or rejected. It is what a competent engineer would write without a rule engine: straight
dict lookups, the settings read once, headers built once, the small helpers the rules need written
out, and no tricks that would make it hard to maintain. The non-trivial leaf functions (money
amounts and decimal multiplication, number casts, E.164 phone numbers, ISO-8601 times, the
longest-string limit check) are the engine's own (engine/functions.py): a hand-written destination
would use the same helpers, the output must be byte-identical, and so the comparison measures what
the rule engine adds, not two implementations of phone parsing.

It follows mappings/klaviyo/ rule by rule; when that set changes, this file must change with it,
and `run.py` fails (showing the first difference) until it does.
"""

from __future__ import annotations

import re
from typing import Any

from engine.functions import EvalError, e164, longest_string, multiply, parse_amount, to_iso8601, to_number

BASE_URL = "https://a.klaviyo.com"
DEFAULTS: dict[str, Any] = {"confirmOptin": True, "enforceEmail": False, "sendAnonymous": False,
                            "useSegmentSpec": True, "sendPageEvents": False, "revision": "2026-07-15"}

# Traits that become profile attributes or location, so are not copied again into properties.
PROFILE_TRAITS = frozenset({
    "email", "phone", "phoneNumber", "phones", "firstName", "first_name", "lastName", "last_name", "name",
    "title", "position", "jobTitle", "organization", "avatar",
    "address", "street", "city", "region", "state", "country", "postalCode", "zip", "timezone",
})
ITEM_FIELDS = frozenset({"productId", "product_id", "id", "sku", "name", "quantity", "category", "productUrl",
                         "product_url", "url", "imageUrl", "image_url"})
ORDER_EVENTS = frozenset({"order completed", "completed order"})
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SEPARATORS = re.compile(r"[_\-]+")


class Rejected(Exception):
    """The whole event is rejected: it produces no request."""


# -- helpers ----------------------------------------------------------------------------------------
def truthy(value: Any) -> bool:
    """JMESPath truthiness, which the rules' conditions use: 0 is true; "", [], {} are false."""
    if value is None or value is False:
        return False
    if isinstance(value, (str, list, dict)) and not value:
        return False
    return True


def to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    raise Rejected(f"{value!r} is not a string")


def opt_str(value: Any) -> str | None:
    return None if value is None else to_str(value)


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
    raise Rejected(f"{value!r} is not a boolean")


def is_email(value: Any) -> bool:
    return isinstance(value, str) and _EMAIL.match(value) is not None


def first(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


def without_nulls(obj: dict[str, Any], excluded: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v is not None and k not in excluded}


def to_number_or_none(value: Any) -> Any:
    """JMESPath's to_number(): numbers stay, numeric strings parse, anything else is null."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return None


def as_list(value: Any) -> Any:
    if value is None:
        return None
    return value if isinstance(value, list) else [value]


def unique(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def normalize_event_name(name: str) -> str:
    return " ".join(_SEPARATORS.sub(" ", name).lower().split())


# -- the mapping --------------------------------------------------------------------------------------
class KlaviyoBaseline:
    def __init__(self, settings: dict[str, Any], base_url: str = BASE_URL):
        s = {**DEFAULTS, **settings}
        self.private_key = s.get("privateKey")
        self.list_id = s.get("listId")
        self.confirm_optin = s.get("confirmOptin")
        self.enforce_email = bool(s.get("enforceEmail"))
        self.send_anonymous = bool(s.get("sendAnonymous"))
        self.use_segment_spec = bool(s.get("useSegmentSpec"))
        self.send_page_events = bool(s.get("sendPageEvents"))
        self.phone_region = s.get("defaultPhoneRegion")
        headers: dict[str, str] = {}
        if self.private_key:
            headers["Authorization"] = f"Klaviyo-API-Key {self.private_key}"
        if s.get("revision") is not None:
            headers["revision"] = to_str(s["revision"])
        headers["Content-Type"] = "application/vnd.api+json"
        headers["Accept"] = "application/vnd.api+json"
        self.headers = headers
        base = base_url.rstrip("/")
        self.events_url = base + "/api/events"
        self.profile_import_url = base + "/api/profile-import"
        self.subscribe_url = base + "/api/profile-subscription-bulk-create-jobs"

    def _request(self, index: int, rule: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"event": index, "rule": rule, "method": "POST", "url": url, "headers": dict(self.headers),
                "json": body}

    def map(self, event: Any, index: int) -> list[dict[str, Any]]:
        if not isinstance(event, dict):
            return []
        kind = event.get("type")
        if kind not in ("identify", "track", "page"):
            return []  # skipped (screen, group, alias, unknown) or rejected (no type)
        if kind == "page" and not self.send_page_events:
            return []
        try:
            return self._map(event, kind, index)
        except (Rejected, EvalError):
            return []

    def _map(self, event: dict[str, Any], kind: str, index: int) -> list[dict[str, Any]]:
        user_id = opt_str(event.get("userId"))
        anonymous_given = event.get("anonymousId")
        if user_id is not None:
            profile_id = user_id
        else:
            profile_id = opt_str(anonymous_given) if self.send_anonymous else None
        traits = event.get("traits")
        properties = event.get("properties")
        email_given = first(get(traits, "email"), get(properties, "email"), get(get(event.get("context"), "traits"),
                                                                                 "email"))
        if is_email(email_given):
            email = email_given
        else:
            user = event.get("userId")
            email = user if is_email(user) else None
        if not truthy(profile_id) and not self.send_anonymous:
            raise Rejected("userId is required if you disable sending anonymous data")
        if not truthy(profile_id) and not truthy(email):
            raise Rejected("the event has neither userId nor anonymousId nor an email")
        if self.enforce_email and not truthy(email):
            raise Rejected("enforceEmail is on and the event has no email")
        external_id = None if self.enforce_email else profile_id

        profile: dict[str, Any] = {}
        if kind != "identify":
            if email is not None:
                profile["email"] = email
            if external_id is not None:
                profile["external_id"] = external_id
            if anonymous_given is not None:
                profile["anonymous_id"] = to_str(anonymous_given)
            if self.enforce_email and user_id is not None:
                profile["properties"] = {"id": user_id}

        if kind == "identify":
            return self._identify(event, index, traits, user_id, email, external_id)
        message_id = opt_str(event.get("messageId"))
        if message_id is None:
            raise NotImplementedError("the corpus always carries a messageId")
        time = first(event.get("timestamp"), event.get("originalTimestamp"), event.get("receivedAt"),
                     event.get("sentAt"))
        if time is not None:
            time = to_iso8601(time)
        if kind == "page":
            return [self._page(event, index, properties, time, message_id, profile)]
        name = event.get("event")
        if isinstance(name, str) and normalize_event_name(name) in ORDER_EVENTS:
            return self._order(event, index, properties, time, message_id, profile)
        return [self._track(index, name, properties, time, message_id, profile)]

    # identify/profile and identify/subscribe
    def _identify(self, event: dict[str, Any], index: int, traits: Any, user_id: str | None, email: Any,
                  external_id: Any) -> list[dict[str, Any]]:
        if traits is not None and not isinstance(traits, dict):
            raise Rejected("traits must be an object")
        if longest_string(traits) > 100_000:
            raise Rejected("a trait is longer than Klaviyo's 100 KB limit for a string")
        t = traits or {}
        attributes: dict[str, Any] = {}
        if email is not None:
            attributes["email"] = email
        phone = e164(first(t.get("phone"), t.get("phoneNumber"), first_item(t.get("phones"))), self.phone_region)
        if phone is not None:
            attributes["phone_number"] = phone
        if external_id is not None:
            attributes["external_id"] = external_id
        full_name = t.get("name")
        words = full_name.split() if isinstance(full_name, str) else []
        put(attributes, "first_name", first(t.get("firstName"), t.get("first_name"), words[0] if words else None))
        put(attributes, "last_name", first(t.get("lastName"), t.get("last_name"),
                                           " ".join(words[1:]) if len(words) > 1 else None))
        put(attributes, "title", first(t.get("title"), t.get("position"), t.get("jobTitle")))
        put(attributes, "organization", t.get("organization"))
        put(attributes, "image", t.get("avatar"))
        address = t.get("address")
        a = address if isinstance(address, dict) else {}
        location: dict[str, Any] = {}
        put(location, "address1", first(a.get("street"), t.get("street")))
        put(location, "city", first(a.get("city"), t.get("city")))
        put(location, "region", first(a.get("region"), a.get("state"), t.get("region"), t.get("state")))
        put(location, "country", first(a.get("country"), t.get("country")))
        put(location, "zip", first(a.get("postalCode"), a.get("postal_code"), a.get("zip"), t.get("postalCode"),
                                   t.get("zip")))
        put(location, "timezone", first(a.get("timezone"), t.get("timezone"), get(event.get("context"), "timezone")))
        if location:
            attributes["location"] = location
        properties = without_nulls(t, PROFILE_TRAITS)
        if self.enforce_email and user_id is not None:
            properties["id"] = user_id
        if properties:
            attributes["properties"] = properties
        requests = [self._request(index, "identify/profile", self.profile_import_url,
                                  {"data": {"type": "profile", "attributes": attributes}})]

        list_id = first(get(get(event.get("integrations"), "Klaviyo"), "listId"), self.list_id)
        if truthy(list_id) and truthy(email) and truthy(self.private_key):
            confirm = first(get(get(event.get("integrations"), "Klaviyo"), "confirmOptin"), self.confirm_optin)
            confirm = None if confirm is None else to_bool(confirm)
            time: Any = None
            if not confirm:
                time = first(event.get("timestamp"), event.get("originalTimestamp"), event.get("receivedAt"),
                             event.get("sentAt"))
                time = None if time is None else to_iso8601(time)
                if not truthy(time):
                    raise Rejected("confirmOptin is false, so the event needs a timestamp to send as consented_at")
            marketing: dict[str, Any] = {"consent": "SUBSCRIBED"}
            job: dict[str, Any] = {"custom_source": "Segment"}
            if not confirm:
                job["historical_import"] = True
                marketing["consented_at"] = time
            job["profiles"] = {"data": [{"type": "profile", "attributes": {
                "email": email, "subscriptions": {"email": {"marketing": marketing}}}}]}
            requests.append(self._request(index, "identify/subscribe", self.subscribe_url, {"data": {
                "type": "profile-subscription-bulk-create-job",
                "attributes": job,
                "relationships": {"list": {"data": {"type": "list", "id": to_str(list_id)}}},
            }}))
        return requests

    def _event_body(self, properties: dict[str, Any], time: Any, value: Any, currency: Any, unique_id: Any,
                    metric: str, profile: dict[str, Any]) -> dict[str, Any]:
        attributes: dict[str, Any] = {"properties": properties}
        if time is not None:
            attributes["time"] = time
        if value is not None:
            attributes["value"] = value
        if currency is not None:
            attributes["value_currency"] = currency
        attributes["unique_id"] = unique_id
        attributes["metric"] = {"data": {"type": "metric", "attributes": {"name": metric}}}
        attributes["profile"] = {"data": {"type": "profile", "attributes": profile}}
        return {"data": {"type": "event", "attributes": attributes}}

    # track/event
    def _track(self, index: int, name: Any, properties: Any, time: Any, message_id: str,
               profile: dict[str, Any]) -> dict[str, Any]:
        if name is None or name == "":
            raise Rejected("a track event needs an event name")
        metric = to_str(name)
        if len(metric) >= 128:
            raise Rejected("the event name is too long")
        if properties is not None and not isinstance(properties, dict):
            raise Rejected("properties must be an object")
        if properties is not None and len(properties) > 300:
            raise Rejected("too many properties")
        if longest_string(properties) > 100_000:
            raise Rejected("a property is too long")
        p = properties or {}
        revenue = p.get("revenue")
        unique_id = opt_str(p.get("eventId"))
        if unique_id is None:
            unique_id = opt_str(first(p.get("orderId"), p.get("order_id")))
        body = self._event_body(without_nulls(p), time, None if revenue is None else parse_amount(revenue),
                                opt_str(p.get("currency")), message_id if unique_id is None else unique_id,
                                metric, profile)
        return self._request(index, "track/event", self.events_url, body)

    # page/viewed-page
    def _page(self, event: dict[str, Any], index: int, properties: Any, time: Any, message_id: str,
              profile: dict[str, Any]) -> dict[str, Any]:
        if properties is not None and not isinstance(properties, dict):
            raise Rejected("properties is not an object")
        p = properties or {}
        page = get(event.get("context"), "page")
        out = without_nulls(p)
        put(out, "url", first(p.get("url"), get(page, "url")))
        put(out, "path", first(p.get("path"), get(page, "path")))
        put(out, "title", first(p.get("title"), get(page, "title")))
        put(out, "referrer", first(p.get("referrer"), get(page, "referrer")))
        put(out, "name", first(event.get("name"), p.get("name")))
        body = self._event_body(out, time, None, None, message_id, "Viewed Page", profile)
        return self._request(index, "page/viewed-page", self.events_url, body)

    # order/placed, then order/ordered-product for each product
    def _order(self, event: dict[str, Any], index: int, properties: Any, time: Any, message_id: str,
               profile: dict[str, Any]) -> list[dict[str, Any]]:
        if properties is not None and not isinstance(properties, dict):
            raise Rejected("properties must be an object")
        p = properties or {}
        products = p.get("products")
        if products is not None and not isinstance(products, list):
            raise Rejected("properties.products must be a list of products")
        if longest_string(properties) > 100_000:
            raise Rejected("a property is too long")
        order_id = opt_str(first(p.get("orderId"), p.get("order_id")))
        currency = opt_str(p.get("currency"))

        placed = without_nulls(p, frozenset({"products"}))
        if order_id is not None:
            placed["OrderId"] = order_id
        items: list[dict[str, Any]] = []
        if products is not None:
            categories, names = [], []
            for product in products:
                if isinstance(product, dict):
                    if product.get("category") is not None:
                        categories.append(product["category"])
                    if product.get("name") is not None:
                        names.append(product["name"])
                    items.append(order_item(product))
            placed["Categories"] = unique(categories)
            placed["ItemNames"] = names
        placed["Items"] = items
        revenue, total = p.get("revenue"), p.get("total")
        value = None if revenue is None else parse_amount(revenue)
        if value is None and total is not None:
            value = parse_amount(total)
        unique_id = order_id
        if unique_id is None:
            unique_id = first(opt_str(p.get("eventId")), message_id)
        metric = "Order Completed" if self.use_segment_spec else "Placed Order"
        requests = [self._request(index, "order/placed", self.events_url,
                                  self._event_body(placed, time, value, currency, unique_id, metric, profile))]

        for product in products or ():
            try:
                request = self._ordered_product(index, product, order_id, message_id, currency, time, profile)
            except (Rejected, EvalError):
                continue  # this product is rejected, the others go on
            if request is not None:
                requests.append(request)
        return requests

    def _ordered_product(self, index: int, item: Any, order_id: str | None, message_id: str, currency: Any,
                         time: Any, profile: dict[str, Any]) -> dict[str, Any] | None:
        if not isinstance(item, dict):
            return None
        product_id = first(item.get("productId"), item.get("product_id"), item.get("id"))
        product_key = opt_str(first(product_id, item.get("sku")))
        if product_key is None:
            return None
        properties = without_nulls(item, ITEM_FIELDS)
        if order_id is not None:
            properties["OrderId"] = order_id
        put(properties, "ProductID", opt_str(product_id))
        put(properties, "SKU", item.get("sku"))
        put(properties, "ProductName", item.get("name"))
        quantity = item.get("quantity")
        properties["Quantity"] = 1 if quantity is None else to_number(quantity)
        put(properties, "ProductCategories", as_list(item.get("category")))
        put(properties, "ProductURL", first(item.get("productUrl"), item.get("product_url"), item.get("url")))
        put(properties, "ImageURL", first(item.get("imageUrl"), item.get("image_url")))
        price = item.get("price")
        body = self._event_body(properties, time, None if price is None else parse_amount(price), currency,
                                f"{order_id or message_id}_{product_key}", "Ordered Product", profile)
        return self._request(index, "order/ordered-product", self.events_url, body)


def first_item(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else None


def put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


def order_item(item: dict[str, Any]) -> dict[str, Any]:
    """One product of an order, as the order event's Items list holds it (tables.yaml order_item)."""
    out: dict[str, Any] = {}
    put(out, "ProductID", opt_str(first(item.get("productId"), item.get("product_id"), item.get("id"))))
    put(out, "SKU", item.get("sku"))
    put(out, "ProductName", item.get("name"))
    quantity = item.get("quantity")
    out["Quantity"] = 1 if quantity is None else to_number(quantity)
    price = item.get("price")
    amount = None if price is None else parse_amount(price)
    put(out, "ItemPrice", amount)
    count = to_number_or_none(quantity)
    if amount is not None:
        put(out, "RowTotal", multiply(amount, 1 if count is None else count))
    put(out, "ProductURL", first(item.get("productUrl"), item.get("product_url"), item.get("url")))
    put(out, "ImageURL", first(item.get("imageUrl"), item.get("image_url")))
    put(out, "Categories", as_list(item.get("category")))
    return out
