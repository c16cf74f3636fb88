"""pytest fixtures shared by tests/ and bench/tests/: import them into a conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.procs import stop_all_started


@pytest.fixture(scope="session", autouse=True)
def stop_leftover_processes() -> Iterator[None]:
    """Safety net at the end of the session: stop, by PID, anything testkit.procs started
    that is still running."""
    yield
    leftover = stop_all_started()
    if leftover:
        # Not an error of any single test, but it means a fixture or helper forgot to
        # stop something; make it visible in the run's output.
        print(f"\ntestkit: stopped leftover test processes {leftover}")
