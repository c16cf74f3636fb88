"""The installed package renders from the one copy of the templates (nginx_templates/,
shipped through the bluegreen/templates link as package data)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from testkit.wheel import built_wheel

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_the_templates_and_renders_from_them(tmp_path: Path) -> None:
    site, names = built_wheel(tmp_path)
    for name in sorted(p.name for p in (REPO / "nginx_templates").glob("*.j2")):
        shipped = site / "bluegreen" / "templates" / name
        assert f"bluegreen/templates/{name}" in names
        assert not shipped.is_symlink()
        assert shipped.read_bytes() == (REPO / "nginx_templates" / name).read_bytes()
    probe = (
        "import bluegreen.render as r, bluegreen.config as c;"
        "cfg = c.from_dict({'app': 'a', 'start': 'x {port}'});"
        f"assert str(r.TEMPLATES).startswith({str(site)!r}), r.TEMPLATES;"
        "print(r.parse_marker(r.render(cfg, 'green', 'rel', 'v')).slot)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={"PYTHONPATH": str(site), "PATH": "/usr/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "green"
