"""A disk that fills up mid-deploy: paths.root is a real 16 MiB tmpfs, filled to the last
byte at the point (failpoint `fill`). The deploy must fail cleanly (an error naming the
phase, never a traceback) with traffic untouched, `fab status` must still say what is true
on the full disk, the failed deploy must leave nothing behind (no temp upload, no partial
release, no half-written file), and once the space is back (whatever filled it is gone) the
next plain deploy converges."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bluegreen.failpoints import BALLAST
from tests.faults.faultkit import (
    Cell,
    Rig,
    check_status_is_true,
    converges,
    failpoint_env,
    fill_cells,
    judge_load,
    no_traceback,
    params,
    reached,
    under_load,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# helper G's ENOSPC handling (main since 175a977) made the unpack leave nothing; what is
# left is the stuck lock below (a heartbeat written on the full disk).
# cell -> the known defect it shows (none left: a failed write no longer leaves its temp
# file in the lock's directory, see test_core_defects.py)
XFAIL: dict[str, str] = {}


def leftovers(root: Path) -> list[str]:
    """What a failed deploy must not leave behind under paths.root."""
    found = [str(p.relative_to(root)) for pattern in (".upload-*", "*.partial", ".*.tmp")
             for p in root.rglob(pattern)]
    releases = root / "demo" / "releases"
    if releases.is_dir():
        found += [str(d.relative_to(root)) for d in releases.iterdir()
                  if d.is_dir() and not (d / ".bluegreen-release").exists()
                  and not d.name.endswith(".partial")]
    return sorted(found)


def xfail_marks(cells: list[Cell]) -> list[object]:
    out = []
    for p in params(cells):
        cell = p.values[0]  # type: ignore[attr-defined]
        reason = XFAIL.get(f"{cell.point}/{cell.host}")
        if reason:
            p = pytest.param(cell, id=cell.id, marks=[*p.marks,  # type: ignore[attr-defined]
                                                      pytest.mark.xfail(strict=True,
                                                                        reason=reason)])
        out.append(p)
    return out


@pytest.mark.parametrize("cell", xfail_marks(fill_cells()))
def test_a_disk_that_fills_mid_deploy_leaves_nothing_behind_and_converges(
        cell: Cell, rig: Rig) -> None:
    srv = rig.project.srv
    assert rig.deploy("v1").returncode == 0
    with under_load(rig) as load:
        load.wait(0.3)
        ran = rig.deploy("v2", env=failpoint_env(cell.point, f"fill:{srv}"))
        reached(ran, cell)
        no_traceback(ran)
        assert ran.returncode == 1 and "FAILED [phase=" in ran.stderr, \
            f"exit {ran.returncode}:\n{ran.stdout}\n{ran.stderr}"
        # locally the OS says ENOSPC; over SFTP the server only says "Failure", so the
        # message must at least point at the disk
        assert re.search(r"No space left on device|disk space", ran.stderr), ran.stderr
        check_status_is_true(rig, expect_version="v1")  # on the full disk
        left = leftovers(srv)
        (srv / BALLAST).unlink()  # the space comes back
        converges(rig, f"the disk filling at {cell.point}")
        load.wait(0.3)
    judge_load(rig, load.stop(), {"v1", "v2", "v3"})
    assert left == [], f"the failed deploy left {left} behind on the full disk"
