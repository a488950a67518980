"""The generated Python for JMESPath expressions agrees with the closure compiler it replaces.

engine/expressions.py compiles each expression to one generated function (_Codegen); `_compile`
builds the same semantics as closures (and is what the generated code falls back on for rare
nodes). Random expressions over random documents must give the same value, of the same type, or
the same error, both ways.
"""

from __future__ import annotations

import random
from typing import Any

import jmespath

from engine import expressions
from engine.functions import EvalError

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


def test_generated_code_matches_the_closures() -> None:
    rng = random.Random(7)
    compared = 0
    for _ in range(1500):
        source = _expression(rng)
        try:
            compiled = expressions.compile_expression(source)
        except expressions.ExpressionError:
            continue
        closure = expressions._compile(compiled.ast, False)

        def reference(document: Any, closure: Any = closure, source: str = source) -> Any:
            try:
                return closure(document)
            except jmespath.exceptions.JMESPathError as exc:
                raise EvalError(f"{source}: {exc}") from None

        for _ in range(4):
            document = {"a": _document(rng), "b": _document(rng), "c": _document(rng), "vars": _document(rng)}
            assert _outcome(compiled.evaluate, document) == _outcome(reference, document), (source, document)
            compared += 1
    assert compared > 4000


def test_generated_tests_and_choices_match_truthiness() -> None:
    rng = random.Random(11)

    class Located(Exception):
        pass

    def locate(exc: EvalError) -> Exception:
        return Located(str(exc))

    compared = 0
    for _ in range(800):
        source = _expression(rng)
        try:
            compiled = expressions.compile_expression(source)
        except expressions.ExpressionError:
            continue
        test = expressions.generate_test(compiled, locate)
        choose = expressions.generate_test(compiled, locate, (True, "yes"), (False, lambda document: "no"))
        for _ in range(4):
            document = {"a": _document(rng), "b": _document(rng), "c": _document(rng)}
            expected = _outcome(compiled.evaluate, document)
            if expected[0] == "error":
                for function in (test, choose):
                    try:
                        function(document)
                    except Located as exc:
                        assert str(exc) == expected[1]
                    else:
                        raise AssertionError(f"{source}: expected {expected[1]}")
            elif expected[0] == "value":
                truth = expressions.is_truthy(expected[1])
                assert test(document) is truth, (source, document)
                assert choose(document) == ("yes" if truth else "no"), (source, document)
            compared += 1
    assert compared > 2000
