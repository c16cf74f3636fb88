"""Fixtures for real nginx / sshd / network-namespace processes.

The processes themselves live in testkit/ (the test kit, also used by bench/). Every
fixture stops what it started by PID in its finalizer, which pytest runs even when the
test failed; a session-level safety net then stops anything still recorded by
testkit.procs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.fixtures import (  # noqa: F401  (autouse)
    stop_leftover_processes,
    stop_this_tests_apps,
)
from testkit.netns import NetnsSshCluster, NetnsSshHost, cleanup_stale, netns_available
from testkit.nginx import PrivateNginx
from testkit.sshd import TestSshd


@pytest.fixture
def private_nginx(tmp_path: Path) -> Iterator[PrivateNginx]:
    """A started nginx under tmp_path/nginx with an empty conf.d; stopped afterwards."""
    nginx = PrivateNginx(tmp_path / "nginx")
    nginx.start()
    try:
        yield nginx
    finally:
        nginx.stop()


@pytest.fixture
def private_nginx_lua(tmp_path: Path) -> Iterator[PrivateNginx]:
    """Like private_nginx, with the NDK + lua modules loaded."""
    nginx = PrivateNginx(tmp_path / "nginx-lua", lua=True)
    nginx.start()
    try:
        yield nginx
    finally:
        nginx.stop()


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[TestSshd]:
    """A started sshd on a free 127.0.0.1 port; log in as root with `sshd.user_key`."""
    server = TestSshd(tmp_path / "sshd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def netns_support() -> tuple[bool, str]:
    """(available, reason) for network namespaces, probed once per session."""
    ok, reason = netns_available()
    if ok:
        # A previous run killed with SIGKILL may have left namespaces behind.
        cleanup_stale()
    return ok, reason


@pytest.fixture
def netns_hosts(
    tmp_path: Path, netns_support: tuple[bool, str]
) -> Iterator[Callable[[int], list[NetnsSshHost]]]:
    """Factory: `netns_hosts(n)` -> n new namespace hosts, each with sshd on <addr>:22.

    Skips the test (with the reason) where namespaces cannot be created. May be called
    more than once per test; every host is torn down after the test.
    """
    ok, reason = netns_support
    if not ok:
        pytest.skip(f"network namespaces unavailable: {reason}")
    cluster = NetnsSshCluster(tmp_path / "netns")

    def make(count: int) -> list[NetnsSshHost]:
        return cluster.add_many(count)

    try:
        yield make
    finally:
        cluster.close()
