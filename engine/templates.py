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

from .functions import FUNCTIONS, EvalError
from .limits import MAX_TEMPLATE_DEPTH, MAX_TEMPLATE_LOOP_NESTING
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


@dataclass
class Template:
    source: str
    render: Callable[[dict[str, Any]], str]
    roots: frozenset[str]  # the top-level names the template reads (traits, settings, vars, …)
    # The output's pieces (text, and expressions of the fast subset) when the fast path handles the
    # template: lower.py makes IR of them, written into rules' code; None: only Jinja renders it.
    fast_pieces: tuple[nodes.Node, ...] | None = None
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
        pieces = tuple(_output_pieces(syntax_tree)) if _fast_handles(syntax_tree) else None
        # (a template that is one read of the event renders it as it is, by either path)
        single_read = pieces is not None and len(pieces) == 1 and not isinstance(pieces[0], nodes.TemplateData)
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

    # (the fast path is generated code; what it cannot answer, such as a missing name, comes here)
    def render(scope: dict[str, Any]) -> str:
        try:
            return jinja_render(scope)
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

    return Template(source, render, roots, pieces, _named_reads(syntax_tree, roots))


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
