"""Stage 4, evaluate: run one Segment event through a compiled mapping set's rules.

The outcome of each event is a MapResult: the requests it produced, or the reason it was rejected,
or why it was skipped; plus rejections of single fanned-out items and warnings. An event rejected
as a whole produces no request at all, never a half-built one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .analyse import reads
from .codegen import legend, origin
from .explain import Explainer, RuleRecorder
from .functions import EvalError, a_json_type, describe, normalize_event_name
from .generate import MapperCode, generate_function
from .ir import Rule
from .mapping_set import PROGRAM, MappingSet
from .problems import MappingSetError, Problem
from .runtime import FieldError, Vars, headers_object, new_vars

MASK = "***"
log = logging.getLogger(f"{PROGRAM}.evaluate")


@dataclass
class Request:
    """One HTTP request a rule built for an event."""

    rule: str
    method: str
    url: str
    headers: dict[str, str]
    body_kind: str | None  # "json", "form" or None
    body: Any
    event_index: int
    item_index: int | None = None
    # A request chain's first request: what its next step needs (rule, step, the event, the subject
    # the chain holds), and what the following steps will do (shown by `map`)
    chain: dict[str, Any] | None = None
    then: list[str] | None = None

    def to_output(self) -> dict[str, Any]:
        """The request as `map` prints it: event, rule, method, url, headers, json|form."""
        out: dict[str, Any] = {
            "event": self.event_index,
            "rule": self.rule,
            "method": self.method,
            "url": self.url,
            "headers": self.headers,
        }
        if self.body_kind is not None:
            out[self.body_kind] = self.body
        if self.then:
            out["then"] = self.then
        return out


@dataclass
class ItemRejection:
    rule: str
    item: int
    reason: str


@dataclass
class MapResult:
    index: int
    message_id: Any
    requests: list[Request] = field(default_factory=list)
    rejection: str | None = None
    skipped: str | None = None
    item_rejections: list[ItemRejection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        """Reject the event as a whole: no request, no item rejection, only this reason."""
        self.rejection = reason
        self.requests = []
        self.item_rejections = []

    @property
    def rejected(self) -> bool:
        return self.rejection is not None or bool(self.item_rejections)

    def error_lines(self) -> list[dict[str, Any]]:
        """What `map` writes to the errors stream for this event."""
        lines: list[dict[str, Any]] = []
        if self.rejection is not None:
            lines.append({"event": self.index, "messageId": self.message_id, "reason": self.rejection})
        for item in self.item_rejections:
            lines.append({"event": self.index, "messageId": self.message_id, "rule": item.rule,
                          "item": item.item, "reason": item.reason})
        if self.skipped is not None:
            lines.append({"event": self.index, "skipped": self.skipped})
        for warning in self.warnings:
            lines.append({"event": self.index, "messageId": self.message_id, "warning": warning})
        return lines


def _reason(rule: Rule, error: EvalError) -> str:
    if isinstance(error, FieldError):
        return f"{error.field_path}: {error} (rule '{rule.name}', {error.position})"
    return f"{error} (rule '{rule.name}')"


# Mapper's settings for `validate`: the set's defaults, unchecked (a required setting left out).
UNCHECKED_DEFAULTS: Any = {}


class Mapper:
    """A mapping set bound to one destination's settings: maps events to requests."""

    def __init__(self, mapping_set: MappingSet, settings: dict[str, Any] | None = None,
                 base_url: str | None = None, mask_secrets: bool = False, explain: bool = False):
        """explain: every rule's outcome is recorded for `explanation` (map --explain); its code
        records as it runs, so keep it for explaining: a normal Mapper's code records nothing."""
        self.mapping_set = mapping_set
        self._explainer = Explainer() if explain else None
        resolved = mapping_set.default_settings() if settings is UNCHECKED_DEFAULTS else \
            mapping_set.resolve_settings(dict(settings or {}))
        if mask_secrets:
            for name in mapping_set.secret_settings:
                if resolved.get(name) not in (None, ""):
                    resolved[name] = MASK
        self.settings = resolved
        self.base_url = (base_url or mapping_set.base_url).rstrip("/")
        self.mapping_info = {"name": mapping_set.name, "base_url": self.base_url, "revision": mapping_set.revision}
        headers = mapping_set.default_headers
        # map --explain: what the code of every rule (and named value) records, one dict for all
        # (a rule's recorder clears it when the rule starts)
        self._code = MapperCode({"settings": self.settings, "mapping": self.mapping_info}, {} if explain else None,
                                self.base_url, headers, self._runner, (Request, ItemRejection, _reason))
        self._values = self._code.functions((mapping_set.values,))  # the set's named values
        headers = self._code.default_headers  # (folded for these settings)
        self._headers_of = None if headers is None else generate_function(headers, "headers", self._code.optimiser)
        if self._headers_of is not None and not reads(headers).event:
            # Headers that read only settings (no named value either) are computed once, not per request.
            self._code.constant_headers = self.settings_headers()
        self._rules_by_type: dict[str, _Dispatch] = {}
        self._runners: dict[tuple[int, bool], _Runner] = {}  # (id(rule), check_type) -> _runner's function
        # rule name -> its generated function's source, and the namespace its names are bound in
        self._sources: dict[str, tuple[str, dict[str, Any]]] = {}
        self._masked: Mapper | None = None  # this Mapper with its secrets masked (see source)
        # rule name -> a chain's rule, its levels of named values, each step's (scope, result) -> (requests, why none)
        self._chains: dict[str, tuple[Rule, tuple[dict[str, Any], ...], list[Callable[..., Any]]]] = {}
        # Every rule's code is generated now, not on its first event: a set that builds a Mapper
        # cannot fail to compile while mapping (validate builds one for the default settings).
        for rule in mapping_set.rules:
            self._runner(rule, explain, (mapping_set.values,))

    def explanation(self, result: MapResult) -> dict[str, Any]:
        """What each rule did with the event `result` is of (the last one this Mapper mapped): one
        `map --explain` line. Only for a Mapper built with explain=True."""
        if self._explainer is None:
            raise ValueError("explanation needs a Mapper built with explain=True")
        return self._explainer.explanation(result, self.mapping_set.rules)

    def source(self, rule_name: str) -> str:
        """The Python generated for a rule (each line's rule-file place as a comment), then a legend
        (`where:`) of the names it binds (k1…: constants, functions, places), secret settings
        masked; KeyError naming the rules when there is no such rule."""
        if rule_name not in self._sources:
            raise KeyError(f"no rule {rule_name!r} (rules: {', '.join(self._sources)})")
        if any(self.settings.get(name) not in (None, "", MASK) for name in self.mapping_set.secret_settings):
            # The code of the same settings with the secrets masked: nothing bound in it (a header
            # built from a key, however encoded) can show a secret.
            if self._masked is None:
                self._masked = Mapper(self.mapping_set, self.settings, self.base_url, mask_secrets=True,
                                      explain=self._explainer is not None)
            return self._masked.source(rule_name)
        text, namespace = self._sources[rule_name]
        where = legend(text, namespace, "run")
        return f"{text}\n\n{where}" if where else text

    def settings_headers(self) -> dict[str, str]:
        """The set's default headers for a request made from the settings alone, not for an event
        (e.g. the key check's call); headers that read an event's fields find them absent."""
        if self._code.constant_headers is not None:
            return dict(self._code.constant_headers)
        if self._headers_of is None:
            return {}
        scope: dict[str, Any] = {"settings": self.settings, "mapping": self.mapping_info}
        scope["vars"] = new_vars(self._values, scope)
        return headers_object(self._headers_of(scope))

    def _rules_for(self, event_type: str) -> _Dispatch:
        """The top-level rules that can match this event type, in order: those for any event name, and
        for each name some rule names exactly, its own list (cached for the usual types). So a rule
        for a few named events costs other events nothing, not even its call."""
        dispatch = self._rules_by_type.get(event_type)
        if dispatch is None and self._explainer is not None:  # every rule, to say why it does not match
            return [self._runner(rule, True, (self.mapping_set.values,)) for rule in self.mapping_set.rules], None
        if dispatch is None:
            candidates = [rule for rule in self.mapping_set.rules if rule.types is None or event_type in rule.types]
            outer = (self.mapping_set.values,)

            def any_name(rule: Rule) -> bool:  # (a rule with patterns checks the name itself)
                return rule.event_names is None or bool(rule.event_globs)

            named = {name for rule in candidates if not any_name(rule) for name in rule.event_names or ()}
            by_name = {name: [self._runner(rule, False, outer) for rule in candidates
                              if any_name(rule) or name in (rule.event_names or ())] for name in named}
            dispatch = ([self._runner(rule, False, outer) for rule in candidates if any_name(rule)], by_name or None)
            if len(self._rules_by_type) < 64:
                self._rules_by_type[event_type] = dispatch
        return dispatch

    def map(self, event: Any, index: int = 0) -> MapResult:
        if not isinstance(event, dict):
            result = MapResult(index, None)
            result.rejection = f"event is {a_json_type(event)}, not an object"
            return result
        result = MapResult(index, event.get("messageId"))
        event_type = event.get("type")
        if not isinstance(event_type, str) or not event_type:
            result.rejection = ("event has no type" if event_type is None
                                else f"event type {describe(event_type)} is not a string")
            return result
        scope = dict(event)
        # (the event as received, e.g. to fingerprint it without the settings)
        scope.update(input=event, settings=self.settings, mapping=self.mapping_info)
        scope["vars"] = named = Vars()
        named._definitions, named._scope, named._parent = self._values, scope, None  # (new_vars, inline)
        event_name = event.get("event")
        dispatch = self._rules_by_type.get(event_type)
        if dispatch is None:
            dispatch = self._rules_for(event_type)
        rules, by_name = dispatch
        if by_name is not None and isinstance(event_name, str):
            rules = by_name.get(normalize_event_name(event_name), rules)
        try:
            for run in rules:
                if run(scope, event_type, event_name, result):
                    break
        except Exception as exc:  # a bug must not lose the event: reject it, saying so, and go on
            log.debug("internal error while mapping event %d", index, exc_info=True)
            place = origin(exc.__traceback__)  # the rule file's line whose generated code failed
            where = "" if place is None else f" (at {place[0]}, {place[1]})"
            result.reject(f"internal error while mapping (please report it): {type(exc).__name__}: {exc}{where}")
            return result
        if result.rejection is not None:  # an event is rejected whole: nothing half-built is output
            result.requests = []
            result.item_rejections = []
        elif not result.requests and result.skipped is None and not result.item_rejections:
            what = f"{event_type} event {event_name!r}" if event_type == "track" else f"{event_type} events"
            result.skipped = f"no rule handles {what}"
        return result

    def _runner(self, rule: Rule, check_type: bool, outer: tuple[dict[str, Any], ...]) -> _Runner:
        """The rule's function (made on first use, once per Mapper; see generate.CodeGenerator.visit_Rule)."""
        key = (id(rule), check_type)
        run = self._runners.get(key)
        if run is None:
            explainer = self._explainer
            recorder = None if explainer is None else RuleRecorder(self._code.field_sources)
            try:
                run, text, namespace, steps = self._code.rule(rule, check_type, outer, recorder)
                if steps:
                    self._chains[rule.name] = (rule, outer, steps)
                self._sources[rule.name] = (text, namespace)
                self._runners[key] = run = run if explainer is None or recorder is None else \
                    explainer.wrap(rule, run, recorder)
            except (SyntaxError, RecursionError, MemoryError) as exc:  # a bug of the generator: say where
                raise MappingSetError([Problem(rule.position, f"rule '{rule.name}': its generated code does not "
                                               f"compile ({type(exc).__name__}: {exc}); please report it")]) from None
        return run

    def next_step(self, chain: dict[str, Any], answer: Any) -> tuple[list[Request], str | None, dict[str, Any] | None]:
        """A chain's next step, given the answer to its previous one: (its requests, why there are
        none, the chain for the step after it or None). Raises EvalError when it cannot be made."""
        found = self._chains.get(str(chain.get("rule")))
        number = chain.get("step")
        if found is None or not isinstance(number, int) or not 0 <= number < len(found[0].steps):
            raise EvalError(f"no step {number!r} of a request chain in rule {chain.get('rule')!r} "
                            "(the mapping changed since the event was recorded?)")
        rule, outer, steps = found
        event = chain.get("event")
        if not isinstance(event, dict):
            raise EvalError("the chain's event was not kept")
        scope = dict(event)
        scope.update(input=event, settings=self.settings, mapping=self.mapping_info, response=answer)
        parent: Vars | None = None
        levels = (*outer, rule.values) if rule.values else outer
        for depth in range(len(levels)):
            parent = new_vars(self._code.functions(levels[:depth + 1]), scope, parent)
        scope["vars"] = parent
        requests, skipped = steps[number](scope, MapResult(0, event.get("messageId")))
        if skipped is not None:
            return [], skipped, None
        following = {**chain, "step": number + 1} if number + 1 < len(rule.steps) else None
        return requests, None, following


_Runner = Callable[[dict[str, Any], str, Any, MapResult], bool]

# An event type's rules: for any event name, and per normalized name that some rule names (or None)
_Dispatch = tuple[list[_Runner], dict[str, list[_Runner]] | None]

