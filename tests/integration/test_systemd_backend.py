"""The systemd backend through a real systemd, as the non-root `deploy` user with sudo.

The app host is a Debian 12 container booted with systemd-nspawn (testkit/systemd_host.py):
systemd is its PID 1, `deploy` logs in over real SSH (a pinned host key) and runs
`sudo -n systemctl ...` under exactly the README's sudoers line. The traffic host is this
machine's private nginx (`local`), which reaches the container's slots on loopback: the
container shares the host's network. What runs is asserted through the container's own
`systemctl is-active` / `show`, never through bluegreen's own view of it. One test takes
the other documented way in: root over SSH, units in /etc/systemd/system, no sudo.

Skips, with the exact reason, where the container cannot run (not root, no
systemd-nspawn/debootstrap). The first run builds the cached root filesystem
(debootstrap: 62 s on an idle machine here, 149 s with the load of a full run); later
runs boot it in 1-2 s.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.nginx import PrivateNginx
from testkit.project import Project
from testkit.systemd_host import (
    APP_ROOT,
    DEPLOY_USER,
    UNIT_DIR,
    SystemdHost,
    ensure_rootfs,
    unavailable_reason,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = "demo"
BLUE, GREEN = f"{APP}@blue.service", f"{APP}@green.service"


@pytest.fixture(scope="module")
def systemd_host() -> Iterator[SystemdHost]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no systemd host for the systemd backend: {reason}")
    ensure_rootfs()
    host = SystemdHost(APP).start()
    try:
        yield host
    finally:
        host.stop()


def systemd_project(where: Path, nginx: PrivateNginx, artifacts: dict[str, Path],
                    h: SystemdHost, *, as_root: bool = False) -> Project:
    """A project whose one app host is the container: as `deploy` with the README's
    non-root setup, or as root with the defaults (units in /etc/systemd/system, no sudo).
    The container outlives a test: each starts from a host with nothing deployed and the
    README's link in place."""
    link = f"/etc/systemd/system/{APP}@.service"
    h.sh(f"systemctl stop {BLUE} {GREEN}; systemctl reset-failed {BLUE} {GREEN} 2>/dev/null; "
         f"rm -rf {shlex.quote(APP_ROOT + '/' + APP)} {shlex.quote(UNIT_DIR)}/*; "
         f"ln -sfn {UNIT_DIR}/{APP}@.service {link} && systemctl daemon-reload")
    hosts = (f'app = [{{address = "127.0.0.1", port = {h.port}, name = "sd1", '
             f'root = "{APP_ROOT}"}}]\ntraffic = ["local"]')
    ssh = (f'[ssh]\nuser = "{"root" if as_root else DEPLOY_USER}"\n'
           f'key_file = "{h.user_key}"\nknown_hosts = "{h.known_hosts}"\n')
    process = '[process]\nbackend = "systemd"\nstop_timeout = 5\n'
    if not as_root:
        process += f'systemd_unit_dir = "{UNIT_DIR}"\n\n[sudo]\napp = ["systemctl"]\n'
    return Project(where, nginx, artifacts, hosts, ssh_toml=ssh, extra_toml=process,
                   app=APP).write()


@pytest.fixture
def sd_project(tmp_path: Path, private_nginx: PrivateNginx, artifacts: dict[str, Path],
               systemd_host: SystemdHost) -> Project:
    return systemd_project(tmp_path / "app", private_nginx, artifacts, systemd_host)


def assert_serving(h: SystemdHost, unit: str, port: int, version: str) -> int:
    """`unit` is active under the container's systemd, and its main process is the demo
    app on `port` running release `version`. Returns its MainPID (in the container)."""
    assert h.is_active(unit) == "active", h.systemctl("status", unit).stdout
    props = h.show(unit, "MainPID", "FragmentPath", "ActiveState")
    pid = int(props["MainPID"])
    assert pid > 0, props
    # the unit bluegreen rendered into deploy's unit dir, reached through the README's link
    assert props["FragmentPath"] == f"/etc/systemd/system/{APP}@.service", props
    cmd = h.read(f"/proc/{pid}/cmdline").split("\0")
    assert str(port) in cmd and any(part.endswith("app.py") for part in cmd), cmd
    environ = dict(item.split("=", 1) for item in h.read(f"/proc/{pid}/environ").split("\0")
                   if "=" in item)
    assert environ["BLUEGREEN_VERSION"] == version, environ
    return pid


