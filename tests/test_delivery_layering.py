"""How the delivery layer sits: compiled once per set, mapping_set not importing it, the fake apart."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from engine.delivery import config
from engine.delivery.config import DeliveryPlan
from engine.fake.config import FakeConfig, fake_config
from engine.mapping_set import MappingSet, load_mapping_set

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def refuse_to_compile(*args: object, **kwargs: object) -> None:
    raise AssertionError("the delivery section was compiled again")


def test_the_delivery_section_is_compiled_once_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    mapping_set = load_mapping_set("klaviyo")
    compiled = mapping_set.compiled_sections["delivery"]
    assert isinstance(compiled, DeliveryPlan)
    monkeypatch.setattr(config, "compile_delivery", refuse_to_compile)
    assert DeliveryPlan.for_set(mapping_set) is compiled
    assert DeliveryPlan.for_set(mapping_set) is compiled


def test_a_set_built_in_code_is_compiled_on_first_use_then_kept() -> None:
    loaded = load_mapping_set("klaviyo")
    built: MappingSet = dataclasses.replace(loaded, delivery_source=None, compiled_sections={})
    plan = DeliveryPlan.for_set(built)
    assert sorted(plan.endpoints) == sorted(DeliveryPlan.for_set(loaded).endpoints)
    assert built.compiled_sections == {"delivery": plan}
    assert DeliveryPlan.for_set(built) is plan


def imported_modules(path: Path) -> set[str]:
    """The engine modules a file imports, as dotted names relative to engine/ (`delivery.config`)."""
    package = path.relative_to(ENGINE).parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[:len(package) - node.level + 1])
            found.add(".".join(base + ([node.module] if node.module else [])))
    return found


@pytest.mark.parametrize(("module", "must_not_import"), [
    ("mapping_set.py", ("delivery", "fake")),
    ("delivery/config.py", ("fake",)),
    ("delivery/worker.py", ("fake",)),
    ("delivery/batching.py", ("fake",)),
    ("delivery/jobs.py", ("fake",)),
])
def test_dependencies_go_one_way(module: str, must_not_import: tuple[str, ...]) -> None:
    wrong = sorted(name for name in imported_modules(ENGINE / module)
                   if name.split(".")[0] in must_not_import)
    assert wrong == []


def test_the_fake_config_is_the_fake_package_s_not_the_plan_s() -> None:
    plan = DeliveryPlan.for_set(load_mapping_set("klaviyo"))
    assert not hasattr(plan, "fake")
    fake = fake_config(plan)
    assert isinstance(fake, FakeConfig)
    assert (fake.auth_header, fake.auth_setting) == ("Authorization", "privateKey")
    assert "create_or_update_profile" in fake.records
