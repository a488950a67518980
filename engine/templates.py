"""Jinja templates for strings (ids, URLs, names), in Jinja's immutable sandbox.

A template always yields a string: "{{ traits.zip }}" with zip "02818" stays "02818", and
"+15551234567" stays a string; rules turn strings into numbers only with an explicit `cast`.
Undefined names raise (StrictUndefined) and so do unsafe attribute accesses (the sandbox), which
rejects the event with a reason instead of sending a half-built request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .functions import FUNCTIONS, EvalError

_ENVIRONMENT = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
)
for _name, (_function, _low, _high) in FUNCTIONS.items():
    _ENVIRONMENT.globals[_name] = _function
    _ENVIRONMENT.filters[_name] = _function


def looks_like_template(text: str) -> bool:
    return "{{" in text or "{%" in text


class TemplateError(Exception):
    def __init__(self, message: str, line: int):
        self.message = message
        self.line = line  # 1-based line inside the template
        super().__init__(message)


@dataclass
class Template:
    source: str
    render: Callable[[dict[str, Any]], str]
    roots: frozenset[str]  # the top-level names the template reads (traits, settings, vars, …)


def compile_template(source: str) -> Template:
    """Parse a template once, at load time; raises TemplateError with the line inside it."""
    try:
        syntax_tree = _ENVIRONMENT.parse(source)
        template = _ENVIRONMENT.from_string(syntax_tree)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"invalid template: {exc.message}", exc.lineno or 1) from None
    roots = frozenset(meta.find_undeclared_variables(syntax_tree)) - set(_ENVIRONMENT.globals)

    def render(scope: dict[str, Any]) -> str:
        try:
            return template.render(scope)
        except SecurityError as exc:
            raise EvalError(f"template refused by the sandbox: {exc}") from None
        except jinja2.UndefinedError as exc:
            raise EvalError(f"template: {exc.message}") from None
        except EvalError:
            raise
        except Exception as exc:  # a filter or operator failed on this event's data
            raise EvalError(f"template failed: {type(exc).__name__}: {exc}") from None

    return Template(source, render, roots)
