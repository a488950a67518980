"""engine/ knows nothing of Klaviyo: every destination fact lives in mappings/."""

from __future__ import annotations

import re
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"
FORBIDDEN = re.compile(r"klaviyo|profile-import|placed order|ordered product|\$email|enforceEmail|useSegmentSpec",
                       re.IGNORECASE)
# The only allowed mention: the name of the default bundled mapping set.
ALLOWED = {'DEFAULT_SET = "klaviyo"'}  # the command's name is derived from it, not spelled again


def test_no_klaviyo_knowledge_in_engine() -> None:
    hits = []
    for path in sorted(ENGINE.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FORBIDDEN.search(line) and line.strip() not in ALLOWED:
                hits.append(f"{path.relative_to(ENGINE.parent)}:{number}: {line.strip()}")
    assert hits == []
