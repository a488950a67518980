"""The generated Python for JMESPath expressions agrees with jmespath itself.

engine/generate.py writes each expression as Python (CodeGenerator.jmespath_<type>). Random expressions over random
documents must give the same value, of the same type, or the same error, as jmespath.search with
the rule language's functions.
"""

from __future__ import annotations

import random
from typing import Any

import jmespath
import jmespath.visitor
import pytest

from engine import expressions, runtime
from engine.functions import EvalError
from engine.generate import generate_function
from engine.lower import Known, Lowerer
from engine.problems import Position, ProblemList
from engine.runtime import FieldError
from engine.yaml_loader import PosDict, ScalarPlace


class ReferenceInterpreter(jmespath.visitor.TreeInterpreter):  # type: ignore[misc]
    """jmespath's interpreter, with ordering (< <= > >=) defined for numbers only, as the rule
    language has it (jmespath 1.1 also orders strings, and fails on a string and a number)."""

    def visit_comparator(self, node: dict[str, Any], value: Any) -> Any:
        if node["value"] in self._EQUALITY_OPS:
            return super().visit_comparator(node, value)
        left, right = (self.visit(child, value) for child in node["children"])
        if not all(isinstance(side, (int, float)) and not isinstance(side, bool) for side in (left, right)):
            return None
        return self.COMPARATOR_FUNC[node["value"]](left, right)


REFERENCE = ReferenceInterpreter(expressions.JMESPATH_OPTIONS)
FIELDS = ["a", "b", "c", "vars", "settings"]
LITERALS = ["`1`", "`0`", "`2.5`", "`true`", "`false`", "`null`", "'x'", "''", "`[]`", "`{}`", "`[1,2]`"]
ONE_ARGUMENT = ["length", "type", "keys", "to_number", "to_string", "abs", "lower", "is_email", "as_list", "unique",
                "first_word", "not_null", "values", "reverse", "to_array", "longest_string"]
TWO_ARGUMENTS = ["contains", "starts_with", "coalesce", "multiply"]


def _path(rng: random.Random) -> str:
    return ".".join(rng.choice(FIELDS) for _ in range(rng.randint(1, 3)))


def _expression(rng: random.Random, depth: int = 0) -> str:
    roll = rng.random()
    if depth > 3 or roll < 0.3:
        return rng.choice([_path(rng), _path(rng), rng.choice(LITERALS), "@"])
    sub = lambda: _expression(rng, depth + 1)  # noqa: E731
    choices = [
        lambda: f"{_path(rng)}[{rng.choice([0, 1, -1, 5])}]",
        lambda: f"{sub()} {rng.choice(['==', '!=', '<', '<=', '>', '>='])} {sub()}",
        lambda: f"{sub()} && {sub()}",
        lambda: f"{sub()} || {sub()}",
        lambda: f"!({sub()})",
        lambda: f"{rng.choice(ONE_ARGUMENT)}({sub()})",
        lambda: f"{rng.choice(TWO_ARGUMENTS)}({sub()}, {sub()})",
        lambda: f"[{sub()}, {sub()}]",
        lambda: f"{_path(rng)}[?{sub()}].{rng.choice(FIELDS)}",
        lambda: f"{sub()} | {sub()}",
        lambda: f"({sub()}).{rng.choice(FIELDS)}",
        lambda: f"{_path(rng)}[*].{rng.choice(FIELDS)}",
    ]
    return rng.choice(choices)()