def test_deploy_switch_rollback_through_real_systemctl(sd_project: Project,
                                                       systemd_host: SystemdHost) -> None:
    p, h = sd_project, systemd_host
    p.deploy("v1")
    assert p.front_version() == "v1"
    blue_pid = assert_serving(h, BLUE, p.blue, "v1")
    assert h.is_active(GREEN) == "inactive"
    unit_text = h.read(f"{UNIT_DIR}/{APP}@.service")
    assert unit_text.startswith("# managed by bluegreen"), unit_text
    assert h.sh(f"stat -c %U {UNIT_DIR}/{APP}@.service").stdout.strip() == DEPLOY_USER

    p.deploy("v2")
    assert p.front_version() == "v2"
    assert_serving(h, GREEN, p.green, "v2")
    assert assert_serving(h, BLUE, p.blue, "v1") == blue_pid  # the old slot kept warm
    st = p.status()
    assert st["live"] == "green" and st["consistent"], st
    sd1 = st["app_hosts"]["sd1"]
    assert sd1["blue"]["healthy"] and sd1["green"]["healthy"], sd1

    p.fab("switch")
    assert p.front_version() == "v1"
    assert p.status()["live"] == "blue"
    assert assert_serving(h, BLUE, p.blue, "v1") == blue_pid  # a switch restarts nothing

    out = p.fab("rollback").stdout
    assert "rolled back demo to v2" in out, out
    assert p.front_version() == "v2"
    assert_serving(h, GREEN, p.green, "v2")
    assert assert_serving(h, BLUE, p.blue, "v1") == blue_pid
    # every systemctl that changed something ran as deploy through sudo (sudo's own log)
    sudo_log = h.sh("journalctl --no-pager -o cat _COMM=sudo").stdout
    for command in ("systemctl daemon-reload", f"systemctl restart {BLUE}",
                    f"systemctl restart {GREEN}", f"systemctl stop {GREEN}"):
        assert f"{DEPLOY_USER} : " in sudo_log and f"COMMAND=/usr/bin/{command}" in sudo_log, \
            (command, sudo_log)


