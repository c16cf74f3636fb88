"""Convergence defects the fault suite found in the core, each pinned by a deterministic
test in its smallest form. Those without an xfail mark are fixed (the reasons in faultkit
say what each was); those with one are open (xfail strict, with the reason).
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.faults.faultkit import (
    HOSTS,
    Cell,
    Rig,
    check_status_is_true,
    failpoint_env,
    front_door,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

@pytest.mark.parametrize("cell", [pytest.param(Cell("defect", "record.after-state", m, "local"),
                                               id=m) for m in ("reload", "lua")])
def test_sigterm_between_the_state_write_and_the_commit_converges(cell: Cell,
                                                                  rig: Rig) -> None:
    assert rig.deploy("v1").returncode == 0
    ran = rig.deploy("v2", env=failpoint_env("record.after-state", "term"))
    assert ran.returncode == 130, ran.stderr
    door = front_door(rig)
    assert door.slot == rig.project.state().get("live"), \
        f"state says {rig.project.state().get('live')}, the front door answers {door}"
    check_status_is_true(rig)
    assert rig.deploy("v3").returncode == 0
    check_status_is_true(rig, expect_version="v3")


@pytest.mark.parametrize("cell", [pytest.param(Cell("defect", p, "lua", "local"), id=p)
                                  for p in ("switch.after-install", "switch.after-apply",
                                            "before:record")])
def test_recovery_in_lua_mode_flips_back_without_a_reload(cell: Cell, rig: Rig) -> None:
    assert rig.deploy("v1").returncode == 0
    ran = rig.deploy("v2", env=failpoint_env(cell.point, "kill"))
    assert ran.returncode == -signal.SIGKILL
    workers = sorted(rig.nginx.worker_pids())
    check_status_is_true(rig, expect_version="v1")  # status recovered the switch
    history = rig.project.history.read_text()
    assert '"action": "recover"' in history
    assert sorted(rig.nginx.worker_pids()) == workers, "recovery reloaded nginx"


@pytest.mark.parametrize("cell", [pytest.param(Cell("defect", p, "reload", "local"), id=p)
                                  for p in ("before:post-switch", "after:post-deploy")])
def test_an_interrupt_after_the_commit_is_not_reported_as_undone(cell: Cell, rig: Rig) -> None:
    assert rig.deploy("v1").returncode == 0
    ran = rig.deploy("v2", env=failpoint_env(cell.point, "term"))
    check_status_is_true(rig, expect_version="v2")  # it did commit: v2 is live
    assert "was undone" not in ran.stderr and "stays on the live slot" not in ran.stderr, \
        ran.stderr
    last = json.loads(rig.project.history.read_text().splitlines()[-1])
    assert last["version"] == "v2"
    assert "traffic was not touched" not in last.get("error", ""), last


@pytest.mark.parametrize(("cell", "phase"), [
    # inside the switch (after its journal write): the next SFTP call finds the link gone
    pytest.param(Cell("defect", "switch.after-intent", "reload", "ssh"), "switch", id="switch"),
    # before the record phase: its state write is the first to find it gone
    pytest.param(Cell("defect", "before:record", "reload", "ssh"), "record", id="record")])
def test_a_failure_names_the_phase_it_happened_in(cell: Cell, phase: str, rig: Rig) -> None:
    assert rig.deploy("v1").returncode == 0
    ran = rig.deploy("v2", env=failpoint_env(cell.point, "drop"))
    assert ran.returncode == 1 and "SSH connection lost" in ran.stderr, ran.stderr
    assert f"FAILED [phase={phase} " in ran.stderr, ran.stderr
    last = json.loads(rig.project.history.read_text().splitlines()[-1])
    assert last["phase"] == phase, last


@pytest.mark.parametrize("cell", [pytest.param(Cell("defect", p, m, "ssh"), id=f"{p}-{m}")
                                  for p in ("switch.after-apply", "before:verify")
                                  for m in ("reload", "lua")])
def test_a_link_dropped_before_verify_is_reopened_and_the_switch_verified_or_undone(
        cell: Cell, rig: Rig) -> None:
    """DEAD_LINK_NOT_REOPENED, fixed: the next step reconnects, verifies (or undoes)."""
    assert rig.deploy("v1").returncode == 0
    ran = rig.deploy("v2", env=failpoint_env(cell.point, "drop"))
    door = front_door(rig)  # before any other command could recover anything
    says_blue = "Traffic stays on blue" in ran.stderr
    assert not says_blue or door.slot == "blue", \
        f"the deploy says traffic stays on blue, the front door answers {door}:\n{ran.stderr}"
    assert "could NOT be restored" not in ran.stderr, ran.stderr
    assert ran.returncode == 0 or door.slot == "blue", ran.stderr


@pytest.mark.parametrize("cell", [pytest.param(Cell("defect", "before:upload", "reload", h,
                                                    tmpfs=True), id=h) for h in HOSTS])

def test_a_run_that_fails_on_a_full_disk_leaves_no_lock_behind(cell: Cell, rig: Rig) -> None:
    from bluegreen.failpoints import BALLAST

    assert rig.deploy("v1").returncode == 0
    srv = rig.project.srv
    failed = rig.deploy("v2", env=failpoint_env(cell.point, f"fill:{srv}"))
    assert failed.returncode == 1, failed.stderr
    (srv / BALLAST).unlink()  # the space is back
    lock = rig.project.app_root / "lock"
    assert not lock.exists(), f"the failed run left {sorted(os.listdir(lock))} in {lock}"
    assert rig.deploy("v3").returncode == 0
    check_status_is_true(rig, expect_version="v3")
