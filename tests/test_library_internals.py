"""The parts of jmespath and Jinja the engine relies on beyond their documented API, and the
versions they were checked with. A new version is allowed in pyproject.toml only when these hold
(and the whole suite passes): raise the bound there and the range here together."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import jinja2
import jmespath
import jmespath.functions
import jmespath.parser
import jmespath.visitor
import pytest
from jinja2 import nodes
from jinja2.runtime import Context, LoopContext, new_context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.analyse import children
from engine.lower_jmespath import lower_tree


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version(name).split(".")[:2])


@pytest.mark.parametrize(("package", "low", "high"), [("jmespath", (1, 0), (1, 2)), ("jinja2", (3, 1), (3, 2))])
def test_installed_versions_are_within_the_bounds_these_checks_were_made_for(
        package: str, low: tuple[int, ...], high: tuple[int, ...]) -> None:
    assert low <= _version(package) < high


def test_jmespath_internals_the_engine_uses() -> None:
    # expressions._DepthLimitedParser overrides Parser._expression(binding_power) and reads
    # _lookahead_token(0)["start"]
    assert list(inspect.signature(jmespath.parser.Parser._expression).parameters) == ["self", "binding_power"]
    parser = jmespath.parser.Parser()
    parser.tokenizer = iter([{"type": "eof", "value": "", "start": 0, "end": 0}])
    parser._tokens = list(parser.tokenizer)
    parser._index = 0
    assert parser._lookahead_token(0)["start"] == 0
    # the AST's node shapes the code generator reads
    ast = jmespath.compile("a.b[0][?c > `1`].d | {x: e}").parsed
    assert ast["type"] == "pipe" and set(ast) == {"type", "children"}
    # lower_jmespath knows every node type of the subset the generator writes (none is left to the
    # interpreter), and reads a filter's children as [list, value, condition]
    tree, _, _ = lower_tree(jmespath.compile(
        "a.b[0][-1][?c > `1`].d | {x: e.*.f, y: [g[], !h && i || @]} | [length(@)][*].j").parsed, "", None)
    kinds: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        kinds.add(type(node).__name__)
        stack.extend(children(node))
    assert kinds == {"JmesField", "JmesSubexpression", "JmesIndex", "JmesProjection", "JmesComparator", "Literal",
                     "JmesPipe", "JmesMultiSelect", "JmesFlatten", "JmesNot", "JmesAndOr", "JmesCurrent", "JmesCall"}
    assert [child["value"] for child in jmespath.compile("a[?b].c").parsed["children"]] == ["a", "c", "b"]
    # builtins' signatures (checked argument types) and the type names behind them
    table = jmespath.functions.Functions.FUNCTION_TABLE
    assert list(table["length"]["signature"]) == [{"types": ["string", "array", "object"]}]
    assert callable(table["length"]["function"])
    assert "str" in jmespath.functions.REVERSE_TYPES_MAP["string"]
    # the interpreter runs slices and exprefs, with the language's functions
    interpreter = jmespath.visitor.TreeInterpreter(jmespath.Options())
    assert interpreter.visit(jmespath.compile("a[1:]").parsed, {"a": [1, 2, 3]}) == [2, 3]
    assert interpreter._EQUALITY_OPS == ["eq", "ne"]


def test_jinja_internals_the_engine_uses() -> None:
    environment = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    template = environment.from_string("{{ a.b }}")
    # templates._jinja_renderer renders from one flat dict through new_context and root_render_func
    context = new_context(environment, template.name, template.blocks, {"a": {"b": 1}}, True)
    assert "".join(template.root_render_func(context)) == "1"
    assert isinstance(context, Context) and context.parent == {"a": {"b": 1}}
    # the fast path and the checks read these node classes and fields
    tree = environment.parse("{{ vars.x or vars['y'] }}{% for i in l %}{{ i | upper }}{% endfor %}")
    output = tree.body[0]
    assert isinstance(output, nodes.Output) and isinstance(output.nodes[0], nodes.Or)
    getattr_node, getitem_node = output.nodes[0].left, output.nodes[0].right
    assert isinstance(getattr_node, nodes.Getattr) and (getattr_node.attr, getattr_node.node.name) == ("x", "vars")
    assert isinstance(getitem_node, nodes.Getitem) and getitem_node.arg.value == "y"
    assert [node.name for node in tree.find_all(nodes.Filter)] == ["upper"]
    # template_limits counts a recursive loop's calls by its LoopContext
    assert inspect.isclass(LoopContext)
