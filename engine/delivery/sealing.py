"""Keeping secret settings out of the outbox, the logs and every printed line.

Requests are mapped with the real settings (the API needs the key), then *sealed* before they are
stored: each secret value becomes a placeholder `{{secret:NONCE:NAME}}` (NONCE is random per
outbox, so no input can forge one). The worker *unseals* a request just before sending it, with the
settings of the running process, so a replaced key takes effect on resume. Anything shown to a
person — dead letters, errors, summaries — goes through `mask`, which prints `***`.
"""

from __future__ import annotations

import json
import re
import secrets as _secrets
from typing import Any
from urllib.parse import quote

MASK = "***"
_ANY_PLACEHOLDER = re.compile(r"\{\{secret:[0-9a-f]+:[A-Za-z0-9_.-]+\}\}")


class Sealer:
    def __init__(self, values: dict[str, str], nonce: str):
        self.values = {name: value for name, value in values.items() if isinstance(value, str) and value}
        self.nonce = nonce
        self._placeholder = {name: f"{{{{secret:{nonce}:{name}}}}}" for name in self.values}
        self._pattern = re.compile(r"\{\{secret:" + re.escape(nonce) + r":([A-Za-z0-9_.-]+)\}\}")
        # Longest first, so that a secret that contains another is replaced whole.
        self._order = sorted(self.values, key=lambda n: -len(self.values[n]))
        # Each secret's forms, made once: sealing runs for every request recorded.
        self._all_forms = [(name, self._forms(self.values[name])) for name in self._order]

    @staticmethod
    def new_nonce() -> str:
        return _secrets.token_hex(8)

    def _forms(self, value: str) -> list[str]:
        forms = [value, json.dumps(value)[1:-1], quote(value, safe="")]
        return list(dict.fromkeys(f for f in forms if f))

    def seal(self, text: str) -> str:
        """Secret values (plain, JSON-escaped or URL-encoded) → placeholders."""
        for name, forms in self._all_forms:
            for form in forms:
                if form in text:
                    text = text.replace(form, self._placeholder[name])
        return text

    def unseal(self, text: str, json_text: bool = True) -> str:
        """Placeholders → the current values (JSON-escaped when the text is JSON)."""
        if "{{secret:" not in text:
            return text

        def value(match: re.Match[str]) -> str:
            found = self.values.get(match.group(1))
            if found is None:
                raise MissingSecret(match.group(1))
            return json.dumps(found)[1:-1] if json_text else found
        return self._pattern.sub(value, text)

    def mask(self, text: str) -> str:
        """Secret values and placeholders → ***."""
        if not isinstance(text, str):
            return text
        text = _ANY_PLACEHOLDER.sub(MASK, text)
        for _, forms in self._all_forms:
            for form in forms:
                if form in text:
                    text = text.replace(form, MASK)
        return text

    def mask_tree(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {k: self.mask_tree(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.mask_tree(v) for v in value]
        return value


class MissingSecret(Exception):
    """A stored request needs a secret setting that the running process was not given."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"a stored request needs the secret setting {name!r}, which is not set")
