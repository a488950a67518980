"""Checking an API key before sending anything: the one call a mapping set declares for it.

A set's delivery section names the call (`check: {endpoint: NAME, shows: EXPRESSION}`): one that
any working key may make and that changes nothing. Its answer decides: 2xx — the key works (`shows`
picks what to print of the answer, e.g. the account's name); a status in the set's `stop` section
(401, 403) — the key cannot be used, with the set's message for it; anything else (429, 5xx, no
answer) — the check could not tell. The report also lists the scopes the set's endpoints need (from
the OpenAPI document's scopes extension), since an API tells which scope a key lacks only when a
call needs it. Secrets never appear in the report: it is masked with the settings' secret values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from .config import DeliveryPlan
from .jobs import read_json
from .retry import stop_message
from .sealing import Sealer

USABLE, REFUSED, UNKNOWN = "usable", "refused", "unknown"


@dataclass
class KeyCheckResult:
    verdict: str  # USABLE, REFUSED (the API refused the key) or UNKNOWN (no clear answer)
    status: int | None  # the HTTP status, None without an answer
    lines: list[str] = field(default_factory=list)  # the report, secrets masked


def scopes_needed(plan: DeliveryPlan) -> dict[str, list[str]]:
    """Each scope the set's endpoints need → the endpoints that need it (sorted by scope)."""
    needed: dict[str, list[str]] = {}
    for endpoint in plan.endpoints.values():
        for scope in endpoint.scopes:
            needed.setdefault(scope, []).append(endpoint.name)
    return dict(sorted(needed.items()))


def check_key(plan: DeliveryPlan, base_url: str, headers: dict[str, str], sealer: Sealer,
              transport: httpx.BaseTransport | None = None) -> KeyCheckResult:
    """Make the set's check call with these headers and say what its answer means."""
    if plan.key_check is None:
        raise ValueError(f"mapping set {plan.set_name!r} declares no key check (check: in its delivery section)")
    endpoint = plan.key_check.endpoint
    where = f"{endpoint.method} {endpoint.path}"
    url = base_url.rstrip("/") + endpoint.path
    try:
        with httpx.Client(timeout=plan.retry.timeout, transport=transport) as client:
            response = client.request(endpoint.method, url, headers=headers)
    except httpx.HTTPError as exc:
        result = KeyCheckResult(UNKNOWN, None, [f"could not check the key: {where} got no answer "
                                                f"from {base_url}: {type(exc).__name__}: {exc}"])
    else:
        result = _judge(plan, where, response.status_code, response.text)
    result.lines.append("the mapping set's endpoints need these scopes (the API names one a key lacks only "
                        "when a call needs it, with a 403):")
    width = max((len(s) for s in scopes_needed(plan)), default=0)
    for scope, names in scopes_needed(plan).items():
        result.lines.append(f"  {scope.ljust(width)}  {', '.join(names)}")
    result.lines = [sealer.mask(line) for line in result.lines]
    return result


def _judge(plan: DeliveryPlan, where: str, status: int, text: str) -> KeyCheckResult:
    assert plan.key_check is not None
    if 200 <= status < 300:
        shown = _shown(plan, text)
        return KeyCheckResult(USABLE, status, [f"the key works: {where} answered {status}"
                                               + (f" (account: {shown})" if shown else "")])
    template = plan.stop.get(status)
    if template is not None:
        message = stop_message(plan, plan.key_check.endpoint, where, status, template, text)
        return KeyCheckResult(REFUSED, status, [f"the key cannot be used: {message}"])
    detail = stop_message(plan, plan.key_check.endpoint, where, status,
                          "the answer says nothing about the key; try again later", text)
    return KeyCheckResult(UNKNOWN, status, [f"could not check the key: {detail}"])


def _shown(plan: DeliveryPlan, text: str) -> str | None:
    assert plan.key_check is not None
    body = read_json(text)
    if plan.key_check.shows is None or body is None:
        return None
    value = plan.key_check.shows.search(body)
    return None if value is None else str(value)
