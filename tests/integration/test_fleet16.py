"""Sixteen app hosts and two lua traffic hosts, each a network namespace with its own sshd,
reached as the non-root deploy user whose sudo allows only `nginx -t` and `nginx -s
reload` (testkit/fleet.py). `make test` runs the bounded part (a first deploy, a deploy,
a switch, the failures up front); `make fleet` (BLUEGREEN_FLEET=full) adds ten deploys
under load through both traffic hosts with zero failed requests, and a rollback.
Skips with the exact reason where namespaces (or sudo) cannot be had."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.demo import build_artifacts
from testkit.fleet import SUDOERS_RULES, FleetProject, TestFleet, fleet_available
from testkit.loadgen import LoadGen

pytestmark = [pytest.mark.integration, pytest.mark.fleet]
FULL = os.environ.get("BLUEGREEN_FLEET") == "full"
APPS = 16


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestFleet]:
    ok, reason = fleet_available()
    if not ok:
        pytest.skip(f"no fleet on this machine: {reason}")
    with TestFleet(APPS, 2) as f:
        yield f
    # close() deleted every namespace it made, or raised
    assert not [n for n in _namespaces() if n.startswith(f"bgfl-{os.getpid()}-")]


@pytest.fixture(scope="module")
def proj(fleet: TestFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetProject]:
    work = tmp_path_factory.mktemp("fleet16")
    p = fleet.project(work / "app", build_artifacts(work / "dist", ("v1", "v2", "v3")))
    try:
        yield p
    finally:
        p.stop_everything()


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def table_rows(stdout: str) -> dict[str, dict[str, str]]:
    """The per-host table at the end of a run: host -> column -> cell."""
    lines = stdout.split("\nper host:\n", 1)[1].splitlines()
    head = lines[0].split()
    rows = {}
    for line in lines[1:]:
        cells = line.split()
        if len(cells) >= len(head):
            rows[cells[0]] = dict(zip(head, cells, strict=False))
    return rows


def test_sixteen_hosts_deploy_and_switch_as_the_deploy_user(proj: FleetProject,
                                                           fleet: TestFleet) -> None:
    first = proj.deploy("v1", timeout=180)
    assert "16 app host(s), 2 traffic host(s)" in first.stdout
    assert proj.front_versions() == {"t1": "v1", "t2": "v1"}

    ran = proj.deploy("v2", timeout=180)
    out = ran.stdout
    # readable at 16 hosts: one closing line per phase, with counts and the slowest host
    for phase in ("connect", "upload", "stop", "start", "health"):
        closing = [ln for ln in out.splitlines() if ln.startswith(f"<-- {phase} ")]
        expected = 18 if phase == "connect" else APPS
        assert len(closing) == 1, out
        assert re.match(rf"<-- {phase}\s+{expected}/{expected} ok \d+\.\d+s "
                        rf"\(slowest \S+ \d+\.\d+s\)", closing[0]), closing[0]
    assert not re.search(r"^    \S+: FAILED", out, re.M)  # per-host lines only for failures
    assert "sudo rules in place on 2 host(s)" in out
    rows = table_rows(out)
    assert len(rows) == APPS + 2
    for label, row in rows.items():
        assert row["conn"] == "1", (label, row)  # one SSH connection per host per run
        # SSH round trips (remote commands): deploy <= 4 per app host, <= 2 per traffic host
        assert int(row["cmds"]) <= (4 if label.startswith("app") else 2), (label, row)
    assert proj.front_versions() == {"t1": "v2", "t2": "v2"}
    deployed = proj.history_entries()[-1]
    assert deployed["result"] == "ok" and deployed["flip_skew_ms"] >= 0

    sw = proj.fab("switch", "--json", timeout=120)
    result = json.loads(sw.stdout)
    assert result["to_slot"] == "blue" and result["flip_skew_ms"] is not None
    for row in result["hosts"]:
        assert row["connections"] == 1, row
        assert row["commands"] <= (2 if row["role"] == "traffic" else 0), row
    assert proj.front_versions() == {"t1": "v1", "t2": "v1"}
    assert proj.history_entries()[-1]["flip_skew_ms"] == result["flip_skew_ms"]

    st = proj.status()
    assert st["live"] == "blue" and st["consistent"] and st["healthy"]
    assert len(st["app_hosts"]) == APPS
    # the apps run as the deploy user, not root
    uid = pwd.getpwnam(fleet.user).pw_uid
    pid = int((fleet.apps[0].srv / "demo" / "slots" / "blue" / "pid").read_text().split()[0])
    assert os.stat(f"/proc/{pid}").st_uid == uid


def _untouched(proj: FleetProject) -> tuple[int, int, bool]:
    return (proj.state().get("serial", 0), len(proj.history_entries()),
            (proj.primary_root() / "lock").exists())


def test_unreachable_hosts_fail_up_front_and_nothing_starts(proj: FleetProject,
                                                            fleet: TestFleet) -> None:
    if not proj.state():
        proj.deploy("v1", timeout=180)
    before = _untouched(proj)
    down = [fleet.host("app03"), fleet.host("app11")]
    for h in down:
        assert h.sshd is not None
        h.sshd.stop()
    try:
        ran = proj.deploy("v3", check=False, timeout=120)
    finally:
        for h in down:
            h.sshd.start()  # type: ignore[union-attr]
    err = ran.stderr
    assert "2 of 18 host(s) cannot be reached; nothing was changed anywhere" in err, err
    assert re.search(r"app03: cannot reach .*:22", err) and re.search(r"app11: cannot reach", err)
    assert "Traceback" not in err
    assert "--> lock" not in ran.stdout and "--> upload" not in ran.stdout
    assert _untouched(proj) == before


def test_a_missing_sudo_rule_is_named_before_anything_changes(proj: FleetProject,
                                                              fleet: TestFleet,
                                                              tmp_path: Path) -> None:
    if not proj.state():
        proj.deploy("v1", timeout=180)
    # nginx run as `nginx -q`: only `-q -t` is allowed, `-q -s reload` is not (a rule no
    # other fleet on this machine grants either)
    quiet = fleet.project(tmp_path / "quiet", proj.artifacts, nginx_command="/usr/sbin/nginx -q")
    before = _untouched(proj)
    fleet.write_sudoers([*SUDOERS_RULES, "/usr/sbin/nginx -q -t"])
    try:
        ran = quiet.fab("switch", check=False, timeout=120)
    finally:
        fleet.write_sudoers(SUDOERS_RULES)
    err = ran.stderr
    for t in ("t1", "t2"):
        assert (f"{t}: no sudo rule lets {fleet.user} run `/usr/sbin/nginx -q -s reload` "
                "without a password") in err, err
    assert "phase=connect" in err and "nothing was changed anywhere" in err
    assert (f"{fleet.user} ALL=(root) NOPASSWD: /usr/sbin/nginx -q -t, "
            "/usr/sbin/nginx -q -s reload") in err
    assert "Traceback" not in err and "--> lock" not in ran.stdout
    assert _untouched(proj) == before


@pytest.mark.skipif(not FULL, reason="the full fleet run: make fleet (BLUEGREEN_FLEET=full)")
def test_ten_deploys_under_load_through_both_traffic_hosts_fail_no_request(
        proj: FleetProject) -> None:
    if not proj.state():
        proj.deploy("v1", timeout=180)
    gens = [LoadGen(h.url(proj.listen), label=h.label, max_duration=900).start()
            for h in proj.front_hosts]
    skews = []
    try:
        for i in range(10):
            version = ("v2", "v3")[i % 2]
            ran = proj.deploy(version, timeout=240)
            assert "=== deployed" in ran.stdout
            skews.append(proj.history_entries()[-1]["flip_skew_ms"])
    finally:
        results = [g.stop() for g in gens]
    for r in results:
        print(r.result_line(), file=sys.stderr)
        assert r.total > 100 and r.failed == 0, r.summary()
    assert all(s is not None for s in skews)
    proj.fab("rollback", timeout=120)
    assert set(proj.front_versions().values()) == {"v2"}