def _document(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 2 or roll < 0.35:
        return rng.choice([None, 0, 1, 2.5, True, False, "", "x", "a@b.co", [], {}])
    if roll < 0.6:
        return [_document(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {key: _document(rng, depth + 1) for key in rng.sample(FIELDS, rng.randint(0, 4))}


def _outcome(function: Any, document: Any) -> tuple[str, Any, str]:
    try:
        value = function(document)
    except EvalError as exc:
        return ("error", str(exc), "")
    except Exception as exc:  # a function failing on a type jmespath does not check (contains('x', [1]))
        return ("exception", str(exc), type(exc).__name__)
    return ("value", value, type(value).__name__)


def test_generated_code_matches_jmespath() -> None:
    rng = random.Random(7)
    compared = 0
    for _ in range(1500):
        source = _expression(rng)
        try:
            compiled = expressions.compile_expression(source)
        except expressions.ExpressionError:
            continue

        def reference(document: Any, source: str = source, compiled: Any = compiled) -> Any:
            try:
                return REFERENCE.visit(compiled.ast, document)
            except jmespath.exceptions.JMESPathError as exc:
                raise EvalError(f"{source}: {exc}") from None

        for _ in range(4):
            document = {"a": _document(rng), "b": _document(rng), "c": _document(rng), "vars": _document(rng)}
            assert _outcome(compiled.evaluate, document) == _outcome(reference, document), (source, document)
            compared += 1
    assert compared > 4000


@pytest.mark.parametrize("value", [
    None, 7, "", "abcde", "abcdef", "é" * 3, {"k": "abcd"}, {"abcdef": 1}, ["x", {"y": ["abcdef"]}],
    {"q": 'a"b'}, {"q": "\n" * 5}, {"when": __import__("datetime").date(2026, 1, 1)}, {True: "abcdef"},
    {1: "ab"}, float("nan"),
])
@pytest.mark.parametrize("operator", ["<", "<="])
def test_a_size_limit_checked_through_an_upper_bound_gives_the_functions_answer(value: Any, operator: str) -> None:
    # `longest_string(x) <= 6` is generated as "JSON length within 6, or else the walk": the bound
    # (functions.UPPER_BOUNDS) must never answer differently from the function itself.
    from engine.functions import longest_string

    compiled = expressions.compile_expression(f"longest_string(@) {operator} `6`")
    expected = longest_string(value) < 6 if operator == "<" else longest_string(value) <= 6
    assert compiled.evaluate(value) is expected


def test_json_length_bounds_longest_string_from_above() -> None:
    from engine.functions import json_length, longest_string

    rng = random.Random(11)
    texts = ["", "x", "é", "日本", "😀", 'q"', "\\", "\n\t", "\x01", "a" * 40]
    for _ in range(2000):
        document = _document(rng)
        if isinstance(document, dict):
            document[rng.choice(texts) * rng.randint(1, 5)] = rng.choice(texts) * rng.randint(0, 9)
        assert json_length(document) >= longest_string(document), document


def test_generated_conditions_and_choices_match_truthiness() -> None:
    """A rule's condition (`when`, `check`) and an `if` choose by JMESPath truthiness in their
    generated code; an expression's error is raised located at the field."""
    rng = random.Random(11)
    place = ScalarPlace(Position("rules.yaml", 1, 1), None)
    compiler = Lowerer(ProblemList(), Known({"x"}, set(), {}), "rules.yaml")
    compared = 0
    for _ in range(800):
        source = _expression(rng)
        try:
            compiled = expressions.compile_expression(source)
        except expressions.ExpressionError:
            continue
        if any(path[0] in ("vars", "settings") for path in compiled.info.paths):
            continue  # (their names are checked at load; this compares values)
        test = compiler.condition(source, place, "when")
        node = PosDict({"if": source, "then": "yes", "else": "no"})
        node.position, node.key_positions = place.position, dict.fromkeys(node, place.position)
        node.value_places = dict.fromkeys(node, place)
        choose = generate_function(compiler.value(node, place, "v"))
        assert test is not None
        decide = generate_function(test)
        for _ in range(4):
            document = {"a": _document(rng), "b": _document(rng), "c": _document(rng)}
            expected = _outcome(compiled.evaluate, document)
            if expected[0] == "error":
                for function, where in ((decide, "when"), (choose, "v.if")):
                    try:
                        function(document)
                    except FieldError as exc:
                        assert (str(exc), exc.field_path) == (expected[1], where)
                    else:
                        raise AssertionError(f"{source}: expected {expected[1]}")
            elif expected[0] == "value":
                truth = not runtime.is_falsy(expected[1])
                assert bool(decide(document)) is truth, (source, document)  # (None for false, as in `if not`)
                assert choose(document) == ("yes" if truth else "no"), (source, document)
            compared += 1
    assert not compiler.problems
    assert compared > 1000


@pytest.mark.parametrize(("source", "expected"), [
    ("Order_ID", 7),
    ("items[*].Product_ID", [1, 2]),  # (loose keys used to be ignored inside projections)
    ("items[?Product_ID > `1`].SKU", ["b"]),
    ("items[].sku", ["a", "b"]),
    ("{id: ORDER_ID, first: items[0].product_id}", {"id": 7, "first": 1}),
    ("meta.*.Count", [3]),
])
def test_loose_keys_apply_inside_projections_filters_and_objects(source: str, expected: Any) -> None:
    document = {"orderId": 7, "items": [{"productId": 1, "sku": "a"}, {"product-id": 2, "SKU": "b"}],
                "meta": {"x": {"count": 3}}}
    assert expressions.compile_expression(source, loose_keys=True).evaluate(document) == expected
