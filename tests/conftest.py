from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from engine.fake.server import FakeServer

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = PROJECT_ROOT / "tests" / "data"
# Klaviyo's spec as the project ships it: the operations it calls and what they refer to, copied
# unchanged from the full document (mappings/klaviyo/openapi/NOTE.md), so requests are validated
# from any clone.
KLAVIYO_SPEC = PROJECT_ROOT / "mappings" / "klaviyo" / "openapi" / "klaviyo-openapi-stable-2026-07-15.trimmed.json"
# The full document is not shipped (3 MB); the one test that compares the copy with it runs when
# this variable names the file, and skips otherwise.
FULL_SPEC_VARIABLE = "SEGMENT_KLAVIYO_FULL_OPENAPI"


@pytest.fixture
def fake_klaviyo() -> Iterator[Callable[..., FakeServer]]:
    """Start a fake Klaviyo on 127.0.0.1 (a free port): `fake = fake_klaviyo(error_rate=0.2, ...)`
    takes FakeOptions fields; `fake.url`, `fake.store`. Every one started is stopped after the test."""
    from engine.delivery.config import DeliveryPlan
    from engine.fake.server import FakeOptions, FakeServer
    from engine.mapping_set import load_mapping_set

    plan = DeliveryPlan.for_set(load_mapping_set("klaviyo"))
    started: list[FakeServer] = []

    def start(**options: Any) -> FakeServer:
        fake = FakeServer(plan, FakeOptions(**options)).start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()
