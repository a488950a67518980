"""The optimiser (engine/optimise.py): what the pass folds, and what it must leave alone."""

from __future__ import annotations

from typing import Any

from engine import ir
from engine.lower import Known, Lowerer
from engine.optimise import Optimiser
from engine.problems import ProblemList
from engine.yaml_loader import load_yaml

SETTINGS = {"settings": {"on": True, "off": False, "region": "US"}, "mapping": {"name": "m"}}


def lowered(text: str, rule: bool = False) -> Any:
    """The IR of a value tree (or a rule) written in YAML, in a set declaring the settings on, off, region, unset."""
    tree, problems = load_yaml(f"v: {text}\n", "rules.yaml")
    assert not problems
    lowerer = Lowerer(ProblemList(), Known({"on", "off", "region", "unset"}, set(), {}), "rules.yaml")
    node = lowerer.rule(tree["v"]) if rule else lowerer.value(tree["v"], tree.value_places["v"], "v")
    assert not lowerer.problems.problems, lowerer.problems.problems
    return node


def folded(text: str, roots: dict[str, Any] | None = None) -> Any:
    return Optimiser(SETTINGS if roots is None else roots).visit(lowered(text))


def test_a_select_with_a_constant_default_and_a_cast_is_one_select() -> None:
    node = folded("{select: [a, b], default: 0, cast: string}")
    assert isinstance(node, ir.Select)
    assert [e.source for e in node.expressions] == ["a", "b"]
    assert node.default == 0 and node.cast is not None and node.cast.name == "string"
    assert node.origin is not None and node.origin[1] == "v"
    computed_default = folded("{select: a, default: {select: b}}")  # (not a constant: left as it is)
    assert isinstance(computed_default, ir.Default) and isinstance(computed_default.value, ir.Select)
    cast_template = folded("{template: '{{ a }}', cast: integer}")
    assert isinstance(cast_template, ir.CastTo) and isinstance(cast_template.value, ir.Template)


def test_a_condition_on_fixed_settings_keeps_only_its_branch() -> None:
    assert folded("{if: settings.on, then: one, else: two}").value == "one"
    assert folded("{if: '!(settings.on)', then: one, else: two}").value == "two"
    assert folded("{if: \"settings.region == 'US' && mapping.name\", then: 1, else: 2}").value == 1
    assert isinstance(folded("{if: settings.off, then: yes}"), ir.Absent)
    assert isinstance(folded("{if: settings.unset, then: one}"), ir.Absent)  # (not set: null, false)


def test_a_condition_that_reads_the_event_or_unfixed_settings_is_left_to_the_generator() -> None:
    for text in ("{if: 'settings.on && traits.vip', then: yes}", "{if: 'length(settings.region) > `1`', then: yes}",
                 "{if: '@', then: yes}"):
        assert isinstance(folded(text), ir.If), text
    assert isinstance(folded("{if: settings.on, then: yes}", {}), ir.If)  # (no fixed roots: no Mapper's settings)


def test_absent_options_items_fields_and_parts_are_left_out() -> None:
    off = "{if: settings.off, then: x}"
    first = folded(f"{{first: [{off}, {{select: a}}, {off}]}}")
    assert isinstance(first, ir.First) and [type(o) for o in first.options] == [ir.Select]
    assert folded(f"{{first: [{off}], default: 5}}").value == 5  # (nothing left: absent, so the default)
    items = folded(f"[{off}, 1, {off}]")
    assert isinstance(items, ir.ListOf) and [i.value for i in items.items] == [1]
    fields = folded(f"{{a: {off}, b: 1, c: {{select: c}}}}")
    assert isinstance(fields, ir.Object) and [key for key, _ in fields.fields] == ["b", "c"]
    merged = folded(f"{{merge: [{off}, {{select: a}}]}}")
    assert isinstance(merged, ir.Merge) and len(merged.parts) == 1
    assert isinstance(folded(f"{{encode: json, value: {off}}}"), ir.Absent)
    cast = folded("{if: settings.off, then: x, cast: string}")
    assert isinstance(cast, ir.Absent)
    assert folded(f"{{select: a, default: {off}}}").__class__ is ir.Select  # (a default of nothing: the value)