def test_failed_health_check_stops_the_unit_and_keeps_traffic(
        sd_project: Project, systemd_host: SystemdHost) -> None:
    p, h = sd_project, systemd_host
    p.deploy("v1")
    blue_pid = assert_serving(h, BLUE, p.blue, "v1")

    proc = p.deploy("v4-unhealthy", "--set", "health.timeout=3", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr
    assert "phase=health" in err and "did not become healthy" in err, err
    assert "host=sd1" in err, err
    assert "traffic was NOT switched: it stays on blue" in err, err
    # the app's own output, which the unit appends to the slot's log (StandardOutput=)
    assert "last log lines of green on sd1" in err and "v4-unhealthy listening" in err, err
    assert "Traceback" not in proc.stdout + err
    assert p.front_version() == "v1"
    # the failed release's unit was stopped through `sudo -n systemctl stop`
    assert h.is_active(GREEN) == "inactive", h.systemctl("status", GREEN).stdout
    assert assert_serving(h, BLUE, p.blue, "v1") == blue_pid
    st = p.status()
    assert st["live"] == "blue" and st["slots"]["green"]["status"] == "failed", st
    assert st["app_hosts"]["sd1"]["green"]["running"] is False

    p.deploy("v2")  # and a good build converges into the same slot
    assert p.front_version() == "v2"
    assert_serving(h, GREEN, p.green, "v2")


def test_missing_sudo_rule_named_and_the_printed_line_fixes_it(
        sd_project: Project, systemd_host: SystemdHost) -> None:
    """The README's sudoers line minus two rules: the connect phase names what is missing
    before anything changes, and the sudoers line it prints, installed as printed, is
    enough for the next deploy."""
    p, h = sd_project, systemd_host
    rules = "/usr/bin/systemctl daemon-reload, /usr/bin/systemctl restart demo@blue.service"
    h.sh("cp /etc/sudoers.d/bluegreen /root/sudoers.saved && "
         f"printf '%s\\n' {shlex.quote(f'{DEPLOY_USER} ALL=(root) NOPASSWD: {rules}')} "
         "> /etc/sudoers.d/bluegreen")
    try:
        proc = p.deploy("v1", check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        err = proc.stderr
        assert "phase=connect" in err and "nothing was changed" in err, err
        assert "`/usr/bin/systemctl stop demo@blue.service`" in err, err
        assert h.is_active(BLUE) == "inactive" and h.is_active(GREEN) == "inactive"
        marker = "(visudo -f /etc/sudoers.d/bluegreen): "
        printed = err[err.index(marker) + len(marker):].splitlines()[0].strip()
        assert printed.startswith(f"{DEPLOY_USER} ALL=(root) NOPASSWD: "), printed
        h.sh(f"printf '%s\\n' {shlex.quote(printed)} > /etc/sudoers.d/bluegreen.new && "
             "visudo -cf /etc/sudoers.d/bluegreen.new && chmod 0440 /etc/sudoers.d/bluegreen.new"
             " && mv /etc/sudoers.d/bluegreen.new /etc/sudoers.d/bluegreen")
        p.deploy("v1")
    finally:
        h.sh("cp /root/sudoers.saved /etc/sudoers.d/bluegreen")
    assert p.front_version() == "v1"
    assert_serving(h, BLUE, p.blue, "v1")


def test_forgotten_unit_link_names_the_link_and_the_printed_command_fixes_it(
        sd_project: Project, systemd_host: SystemdHost) -> None:
    """The README's one-time `ln -s` into /etc/systemd/system left out: systemd cannot find
    the unit deploy wrote; the start phase says so and prints the link to make, which,
    run as printed, is all the next deploy needs."""
    p, h = sd_project, systemd_host
    link = f"/etc/systemd/system/{APP}@.service"
    h.sh(f"rm {link} && systemctl daemon-reload")
    try:
        proc = p.deploy("v1", check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        err = proc.stderr
        assert "phase=start" in err and "host=sd1" in err, err
        assert f"Unit {BLUE} not found" in err, err
        assert "unable to resolve host" not in err, err
        assert "journalctl" not in err, err  # it would show nothing about a missing unit
        start = err.index("ln -s ")
        printed = err[start:err.index(" (or set", start)]
        assert printed == f"ln -s {UNIT_DIR}/{APP}@.service /etc/systemd/system/", printed
        h.sh(printed)
        p.deploy("v1")
    finally:
        h.sh(f"ln -sfn {UNIT_DIR}/{APP}@.service {link}")
    assert p.front_version() == "v1"
    assert_serving(h, BLUE, p.blue, "v1")


def test_as_root_with_the_default_unit_dir(tmp_path: Path, private_nginx: PrivateNginx,
                                           artifacts: dict[str, Path],
                                           systemd_host: SystemdHost) -> None:
    """The other documented way: root over SSH, the unit rendered straight into
    /etc/systemd/system (process.systemd_unit_dir's default), systemctl without sudo."""
    h = systemd_host
    p = systemd_project(tmp_path / "app", private_nginx, artifacts, h, as_root=True)
    try:
        p.deploy("v1")
        p.deploy("v2")
        assert p.front_version() == "v2"
        # bluegreen's own file now, not the non-root setup's link (written over it)
        assert h.sh(f"stat -c %F /etc/systemd/system/{APP}@.service").stdout.strip() \
            == "regular file"
        blue_pid = assert_serving(h, BLUE, p.blue, "v1")
        assert_serving(h, GREEN, p.green, "v2")
        out = p.fab("rollback").stdout
        assert "rolled back demo to v1" in out, out
        assert p.front_version() == "v1"
        assert assert_serving(h, BLUE, p.blue, "v1") == blue_pid
    finally:  # the next test's setup puts the link back
        h.sh(f"systemctl stop {BLUE} {GREEN}; rm -f /etc/systemd/system/{APP}@.service")
