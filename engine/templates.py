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
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import new_context

from .codegen import Source
from .functions import FUNCTIONS, EvalError
from .limits import MAX_TEMPLATE_DEPTH, MAX_TEMPLATE_LOOP_NESTING, MAX_TEMPLATE_OUTPUT
from .template_limits import BUDGET_KEY, Budget, check_function, count_in_rendering, limited_environment

_ENVIRONMENT = limited_environment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
)
for _name, (_function, _low, _high) in FUNCTIONS.items():
    _ENVIRONMENT.globals[_name] = _ENVIRONMENT.filters[_name] = check_function(_name, _function)


def looks_like_template(text: str) -> bool:
    return "{{" in text or "{%" in text


class TemplateError(Exception):
    def __init__(self, message: str, line: int):
        self.message = message
        self.line = line  # 1-based line inside the template
        super().__init__(message)


# Writes a template's fast path into generated code: (source, the scope's variable, indent, the
# name of a function of the scope to call when the fast path can't answer) -> the result's name.
Emit = Callable[[Source, str, int, str], str]


@dataclass
class Template:
    source: str
    render: Callable[[dict[str, Any]], str]
    roots: frozenset[str]  # the top-level names the template reads (traits, settings, vars, …)
    emit: Emit | None = None  # for templates the fast path handles
    # The named values and settings it reads by name (("vars", NAME), ("settings", NAME)) and the
    # engine's fan-out names it reads ("item",), ("index",): checked at load like a selector's paths.
    reads: frozenset[tuple[str, ...]] = frozenset()


def compile_template(source: str) -> Template:
    """Parse a template once, at load time; raises TemplateError with the line inside it."""
    try:
        syntax_tree = _ENVIRONMENT.parse(source)
        depth, line, loops, loop_line = _tree_depth(syntax_tree)
        if depth > MAX_TEMPLATE_DEPTH:
            raise TemplateError(f"template nests {depth} levels deep; the limit is {MAX_TEMPLATE_DEPTH}", line)
        if loops > MAX_TEMPLATE_LOOP_NESTING:
            raise TemplateError(f"template nests {loops} loops; the limit is {MAX_TEMPLATE_LOOP_NESTING}", loop_line)
        roots = frozenset(meta.find_undeclared_variables(syntax_tree)) - set(_ENVIRONMENT.globals)
        emitter = _fast_emitter(syntax_tree) if _fast_handles(syntax_tree) else None
        # (a template that is one read of the event renders it as it is, by either path)
        single_read = emitter is not None and len(parts := _output_pieces(syntax_tree)) == 1 and not isinstance(
            parts[0], nodes.TemplateData)
        _check_names(syntax_tree)
        compiled: list[Callable[[dict[str, Any]], str]] = []
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"invalid template: {exc.message}", exc.lineno or 1) from None
    except (RecursionError, SyntaxError, MemoryError):  # Jinja's recursive parser, or Python refusing its code
        raise TemplateError(f"template nests too deeply to compile; the limit is {MAX_TEMPLATE_DEPTH} levels",
                            1) from None

    def jinja_render(scope: dict[str, Any]) -> str:
        # Jinja compiles a template when it is first rendered, not at load: compiling is most of a
        # load's time (a millisecond a template), and the fast path never needs it. Its load-time
        # errors are checked above (syntax, depth, the names of filters and tests).
        if not compiled:
            compiled.append(_jinja_renderer(syntax_tree, single_read))
        return compiled[0](scope)

    # The fast path outside a rule's code: the same code, as its own function (something unusual,
    # such as a missing name or not a dict, falls back to Jinja, which says exactly what).
    # Made on first use: most templates are written into rules' code and never rendered alone.
    fast: list[Callable[[dict[str, Any]], str]] = []

    def render(scope: dict[str, Any]) -> str:
        if not fast:
            code = Source()
            if emitter is not None:
                code.emit(1, f"return {emitter(code, 'scope', 1, code.bind(jinja_render))}")
            fast.append(code.define("template(scope)") if emitter is not None else jinja_render)
        try:
            return fast[0](scope)
        except SecurityError as exc:
            raise EvalError(f"template refused by the sandbox: {exc}") from None
        except jinja2.UndefinedError as exc:
            raise EvalError(f"template: {exc.message}") from None
        except EvalError:
            raise
        except RecursionError:  # a macro or recursive loop calling itself without end
            raise EvalError("template failed: it recurses too deeply") from None
        except Exception as exc:  # a filter or operator failed on this event's data
            raise EvalError(f"template failed: {type(exc).__name__}: {exc}") from None

    return Template(source, render, roots, emitter, _named_reads(syntax_tree, roots))


