"""Delivery throughput: `segment-klaviyo send` against the fake Klaviyo enforcing the published limits.

Filled in once `send` and the fake Klaviyo exist (issue 5); until then `measure` says why it
cannot measure, and run.py reports the delivery figures as null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def measure(root: Path) -> dict[str, Any]:
    needed = [root / "engine" / "cli" / "send_command.py", root / "engine" / "cli" / "fake_command.py"]
    missing = [str(p.relative_to(root)) for p in needed if not p.exists()]
    if missing:
        return {"fraction_of_ceiling": None, "fraction_429": None,
                "message": "not measured: `send` and the fake Klaviyo have not landed yet "
                           f"({', '.join(missing)} missing)"}
    return {"fraction_of_ceiling": None, "fraction_429": None, "message": "not measured yet"}
