"""The compile stage's intermediate form: what a value tree or a rule means, with no code in it.

Lowering (lower.py) turns a rule file's value trees and rules into these nodes, checking every
directive; analyse.py says what a node reads; optimise.py folds what is known when a Mapper is
built; one CodeGenerator (generate.py) writes Python for them. Every node carries `origin`: the
rule file's place and field path it was written at (None only for a node made by the engine, not
read from a file). Nodes are frozen; those that refer to a table hold its TableDef, whose lowered
fields are set once every table is lowered (a table may name one defined after it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .codegen import Origin
from .problems import Position
from .templates import Template as CompiledTemplate

if TYPE_CHECKING:
    from .expressions import Expression


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """(Nodes compare by identity: each is one place in a rule file.)"""

    origin: Origin | None


@dataclass(frozen=True, slots=True)
class Cast:
    """A `cast` option: its name, the function, and where the option was written (its errors' place)."""

    name: str
    function: Callable[[Any], Any]
    position: Position


NO_DEFAULT: Any = object()  # Select.default when there is none


@dataclass(frozen=True, slots=True, eq=False)
class Literal(Node):
    """A value written in the file (a scalar, or a `literal:` object or list)."""

    value: Any

    @property
    def is_scalar(self) -> bool:
        return not isinstance(self.value, (dict, list))


@dataclass(frozen=True, slots=True, eq=False)
class Absent(Node):
    """Always absent (what a part with a problem becomes, so the rest of the file is still checked)."""


@dataclass(frozen=True, slots=True, eq=False)
class ListOf(Node):
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Object(Node):
    fields: tuple[tuple[str, Node], ...]
    omit_empty: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class Select(Node):
    """The first expression whose value is present, else `default` (NO_DEFAULT: absent), cast."""

    expressions: tuple[Expression, ...]
    position: Position
    default: Any = NO_DEFAULT
    cast: Cast | None = None


@dataclass(frozen=True, slots=True, eq=False)
class First(Node):
    options: tuple[Node, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Template(Node):
    template: CompiledTemplate
    render: Callable[[dict[str, Any]], Any]  # Jinja's rendering, its errors located at this field
    # The fast subset: the output's pieces (Literal text, Jinja* reads), None when Jinja renders it all.
    pieces: tuple[Node, ...] | None


# The fast Jinja subset (templates._fast_handles): reads Jinja makes the same way, anything unusual
# (a missing name or key, not a dict) left to Jinja, which says exactly what.
@dataclass(frozen=True, slots=True, eq=False)
class JinjaName(Node):
    name: str


@dataclass(frozen=True, slots=True, eq=False)
class JinjaAttribute(Node):
    value: Node
    attribute: str


@dataclass(frozen=True, slots=True, eq=False)
class JinjaItem(Node):
    value: Node
    key: Any


@dataclass(frozen=True, slots=True, eq=False)
class JinjaChoice(Node):
    """`a or b` (is_or), `a and b`: Python's truthiness, as Jinja's."""

    left: Node
    right: Node
    is_or: bool


@dataclass(frozen=True, slots=True, eq=False)
class JinjaNot(Node):
    value: Node


@dataclass(frozen=True, slots=True, eq=False)
class Condition(Node):
    """An expression's JMESPath truthiness: a Python bool."""

    expression: Expression
    position: Position


@dataclass(frozen=True, slots=True, eq=False)
class Presence(Node):
    """require's one_of (any_one) or present: whether any (every) expression is not null."""

    expressions: tuple[Expression, ...]
    any_one: bool


@dataclass(frozen=True, slots=True, eq=False)
class If(Node):
    condition: Condition
    then: Node
    otherwise: Node | None


@dataclass(frozen=True, slots=True, eq=False)
class Default(Node):
    value: Node
    default: Node


@dataclass(frozen=True, slots=True, eq=False)
class CastTo(Node):
    value: Node
    cast: Cast


# -- rules ---------------------------------------------------------------------------------------------
# A rule and its parts (Lowerer.rule makes them; the CodeGenerator writes each rule as one function).
# Their origin is always set: (the rule file's place, "rule 'NAME' …").
@dataclass(frozen=True, slots=True, eq=False)
class Requirement(Node):
    origin: Origin
    test: Node  # true when the requirement is met
    reason: Node


@dataclass(frozen=True, slots=True, eq=False)
class Warning_(Node):
    origin: Origin
    test: Node  # true when the warning applies
    message: Node


@dataclass(frozen=True, slots=True, eq=False)
class RequestPlan(Node):
    origin: Origin
    method: str
    url: Node  # absolute URL, or a path joined to the base URL
    url_is_path: bool
    query: Node | None
    headers: Node | None
    body_kind: str | None  # "json", "form" or None
    body: Node | None
    per_item: bool  # made once per item of a for_each (the request records the item's index)


@dataclass(frozen=True, slots=True, eq=False)
class ChainStep(Node):
    """A step of a request chain: run with the previous request's answer as `response`."""

    origin: Origin
    description: str  # (or the request's method and path as written: what map's `then` says the step does)
    when: Condition | None  # false: the chain ends here, skipped with `skip`
    skip: Node | None
    for_each: Expression | None  # a request per item (none: skipped with `skip`)
    item_name: str
    request: RequestPlan


@dataclass(frozen=True, slots=True, eq=False)
class Rule(Node):
    origin: Origin
    name: str
    types: frozenset[str] | None = None
    event_names: frozenset[str] | None = None
    event_globs: tuple[str, ...] = ()
    when: Condition | None = None
    final: bool = False
    values: dict[str, Node] = field(default_factory=dict)  # (a level's key: see generate.MapperCode)
    for_each: Expression | None = None
    item_name: str = "item"
    requires: tuple[Requirement, ...] = ()
    warns: tuple[Warning_, ...] = ()
    action: str = "request"  # request | reject | skip | group
    message: Node | None = None  # for reject and skip
    request: RequestPlan | None = None
    children: tuple[Rule, ...] = ()
    steps: tuple[ChainStep, ...] = ()  # then.steps: after the request, in order
    order_lane: str | None = None  # then.order: the subject whose order the whole chain holds
    order_subject: Node | None = None

    @property
    def position(self) -> Position:
        return self.origin[0]


@dataclass(frozen=True, slots=True, eq=False)
class TableFields(Node):
    """`fields: TABLE`: the table's object, built in place (the optimiser makes it that Object)."""

    table: Any  # lower.TableDef: its `lowered` Object is set once every table is lowered
    omit_empty: bool


@dataclass(frozen=True, slots=True, eq=False)
class Merge(Node):
    parts: tuple[Node, ...]
    position: Position
    omit_empty: bool


@dataclass(frozen=True, slots=True, eq=False)
class Rest(Node):
    """An object's keys but those written elsewhere: `except` keys, and what `except_fields` tables read."""

    expression: Expression
    position: Position
    except_keys: frozenset[str]
    except_tables: tuple[Any, ...]  # lower.TableDef
    named: dict[str, Node] = field(hash=False)  # the set's named values (what a table reads through vars)
    loose: bool = False
    keep_null: bool = False
    omit_empty: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class Lookup(Node):
    key: Node
    entries: dict[Any, Any]
    ignore_case: bool


@dataclass(frozen=True, slots=True, eq=False)
class Each(Node):
    expression: Expression
    position: Position
    name: str
    value: Node
    where: Condition | None
    omit_empty: bool


@dataclass(frozen=True, slots=True, eq=False)
class Encode(Node):
    value: Node
    encoding: Callable[[Any], Any]


# -- JMESPath ---------------------------------------------------------------------------------------
# An expression's tree, lowered once from jmespath's parse tree (lower_jmespath.py): the subset the
# generator writes as Python, node for node as jmespath's interpreter visits it (a literal is a
# Literal). Each node has its expression's origin (None outside a rule file, as in delivery.yaml).
@dataclass(frozen=True, slots=True, eq=False)
class JmesField(Node):
    name: str


@dataclass(frozen=True, slots=True, eq=False)
class JmesSubexpression(Node):
    steps: tuple[Node, ...]  # `a.b[0].c`: each step computed on the one before


def plain_path(node: Node) -> tuple[str, ...] | None:
    """`a`, `a.b.c` (fields only): the keys, else None."""
    if isinstance(node, JmesField):
        return (node.name,)
    if isinstance(node, JmesSubexpression) and all(isinstance(step, JmesField) for step in node.steps):
        return tuple(step.name for step in node.steps if isinstance(step, JmesField))
    return None


@dataclass(frozen=True, slots=True, eq=False)
class JmesIndex(Node):
    value: Node
    indexes: tuple[int, ...]  # `a[0][-1]` (a slice is JmesInterpreted)


@dataclass(frozen=True, slots=True, eq=False)
class JmesCurrent(Node):
    """`@` (and a projection's implicit right side)."""


@dataclass(frozen=True, slots=True, eq=False)
class JmesComparator(Node):
    operator: str  # jmespath's name: eq, ne, lt, lte, gt, gte
    left: Node
    right: Node


@dataclass(frozen=True, slots=True, eq=False)
class JmesAndOr(Node):
    left: Node
    right: Node
    is_and: bool


@dataclass(frozen=True, slots=True, eq=False)
class JmesNot(Node):
    value: Node


@dataclass(frozen=True, slots=True, eq=False)
class JmesPipe(Node):
    left: Node
    right: Node


@dataclass(frozen=True, slots=True, eq=False)
class JmesMultiSelect(Node):
    items: tuple[Node, ...]
    keys: tuple[str, ...] | None  # `{x: a, y: b}`; None: a list, `[a, b]`


@dataclass(frozen=True, slots=True, eq=False)
class JmesFlatten(Node):
    base: Node


@dataclass(frozen=True, slots=True, eq=False)
class JmesProjection(Node):
    """`a[*].b`, `a[?condition].b`, `a.*.b` (of_object): `value` of each element of `base`."""

    base: Node
    value: Node
    condition: Node | None
    of_object: bool


@dataclass(frozen=True, slots=True, eq=False)
class JmesCall(Node):
    name: str
    arguments: tuple[Node, ...]


@dataclass(frozen=True, slots=True, eq=False)
class JmesInterpreted(Node):
    """What jmespath's interpreter runs (a slice, a function given `&expression`): its parse tree,
    and the nodes lowered inside it (what it reads)."""

    tree: dict[str, Any] = field(hash=False)
    parts: tuple[Node, ...]
