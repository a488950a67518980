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

from . import ir
from .analyse import always_object, reads
from .codegen import Source, legend, origin
from .explain import Explainer, RuleRecorder
from .functions import EvalError, a_json_type, describe, json_type, normalize_event_name, to_string
from .generate import CodeGenerator, emit_value, generate_function, new_source
from .mapping_set import PROGRAM, MappingSet
from .named_values import NamedReads, NamedValueFunctions, emit_levels
from .problems import MappingSetError, Problem
from .rules import ChainStep, RequestPlan, Rule
from .runtime import ABSENT, FieldError, Vars, form_body, new_vars, new_vars_source, not_a_url, with_query

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
        # map --explain: what the code of every rule (and named value) records, one dict for all
        # (a rule's recorder clears it when the rule starts)
        self._field_sources: dict[str, str | None] | None = {} if explain else None
        self._named = NamedValueFunctions(self._new_source)
        self._values = self._named.functions((mapping_set.values,))  # the set's named values
        self._constant_headers: dict[str, str] | None = None
        headers = mapping_set.default_headers
        self._headers_of = None if headers is None else generate_function(headers, "headers")
        if self._headers_of is not None and not reads(headers).event:
            # Headers that read only settings (no named value either) are computed once, not per request.
            self._constant_headers = self.settings_headers()
        self._rules_by_type: dict[str, _Dispatch] = {}
        self._runners: dict[tuple[int, bool], _Runner] = {}  # (id(rule), check_type) -> _runner's function
        # rule name -> its generated function's source, and the namespace its names are bound in
        self._sources: dict[str, tuple[str, dict[str, Any]]] = {}
        self._masked: Mapper | None = None  # this Mapper with its secrets masked (see source)
        # rule name -> the rule with a request chain, its named values' levels, and each step's code
        self._chains: dict[str, tuple[Rule, tuple[dict[str, Any], ...], list[_StepBuilder]]] = {}
        # Every rule's code is generated now, not on its first event: a set that builds a Mapper
        # cannot fail to compile while mapping (validate builds one for the default settings).
        for rule in mapping_set.rules:
            self._runner(rule, explain, (mapping_set.values,))

    def _new_source(self) -> Source:
        """A Source for this Mapper's code: settings and mapping fixed (conditions on them are
        decided while generating, once), recording for map --explain when explaining."""
        source = new_source()
        source.roots = {"settings": self.settings, "mapping": self.mapping_info}
        if self._field_sources is not None:
            source.field_sources = source.bind(self._field_sources)
        return source

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
        if self._constant_headers is not None:
            return dict(self._constant_headers)
        if self._headers_of is None:
            return {}
        scope: dict[str, Any] = {"settings": self.settings, "mapping": self.mapping_info}
        scope["vars"] = new_vars(self._values, scope)
        return self._headers(self._headers_of(scope))

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

    # -- rules -----------------------------------------------------------------------------------------
    # Each rule runs as one generated function, `run(scope, event_type, event_name, result) -> bool`
    # (True when no later rule may run: final, or a terminal action; a rejection or a skip is written
    # on the result, not raised: exceptions cost more than the rest of a skipped event). Why: interpreting the plan
    # tested a dozen attributes of every rule on every event, and evaluating its value trees node by
    # node cost a call per node; the plan is fixed at load time, so only the steps this rule has are
    # written out, in the same order, with its conditions and its request's values inline (each
    # value's own code, see generate.CodeGenerator). Names and messages are bound, never source text.
    def _runner(self, rule: Rule, check_type: bool, outer: tuple[dict[str, Any], ...]) -> _Runner:
        """The rule's function (made on first use, once per Mapper); check_type for nested rules,
        whose type _rules_for has not filtered; `outer`: the named values of the set, then of each
        enclosing group that has some (the Vars chain the rule is called with)."""
        key = (id(rule), check_type)
        run = self._runners.get(key)
        if run is None:
            try:
                if self._explainer is None:
                    run = self._runners[key] = self._generate_runner(rule, check_type, outer)
                else:
                    recorder = RuleRecorder(self._field_sources)
                    run = self._runners[key] = self._explainer.wrap(
                        rule, self._generate_runner(rule, check_type, outer, recorder), recorder)
            except (SyntaxError, RecursionError, MemoryError) as exc:  # a bug of the generator: say where
                raise MappingSetError([Problem(rule.position, f"rule '{rule.name}': its generated code does not "
                                               f"compile ({type(exc).__name__}: {exc}); please report it")]) from None
        return run

    def _generate_runner(self, rule: Rule, check_type: bool, outer: tuple[dict[str, Any], ...],
                         recorder: RuleRecorder | None = None) -> _Runner:
        """With a recorder (map --explain), the code also records into it what explains the outcome."""
        if rule.steps:
            self._chain_builders(rule, outer)
        source = self._new_source()
        source.place = (rule.position, f"rule '{rule.name}'")
        source.namespace.update({
            "rule": rule, "types": rule.types, "names": rule.event_names, "matches": rule.matches,
            "normalize": normalize_event_name, "suffix": f" (rule '{rule.name}')", "text": _text,
            "Vars": Vars, "EvalError": EvalError, "_reason": _reason, "final": rule.final,
            "ItemRejection": ItemRejection,
        })
        emit = source.emit
        if check_type and rule.types is not None:
            emit(1, "if event_type not in types: return False")
        if rule.event_globs:
            emit(1, "if not matches(event_type, event_name): return False")
        elif rule.event_names is not None:
            emit(1, "if not isinstance(event_name, str) or normalize(event_name) not in names: return False")
        # The Vars of each level (see NamedReads); the innermost level's scope is the one the rule
        # is called with.
        setup = len(source.lines)
        emit(1, f"V{len(outer) - 1} = scope['vars']")
        levels = emit_levels(source, outer, "scope")
        setup_end = len(source.lines)
        reads = NamedReads(source, levels, self._named)
        inner = len(outer)  # the number of this rule's own level, when it has values
        if rule.values:
            source.namespace["values"] = self._named.functions((*outer, rule.values))
        emit(1, "try:")  # inside: an EvalError of any step rejects the event
        if rule.when is not None:
            emit(2, f"if not {emit_value(rule.when, source, 'scope', 2)}:")
            if recorder is not None:
                emit(3, f"{source.bind(recorder.condition_false)}()")
            emit(3, "return False  # a rule that does not run ends nothing")
        if rule.for_each is not None:
            self._emit_fan_out(source, rule, reads, inner, recorder)
        else:
            here = "scope"  # the rule's scope: its own copy when it has values
            if rule.values:
                here = "rule_scope"
                emit(2, "rule_scope = dict(scope)")
                emit(2, new_vars_source(f"V{inner}", "values", "rule_scope", "scope['vars']"))
                emit(2, f"rule_scope['vars'] = V{inner}")
                reads.start([(rule.values, f"V{inner}", "rule_scope")], 2)
            self._emit_checks(source, rule, here, 2, "result.rejection = {} + suffix", "return True")
            if rule.action == "reject":
                emit(2, f"result.rejection = {self._message(source, rule.message, here)} + suffix")
                emit(2, "return True")
            elif rule.action == "skip":
                emit(2, f"skipped = {self._message(source, rule.message, here)}")
                emit(2, "if not result.requests:")
                emit(3, "result.skipped = skipped")
                emit(2, "return True")
            elif rule.action == "group":
                for child in rule.children:
                    run_child = self._runner(child, True, (*outer, rule.values) if rule.values else outer)
                    emit(2, f"if {source.bind(run_child)}({here}, event_type, event_name, result):")
                    emit(3, "return True")
            else:
                assert rule.request is not None
                request = self._emit_request(source, rule.request, here, 2, 'None')
                if rule.steps:
                    subject = None if rule.order_subject is None else generate_function(rule.order_subject, "subject")
                    emit(2, f"{source.bind(self._chain_started)}(rule, {source.bind(subject)}, {request}, {here})")
                emit(2, f"result.requests.append({request})")
                if recorder is not None:
                    emit(2, f"{source.bind(recorder.request_built)}()")
        emit(1, "except EvalError as error:")
        emit(2, "result.rejection = _reason(rule, error)")
        emit(2, "return True")
        emit(1, "return final")
        reads.finish()
        if not source.named_reads:  # the rule reads no named value: it needs no Vars of outer levels
            source.drop(setup, setup_end)
        header = "run(scope, event_type, event_name, result)"
        run: _Runner = source.define(header, f"for rule {rule.name!r}")
        self._sources[rule.name] = (source.text(header), source.namespace)
        return run

    # -- request chains (then) ---------------------------------------------------------------------------
    @staticmethod
    def _chain_started(rule: Rule, subject_of: Callable[[dict[str, Any]], Any] | None, request: Request,
                       scope: dict[str, Any]) -> None:
        """The first request of a chain: it carries what the next step needs, and says what follows."""
        subject: dict[str, Any] | None = None
        if rule.order_lane is not None and subject_of is not None:
            found = subject_of(scope)
            identifiers = {k: v for k, v in found.items() if v is not None} if isinstance(found, dict) else {}
            subject = {"lane": rule.order_lane, "identifiers": identifiers}
        request.chain = {"rule": rule.name, "step": 0, "event": scope["input"], "subject": subject}
        request.then = [describe_step(number + 2, step) for number, step in enumerate(rule.steps)]

    def _chain_builders(self, rule: Rule, outer: tuple[dict[str, Any], ...]) -> None:
        """Each step as one generated function `build(scope, result) -> (requests, why none)`: its
        when, its for_each and its requests, generated like a rule's (named values read through the
        scope's Vars); the reason when it makes none is the step's skip."""
        steps = []
        for number, step in enumerate(rule.steps):
            source = self._new_source()
            source.place = (step.position, f"rule '{rule.name}' then.steps[{number}]")
            emit = source.emit
            source.namespace.update({"rule": rule, "text": _text})
            skipped = source.bind(f"step {number + 2} of rule '{rule.name}' skipped: ")
            skipped += f" + {self._message(source, step.skip, 'scope')}"
            if step.when is not None:
                emit(1, f"if not {emit_value(step.when, source, 'scope', 1)}:")
                emit(2, f"return [], {skipped}")
            if step.for_each is None:
                emit(1, f"return [{self._emit_request(source, step.request, 'scope', 1, 'None')}], None")
            else:
                what = f"then.steps[{number}].for_each {step.for_each.source}: is "
                source.namespace["_not_a_list"] = lambda items, what=what: EvalError(
                    f"{what}{a_json_type(items)}, not a list")
                emit(1, f"items = {CodeGenerator(source).expression(step.for_each, 'scope', 1, 'scope')}")
                emit(1, "if items is not None and not isinstance(items, list):")
                emit(2, "raise _not_a_list(items)")
                emit(1, "requests = []")
                emit(1, "for index, item in enumerate(items or ()):")
                emit(2, f"item_scope = {{**scope, {step.item_name!r}: item, 'index': index}}")
                emit(2, f"requests.append({self._emit_request(source, step.request, 'item_scope', 2, 'index')})")
                emit(1, f"return (requests, None) if requests else ([], {skipped})")
            steps.append(source.define("build(scope, result)", f"for rule {rule.name!r} step {number + 2}"))
        self._chains[rule.name] = (rule, outer, steps)

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
            parent = new_vars(self._named.functions(levels[:depth + 1]), scope, parent)
        scope["vars"] = parent
        requests, skipped = steps[number](scope, MapResult(0, event.get("messageId")))
        if skipped is not None:
            return [], skipped, None
        following = {**chain, "step": number + 1} if number + 1 < len(rule.steps) else None
        return requests, None, following

    def _emit_fan_out(self, source: Source, rule: Rule, reads: NamedReads, inner: int,
                      recorder: RuleRecorder | None) -> None:
        """for_each: the request once per item; an item that fails its requirements (or whose values
        fail) is rejected alone, with its index."""
        assert rule.for_each is not None and rule.request is not None  # the rule compiler sees to both
        emit = source.emit
        source.namespace["_not_a_list"] = lambda items: EvalError(
            f"for_each {rule.for_each.source}: is {a_json_type(items)}, not a list")
        emit(2, f"items = {CodeGenerator(source).expression(rule.for_each, 'scope', 2, 'scope')}")
        emit(2, "if items is None:")
        emit(3, "return final")
        emit(2, "if not isinstance(items, list):")
        emit(3, "raise _not_a_list(items)")
        emit(2, "parent_vars = scope['vars']")
        emit(2, "for index, item in enumerate(items):")
        emit(3, "item_scope = dict(scope)")
        emit(3, f"item_scope[{rule.item_name!r}] = item")
        emit(3, "item_scope['index'] = index")
        if rule.values:
            emit(3, new_vars_source(f"V{inner}", "values", "item_scope", "parent_vars"))
            emit(3, f"item_scope['vars'] = V{inner}")
            reads.start([(rule.values, f"V{inner}", "item_scope")], 3)
        emit(3, "try:")
        self._emit_checks(source, rule, "item_scope", 4,
                          "result.item_rejections.append(ItemRejection(rule.name, index, {} + suffix))", "continue")
        emit(4, f"result.requests.append({self._emit_request(source, rule.request, 'item_scope', 4, 'index')})")
        if recorder is not None:
            emit(4, f"{source.bind(recorder.request_built)}()")
        emit(3, "except EvalError as error:")
        emit(4, "result.item_rejections.append(ItemRejection(rule.name, index, _reason(rule, error)))")

    def _emit_checks(self, source: Source, rule: Rule, scope: str, indent: int, reject: str, leave: str) -> None:
        """require and warn: a requirement not met writes `reject` (formatted with its reason's
        code), then `leave`; a warning that applies is added to the result."""
        for requirement in rule.requires:
            source.place = (requirement.position, f"rule '{rule.name}' require")
            source.emit(indent, f"if not {emit_value(requirement.test, source, scope, indent)}:")
            source.emit(indent + 1, reject.format(self._message(source, requirement.reason, scope)))
            source.emit(indent + 1, leave)
        source.place = (rule.position, f"rule '{rule.name}'")  # (what follows is the rule's again)
        for warning in rule.warns:
            source.emit(indent, f"if {emit_value(warning.test, source, scope, indent)}:")
            source.emit(indent + 1, f"result.warnings.append({self._message(source, warning.message, scope)} + suffix)")

    @staticmethod
    def _message(source: Source, message: ir.Node | None, scope: str) -> str:
        """Code for a message's text (a reason, a warning): its own function, called only when the
        message is given (map --explain records the fields a rule sends, not its messages)."""
        if isinstance(message, ir.Literal) and message.is_scalar:
            return source.bind(str(message.value))
        return f"text({source.bind(None if message is None else generate_function(message, 'message'))}, {scope})"

    # -- requests --------------------------------------------------------------------------------------
    @staticmethod
    def _headers(value: Any) -> dict[str, str]:
        if value is ABSENT:
            return {}
        if not isinstance(value, dict):
            raise EvalError(f"headers must be an object, got {json_type(value)}")
        return {str(k): to_string(v) for k, v in value.items() if v is not None}

    def _emit_request(self, source: Source, plan: RequestPlan, scope: str, indent: int, item_index: str) -> str:
        """The plan's request, written out: url, query, headers, body, in that order, with the same
        errors; a constant URL is joined to the base URL here, once, and constant headers are copied
        from a ready dict. Returns the name of the local holding the Request."""
        emit, bind = source.emit, source.bind
        url = source.temp()
        constant = plan.url.value if isinstance(plan.url, ir.Literal) else None
        if isinstance(constant, str) and constant:  # joined once; any other constant fails as below, each time
            joined = self.base_url + (constant if constant.startswith("/") else "/" + constant) \
                if plan.url_is_path else constant
            emit(indent, f"{url} = {bind(joined)}")
        else:
            emit(indent, f"{url} = {emit_value(plan.url, source, scope, indent)}")
            emit(indent, f"if not isinstance({url}, str) or not {url}:")
            emit(indent + 1, f"raise {bind(not_a_url)}({url})")
            if plan.url_is_path:
                emit(indent, f"{url} = {bind(self.base_url)} + ({url} if {url}.startswith('/') else '/' + {url})")
        if plan.query is not None:
            emit(indent, f"{url} = {bind(with_query)}({url}, {emit_value(plan.query, source, scope, indent)})")
        headers = source.temp()
        if self._constant_headers is not None:
            emit(indent, f"{headers} = {bind(self._constant_headers)}.copy()")
        elif self.mapping_set.default_headers is not None:
            value = emit_value(self.mapping_set.default_headers, source, scope, indent)
            emit(indent, f"{headers} = {bind(self._headers)}({value})")
        else:
            emit(indent, f"{headers} = {{}}")
        if plan.headers is not None:
            value = emit_value(plan.headers, source, scope, indent)
            emit(indent, f"{headers}.update({bind(self._headers)}({value}))")
        out = source.temp()
        request = f"{bind(Request)}(rule.name, {bind(plan.method)}, {url}, {headers}, {{}}, {{}}, result.index, " \
                  f"{item_index})"
        if plan.body is None:
            emit(indent, f"{out} = " + request.format(bind(plan.body_kind), "None"))
            return out
        value = emit_value(plan.body, source, scope, indent)
        if not always_object(plan.body):
            emit(indent, f"if {value} is ABSENT:")
            emit(indent + 1, f"{out} = " + request.format("None", "None"))
            emit(indent, "else:")
            indent += 1
        if plan.body_kind == "form":
            emit(indent, f"{value} = {bind(form_body)}({value})")
        emit(indent, f"{out} = " + request.format(bind(plan.body_kind), value))
        return out


_Runner = Callable[[dict[str, Any], str, Any, MapResult], bool]
# A chain step's generated code: (scope, result) -> (its requests, or the reason it has none)
_StepBuilder = Callable[[dict[str, Any], MapResult], tuple[list[Request], str | None]]


def _text(evaluate: Callable[[dict[str, Any]], Any] | None, scope: dict[str, Any]) -> str:
    value = ABSENT if evaluate is None else evaluate(scope)
    return "" if value is ABSENT else str(value)
# An event type's rules: for any event name, and per normalized name that some rule names (or None)
_Dispatch = tuple[list[_Runner], dict[str, list[_Runner]] | None]


def describe_step(number: int, step: ChainStep) -> str:
    """What a chain's step will do with the previous answer, in one line (map's `then`)."""
    request = step.request
    what = step.description or f"{request.method} {step.target}"
    each = f", once per {step.for_each.source}" if step.for_each is not None else ""
    unless = " (or skip)" if step.when is not None or step.for_each is not None else ""
    return f"step {number}, with the previous answer as `response`: {what}{each}{unless}"

