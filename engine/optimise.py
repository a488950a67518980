"""Stage 3, compile: the optimiser. Folds what lowering knows into fewer nodes before code is written.

A select with a constant default and a cast becomes one Select that tries its paths, falls back to
the default and casts, in one piece of code, rather than three pieces each testing for ABSENT.
What a Mapper's settings decide (a condition on a setting, a path under `settings`) is folded by the
code generator, which knows them (Source.roots).
"""

from __future__ import annotations

import dataclasses

from . import ir


def simplify(node: ir.Node) -> ir.Node:
    """`node` with select/default/cast fused (the default applies before the cast, and is cast too)."""
    if isinstance(node, ir.CastTo):
        inner = simplify(node.value)
        if isinstance(inner, ir.Select) and inner.cast is None:
            return dataclasses.replace(inner, origin=node.origin, cast=node.cast)
        return node if inner is node.value else ir.CastTo(node.origin, inner, node.cast)
    if isinstance(node, ir.Default) and isinstance(node.value, ir.Select) and node.value.cast is None \
            and node.value.default is ir.NO_DEFAULT and isinstance(node.default, ir.Literal) and node.default.is_scalar:
        return dataclasses.replace(node.value, origin=node.origin, default=node.default.value)
    return node
