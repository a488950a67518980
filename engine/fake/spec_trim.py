"""Trim an OpenAPI document to the operations a mapping set calls, with everything they refer to.

A mapping set ships the trimmed copy (its delivery section names it under `spec:`) so that the fake
server can validate bodies on a machine that has only the installed package. The copy is made by
this module and a test checks it is exactly the corresponding parts of the full document:

    python -m engine.fake.spec_trim FULL_SPEC.json --mappings SET [--out FILE]

The operations kept are the set's declared endpoints (operationIds); path-level entries of their
paths, the `$ref` closure of schemas/responses/parameters, the security schemes and the top-level
`openapi`, `info`, `servers` and `security` are copied unchanged. One key is added: `x-trimmed`, a
note saying where the copy came from.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _refs(value: Any, found: set[str]) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            if key == "$ref" and isinstance(child, str):
                found.add(child)
            else:
                _refs(child, found)
    elif isinstance(value, list):
        for child in value:
            _refs(child, found)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $refs are supported, not {ref!r}")
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def trim_openapi(full: dict[str, Any], operation_ids: Sequence[str], note: str = "") -> dict[str, Any]:
    """The parts of `full` that the given operations need (raises KeyError for an unknown id)."""
    wanted = set(operation_ids)
    paths: dict[str, Any] = {}
    for template, item in full.get("paths", {}).items():
        kept = {m: op for m, op in item.items() if m in _METHODS and op.get("operationId") in wanted}
        if kept:
            kept.update({k: v for k, v in item.items() if k not in _METHODS})
            paths[template] = {k: item[k] for k in item if k in kept}  # the full document's key order
            wanted -= {op.get("operationId") for op in kept.values() if isinstance(op, dict)}
    if wanted:
        raise KeyError(f"no operation(s) {', '.join(sorted(wanted))} in the document")
    refs: set[str] = set()
    _refs(paths, refs)
    done: set[str] = set()
    while refs - done:
        ref = sorted(refs - done)[0]
        done.add(ref)
        _refs(_resolve(full, ref), refs)
    components: dict[str, Any] = {}
    for section, entries in full.get("components", {}).items():
        if section == "securitySchemes":
            components[section] = entries
            continue
        kept_entries = {name: entry for name, entry in entries.items() if f"#/components/{section}/{name}" in done}
        if kept_entries:
            components[section] = kept_entries
    trimmed: dict[str, Any] = {key: full[key] for key in ("openapi", "info", "servers") if key in full}
    if note:
        trimmed["x-trimmed"] = note
    trimmed["paths"] = paths
    trimmed["components"] = components
    if "security" in full:
        trimmed["security"] = full["security"]
    return trimmed


def _declared_endpoints(mappings: str) -> tuple[list[str], Path | None]:
    """The endpoint names a set's delivery section declares, and its spec file. Read from the YAML as
    it is, not through the loader: the loader checks the endpoints against the current copy, which
    lacks the endpoints just added (the reason to regenerate it)."""
    import yaml

    from ..mapping_set import resolve_set_folder

    try:
        folder = resolve_set_folder(mappings)
        head = yaml.safe_load((folder / "mapping.yaml").read_text(encoding="utf-8"))
        section = head.get("delivery") if isinstance(head, dict) else None
        if isinstance(section, str):
            section = yaml.safe_load((folder / section).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{mappings}: cannot read the delivery section: {exc}") from None
    if not isinstance(section, dict) or not isinstance(section.get("endpoints"), dict):
        raise ValueError(f"{mappings}: the mapping set declares no endpoints in a delivery section")
    spec = section.get("spec")
    return [str(name) for name in section["endpoints"]], (folder / str(spec)) if spec else None


def main(argv: Sequence[str] | None = None) -> int:
    from ..mapping_set import DEFAULT_SET

    parser = argparse.ArgumentParser(prog="python -m engine.fake.spec_trim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("full", help="the full OpenAPI document (JSON)")
    parser.add_argument("--mappings", default=DEFAULT_SET, help="the mapping set whose endpoints to keep")
    parser.add_argument("--out", help="where to write (default: the file the set's delivery section names)")
    parser.add_argument("--note", default="", help="the x-trimmed note (default: kept from the current copy)")
    args = parser.parse_args(argv)
    try:
        endpoints, spec_path = _declared_endpoints(args.mappings)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else spec_path
    if out is None:
        print("the mapping set names no spec file; pass --out", file=sys.stderr)
        return 2
    note = args.note
    if not note and out.is_file():
        note = str(json.loads(out.read_text(encoding="utf-8")).get("x-trimmed", ""))
    full = json.loads(Path(args.full).read_text(encoding="utf-8"))
    trimmed = trim_openapi(full, endpoints, note)
    out.write_text(json.dumps(trimmed, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(trimmed['paths'])} paths, "
          f"{sum(len(v) for v in trimmed['components'].values())} components)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