def test_a_folded_tree_is_its_own_fold_and_an_unfoldable_one_is_not_copied() -> None:
    optimiser = Optimiser(SETTINGS)
    tree = lowered("{a: {if: settings.on, then: {select: x, default: 1}}, b: [{select: y}]}")
    once = optimiser.visit(tree)
    assert once is not tree and optimiser.visit(once) is once
    assert Optimiser(SETTINGS).visit(once) is once
    plain = lowered("{a: {select: x}, b: [{template: '{{ y }}'}]}")
    assert Optimiser(SETTINGS).visit(plain) is plain


def test_a_rule_drops_a_when_that_holds_a_requirement_met_and_a_warning_that_cannot_apply() -> None:
    rule = lowered("{name: r, when: settings.on, require: [{check: settings.on}, {present: [traits.email]}], "
                   "warn: [{when: settings.off, message: never}, {when: traits.vip, message: maybe}], skip: x}",
                   rule=True)
    assert isinstance(rule, ir.Rule) and rule.when is not None and len(rule.requires) == 2 and len(rule.warns) == 2
    folded_rule = Optimiser(SETTINGS).visit(rule)
    assert folded_rule.when is None
    assert [type(r.test) for r in folded_rule.requires] == [ir.Presence]
    assert [w.message.value for w in folded_rule.warns] == ["maybe"]
    assert folded_rule.name == "r" and folded_rule.origin == rule.origin and folded_rule.values is rule.values
    off = Optimiser({"settings": {"on": False}}).visit(rule)  # (a when that fails is still tested, its value read now)
    assert off.when is not None and off.when.position == rule.when.position and len(off.requires) == 2
    assert isinstance(off.when.expression.tree, ir.Literal) and off.when.expression.tree.value is False


def test_reads_of_settings_on_the_scope_become_literals_and_what_they_make_constant_folds() -> None:
    select = folded("{select: [settings.unset, settings.region, traits.x]}")
    trees = [expression.tree for expression in select.expressions]
    assert [tree.value for tree in trees[:2]] == [None, "US"] and isinstance(trees[2], ir.JmesSubexpression)
    assert folded("{if: \"settings.region == 'US' && !(settings.off)\", then: kept}").value == "kept"
    assert folded("{if: \"settings.region == 'EU' || mapping.name != 'm'\", then: yes}").__class__ is ir.Absent
    mixed = folded("{if: \"settings.on && traits.vip\", then: yes}")  # (and of a known true: its right side)
    assert isinstance(mixed, ir.If) and isinstance(mixed.condition.expression.tree, ir.JmesSubexpression)
    # Only what is computed on the scope: inside a projection, `settings` is a key of each element.
    projected = folded("{select: 'items[*].settings.region'}").expressions[0].tree
    assert isinstance(projected, ir.JmesProjection) and not isinstance(projected.value, ir.Literal)
    loose = folded("{select: settings.region, keys: loose}")  # (keys: loose: matched at run time)
    assert isinstance(loose.expressions[0].tree, ir.JmesSubexpression)


def test_a_comparison_folded_from_settings_answers_as_the_generated_code_would() -> None:
    # The rule language orders numbers only (a string or mixed ordering is null, hence false) and
    # tells true from 1: folding a comparison at build time must give what the code gives at run time.
    from engine.generate import generate_function

    roots = {"settings": {"on": True, "off": 1, "region": "US", "unset": 2.5}, "mapping": {"name": "m"}}
    for condition in ["settings.region < 'V'", "settings.region >= 'A'", "settings.off < 'x'", "settings.off <= `2`",
                      "settings.on == `1`", "settings.off == `1.0`", "settings.unset > `2`", "settings.region != 'US'",
                      "settings.on > `0`", "mapping.name == 'm'"]:
        text = f"{{if: \"{condition}\", then: yes, else: no}}"
        at_build = generate_function(folded(text, roots))({})
        at_run = generate_function(lowered(text))(roots)
        assert at_build == at_run, (condition, at_build, at_run)
