"""Rolling deploys for real: four app hosts, each its own traffic host (its own lua nginx,
as behind a cloud balancer), in network namespaces, reached as the non-root deploy user.
A batch that fails switches the hosts already switched back; --keep-partial leaves them,
`fab status` shows which host serves what, and the same command resumes."""

from __future__ import annotations

import contextlib
import os
import pwd
from collections.abc import Iterator

import pytest

from testkit.demo import build_artifacts
from testkit.fleet import FleetHost, FleetProject, TestFleet, fleet_available

pytestmark = [pytest.mark.integration, pytest.mark.fleet]


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetProject]:
    ok, reason = fleet_available()
    if not ok:
        pytest.skip(f"no fleet on this machine: {reason}")
    work = tmp_path_factory.mktemp("rolling")
    with TestFleet(4, 0, nginx_on_apps=True) as fleet:
        p = fleet.project(work / "app", build_artifacts(work / "dist", ("v1", "v2", "v3")))
        try:
            yield p
        finally:
            p.stop_everything()


@contextlib.contextmanager
def broken_slot(host: FleetHost, app: str, slot: str, user: str) -> Iterator[None]:
    """The deploy user can no longer write `slot`'s directory on `host` (a disk or
    permission problem on one server): the slot cannot be stopped or started there."""
    path = host.srv / app / "slots" / slot
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
    os.chown(path, 0, 0)
    path.chmod(0o755)
    try:
        yield
    finally:
        os.chown(path, uid, gid)


def test_rolling_deploy_switches_back_keeps_partial_and_resumes(proj: FleetProject) -> None:
    assert proj.fleet is not None
    proj.deploy("v1", timeout=120)  # the first release: every host at once
    assert set(proj.front_versions().values()) == {"v1"}

    out = proj.deploy("v2", "--batch", "50%", timeout=180).stdout
    assert "=== batch 1/2: app01 app02" in out and "=== batch 2/2: app03 app04" in out
    assert set(proj.front_versions().values()) == {"v2"}
    assert proj.status()["live"] == "green"

    # app03's idle slot (blue, where v3 goes) cannot be written by the deploy user
    with broken_slot(proj.fleet.host("app03"), proj.app, "blue", proj.fleet.user):
        failed = proj.deploy("v3", "--batch", "2", check=False, timeout=180)
        assert "rolling deploy stopped in batch 2/2" in failed.stderr, failed.stderr
        assert "switched 2 host(s) back to green (app01, app02)" in failed.stderr
        assert "app03: FAILED" in failed.stdout  # its own line, the moment it failed
        assert set(proj.front_versions().values()) == {"v2"}
        st = proj.status()
        assert st["live"] == "green" and st["consistent"] and st["rollout"] is None

        kept = proj.deploy("v3", "--batch", "2", "--keep-partial", check=False, timeout=180)
        assert "kept partial: 2 host(s) serve blue (app01, app02)" in kept.stderr, kept.stderr
        assert proj.front_versions() == {"app01": "v3", "app02": "v3", "app03": "v2",
                                         "app04": "v2"}
        st = proj.status()
        assert st["consistent"] and st["live"] == "green"
        assert {h: r["live"] for h, r in st["hosts_live"].items()} == {"app01": "blue",
                                                                      "app02": "blue"}
        assert st["rollout"]["done"] == ["app01", "app02"]
        text = proj.fab("status", check=None).stdout
        assert "ROLLING DEPLOY stopped: v3 -> blue on 2 host(s) (app01, app02)" in text
        # nothing else may move a fleet that stands on two slots
        refused = proj.deploy("v3", check=False, timeout=120)
        assert "is partial" in refused.stderr

    resumed = proj.deploy("v3", "--batch", "2", timeout=180).stdout
    assert "resuming the rolling deploy of v3: 2 of 4 host(s) already serve blue" in resumed
    assert "=== batch 1/1: app03 app04" in resumed
    assert set(proj.front_versions().values()) == {"v3"}
    st = proj.status()
    assert st["live"] == "blue" and st["rollout"] is None and st["consistent"]
    deploys = [e for e in proj.history_entries() if e["action"] == "deploy"]
    assert [(e["result"], e.get("phase")) for e in deploys[-5:]] == [
        ("ok", None), ("failed", "rollout"), ("failed", "rollout"), ("failed", "state"),
        ("ok", None)]
    assert deploys[-4]["rollout"]["switched_back"] == ["app01", "app02"]
    assert deploys[-1]["rollout"] == {"batch": "2", "hosts": 4, "done": 4, "failed": {},
                                      "status": "done"}