_NAMED_ROOTS = ("vars", "settings")
_FAN_OUT_ROOTS = ("item", "index")


def _named_reads(tree: nodes.Template, roots: frozenset[str]) -> frozenset[tuple[str, ...]]:
    """The names read under `vars` and `settings` (`vars.x`, `vars['x']`), and `item`/`index`,
    when the template reads them from the scope (not from its own `set` or loop variables)."""
    reads: set[tuple[str, ...]] = {(root,) for root in _FAN_OUT_ROOTS if root in roots}
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, (nodes.Getattr, nodes.Getitem))
        holder = node.node
        if not isinstance(holder, nodes.Name) or holder.name not in _NAMED_ROOTS or holder.name not in roots:
            continue
        if isinstance(node, nodes.Getattr):
            reads.add((holder.name, node.attr))
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            reads.add((holder.name, node.arg.value))
    return frozenset(reads)


def _check_names(tree: nodes.Template) -> None:
    """The check Jinja's compiler would make: every filter and test exists (in any branch)."""
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        is_filter = isinstance(node, nodes.Filter)
        kind, known = ("filter", _ENVIRONMENT.filters) if is_filter else ("test", _ENVIRONMENT.tests)
        if node.name not in known:
            raise jinja2.TemplateSyntaxError(f"No {kind} named {node.name!r}.", node.lineno)


def _jinja_renderer(tree: nodes.Template, single_read: bool) -> Callable[[dict[str, Any]], str]:
    """Jinja's code for the template, rendering under the limits (see template_limits)."""
    template = _ENVIRONMENT.from_string(tree if single_read else count_in_rendering(tree))
    # Jinja's render() copies the scope, then copies it again merged with the globals (a ChainMap,
    # slow to iterate): render from one plain dict instead, with the globals flattened once here.
    globals_flat = dict(template.globals)
    root_render, name, blocks, concat = template.root_render_func, template.name, template.blocks, "".join

    def jinja_render(scope: dict[str, Any]) -> str:
        # (a fresh budget of steps and output for each rendering)
        context = new_context(_ENVIRONMENT, name, blocks, dict(globals_flat, **scope, **{BUDGET_KEY: Budget()}), True)
        return concat(root_render(context))

    return jinja_render


def _output_pieces(tree: nodes.Template) -> list[nodes.Node]:
    return [node for statement in tree.body for node in getattr(statement, "nodes", [statement])]


def _tree_depth(tree: nodes.Template) -> tuple[int, int, int, int]:
    """The syntax tree's depth and the line of its deepest node; the most loops nested in one
    another and the line of the innermost (Python allows 20 nested blocks). Without recursion."""
    deepest, line, most_loops, loop_line = 0, 1, 0, 1
    stack: list[tuple[nodes.Node, int, int]] = [(tree, 1, 0)]
    while stack:
        node, depth, loops = stack.pop()
        if depth > deepest:
            deepest, line = depth, getattr(node, "lineno", line) or line
        if isinstance(node, nodes.For):
            loops += 1
            if loops > most_loops:
                most_loops, loop_line = loops, node.lineno
        stack.extend((child, depth + 1, loops) for child in node.iter_child_nodes())
    return deepest, line, most_loops, loop_line


# -- a fast path for the templates rules mostly hold: text and {{ a.b.c }}, a['b'], a or b ----------
class _Slow(Exception):
    """The fast path met something it does not handle; Jinja renders the template instead."""


