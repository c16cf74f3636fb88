"""Build this repository's wheel and unpack it: what a non-editable install would hold."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def built_wheel(tmp_path: Path) -> tuple[Path, set[str]]:
    """(the unpacked site dir, the wheel's member names)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(REPO)],
                   check=True, timeout=300, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("bluegreen-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(site)
    return site, names
