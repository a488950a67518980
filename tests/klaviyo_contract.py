"""What every request of the `klaviyo` set must satisfy: Klaviyo's OpenAPI spec, and what the spec can't say."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

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


# path -> (profiles per job, the only consent value allowed)
SUBSCRIPTION_JOBS = {"/api/profile-subscription-bulk-create-jobs": (1000, "SUBSCRIBED"),
                     "/api/profile-subscription-bulk-delete-jobs": (100, "UNSUBSCRIBED")}
CHANNEL_IDENTIFIERS = {"email": "email", "sms": "phone_number"}
E164 = re.compile(r"^\+[1-9]\d{1,14}$")


def _format_problems(attributes: dict[str, Any]) -> list[str]:
    problems = []
    if "email" in attributes and "@" not in str(attributes["email"]):
        problems.append(f"email {attributes['email']!r} is not an email address")
    if "phone_number" in attributes and not E164.match(str(attributes["phone_number"])):
        problems.append(f"phone_number {attributes['phone_number']!r} is not E.164")
    return problems


def _channel_problems(attributes: dict[str, Any], consent: str, historical: bool) -> list[str]:
    """A (un)subscription profile: each channel has its identifier and each identifier its channel,
    consent is the job's one value, consented_at comes with historical_import and only with it."""
    problems = _format_problems(attributes)
    channels = attributes["subscriptions"]
    if not channels:
        problems.append("a profile with no channel to (un)subscribe")
    for channel, identifier in CHANNEL_IDENTIFIERS.items():
        if (channel in channels) != (identifier in attributes):
            problems.append(f"the {channel} channel goes with {identifier}, and only with it")
    for channel, settings in channels.items():
        marketing = settings.get("marketing", {})
        if marketing.get("consent") != consent:
            problems.append(f"{channel} consent {marketing.get('consent')!r}, not {consent}")
        if ("consented_at" in marketing) != historical:
            problems.append("consented_at goes with historical_import: true, and only with it")
    return problems


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
    if request.method != "GET":  # a look-up has no body
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
    elif url.path in SUBSCRIPTION_JOBS:
        limit, consent = SUBSCRIPTION_JOBS[url.path]
        profiles = attributes["profiles"]["data"]
        if not 0 < len(profiles) <= limit:
            problems.append(f"{len(profiles)} profiles in one job (1 to {limit:,})")
        historical = attributes.get("historical_import") is True
        for profile in profiles:
            problems += _channel_problems(profile["attributes"], consent, historical)
    elif url.path == "/api/data-privacy-deletion-jobs":
        identifiers = [k for k, v in attributes["profile"]["data"]["attributes"].items() if v]
        if len(identifiers) != 1 or identifiers[0] not in ("email", "phone_number"):
            problems.append(f"a deletion names exactly one of email, phone_number, not {identifiers}")
        problems += _format_problems(attributes["profile"]["data"]["attributes"])
    elif url.path == "/api/profile-bulk-import-jobs":
        profiles = attributes["profiles"]["data"]
        if not 0 < len(profiles) <= 10_000:
            problems.append(f"{len(profiles)} profiles in one job (1 to 10,000)")
        for profile in profiles:
            if not any(profile["attributes"].get(k) for k in IDENTIFIERS[:3]):
                problems.append("an imported profile has no identifier")
            problems += _format_problems(profile["attributes"])
        lists = body["data"].get("relationships", {}).get("lists", {}).get("data", [])
        if not lists or not all(isinstance(x.get("id"), str) and x["id"] for x in lists):
            problems.append(f"a rule's bulk import names the lists it adds to, each with an id, not {lists}")
    elif url.path == "/api/profiles" and request.method == "GET":  # a request chain's look-up
        filters = parse_qs(url.query).get("filter", [])
        found = re.fullmatch(r'equals\((email|phone_number|external_id),"([^"]+)"\)', filters[0]) if filters else None
        if len(filters) != 1 or found is None:
            problems.append(f"a look-up filters by one identifier, equals(NAME,\"VALUE\"), not {filters}")
        elif found.group(1) == "phone_number":
            problems += _format_problems({"phone_number": found.group(2)})
    else:
        problems.append(f"unexpected endpoint {url.path}")
    return problems
