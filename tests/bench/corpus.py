"""A deterministic corpus of Segment events for the benchmarks, and the settings profiles it is mapped with.

`generate(n, seed)` always yields the same n events for the same seed: a realistic mix of

    45% track (assorted event names, nested properties, sometimes revenue, eventId, email)
    35% identify (traits: names, emails, phones in several formats, addresses, nested custom traits)
    10% Order Completed (in the spellings the Segment spec allows, 1-5 products each)
     5% page
     5% others (screen, group, alias)

Most events carry a userId, many an anonymousId too; some only an anonymousId, so that the
identity rules reject or accept them depending on the settings. The corpus is mapped in slices,
one per settings profile (`PROFILES`), so every settings toggle of the `klaviyo` set is exercised.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator
from typing import Any

# Settings profiles: the corpus is cut into len(PROFILES) contiguous slices, one per profile.
PROFILES: list[dict[str, Any]] = [
    {   # the common case: a list to subscribe to, US phone numbers
        "privateKey": "pk_bench_0000000000000000000000000000",
        "listId": "Y6nRLr",
        "defaultPhoneRegion": "US",
    },
    {   # anonymous traffic and page views on, consent already given (historical imports), UK numbers
        "privateKey": "pk_bench_1111111111111111111111111111",
        "listId": "Xk29Qp",
        "confirmOptin": False,
        "sendAnonymous": True,
        "sendPageEvents": True,
        "defaultPhoneRegion": "GB",
    },
    {   # email is the only identifier; Placed Order naming; no list
        "privateKey": "pk_bench_2222222222222222222222222222",
        "enforceEmail": True,
        "sendAnonymous": True,
        "useSegmentSpec": False,
    },
    {   # pages on, an older revision, no phone region
        "privateKey": "pk_bench_3333333333333333333333333333",
        "listId": "Rt5vWz",
        "sendPageEvents": True,
        "revision": "2026-04-15",
    },
]

FIRST_NAMES = ["Ada", "Grace", "Alan", "Serena", "Jean-Luc", "Émilie", "Kwame", "Mei", "Olga", "Ravi", "Zoë", "Tom"]
LAST_NAMES = ["Lovelace", "Hopper", "Turing", "Williams", "Picard", "du Châtelet", "Mensah", "Chen", "Ivanova",
              "Shankar", "van der Berg", "O'Neil"]
DOMAINS = ["example.com", "mail.example.org", "shop.example.net", "corp.example.io"]
CITIES = [("San Francisco", "CA", "US", "94105", "America/Los_Angeles"), ("New York", "NY", "US", "10001",
          "America/New_York"), ("London", None, "GB", "EC1A 1BB", "Europe/London"), ("Berlin", "BE", "DE", "10115",
          "Europe/Berlin"), ("Austin", "TX", "US", "73301", "America/Chicago")]
PLANS = ["free", "pro", "enterprise", "trial"]
TRACK_EVENTS = ["Product Viewed", "Product Added", "Product Removed", "Cart Viewed", "Checkout Started",
                "Signed Up", "Signed In", "Video Playback Started", "Email Opened", "Coupon Applied",
                "Products Searched", "Promotion Clicked", "Subscription Renewed", "Feature Used", "Item Added"]
ORDER_NAMES = ["Order Completed", "Order Completed", "Order Completed", "order_completed", "Completed Order",
               "order-completed"]
OTHER_TYPES = ["screen", "group", "alias"]
CATEGORIES = ["Games", "Books", "Apparel", "Electronics", "Garden", "Toys"]
CURRENCIES = ["USD", "USD", "USD", "EUR", "GBP"]
PAGES = [("Home", "/", "Acme"), ("Pricing", "/pricing", "Pricing - Acme"), ("Docs", "/docs/start", "Docs - Acme"),
         ("Blog", "/blog/2026/launch", "Launch - Acme Blog")]


def _id(rng: random.Random, length: int = 12) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=length))


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def _timestamp(rng: random.Random) -> str:
    day, hour, minute, second = rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
    base = f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    roll = rng.random()
    if roll < 0.6:
        return base + f".{rng.randint(0, 999):03d}Z"
    if roll < 0.9:
        return base + "Z"
    return base + "+02:00"


def _phone(rng: random.Random) -> str:
    roll = rng.random()
    digits = f"{rng.randint(200, 989)}555{rng.randint(1000, 9999)}"
    if roll < 0.4:
        return "+1" + digits
    if roll < 0.7:
        return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"
    if roll < 0.85:
        return f"+44 20 7946 {rng.randint(1000, 9999)}"
    return f"555-{rng.randint(1000, 9999)}"  # too short: never E.164


def _email(rng: random.Random, first: str, last: str) -> str:
    if rng.random() < 0.03:
        return f"{first.lower()} at nowhere"  # not an email: left out, with a warning
    local = f"{first}.{last}".lower().replace(" ", "").replace("'", "")
    return f"{local}{rng.randint(1, 999)}@{rng.choice(DOMAINS)}"


def _context(rng: random.Random) -> dict[str, Any]:
    context: dict[str, Any] = {
        "ip": f"203.0.113.{rng.randint(1, 254)}",
        "library": {"name": rng.choice(["analytics.js", "analytics-python", "analytics-node"]),
                    "version": f"{rng.randint(1, 4)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"},
        "locale": rng.choice(["en-US", "en-GB", "de-DE", "fr-FR"]),
    }
    if rng.random() < 0.5:
        context["userAgent"] = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15"
    if rng.random() < 0.3:
        context["timezone"] = rng.choice(CITIES)[4]
    return context


def _envelope(rng: random.Random, kind: str) -> dict[str, Any]:
    event: dict[str, Any] = {"type": kind, "messageId": _uuid(rng)}
    roll = rng.random()
    if roll < 0.80:
        event["userId"] = _id(rng)
        if rng.random() < 0.5:
            event["anonymousId"] = _uuid(rng)
    elif roll < 0.82:
        event["userId"] = f"{_id(rng, 6)}@{rng.choice(DOMAINS)}"  # a userId that is an email
    else:
        event["anonymousId"] = _uuid(rng)
    if rng.random() < 0.85:
        event["timestamp"] = _timestamp(rng)
    else:
        event["originalTimestamp"] = _timestamp(rng)
    event["sentAt"] = _timestamp(rng)
    event["context"] = _context(rng)
    if rng.random() < 0.1:
        override: dict[str, Any] = {"listId": rng.choice(["ListA1", "ListB2"])}
        if rng.random() < 0.5:
            override["confirmOptin"] = rng.random() < 0.5
        event["integrations"] = {"All": True, "Klaviyo": override}
    return event


def _traits(rng: random.Random) -> dict[str, Any]:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    traits: dict[str, Any] = {}
    roll = rng.random()
    if roll < 0.5:
        traits["firstName"], traits["lastName"] = first, last
    elif roll < 0.8:
        traits["name"] = f"{first} {last}"
    elif roll < 0.9:
        traits["first_name"], traits["last_name"] = first, last
    if rng.random() < 0.85:
        traits["email"] = _email(rng, first, last)
    if rng.random() < 0.35:
        traits[rng.choice(["phone", "phone", "phoneNumber"])] = _phone(rng)
    elif rng.random() < 0.05:
        traits["phones"] = [_phone(rng), _phone(rng)]
    if rng.random() < 0.4:
        city, state, country, postal, tz = rng.choice(CITIES)
        if rng.random() < 0.6:
            address: dict[str, Any] = {"street": f"{rng.randint(1, 999)} Main St", "city": city,
                                       "country": country, "postalCode": postal}
            if state:
                address["state"] = state
            traits["address"] = address
        else:
            traits.update({"city": city, "country": country, "zip": postal})
            if state:
                traits["state"] = state
        if rng.random() < 0.3:
            traits["timezone"] = tz
    if rng.random() < 0.3:
        traits[rng.choice(["title", "jobTitle", "position"])] = rng.choice(["CTO", "Engineer", "Buyer", "Founder"])
    if rng.random() < 0.3:
        traits["organization"] = rng.choice(["Acme", "Globex", "Initech", "Umbrella"])
    if rng.random() < 0.2:
        traits["avatar"] = f"https://cdn.example.com/avatars/{_id(rng)}.png"
    traits["plan"] = rng.choice(PLANS)
    traits["logins"] = rng.randint(0, 500)
    if rng.random() < 0.6:
        traits["createdAt"] = _timestamp(rng)
    if rng.random() < 0.4:
        traits["company"] = {"name": rng.choice(["Acme", "Globex"]), "employees": rng.randint(1, 5000),
                             "industry": rng.choice(["Retail", "Software", "Media"])}
    if rng.random() < 0.3:
        traits["tags"] = rng.sample(["vip", "beta", "newsletter", "churn-risk", "wholesale"], k=rng.randint(1, 3))
    if rng.random() < 0.2:
        traits["preferences"] = {"sms": rng.random() < 0.5, "email": {"weekly": rng.random() < 0.5,
                                                                       "topics": ["news", "offers"]}}
    if rng.random() < 0.1:
        traits["nickname"] = None  # nulls are left out of properties
    return traits


def _product(rng: random.Random) -> dict[str, Any]:
    product: dict[str, Any] = {}
    key = rng.choice(["product_id", "productId", "id"])
    product[key] = _id(rng, 10)
    if rng.random() < 0.9:
        product["sku"] = f"{rng.randint(10000, 99999)}-{rng.randint(10, 99)}"
    product["name"] = rng.choice(["Monopoly", "Uno", "Trail Shoes", "Desk Lamp", "Kettle", "Sci-Fi Novel"])
    roll = rng.random()
    if roll < 0.7:
        product["price"] = round(rng.uniform(1, 300), 2)
    elif roll < 0.9:
        product["price"] = f"{rng.uniform(1, 300):.2f}"
    else:
        product["price"] = rng.randint(1, 300)
    if rng.random() < 0.85:
        product["quantity"] = rng.randint(1, 4) if rng.random() < 0.9 else str(rng.randint(1, 4))
    if rng.random() < 0.8:
        product["category"] = rng.choice(CATEGORIES)
    if rng.random() < 0.5:
        product["url"] = f"https://shop.example.com/p/{product[key]}"
    if rng.random() < 0.4:
        product["image_url"] = f"https://cdn.example.com/p/{product[key]}.jpg"
    if rng.random() < 0.4:
        product["brand"] = rng.choice(["Hasbro", "Mattel", "Acme"])
    if rng.random() < 0.3:
        product["variant"] = rng.choice(["red", "blue", "large"])
    return product


def _track_properties(rng: random.Random, name: str) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    if name.startswith("Product") or name == "Item Added":
        properties.update({"product_id": _id(rng, 10), "name": rng.choice(["Trail Shoes", "Kettle", "Desk Lamp"]),
                           "price": round(rng.uniform(5, 200), 2), "category": rng.choice(CATEGORIES)})
        if rng.random() < 0.5:
            properties["cart"] = {"id": _id(rng), "items": rng.randint(1, 9), "value": round(rng.uniform(5, 900), 2)}
    else:
        properties.update({"source": rng.choice(["web", "ios", "android"]), "step": rng.randint(1, 5)})
        if rng.random() < 0.4:
            properties["experiment"] = {"name": "checkout-v2", "variant": rng.choice(["a", "b"]),
                                        "flags": ["fast-pay", "one-click"]}
    if rng.random() < 0.25:
        properties["revenue"] = round(rng.uniform(1, 500), 2) if rng.random() < 0.8 else f"${rng.uniform(1, 500):.2f}"
        properties["currency"] = rng.choice(CURRENCIES)
    if rng.random() < 0.1:
        properties["eventId"] = _uuid(rng)
    if rng.random() < 0.05:
        properties["orderId"] = _id(rng)
    if rng.random() < 0.1:
        properties["email"] = _email(rng, rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES))
    if rng.random() < 0.1:
        properties["coupon"] = None
    return properties


def _event(rng: random.Random) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.45:
        event = _envelope(rng, "track")
        name = rng.choice(TRACK_EVENTS)
        event["event"] = name
        event["properties"] = _track_properties(rng, name)
        if rng.random() < 0.1:
            event["context"]["traits"] = {"email": _email(rng, rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES))}
    elif roll < 0.80:
        event = _envelope(rng, "identify")
        event["traits"] = _traits(rng)
    elif roll < 0.90:
        event = _envelope(rng, "track")
        event["event"] = rng.choice(ORDER_NAMES)
        products = [_product(rng) for _ in range(rng.randint(1, 5))]
        total = round(sum(float(p["price"]) * int(p.get("quantity", 1)) for p in products), 2)
        properties: dict[str, Any] = {
            "checkout_id": _id(rng),
            "total": total,
            "revenue": round(total * 0.9, 2),
            "shipping": round(rng.uniform(0, 15), 2),
            "tax": round(total * 0.08, 2),
            "currency": rng.choice(CURRENCIES),
            "products": products,
        }
        if rng.random() < 0.9:
            properties[rng.choice(["orderId", "order_id"])] = _id(rng, 16)
        if rng.random() < 0.3:
            properties["coupon"] = rng.choice(["SPRING10", "WELCOME", "VIP"])
            properties["discount"] = round(rng.uniform(1, 20), 2)
        if rng.random() < 0.2:
            properties["affiliation"] = "Online Store"
        event["properties"] = properties
    elif roll < 0.95:
        event = _envelope(rng, "page")
        page_name, path, title = rng.choice(PAGES)
        event["name"] = page_name
        url = f"https://www.example.com{path}"
        if rng.random() < 0.7:
            event["properties"] = {"url": url, "path": path, "title": title,
                                   "referrer": rng.choice(["", "https://www.google.com/", "https://news.example/"])}
        else:
            event["properties"] = {"section": "marketing"}
            event["context"]["page"] = {"url": url, "path": path, "title": title, "referrer": ""}
    else:
        kind = rng.choice(OTHER_TYPES)
        event = _envelope(rng, kind)
        if kind == "screen":
            event["name"] = "Home Screen"
            event["properties"] = {"variation": "blue"}
        elif kind == "group":
            event["groupId"] = _id(rng)
            event["traits"] = {"name": "Acme", "industry": "Retail", "employees": rng.randint(1, 900)}
        else:
            event["previousId"] = _uuid(rng)
    return event


def generate(n: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """The corpus: n events, always the same for the same seed (each event from its own generator
    state, so a prefix of a longer corpus is the shorter corpus)."""
    rng = random.Random(seed)
    for _ in range(n):
        yield _event(rng)


def slices(n: int, profiles: int = len(PROFILES)) -> list[tuple[int, int]]:
    """The [start, stop) ranges of the corpus each settings profile maps."""
    bounds = [n * i // profiles for i in range(profiles + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(profiles)]


def write_ndjson(path: str, n: int, seed: int = 7) -> None:
    """Write the corpus as NDJSON (one event a line), streaming: memory does not grow with n."""
    dumps = json.dumps
    with open(path, "w", encoding="utf-8") as out:
        buffer: list[str] = []
        for event in generate(n, seed):
            buffer.append(dumps(event, ensure_ascii=False, separators=(",", ":")))
            if len(buffer) >= 5000:
                out.write("\n".join(buffer) + "\n")
                buffer.clear()
        if buffer:
            out.write("\n".join(buffer) + "\n")


if __name__ == "__main__":
    import sys

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    for item in generate(count):
        print(json.dumps(item, ensure_ascii=False))
