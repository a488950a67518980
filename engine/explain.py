"""`map --explain`: why each rule did what it did with an event, as one JSON object per event.

A Mapper built with `explain=True` generates its rules' code with the recording written in (which
source path a `select` took, a `when` that was false) and runs every top-level rule through a
wrapper that notes its outcome. A normal Mapper's code has none of it: explaining costs nothing
when it is off. One Explainer belongs to one Mapper and holds the trace of the event being mapped
(a Mapper maps one event at a time).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .ir import Rule
from .runtime import event_name_matches

if TYPE_CHECKING:  # (evaluate imports this module)
    from .evaluate import MapResult

Runner = Callable[[dict[str, Any], str, Any, "MapResult"], bool]
Entry = dict[str, Any]


class RuleRecorder:
    """What one rule's generated code records while it runs: the source path each `select` took
    (or None: none present), one dict per request built, and whether its `when` was false."""

    def __init__(self, field_sources: dict[str, str | None] | None = None) -> None:
        # (the Mapper's named values record into the same dict as its rules: see Mapper)
        self.field_sources: dict[str, str | None] = {} if field_sources is None else field_sources
        self.requests: list[dict[str, str | None]] = []
        self.when_false = False

    def request_built(self) -> None:
        self.requests.append(dict(self.field_sources))
        self.field_sources.clear()

    def condition_false(self) -> None:
        self.when_false = True


class Explainer:
    def __init__(self) -> None:
        self.trace: list[Entry] = []

    def wrap(self, rule: Rule, run: Runner, recorder: RuleRecorder) -> Runner:
        """`run` with its outcome noted: every rule is called (the Mapper's dispatch by type and
        name is off), so a rule that does not match says on what."""
        trace = self.trace

        def run_explained(scope: dict[str, Any], event_type: str, event_name: Any, result: MapResult) -> bool:
            entry: Entry = {"rule": rule.name}
            trace.append(entry)  # before a group's own rules' entries
            why_not = _not_matched(rule, event_type, event_name)
            if why_not is not None:
                entry.update(outcome="not matched", why=why_not)
                return False
            recorder.field_sources.clear()
            recorder.requests.clear()
            recorder.when_false = False
            requests, items, warnings = len(result.requests), len(result.item_rejections), len(result.warnings)
            skipped, rejection = result.skipped, result.rejection
            stop = run(scope, event_type, event_name, result)
            _describe(entry, rule, recorder, result, stop, requests, items, skipped, rejection)
            if len(result.warnings) > warnings and rule.action != "group":
                entry["warnings"] = result.warnings[warnings:]
            return stop

        return run_explained

    def explanation(self, result: MapResult, rules: list[Rule]) -> Entry:
        """The event's explanation line, from the trace of its mapping (which is then cleared); the
        top-level rules after one that ended the event are listed as not run."""
        entries = list(self.trace)
        self.trace.clear()
        for entry in entries:
            if "outcome" not in entry:  # its code failed (a bug): the event was rejected, saying so
                entry.update(outcome="rejected", why=result.rejection, ended="the event ends here")
        ran = {entry["rule"] for entry in entries}
        ender = next((entry["rule"] for entry in reversed(entries) if "ended" in entry), None)
        for rule in rules:
            if rule.name not in ran and ender is not None:
                entries.append({"rule": rule.name, "outcome": "not run", "why": f"rule '{ender}' ended the event"})
        return {"event": result.index, "explain": entries, "result": _summary(result)}


def _not_matched(rule: Rule, event_type: Any, event_name: Any) -> str | None:
    """Why the rule does not match the event (None: it matches)."""
    if rule.types is not None and event_type not in rule.types:
        return f"type is {event_type}; the rule matches {', '.join(sorted(rule.types))}"
    if rule.event_names is None and not rule.event_globs:
        return None
    names = ", ".join(repr(name) for name in [*sorted(rule.event_names or ()), *rule.event_globs])
    if not isinstance(event_name, str):
        return f"the event has no name; the rule matches {names}"
    if event_name_matches(event_name, rule.event_names, rule.event_globs):
        return None
    why = f"event name {event_name!r} is not one of {names}"
    # (names are compared ignoring case, _ and -: a near miss is a misspelling)
    close = difflib.get_close_matches(event_name.lower(), sorted(rule.event_names or ()), n=1, cutoff=0.8)
    if close:
        why += f"; a near miss of {close[0]!r}: misspelled?"
    return why


def _describe(entry: Entry, rule: Rule, recorder: RuleRecorder, result: MapResult, stop: bool, requests: int,
              items: int, skipped: str | None, rejection: str | None) -> None:
    """The entry's outcome and why, from what the rule changed on the result."""
    if recorder.when_false:
        assert rule.when is not None and rule.when.origin is not None
        entry.update(outcome="condition false", why=f"when: {rule.when.expression.source} ({rule.when.origin[0]})")
        return
    if result.rejection is not None and result.rejection != rejection:
        entry.update(outcome="rejected", why=result.rejection)
    elif rule.action == "skip" and stop:
        why = result.skipped if result.skipped != skipped and result.skipped is not None else \
            "skip (the requests of earlier rules stand)"
        entry.update(outcome="skipped", why=why)
    elif rule.action == "group":  # (its rules' entries say what they built)
        entry["outcome"] = "matched: its rules follow"
    elif len(result.requests) > requests:
        built = result.requests[requests:]
        entry["outcome"] = "request built" if len(built) == 1 else f"{len(built)} requests built"
        entry["requests"] = [{"request": f"{request.method} {request.url}", "fields": fields,
                              **({"then": request.then} if request.then else {})}  # a request chain's steps
                             for request, fields in zip(built, recorder.requests, strict=False)]
    elif rule.for_each is not None:
        entry.update(outcome="nothing built", why=f"for_each {rule.for_each.source}: no items")
    else:
        entry["outcome"] = "matched, nothing built"
    if len(result.item_rejections) > items and rule.action != "group":
        entry["items rejected"] = [{"item": item.item, "why": item.reason} for item in result.item_rejections[items:]]
    if stop:
        entry["ended"] = "final: the rules after it do not run" if rule.final and "why" not in entry \
            else "the event ends here"


def _summary(result: MapResult) -> str:
    if result.rejection is not None:
        return "rejected"
    parts = []
    if result.requests:
        parts.append(f"{len(result.requests)} request" + ("s" if len(result.requests) > 1 else ""))
    if result.item_rejections:
        parts.append(f"{len(result.item_rejections)} item" + ("s" if len(result.item_rejections) > 1 else "")
                     + " rejected")
    if result.skipped is not None:
        parts.append("skipped")
    return ", ".join(parts) or "nothing"
