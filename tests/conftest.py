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


POSTGRES_VARIABLE = "SEGMENT_KLAVIYO_TEST_POSTGRES"


def _with_search_path(dsn: str, schema: str) -> str:
    """The DSN, connecting into `schema` (libpq's options parameter sets search_path)."""
    from urllib.parse import quote

    return dsn + ("&" if "?" in dsn else "?") + "options=" + quote(f"-csearch_path={schema}")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A postgresql:// URL to a schema of this test's own (dropped after it), on the server that
    SEGMENT_KLAVIYO_TEST_POSTGRES names: concurrent test runs and tests never see each other's tables.
    Skips, saying why, when the variable is unset or the server cannot be reached."""
    import os
    import secrets

    dsn = os.environ.get(POSTGRES_VARIABLE)
    if not dsn:
        pytest.skip(f"{POSTGRES_VARIABLE} is not set: the PostgreSQL tests need a server (.ci/run sets it)")
    import psycopg

    schema = f"sk_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as admin:
            admin.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.Error as exc:
        pytest.skip(f"{POSTGRES_VARIABLE}: cannot use the server: {str(exc).strip().splitlines()[0]}")
    try:
        yield _with_search_path(dsn, schema)
    finally:
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
