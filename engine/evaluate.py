"""Stage 4, evaluate: run one Segment event through a compiled mapping set's rules.

The outcome of each event is a MapResult: the requests it produced, or the reason it was rejected,
or why it was skipped; plus rejections of single fanned-out items and warnings. An event rejected
as a whole produces no request at all, never a half-built one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from .functions import EvalError, a_json_type, describe, json_type, to_string
from .mapping_set import MappingSet
from .rules import RequestPlan, Rule
from .values import ABSENT, FieldError

MASK = "***"


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


class _Rejected(Exception):
    pass


class _Skipped(Exception):
    pass


class Vars(dict[str, Any]):
    """Named values, computed on first use per event and then remembered."""

    __slots__ = ("_definitions", "_scope", "_parent")

    def __init__(self, definitions: dict[str, Any], scope: dict[str, Any], parent: Vars | None = None):
        # (starts empty: no dict.__init__ call needed, one per event and rule with values)
        self._definitions = definitions
        self._scope = scope
        self._parent = parent

    def __missing__(self, name: str) -> Any:
        definition = self._definitions.get(name)
        if definition is None:
            return self._parent[name] if self._parent is not None else None
        value = definition.evaluate(self._scope)
        if value is ABSENT:
            value = None
        self[name] = value
        return value

    def get(self, name: str, default: Any = None) -> Any:
        value = self[name]
        return default if value is None else value


def _reason(rule: Rule, error: EvalError) -> str:
    if isinstance(error, FieldError):
        return f"{error.field_path}: {error} (rule '{rule.name}', {error.position})"
    return f"{error} (rule '{rule.name}')"


def _query_value(key: str, value: Any) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise EvalError(f"query parameter '{key}' is {a_json_type(value)}; encode it first (encode: json)")
    return to_string(value)


class Mapper:
    """A mapping set bound to one destination's settings: maps events to requests."""

    def __init__(self, mapping_set: MappingSet, settings: dict[str, Any] | None = None,
                 base_url: str | None = None, mask_secrets: bool = False):
        self.mapping_set = mapping_set
        resolved = mapping_set.resolve_settings(dict(settings or {}))
        if mask_secrets:
            for name in mapping_set.secret_settings:
                if resolved.get(name) not in (None, ""):
                    resolved[name] = MASK
        self.settings = resolved
        self.base_url = (base_url or mapping_set.base_url).rstrip("/")
        self.mapping_info = {"name": mapping_set.name, "base_url": self.base_url, "revision": mapping_set.revision}
        self._constant_headers: dict[str, str] | None = None
        headers = mapping_set.default_headers
        if headers is not None and not headers.reads_event:
            # Headers that read only settings are computed once, not per request.
            scope = {"settings": self.settings, "mapping": self.mapping_info}
            scope["vars"] = Vars({}, scope)
            self._constant_headers = self._headers(headers.evaluate(scope))
        self._rules_by_type: dict[str, list[_Runner]] = {}
        self._runners: dict[tuple[int, bool], _Runner] = {}  # (id(rule), check_type) -> _runner's function
        self._builders: dict[int, _Build] = {}  # id(plan) -> _builder's function

    def _rules_for(self, event_type: str) -> list[_Runner]:
        """The top-level rules that can match this event type, in order (cached for the usual types)."""
        rules = self._rules_by_type.get(event_type)
        if rules is None:
            rules = [self._runner(rule, False) for rule in self.mapping_set.rules
                     if rule.types is None or event_type in rule.types]
            if len(self._rules_by_type) < 64:
                self._rules_by_type[event_type] = rules
        return rules

    def map(self, event: Any, index: int = 0) -> MapResult:
        message_id = event.get("messageId") if isinstance(event, dict) else None
        result = MapResult(index, message_id)
        if not isinstance(event, dict):
            result.rejection = f"event is {a_json_type(event)}, not an object"
            return result
        event_type = event.get("type")
        if not isinstance(event_type, str) or not event_type:
            result.rejection = ("event has no type" if event_type is None
                                else f"event type {describe(event_type)} is not a string")
            return result
        scope = dict(event)
        scope["input"] = event  # the event as received, e.g. to fingerprint it without the settings
        scope["settings"] = self.settings
        scope["mapping"] = self.mapping_info
        scope["vars"] = Vars(self.mapping_set.values, scope)
        event_name = event.get("event")
        try:
            for run in self._rules_for(event_type):
                if run(scope, event_type, event_name, result):
                    break
        except _Rejected as rejected:
            result.rejection = str(rejected)
            result.requests = []
            result.item_rejections = []
            return result
        except _Skipped as skipped:
            if not result.requests:
                result.skipped = str(skipped)
        except Exception as exc:  # a bug must not lose the event: reject it, saying so, and go on
            # The rules' generated functions are made again from the plan for the next event.
            self._rules_by_type.clear()
            self._runners.clear()
            self._builders.clear()
            result.rejection = f"internal error while mapping (please report it): {type(exc).__name__}: {exc}"
            result.requests = []
            result.item_rejections = []
            return result
        if not result.requests and result.rejection is None and result.skipped is None \
                and not result.item_rejections:
            what = f"{event_type} event {event_name!r}" if event_type == "track" else f"{event_type} events"
            result.skipped = f"no rule handles {what}"
        return result

    def map_all(self, events: Iterable[Any]) -> Iterator[MapResult]:
        for index, event in enumerate(events):
            yield self.map(event, index)

    # -- rules -----------------------------------------------------------------------------------------
    # Each rule runs as one generated function, `run(scope, event_type, event_name, result) -> bool`
    # (True when no later rule may run: final, or a terminal action). Why: interpreting the plan
    # tested a dozen attributes of every rule on every event (match, when, for_each, values,
    # requires, warnings, action); the plan is fixed at load time, so only the steps this rule has
    # are written out, in the same order, each calling the compiled value it binds. Names and
    # messages reach the source only through bound names (never as text).
    def _runner(self, rule: Rule, check_type: bool) -> _Runner:
        """The rule's function (made on first use, once per Mapper); check_type for nested rules,
        whose type _rules_for has not filtered."""
        key = (id(rule), check_type)
        run = self._runners.get(key)
        if run is None:
            run = self._runners[key] = self._generate_runner(rule, check_type)
        return run

    def _generate_runner(self, rule: Rule, check_type: bool) -> _Runner:
        namespace: dict[str, Any] = {
            "rule": rule, "types": rule.types, "matches": rule.matches, "suffix": f" (rule '{rule.name}')",
            "text": self._text, "Vars": Vars, "values": rule.values, "EvalError": EvalError,
            "_Rejected": _Rejected, "_Skipped": _Skipped, "_reason": _reason, "final": rule.final,
        }
        lines = ["def run(scope, event_type, event_name, result):"]
        if check_type and rule.types is not None:
            lines.append("    if event_type not in types: return False")
        if rule.event_names is not None or rule.event_globs:
            lines.append("    if not matches(event_type, event_name): return False")
        lines.append("    try:")
        body: list[str] = []  # inside the try: an EvalError of any step rejects the event
        if rule.when is not None:
            namespace["when"] = rule.when.evaluate
            body.append("if not when(scope): return False  # a rule that does not run ends nothing")
        if rule.for_each is not None:
            namespace["fan_out"] = self._fan_out
            body += ["fan_out(rule, scope, result)", "return final"]
        else:
            if rule.values:
                body += ["scope = dict(scope)", "scope['vars'] = Vars(values, scope, scope['vars'])"]
            for number, requirement in enumerate(rule.requires):
                namespace[f"require{number}"], namespace[f"reason{number}"] = requirement.test, requirement.reason
                body += [f"if not require{number}(scope):",
                         f"    raise _Rejected(text(reason{number}, scope) + suffix)"]
            if rule.warns:
                namespace["warn"] = self._warn
                body.append("warn(rule, scope, result)")
            namespace["message"] = rule.message
            if rule.action == "reject":
                body.append("raise _Rejected(text(message, scope) + suffix)")
            elif rule.action == "skip":
                body.append("raise _Skipped(text(message, scope))")
            elif rule.action == "group":
                for number, child in enumerate(rule.children):
                    namespace[f"child{number}"] = self._runner(child, True)
                    body.append(f"if child{number}(scope, event_type, event_name, result): return True")
                body.append("return final")
            else:
                assert rule.request is not None
                namespace["build"] = self._builder(rule, rule.request)
                body.append("result.requests.append(build(scope, result.index, None))")
        lines += ["        " + line for line in body]
        lines += ["    except EvalError as error:", "        raise _Rejected(_reason(rule, error)) from None",
                  "    return final"]
        exec("\n".join(lines), namespace)  # noqa: S102 - generated from the plan's shape and bound names only
        run: _Runner = namespace["run"]
        return run

    def _fan_out(self, rule: Rule, scope: dict[str, Any], result: MapResult) -> None:
        assert rule.for_each is not None
        items = rule.for_each.evaluate(scope)
        if items is None:
            return
        if not isinstance(items, list):
            raise EvalError(f"for_each {rule.for_each_source}: is {a_json_type(items)}, not a list")
        build = None if rule.request is None else self._builder(rule, rule.request)
        for index, item in enumerate(items):
            item_scope = dict(scope)
            item_scope[rule.item_name] = item
            item_scope["index"] = index
            if rule.values:
                item_scope["vars"] = Vars(rule.values, item_scope, scope["vars"])
            try:
                failed = next((r for r in rule.requires if not r.test(item_scope)), None)
                if failed is not None:
                    reason = f"{self._text(failed.reason, item_scope)} (rule '{rule.name}')"
                    result.item_rejections.append(_item(rule, index, reason))
                    continue
                if rule.warns:
                    self._warn(rule, item_scope, result)
                assert build is not None
                result.requests.append(build(item_scope, result.index, index))
            except EvalError as error:
                result.item_rejections.append(_item(rule, index, _reason(rule, error)))

    def _warn(self, rule: Rule, scope: dict[str, Any], result: MapResult) -> None:
        for warning in rule.warns:
            if warning.test(scope):
                result.warnings.append(f"{self._text(warning.message, scope)} (rule '{rule.name}')")

    @staticmethod
    def _text(compiled: Any, scope: dict[str, Any]) -> str:
        value = compiled.evaluate(scope)
        return "" if value is ABSENT else str(value)

    # -- requests --------------------------------------------------------------------------------------
    @staticmethod
    def _headers(value: Any) -> dict[str, str]:
        if value is ABSENT:
            return {}
        if not isinstance(value, dict):
            raise EvalError(f"headers must be an object, got {json_type(value)}")
        return {str(k): to_string(v) for k, v in value.items() if v is not None}

    def _builder(self, rule: Rule, plan: RequestPlan) -> _Build:
        """The plan's request as one generated function, `build(scope, event_index, item_index)`.

        Why: the plan is fixed, so only its steps are written out (url, query, headers, body, in
        that order, with the same errors): a constant URL is joined to the base URL here, once, and
        constant headers are copied from a ready dict. Values are bound names in its namespace.
        """
        ready = self._builders.get(id(plan))
        if ready is not None:
            return ready
        namespace: dict[str, Any] = {
            "Request": Request, "EvalError": EvalError, "ABSENT": ABSENT, "describe": describe,
            "json_type": json_type, "_query_value": _query_value, "_with_query": _with_query,
            "_headers": self._headers, "name": rule.name, "method": plan.method, "base_url": self.base_url,
        }
        lines = ["def build(scope, event_index, item_index):"]
        constant = plan.url.constant
        if isinstance(constant, str) and constant:  # joined once; any other constant fails as below, each time
            namespace["url"] = self.base_url + (constant if constant.startswith("/") else "/" + constant) \
                if plan.url_is_path else constant
            lines.append("    full_url = url")
        else:
            namespace["url"] = plan.url.evaluate
            lines += ["    full_url = url(scope)",
                      "    if not isinstance(full_url, str) or not full_url:",
                      "        raise EvalError(f'request url is {describe(None if full_url is ABSENT else full_url)}, "
                      "not a string')"]
            if plan.url_is_path:
                lines.append("    full_url = base_url + (full_url if full_url.startswith('/') else '/' + full_url)")
        if plan.query is not None:
            namespace["query"] = plan.query.evaluate
            lines.append("    full_url = _with_query(full_url, query(scope))")
        if self._constant_headers is not None:
            namespace["constant_headers"] = self._constant_headers
            lines.append("    headers = constant_headers.copy()")
        elif self.mapping_set.default_headers is not None:
            namespace["default_headers"] = self.mapping_set.default_headers.evaluate
            lines.append("    headers = _headers(default_headers(scope))")
        else:
            lines.append("    headers = {}")
        if plan.headers is not None:
            namespace["plan_headers"] = plan.headers.evaluate
            lines.append("    headers.update(_headers(plan_headers(scope)))")
        namespace["body_kind"] = plan.body_kind
        request = "Request(name, method, full_url, headers, {}, {}, event_index, item_index)"
        if plan.body is None:
            lines.append("    return " + request.format("body_kind", "None"))
        else:
            namespace["body"] = plan.body.evaluate
            lines += ["    value = body(scope)", "    if value is ABSENT:",
                      "        return " + request.format("None", "None")]
            if plan.body_kind == "form":
                lines += ["    if not isinstance(value, dict):",
                          "        raise EvalError(f'form body must be an object, got {json_type(value)}')",
                          "    value = {k: _query_value(k, v) for k, v in value.items()}"]
            lines.append("    return " + request.format("body_kind", "value"))
        exec("\n".join(lines), namespace)  # noqa: S102 - generated from the plan's shape and bound names only
        build: _Build = namespace["build"]
        self._builders[id(plan)] = build
        return build


_Runner = Callable[[dict[str, Any], str, Any, MapResult], bool]
_Build = Callable[[dict[str, Any], int, "int | None"], Request]


def _with_query(url: str, query: Any) -> str:
    if isinstance(query, dict) and query:
        pairs = [(k, _query_value(k, v)) for k, v in query.items()]
        url += ("&" if "?" in url else "?") + urlencode(pairs, quote_via=quote)
    return url


def _item(rule: Rule, index: int, reason: str) -> ItemRejection:
    return ItemRejection(rule.name, index, reason)
