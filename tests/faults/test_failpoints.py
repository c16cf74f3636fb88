"""bluegreen/failpoints.py: the parser, and each action on this very process (in a child
Python, so a kill or a SIGTERM hits that child, not pytest)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bluegreen import failpoints
from bluegreen.failpoints import Action, parse
from tests.faults.faultkit import can_mount_tmpfs, mount_tmpfs, umount


@pytest.fixture(autouse=True)
def _none_configured() -> object:
    yield
    failpoints.configure("")


def test_parse_reads_points_actions_and_arguments() -> None:
    assert parse("") == {}
    assert parse(" , ") == {}
    assert parse("switch.after-install=kill") == {"switch.after-install": Action("kill")}
    assert parse(" before:upload = term , health.probing=drop,upload.mid=fill:/mnt/small,"
                 "before:switch=hold:/tmp/a:b") == {
        "before:upload": Action("term"), "health.probing": Action("drop"),
        "upload.mid": Action("fill", "/mnt/small"),
        "before:switch": Action("hold", "/tmp/a:b")}  # the argument may hold a colon


@pytest.mark.parametrize(("spec", "says"), [
    ("switch.after-install", "is not POINT=ACTION"),
    ("=kill", "is not POINT=ACTION"),
    ("before:upload=", "is not POINT=ACTION"),
    ("before:upload=explode", "unknown action 'explode'"),
    ("upload.mid=fill", "fill needs a path"),
    ("before:switch=hold", "hold needs a path"),
    ("before:upload=kill:now", "kill takes no argument"),
    ("a=kill,a=term", "named twice"),
])
def test_parse_refuses_what_it_cannot_do(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match="BLUEGREEN_FAILPOINTS") as err:
        parse(spec)
    assert says in str(err.value)


def test_hit_does_nothing_when_unset_or_for_another_point(tmp_path: Path) -> None:
    failpoints.configure("")
    failpoints.hit("before:upload")  # nothing configured: returns at once
    held = tmp_path / "held"
    failpoints.configure(f"before:switch=hold:{held}")
    failpoints.hit("before:upload")
    assert not held.exists()


def test_a_point_acts_on_its_first_hit_only(tmp_path: Path) -> None:
    held = tmp_path / "held"
    failpoints.configure(f"before:switch=hold:{held}")
    release = threading.Timer(0.3, held.unlink)
    release.start()
    start = time.monotonic()
    failpoints.hit("before:switch")  # waits until the file is gone
    assert time.monotonic() - start >= 0.25 and not held.exists()
    start = time.monotonic()
    failpoints.hit("before:switch")  # fired already: passes straight through
    assert time.monotonic() - start < 0.2 and not held.exists()


CHILD = """
import os, signal, sys, time
from bluegreen import failpoints
seen = []
signal.signal(signal.SIGTERM, lambda *a: seen.append("term"))
os.environ["BLUEGREEN_FAILPOINTS"] = ""  # read once, at import: this changes nothing
failpoints.hit(sys.argv[1])
print("went on", seen, flush=True)
"""


def child(env: str, point: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, point], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "BLUEGREEN_FAILPOINTS": env})


def test_kill_is_sigkill_and_nothing_runs_after_it() -> None:
    ran = child("before:upload=kill", "before:upload")
    assert ran.returncode == -signal.SIGKILL and "went on" not in ran.stdout
    assert "failpoint before:upload: kill" in ran.stderr


def test_term_runs_the_real_sigterm_handler_then_goes_on() -> None:
    """(The child empties the variable after import: it was read once, and still acts.)"""
    ran = child("before:upload=term", "before:upload")
    assert ran.returncode == 0 and "went on ['term']" in ran.stdout, ran.stderr


def test_unset_nothing_happens() -> None:
    ran = child("", "before:upload")
    assert ran.returncode == 0 and "went on []" in ran.stdout


def test_a_bad_variable_fails_loudly_at_import() -> None:
    ran = child("before:upload=explode", "before:upload")
    assert ran.returncode != 0 and "unknown action 'explode'" in ran.stderr


class _Sock:
    def __init__(self, transport: _Transport) -> None:
        self.transport = transport

    def shutdown(self, how: int) -> None:
        self.transport.active = False  # the peer sees the close; the client notices


class _Transport:
    def __init__(self) -> None:
        self.active = True
        self.sock = _Sock(self)

    def is_active(self) -> bool:
        return self.active


class _Conn:
    def __init__(self) -> None:
        self.transport = _Transport()


class _Host:
    def __init__(self, conn: _Conn | None) -> None:
        self._conn = conn


def test_drop_cuts_every_open_connection_of_the_run() -> None:
    failpoints.configure("before:stop=drop")
    hosts = [_Host(_Conn()), _Host(_Conn()), _Host(None)]
    for h in hosts:
        failpoints.track(h)
    assert failpoints.drop_connections() == 2
    assert all(not h._conn.transport.is_active() for h in hosts if h._conn is not None)
    assert failpoints.drop_connections() == 0  # nothing open any more


def test_fill_refuses_a_big_filesystem(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    if st.f_bavail * st.f_frsize <= failpoints.FILL_LIMIT:
        pytest.skip("this filesystem is small enough to be filled")
    with pytest.raises(ValueError, match="refusing to fill"):
        failpoints.fill(str(tmp_path))
    assert not (tmp_path / failpoints.BALLAST).exists()


def test_fill_fills_a_small_filesystem_to_the_last_byte(tmp_path: Path) -> None:
    why = can_mount_tmpfs(tmp_path / "probe")
    if why:
        pytest.skip(why)
    small = tmp_path / "small"
    mount_tmpfs(small, 2)
    try:
        written = failpoints.fill(str(small))
        assert written > 1_500_000
        with pytest.raises(OSError) as err:
            (small / "next").write_bytes(b"x")
        assert err.value.errno == 28  # ENOSPC
        (small / failpoints.BALLAST).unlink()
        (small / "next").write_bytes(b"x")  # the space is back
    finally:
        umount(small)
