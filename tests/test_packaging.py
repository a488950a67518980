"""The bundled mapping sets ship inside the wheel, so a plain `pip install .` finds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_every_bundled_set(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    [wheel] = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in sorted((ROOT / "mappings").iterdir()):
        for path in folder.rglob("*"):
            if path.is_file():
                shipped = f"engine/_bundled_mappings/{path.relative_to(ROOT / 'mappings').as_posix()}"
                assert shipped in names, shipped
    assert not any(name.startswith("tests/") for name in names)
