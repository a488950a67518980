"""Request chains at delivery: a request whose answer decides the next requests (a look-up, then a
call with what it found).

A unit that starts (or continues) a chain carries `chain`, JSON text made by whoever mapped the
event. The worker reads two parts of it: `subject` (`{"lane": …, "identifiers": {name: value}}`), the
ordering keys the whole chain holds, so that the subject's other requests in that lane wait for the
chain's last step as they would for a single request; and `end` (true: this unit is the chain's last
step, nothing follows its answer; the worker gives the next step's requests the previous step's
subject and `end` when their runner gave them no chain of their own, and the outbox records that).
The rest is for the `ChainRunner`, which turns
the answer into the next step's requests (`NextStep`). When the unit is answered 2xx, the worker
records them with `Outbox.mark_step`, in the transaction that marks the unit delivered; a step with
nothing to do (a look-up that found nothing) ends the event **delivered, with the reason** (the
event's `reason` and a note), because its requests all succeeded and there is nothing left to send.
A runner that cannot make the next step (`ChainError`: an answer it cannot read) dead-letters the
unit with the answer that condemned it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from .outbox import NewUnit


class ChainError(Exception):
    """The next step cannot be made from this answer (the message says why)."""


@dataclass
class NextStep:
    """What follows a chain's step: its requests (sealed, as recorded; they may carry the step after
    them), or nothing, with the reason."""

    units: list[NewUnit] = field(default_factory=list)
    skipped: str | None = None


class ChainRunner(Protocol):
    def next_step(self, chain: str, answer: Any) -> NextStep:
        """The next step for a unit's `chain` text, given the JSON answer to the unit (None when the
        answer had no body). Raises ChainError when it cannot be made."""
        ...


def chain_subject(chain: str) -> tuple[str, dict[str, str]] | None:
    """The lane and identifiers a chain holds its order by (None: it holds only its event's order)."""
    try:
        subject = json.loads(chain).get("subject")
    except (ValueError, AttributeError):
        return None
    if not isinstance(subject, dict) or not isinstance(subject.get("lane"), str):
        return None
    identifiers = subject.get("identifiers")
    if not isinstance(identifiers, dict):
        return None
    return subject["lane"], {str(k): str(v) for k, v in identifiers.items() if v not in (None, "")}


def chain_continues(chain: str | None) -> bool:
    """Whether a unit's answer makes a next step (a chain that is not at its end)."""
    if chain is None:
        return False
    try:
        return json.loads(chain).get("end") is not True
    except (ValueError, AttributeError):
        return True  # unreadable: the runner says why, and the unit is dead-lettered with its answer


def inherit_subject(previous: str, chain: str | None) -> str:
    """A next step's chain text: its own (given the previous step's subject when it has none), or the
    previous step's subject with `end`."""
    subject = json.loads(previous).get("subject")
    if chain is None:
        return json.dumps({"subject": subject, "end": True}, ensure_ascii=False)
    own = json.loads(chain)
    if isinstance(own, dict) and "subject" not in own:
        own["subject"] = subject
        return json.dumps(own, ensure_ascii=False)
    return chain
