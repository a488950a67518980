"""Stage 4, evaluate: run one Segment event through a compiled mapping set's rules.

The outcome of each event is a MapResult: the requests it produced, or the reason it was rejected,
or why it was skipped; plus rejections of single fanned-out items and warnings. An event rejected
as a whole produces no request at all, never a half-built one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from .functions import EvalError, a_json_type, describe, json_type, to_string
from .mapping_set import MappingSet
from .rules import RequestPlan, Rule
from .values import ABSENT, NOT_CONSTANT, FieldError

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
        self._rules_by_type: dict[str, list[Rule]] = {}
        self._constant_urls: dict[int, str] = {}  # id(plan) -> URL, for plans whose url is a constant

    def _rules_for(self, event_type: str) -> list[Rule]:
        """The top-level rules that can match this event type, in order (cached for the usual types)."""
        rules = self._rules_by_type.get(event_type)
        if rules is None:
            rules = [rule for rule in self.mapping_set.rules if rule.types is None or event_type in rule.types]
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
            for rule in self._rules_for(event_type):
                if self._apply(rule, scope, event_type, event_name, result):
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
    def _apply(self, rule: Rule, scope: dict[str, Any], event_type: str, event_name: Any, result: MapResult) -> bool:
        """Apply one rule; True when no later rule may run (final, or a terminal action)."""
        if rule.types is not None and event_type not in rule.types:
            return False
        if (rule.event_names is not None or rule.event_globs) and not rule.matches(event_type, event_name):
            return False
        try:
            if rule.when is not None and not rule.when.evaluate(scope):
                return False  # a rule that does not run does not end the event's rules, final or not
            if rule.for_each is not None:
                self._fan_out(rule, scope, result)
                return rule.final
            if rule.values:
                scope = dict(scope)
                scope["vars"] = Vars(rule.values, scope, scope["vars"])
            for requirement in rule.requires:
                if not requirement.test(scope):
                    raise _Rejected(f"{self._text(requirement.reason, scope)} (rule '{rule.name}')")
            if rule.warns:
                self._warn(rule, scope, result)
            if rule.action == "reject":
                assert rule.message is not None
                raise _Rejected(f"{self._text(rule.message, scope)} (rule '{rule.name}')")
            if rule.action == "skip":
                assert rule.message is not None
                raise _Skipped(self._text(rule.message, scope))
            if rule.action == "group":
                for child in rule.children:
                    if self._apply(child, scope, event_type, event_name, result):
                        return True
                return rule.final
            assert rule.request is not None
            result.requests.append(self._build(rule, rule.request, scope, result.index, None))
        except EvalError as error:
            raise _Rejected(_reason(rule, error)) from None
        return rule.final

    def _fan_out(self, rule: Rule, scope: dict[str, Any], result: MapResult) -> None:
        assert rule.for_each is not None
        items = rule.for_each.evaluate(scope)
        if items is None:
            return
        if not isinstance(items, list):
            raise EvalError(f"for_each {rule.for_each_source}: is {a_json_type(items)}, not a list")
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
                assert rule.request is not None
                result.requests.append(self._build(rule, rule.request, item_scope, result.index, index))
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

    def _build(self, rule: Rule, plan: RequestPlan, scope: dict[str, Any], event_index: int,
               item_index: int | None) -> Request:
        url = self._constant_urls.get(id(plan))
        if url is None:
            url = plan.url.evaluate(scope)
            if not isinstance(url, str) or not url:
                raise EvalError(f"request url is {describe(None if url is ABSENT else url)}, not a string")
            if plan.url_is_path:
                url = self.base_url + (url if url.startswith("/") else "/" + url)
            if plan.url.constant is not NOT_CONSTANT:  # a constant path: joined to the base URL once
                self._constant_urls[id(plan)] = url
        if plan.query is not None:
            query = plan.query.evaluate(scope)
            if isinstance(query, dict) and query:
                pairs = [(k, _query_value(k, v)) for k, v in query.items()]
                url += ("&" if "?" in url else "?") + urlencode(pairs, quote_via=quote)
        if self._constant_headers is not None:
            headers = dict(self._constant_headers)
        elif self.mapping_set.default_headers is not None:
            headers = self._headers(self.mapping_set.default_headers.evaluate(scope))
        else:
            headers = {}
        if plan.headers is not None:
            headers.update(self._headers(plan.headers.evaluate(scope)))
        body_kind = plan.body_kind
        body: Any = None
        if plan.body is not None:
            body = plan.body.evaluate(scope)
            if body is ABSENT:
                body_kind, body = None, None
            elif body_kind == "form":
                if not isinstance(body, dict):
                    raise EvalError(f"form body must be an object, got {json_type(body)}")
                body = {k: _query_value(k, v) for k, v in body.items()}
        return Request(rule.name, plan.method, url, headers, body_kind, body, event_index, item_index)


def _item(rule: Rule, index: int, reason: str) -> ItemRejection:
    return ItemRejection(rule.name, index, reason)
