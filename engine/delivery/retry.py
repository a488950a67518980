"""What to do with an answer: deliver, retry (and when), dead-letter, or stop the run.

The statuses and timings come from the mapping set's `retry`, `stop` and `errors` sections.
Backoff is capped, jittered and exponential: `initial * multiplier**(n-1)`, at most `max`, then
spread by ±`jitter`; a 429 waits at least its Retry-After.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from .config import DeliveryPlan, Endpoint, RetryPolicy

DELIVERED, RETRY, ITEM_ERRORS, DEAD, STOP = "delivered", "retry", "item_errors", "dead", "stop"


@dataclass
class Verdict:
    action: str
    reason: str = ""


def classify(policy: RetryPolicy, status: int | None, stop: dict[int, str], item_error_status: int | None,
             batched: bool) -> Verdict:
    """`status` None means the request got no answer (a network error or a timeout)."""
    if status is None:
        return Verdict(RETRY if policy.network_errors else DEAD, "network error")
    if 200 <= status < 300:
        return Verdict(DELIVERED)
    if status in stop:
        return Verdict(STOP, stop[status])
    if status in policy.statuses:
        return Verdict(RETRY, f"HTTP {status}")
    if batched and status == item_error_status:
        return Verdict(ITEM_ERRORS, f"HTTP {status}")
    return Verdict(DEAD, f"HTTP {status}")


def backoff(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Seconds (API time) before try number attempt+1, after `attempt` failures (attempt ≥ 1)."""
    base = min(policy.max_delay, policy.initial * policy.multiplier ** max(attempt - 1, 0))
    if policy.jitter:
        base *= rng.uniform(1.0 - policy.jitter, 1.0 + policy.jitter)
    return float(min(base, policy.max_delay))


def retry_after(value: Any) -> float | None:
    """A Retry-After header: delta-seconds, or an HTTP date. None when absent or unreadable."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    import datetime

    now = datetime.datetime.now(when.tzinfo or datetime.timezone.utc)
    return max((when - now).total_seconds(), 0.0)


def answer_errors(plan: DeliveryPlan, text: str | None) -> list[Any]:
    """The errors of an error answer's body (the set's `errors.list`), [] when there are none."""
    if not text or plan.error_list is None:
        return []
    try:
        found = plan.error_list.search(json.loads(text))
    except ValueError:
        return []
    return found if isinstance(found, list) else []


def stop_message(plan: DeliveryPlan, endpoint: Endpoint | None, where: str, status: int | None, template: str,
                 text: str | None) -> str:
    """A stop answer explained: the set's `stop` message for it (with {endpoint}, {scopes}, {status}
    filled in) and what the API itself said. Not masked: the caller masks secrets."""
    name = endpoint.name if endpoint is not None else where
    scopes = ", ".join(endpoint.scopes) if endpoint is not None and endpoint.scopes else "(not listed)"
    try:
        message = template.format(endpoint=name, scopes=scopes, status=status)
    except (KeyError, IndexError, ValueError):
        message = template
    detail = ""
    errors = answer_errors(plan, text)
    if errors and plan.error_detail is not None:
        detail = "; ".join(str(plan.error_detail.search(e)) for e in errors)
    elif text:
        detail = text[:200]
    return f"HTTP {status} on {where} ({name}): {message}" + (f" — the API said: {detail}" if detail else "")
