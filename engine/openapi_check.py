"""Checking HTTP requests against an OpenAPI 3.0 document: the operation exists, the body fits its schema.

Used by the tests and by the fake server to hold every generated request to the target API's own
published contract. Generic: the document is whatever spec a mapping set names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4


@dataclass(frozen=True)
class Operation:
    method: str
    path_template: str
    pattern: re.Pattern[str]
    body_schema: dict[str, Any] | None
    operation_id: str
    raw: dict[str, Any]


class OpenAPIDocument:
    """One OpenAPI 3.0 document, with a body validator per operation, built on first use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.spec: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        uri = self.path.resolve().as_uri()
        self._uri = uri
        resource: Resource[Any] = DRAFT4.create_resource(self.spec)
        self._registry: Registry[Any] = Registry().with_resource(uri, resource)
        self.operations: list[Operation] = []
        for template, item in self.spec.get("paths", {}).items():
            regex = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
            for method, operation in item.items():
                if method.lower() not in ("get", "post", "put", "patch", "delete"):
                    continue
                request_body: dict[str, Any] = operation.get("requestBody") or {}
                content: dict[str, Any] = request_body.get("content", {})
                media: dict[str, Any] = next(iter(content.values()), {})
                schema = media.get("schema")
                self.operations.append(Operation(method.upper(), template, re.compile(regex), schema,
                                                 operation.get("operationId", ""), operation))
        self._validators: dict[tuple[str, str], Any] = {}

    def find(self, method: str, path: str) -> Operation | None:
        return next((operation for operation in self.operations
                     if operation.method == method.upper() and operation.pattern.match(path)), None)

    def validate_body(self, method: str, path: str, body: Any) -> list[str]:
        """Every way `body` breaks the operation's request schema; [] when it fits."""
        operation = self.find(method, path)
        if operation is None:
            return [f"no operation {method.upper()} {path} in {self.path.name}"]
        if operation.body_schema is None:
            return [] if body is None else [f"{method} {path} takes no body"]
        key = (operation.method, operation.path_template)
        validator = self._validators.get(key)
        if validator is None:
            schema = operation.body_schema
            if "$ref" in schema:
                schema = {"$ref": self._uri + schema["$ref"]}
            validator = OAS30Validator(schema, registry=self._registry, format_checker=OAS30Validator.FORMAT_CHECKER)
            self._validators[key] = validator
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        return [f"/{'/'.join(str(p) for p in error.absolute_path)}: {error.message}" for error in errors]


@lru_cache(maxsize=4)
def load_openapi(path: str) -> OpenAPIDocument:
    return OpenAPIDocument(path)
