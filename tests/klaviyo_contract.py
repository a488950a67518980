"""What every request of the `klaviyo` set must satisfy: Klaviyo's OpenAPI spec, and what the spec can't say."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from conftest import KLAVIYO_SPEC

from engine import Request
from engine.openapi_check import load_openapi

IDENTIFIERS = ("email", "phone_number", "external_id", "anonymous_id")


def _nulls(value: Any, path: str = "") -> list[str]:
    """Null fields of the request, where null would clear a stored value. A `properties` object is
    checked one level deep: what is inside a property's value is the sender's own data."""
    if value is None:
        return [path or "/"]
    if isinstance(value, dict):
        if path.endswith("/properties"):
            return [f"{path}/{k}" for k, v in value.items() if v is None]
        return [p for k, v in value.items() for p in _nulls(v, f"{path}/{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nulls(v, f"{path}/{i}")]
    return []


def contract_violations(request: Request) -> list[str]:
    """Every way one request breaks Klaviyo's contract; [] when it is good to send."""
    problems: list[str] = []
    url = urlsplit(request.url)
    spec = load_openapi(str(KLAVIYO_SPEC))
    problems += spec.validate_body(request.method, url.path, request.body)
    headers = request.headers
    if headers.get("revision") != "2026-07-15" and not str(headers.get("revision", "")).startswith("20"):
        problems.append(f"revision header {headers.get('revision')!r}")
    if headers.get("Content-Type") != "application/vnd.api+json":
        problems.append("Content-Type is not application/vnd.api+json")
    body = request.body
    problems += [f"null at {p} (null clears a Klaviyo field)" for p in _nulls(body)]
    attributes = body["data"]["attributes"] if isinstance(body, dict) and "data" in body else {}
    if url.path == "/api/events":
        name = attributes["metric"]["data"]["attributes"]["name"]
        if not isinstance(name, str) or not 0 < len(name) < 128:
            problems.append(f"metric name {name!r} must be 1 to 127 characters")
        profile = attributes["profile"]["data"]["attributes"]
        if not any(profile.get(k) for k in IDENTIFIERS):
            problems.append("event profile has no identifier")
        if not attributes.get("unique_id"):
            problems.append("event has no unique_id")
        if len(attributes["properties"]) > 300:
            problems.append("more than 300 event properties")
    elif url.path == "/api/profile-import":
        if not any(attributes.get(k) for k in IDENTIFIERS[:3]):
            problems.append("profile import has no identifier")
    elif url.path == "/api/profile-subscription-bulk-create-jobs":
        profiles = attributes["profiles"]["data"]
        if not 0 < len(profiles) <= 1000:
            problems.append(f"{len(profiles)} profiles in one subscription job (1 to 1,000)")
        historical = attributes.get("historical_import") is True
        for profile in profiles:
            marketing = profile["attributes"]["subscriptions"]["email"]["marketing"]
            if ("consented_at" in marketing) != historical:
                problems.append("consented_at goes with historical_import: true, and only with it")
    else:
        problems.append(f"unexpected endpoint {url.path}")
    return problems
