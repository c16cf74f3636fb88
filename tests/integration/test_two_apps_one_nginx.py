"""Two apps behind one nginx, deployed at the same time: each holds the traffic host's lock
from install to commit, so neither tests or applies over the other's untested file, and a
broken template is blamed on the app it belongs to."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import requests

from testkit.nginx import PrivateNginx
from testkit.project import Project

pytestmark = pytest.mark.integration


def two_apps(tmp_path: Path, nginx: PrivateNginx, artifacts: dict[str, Path]
             ) -> dict[str, Project]:
    apps = {}
    for name in ("demo", "shop"):
        apps[name] = Project(tmp_path / name, nginx, artifacts, app=name, mode="lua",
                             nginx_toml=f'server_name = "{name}.test"').write()
    return apps


def answer(nginx: PrivateNginx, app: str) -> str:
    reply = requests.get(nginx.url("/"), headers={"Host": f"{app}.test"}, timeout=5)
    assert reply.status_code == 200, reply.text
    return reply.headers["X-App-Version"]


def test_two_apps_deploying_at_once_on_one_nginx_never_break_each_other(
        tmp_path: Path, private_nginx_lua: PrivateNginx, artifacts: dict[str, Path]) -> None:
    apps = two_apps(tmp_path, private_nginx_lua, artifacts)
    for p in apps.values():
        p.deploy("v1")
    errors: list[str] = []

    def deploys(p: Project) -> None:
        for version in ("v2", "v3", "v2"):
            ran = p.deploy(version, check=None)
            if ran.returncode != 0:
                errors.append(f"{p.app} {version}: {ran.stderr}")
    threads = [threading.Thread(target=deploys, args=(p,)) for p in apps.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    assert answer(private_nginx_lua, "demo") == "v2" == answer(private_nginx_lua, "shop")


def test_a_broken_template_is_blamed_on_its_own_app_while_the_other_deploys(
        tmp_path: Path, private_nginx_lua: PrivateNginx, artifacts: dict[str, Path]) -> None:
    apps = two_apps(tmp_path, private_nginx_lua, artifacts)
    for p in apps.values():
        p.deploy("v1")
    shop = apps["shop"]
    source = Path(__file__).resolve().parents[2] / "nginx_templates" / "bluegreen-lua.conf.j2"
    broken = shop.dir / "broken.conf.j2"
    # renders fine, but nginx -t rejects it: an unknown directive at http level
    broken.write_text(source.read_text() + "\nno_such_directive on;\n")
    results: dict[str, object] = {}

    def run(name: str, *extra: str) -> None:
        results[name] = apps[name].deploy("v2", *extra, check=None)
    threads = [threading.Thread(target=run, args=("shop", "--set",
                                                  'nginx.template="broken.conf.j2"')),
               threading.Thread(target=run, args=("demo",))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    shop_run, demo_run = results["shop"], results["demo"]
    assert demo_run.returncode == 0, demo_run.stderr  # type: ignore[attr-defined]
    assert shop_run.returncode != 0  # type: ignore[attr-defined]
    assert "nginx -t rejected the rendered config" in shop_run.stderr  # type: ignore[attr-defined]
    assert "shop.conf" in shop_run.stderr  # type: ignore[attr-defined]
    assert answer(private_nginx_lua, "demo") == "v2"
    assert answer(private_nginx_lua, "shop") == "v1"  # traffic stayed on the healthy slot