def _fast_handles(tree: nodes.Template) -> bool:
    """Whether the template is only text and expressions the fast path reads as Jinja would: a
    name from the scope, an item of a dict or list, a dict key written as an attribute (never a
    dict method or a private name), and/or/not of those."""
    def handled(node: nodes.Node) -> bool:
        if isinstance(node, nodes.Const) or (isinstance(node, nodes.Name) and node.ctx == "load"):
            return True
        if isinstance(node, nodes.Getattr):
            return not node.attr.startswith("_") and node.attr not in _DICT_ATTRIBUTES and handled(node.node)
        if isinstance(node, nodes.Getitem):
            return isinstance(node.arg, nodes.Const) and handled(node.node)
        if isinstance(node, (nodes.Or, nodes.And)):
            return handled(node.left) and handled(node.right)
        return isinstance(node, nodes.Not) and handled(node.node)

    return all(isinstance(statement, nodes.Output) for statement in tree.body) and all(
        isinstance(node, nodes.TemplateData) or handled(node) for node in _output_pieces(tree))


_DICT_ATTRIBUTES = frozenset(dir(dict))


# -- the same fast path, written into a rule's generated function --------------------------------------
def _fast_getattr(obj: Any, attribute: str) -> Any:
    """`obj.attribute` as the fast path reads it from anything but a plain dict (see getattr_)."""
    if not isinstance(obj, dict) or hasattr(type(obj), attribute):
        raise _Slow
    return obj[attribute]  # a KeyError: the caller lets Jinja render


def _fast_getitem(obj: Any, item: Any) -> Any:
    if not isinstance(obj, (dict, list)):
        raise _Slow
    try:
        return obj[item]
    except (LookupError, TypeError):
        raise _Slow from None


def _fast_emitter(tree: nodes.Template) -> Emit:
    """The fast path's code, for a template it handles (_fast_handles).

    A missing name or key, or anything unusual, falls back to calling the template's function,
    which renders with Jinja and raises its exact error."""
    parts = _output_pieces(tree)

    def emit(source: Source, scope: str, indent: int, fallback: str) -> str:
        out = source.temp()
        source.emit(indent, "try:")
        pieces = []
        for node in parts:
            if isinstance(node, nodes.TemplateData):
                pieces.append(source.bind(node.data))
            else:
                pieces.append(f"str({_emit_expression(node, source, scope, indent + 1)})")
        source.emit(indent + 1, f"{out} = {' + '.join(pieces) if pieces else repr('')}")
        if len(pieces) > 1:  # (one value alone is not limited: it is the event's)
            source.emit(indent + 1, f"if len({out}) > {MAX_TEMPLATE_OUTPUT}: raise {source.bind(_Slow)}")
        source.emit(indent, f"except ({source.bind(KeyError)}, {source.bind(_Slow)}):")
        source.emit(indent + 1, f"{out} = {fallback}({scope})")
        return out

    return emit


def _emit_expression(node: nodes.Node, source: Source, scope: str, indent: int) -> str:
    out = source.temp()
    if isinstance(node, nodes.Const):
        return source.bind(node.value)
    if isinstance(node, nodes.Name):
        source.emit(indent, f"{out} = {scope}[{node.name!r}]")
    elif isinstance(node, nodes.Getattr):
        if (isinstance(node.node, nodes.Name) and node.node.name == "vars" and source.named is not None):
            return source.named(node.attr, indent)  # a named value: as the rule's code reads it
        inner = _emit_expression(node.node, source, scope, indent)
        source.emit(indent, f"{out} = {inner}[{node.attr!r}] if {inner}.__class__ is dict else "
                            f"{source.bind(_fast_getattr)}({inner}, {node.attr!r})")
    elif isinstance(node, nodes.Getitem):
        assert isinstance(node.arg, nodes.Const)  # (_fast_handles allows no other)
        inner = _emit_expression(node.node, source, scope, indent)
        source.emit(indent, f"{out} = {source.bind(_fast_getitem)}({inner}, {source.bind(node.arg.value)})")
    elif isinstance(node, (nodes.Or, nodes.And)):
        source.emit(indent, f"{out} = {_emit_expression(node.left, source, scope, indent)}")
        source.emit(indent, f"if {'not ' if isinstance(node, nodes.Or) else ''}{out}:")
        source.emit(indent + 1, f"{out} = {_emit_expression(node.right, source, scope, indent + 1)}")
    else:
        assert isinstance(node, nodes.Not)
        source.emit(indent, f"{out} = not {_emit_expression(node.node, source, scope, indent)}")
    return out
