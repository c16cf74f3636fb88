"""The installed package serves the status page: its templates, script and stylesheet are
package data, so a plain `pip install` (not only an editable checkout) renders it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from testkit.wheel import built_wheel

REPO = Path(__file__).resolve().parents[3]
WEB = REPO / "bluegreen" / "automation" / "web"


def test_wheel_ships_the_page_and_renders_from_it(tmp_path: Path) -> None:
    site, names = built_wheel(tmp_path)
    assets = sorted(p.relative_to(REPO).as_posix() for folder in ("templates", "static")
                    for p in (WEB / folder).iterdir())
    assert len(assets) >= 8
    for name in assets:
        assert name in names, name
        assert (site / name).read_bytes() == (REPO / name).read_bytes()
    probe = (
        "import bluegreen.automation.web.app as a;"
        f"assert str(a.TEMPLATES).startswith({str(site)!r}), a.TEMPLATES;"
        "from jinja2 import Environment, FileSystemLoader;"
        "env = Environment(loader=FileSystemLoader(str(a.TEMPLATES)), autoescape=True);"
        "print(env.get_template('message.html').render(title='t<', message='m',"
        " problem=False, login=False, next='/ui/').count('t&lt;'))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={"PYTHONPATH": str(site), "PATH": "/usr/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"  # the <title> and the <h2>, both escaped
