"""Two apps behind one nginx, deployed at the same time: each holds the traffic host's lock
from install to commit, so neither tests or applies over the other's untested file, and a
broken template is blamed on the app it belongs to."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import requests

from testkit.loadgen import LoadGen, LoadResult
from testkit.nginx import PrivateNginx
from testkit.project import Project

pytestmark = pytest.mark.integration


def two_apps(tmp_path: Path, nginx: PrivateNginx, artifacts: dict[str, Path],
             **knobs: object) -> dict[str, Project]:
    apps = {}
    for name in ("demo", "shop"):
        apps[name] = Project(tmp_path / name, nginx, artifacts, app=name, mode="lua",
                             nginx_toml=f'server_name = "{name}.test"', **knobs).write()
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


DEPLOYS_EACH = 10


@pytest.mark.slow
def test_two_apps_deployed_ten_times_each_at_once_under_load_lose_no_request(
        tmp_path: Path, private_nginx_lua: PrivateNginx, artifacts: dict[str, Path]) -> None:
    """The issue's test: both apps deployed concurrently, ten times each, one nginx, a load
    client on each app's front door the whole time (keep-alive, fresh connections, POSTs and
    long requests), an app that dies at once on SIGTERM: not one failed request for either."""
    apps = two_apps(tmp_path, private_nginx_lua, artifacts, app_env={"GRACEFUL": "0"})
    for p in apps.values():
        p.deploy("v1")
    loads = {name: LoadGen(private_nginx_lua.url("/"), host_header=f"{name}.test",
                           slow_seconds=1.0, max_duration=400, label=name).start()
             for name in apps}
    errors: list[str] = []

    def deploys(p: Project) -> None:
        for i in range(DEPLOYS_EACH):
            ran = p.deploy(("v2", "v3")[i % 2], check=None)
            if ran.returncode != 0:
                errors.append(f"{p.app} deploy {i + 1}: {ran.stderr}")
    threads = [threading.Thread(target=deploys, args=(p,)) for p in apps.values()]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=360)
    finally:
        results: dict[str, LoadResult] = {name: g.stop() for name, g in loads.items()}
    assert not any(t.is_alive() for t in threads), "the deploys did not finish in 6 minutes"
    assert errors == []
    for name, res in results.items():
        assert res.failed == 0, f"{name}: {res.summary()}"
        assert res.total >= 500, f"{name}: too little traffic to mean anything: {res.summary()}"
        # the users of each app were there while its releases changed, and the last is live
        assert {"v2", "v3"} <= set(res.versions()) <= {"v1", "v2", "v3"}, res.versions()
        assert answer(private_nginx_lua, name) == "v3"
