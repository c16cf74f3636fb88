"""pytest fixtures shared by tests/ and bench/tests/: import them into a conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.procs import stop_all_started
from testkit.project import stop_projects


@pytest.fixture(scope="session", autouse=True)
def stop_leftover_processes() -> Iterator[None]:
    """Safety net at the end of the session: stop, by PID, anything testkit.procs started
    that is still running."""
    yield
    stop_projects()
    leftover = stop_all_started()
    if leftover:
        # Not an error of any single test, but it means a fixture or helper forgot to
        # stop something; make it visible in the run's output.
        print(f"\ntestkit: stopped leftover test processes {leftover}")


@pytest.fixture(autouse=True)
def stop_this_tests_apps(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, the apps of the projects it wrote under its own tmp_path are
    stopped by PID (a module-scoped project lives elsewhere and is left to its fixture)."""
    yield
    tmp = request.node.funcargs.get("tmp_path") if hasattr(request.node, "funcargs") else None
    if tmp is not None:
        stop_projects(under=tmp)
