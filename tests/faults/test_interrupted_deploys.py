"""A deploy cut short anywhere converges: SIGKILL and SIGTERM at every phase boundary and
inside upload, stop, health and the switch; an SSH link dropped inside each phase; a host
that goes down mid-deploy. Both switch modes, local and SSH hosts, real nginx and sshd,
a load client running throughout (faultkit.py says what each cell checks)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.faults.faultkit import (
    Cell,
    Rig,
    check_status_is_true,
    converges,
    down_cells,
    drop_cells,
    failpoint_env,
    held_at,
    judge_load,
    kill_cells,
    no_traceback,
    params,
    reached,
    under_load,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.mark.parametrize("cell", params(kill_cells()))
def test_a_deploy_killed_or_interrupted_at_any_point_converges(cell: Cell, rig: Rig) -> None:
    assert rig.deploy("v1").returncode == 0
    with under_load(rig) as load:
        load.wait(0.3)
        ran = rig.deploy("v2", env=failpoint_env(cell.point, cell.fault))
        reached(ran, cell)
        if cell.fault == "kill":
            assert ran.returncode == -signal.SIGKILL, f"{ran.stdout}\n{ran.stderr}"
        else:
            assert ran.returncode == 130 and "INTERRUPTED" in ran.stderr, \
                f"SIGTERM at {cell.point}: exit {ran.returncode}\n{ran.stdout}\n{ran.stderr}"
            no_traceback(ran)
        check_status_is_true(rig)
        converges(rig, f"{cell.fault} at {cell.point}")
        load.wait(0.3)
    judge_load(rig, load.stop(), {"v1", "v2", "v3"})


@pytest.mark.parametrize("cell", params(drop_cells()))
def test_an_ssh_link_dropped_inside_any_phase_converges(cell: Cell, rig: Rig) -> None:
    assert rig.deploy("v1").returncode == 0
    with under_load(rig) as load:
        load.wait(0.3)
        ran = rig.deploy("v2", env=failpoint_env(cell.point, "drop"))
        reached(ran, cell)
        assert "(0 SSH connection(s) cut)" not in ran.stderr, ran.stderr
        no_traceback(ran)
        rig.notes["deploy_rc"] = ran.returncode
        print(ran.stdout, ran.stderr)
        if ran.returncode != 0:
            assert ran.returncode == 1 and "FAILED" in ran.stderr, ran.stderr
        check_status_is_true(rig, expect_version="v2" if ran.returncode == 0 else "v1")
        converges(rig, f"a dropped SSH link at {cell.point}")
        load.wait(0.3)
    judge_load(rig, load.stop(), {"v1", "v2", "v3"})


@pytest.mark.parametrize("cell", params(down_cells()))
def test_a_host_that_goes_down_mid_deploy_then_comes_back_converges(
        cell: Cell, rig: Rig, tmp_path: Path) -> None:
    """The app host's sshd stops (every connection cut, none possible) while the deploy is
    at the point; the deploy fails cleanly; status says the host is unreachable rather than
    anything false; the host comes back; the next plain deploy converges."""
    assert rig.sshd is not None
    assert rig.deploy("v1").returncode == 0
    hold = tmp_path / "hold"
    with under_load(rig) as load:
        load.wait(0.3)
        with held_at(rig, "v2", cell.point, hold) as proc:
            rig.sshd.stop()
            hold.unlink()
            proc.wait(timeout=120)
        out = proc.output  # type: ignore[attr-defined]
        assert proc.returncode == 1, f"exit {proc.returncode}:\n{out}"
        assert "Traceback" not in out and "FAILED" in out, out
        down = rig.fab("status", "--json")
        assert down.returncode != 0 and "Traceback" not in down.stderr, down.stderr
        assert "cannot reach" in down.stdout + down.stderr or "unknown" in down.stdout, \
            f"status with the host down:\n{down.stdout}\n{down.stderr}"
        rig.sshd.start()
        check_status_is_true(rig)
        converges(rig, f"the host going down at {cell.point}")
        load.wait(0.3)
    judge_load(rig, load.stop(), {"v1", "v2", "v3"})
