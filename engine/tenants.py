"""A tenants file (`serve --tenants FILE`, `worker --tenants FILE`): several destinations, one deployment.

    tenants:
      acme:                                   # the tenant's name (the outbox keeps its events apart)
        write_keys: [{env: ACME_WRITE_KEY}]   # Segment write keys that route here
        settings:                             # the mapping set's settings, as --settings takes them
          private_api_key: {env: ACME_API_KEY}
          list_id: XyZ123

Any write key or setting may be `{env: NAME}`: read from the environment variable NAME when the
file is loaded, so a secret need not be written in the file. Secrets are sealed before anything is
recorded (like --settings), so the database never holds them; a worker resolves them again from
this file. Every problem is reported at once, each at its FILE:LINE:COL, and never quotes a key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .mapping_set import MappingSet
from .problems import Position, ProblemList, SettingsError
from .schema import check_shape
from .yaml_loader import PosDict, PosList, YamlError, load_yaml, plain_value

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_ENV_NAME = {"type": "string", "required": True, "regex": r"^[A-Za-z_][A-Za-z0-9_]*$"}
_ENV_REF = {"type": "dict", "schema": {"env": _ENV_NAME}}
_TENANT_SCHEMA: dict[str, Any] = {
    "description": {"type": "string"},
    "write_keys": {"type": "list", "required": True, "minlength": 1,
                   "schema": {"anyof": [{"type": "string", "empty": False}, _ENV_REF]}},
    "settings": {"type": "dict", "required": True},
}
TENANTS_FILE_SCHEMA: dict[str, Any] = {
    "description": {"type": "string"},
    "tenants": {"type": "dict", "required": True, "empty": False,
                "valuesrules": {"type": "dict", "schema": _TENANT_SCHEMA}},
}


class TenantsError(Exception):
    """The tenants file cannot be used; `problems` lists each at its FILE:LINE:COL."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Tenant:
    name: str
    write_keys: list[str]
    settings: dict[str, Any]  # as given (with environment references resolved), for the ingester
    resolved: dict[str, Any] = field(default_factory=dict)  # validated, defaults filled in

    def __repr__(self) -> str:  # never the keys or settings: they hold secrets
        return f"Tenant({self.name!r})"


def load_tenants(path: str | os.PathLike[str], mapping_set: MappingSet,
                 environ: dict[str, str] | None = None) -> list[Tenant]:
    """The tenants of the file, validated against `mapping_set`'s settings. Raises TenantsError."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TenantsError([f"--tenants {file}: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise TenantsError([f"--tenants {file}: not UTF-8 text"]) from None
    try:
        document, duplicates = load_yaml(text, file)
    except YamlError as exc:
        raise TenantsError([str(exc)]) from None
    problems = ProblemList()
    for position, message in duplicates:
        problems.add(position, message)
    if not check_shape(document, TENANTS_FILE_SCHEMA, file, problems, what="a tenants file"):
        raise TenantsError([str(p) for p in problems.sorted()])
    env = os.environ if environ is None else environ
    tenants: list[Tenant] = []
    owner: dict[str, str] = {}  # write key -> tenant (a key routes to one tenant only)
    entries: PosDict = document["tenants"]
    for name, entry in entries.items():
        where = entries.key_positions.get(name, entries.position)
        if not TENANT_NAME.match(name):
            problems.add(where, f"tenant name '{name}': use 1 to 63 lower-case letters, digits, '-' or '_', "
                                "starting with a letter or digit")
        keys: list[str] = []
        listed: PosList = entry["write_keys"]
        for index, item in enumerate(listed):
            place = listed.item_places[index].position if index < len(listed.item_places) else listed.position
            key = _value(item, place, env, f"tenant '{name}': write key {index + 1}", problems)
            if not isinstance(key, str):
                continue
            if key in owner:
                problems.add(place, f"tenant '{name}': write key {index + 1} is also a write key of tenant "
                                    f"'{owner[key]}' (a key routes to one tenant)")
            owner.setdefault(key, name)
            keys.append(key)
        given = _settings(entry["settings"], name, env, problems)
        tenant = Tenant(name, keys, given)
        settings_at = entry.key_positions.get("settings", entry.position)
        try:
            tenant.resolved = mapping_set.resolve_settings(dict(given))
        except SettingsError as exc:
            settings_node: PosDict = entry["settings"]
            for message in exc.messages:
                named = re.match(r"setting '([^']*)'", message)
                at = settings_node.key_positions.get(named.group(1)) if named else None
                problems.add(at or settings_at, f"tenant '{name}': {message}")
            continue
        missing = mapping_set.missing_to_send(tenant.resolved)
        if missing:
            problems.add(settings_at, f"tenant '{name}': missing setting(s) needed to send: {', '.join(missing)}")
        tenants.append(tenant)
    if problems:
        raise TenantsError([str(p) for p in problems.sorted()])
    return tenants


def _settings(node: PosDict, tenant: str, env: Any, problems: ProblemList) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for key, value in node.items():
        place = node.value_places[key].position if key in getattr(node, "value_places", {}) else \
            getattr(value, "position", node.key_positions.get(key, node.position))
        given[key] = _value(value, place, env, f"tenant '{tenant}': setting '{key}'", problems)
    return given


def _value(value: Any, place: Position, env: Any, what: str, problems: ProblemList) -> Any:
    """A value, or the environment variable an `{env: NAME}` reference names (None when unset)."""
    if isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str):
        found = env.get(value["env"])
        if not found:
            problems.add(place, f"{what}: the environment variable {value['env']} is not set (or empty)")
            return None
        return found
    return plain_value(value)
