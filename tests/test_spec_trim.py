"""`python -m engine.fake.spec_trim`: after an endpoint is added to a set's delivery section, the
trimmed copy is regenerated from the full document (the copy that lacks it must not get in the way)."""

from __future__ import annotations

import json
from pathlib import Path

from engine.fake.spec_trim import main

FULL = {
    "openapi": "3.0.2", "info": {"title": "API", "version": "1"},
    "paths": {
        "/api/things": {"post": {"operationId": "create_thing", "x-scopes": ["things:write"], "requestBody": {
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}},
            "responses": {"202": {"description": "ok"}}}},
        "/api/accounts": {"get": {"operationId": "get_accounts", "x-scopes": ["accounts:read"],
                                  "responses": {"200": {"description": "ok"}}}},
        "/api/unused": {"get": {"operationId": "unused", "responses": {"200": {"description": "ok"}}}},
    },
    "components": {"schemas": {"Thing": {"type": "object"}, "Unused": {"type": "string"}}},
}


def test_a_new_endpoint_is_trimmed_in(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "full.json").write_text(json.dumps(FULL), encoding="utf-8")
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "mapping.yaml").write_text(
        "name: things\ntitle: t\nbase_url: http://127.0.0.1:9\ndelivery: delivery.yaml\ninclude: []\n",
        encoding="utf-8")
    (tmp_path / "set" / "delivery.yaml").write_text(
        "spec: trimmed.json\nscopes: x-scopes\nendpoints:\n"
        "  create_thing: {request: POST /api/things}\n"
        "  get_accounts: {request: GET /api/accounts}     # just added: not in trimmed.json yet\n",
        encoding="utf-8")
    old = {k: v for k, v in FULL.items() if k != "paths"} | {"paths": {"/api/things": FULL["paths"]["/api/things"]},
                                                            "x-trimmed": "from full.json"}
    (tmp_path / "set" / "trimmed.json").write_text(json.dumps(old), encoding="utf-8")

    assert main([str(tmp_path / "full.json"), "--mappings", str(tmp_path / "set")]) == 0
    trimmed = json.loads((tmp_path / "set" / "trimmed.json").read_text(encoding="utf-8"))
    assert trimmed["paths"] == {p: FULL["paths"][p] for p in ("/api/things", "/api/accounts")}
    assert trimmed["components"] == {"schemas": {"Thing": {"type": "object"}}}
    assert trimmed["x-trimmed"] == "from full.json"
    assert capsys.readouterr().out == f"wrote {tmp_path / 'set' / 'trimmed.json'} (2 paths, 1 components)\n"


def test_a_set_without_endpoints_is_refused(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "mapping.yaml").write_text("name: bare\ntitle: t\nbase_url: http://127.0.0.1:9\n", encoding="utf-8")
    assert main([str(tmp_path / "full.json"), "--mappings", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"{tmp_path}: the mapping set declares no endpoints in a delivery section\n"
