"""The systemd backend through a real systemd, as the non-root `deploy` user with sudo.

The app host is a Debian 12 container booted with systemd-nspawn (testkit/systemd_host.py):
systemd is its PID 1, `deploy` logs in over real SSH (a pinned host key) and runs
`sudo -n systemctl ...` under exactly the README's sudoers line. The traffic host is this
machine's private nginx (`local`), which reaches the container's slots on loopback: the
container shares the host's network. What runs is asserted through the container's own
`systemctl is-active` / `show`, never through bluegreen's own view of it, and who the app
runs as through /proc/PID/status. One test reboots the container and checks that exactly
the slots bluegreen had running come back. One test takes the other documented way in:
root over SSH, units in /etc/systemd/system, no sudo.

Skips, with the exact reason, where the container cannot run (not root, no
systemd-nspawn/debootstrap). The first run builds the cached root filesystem
(debootstrap: 62 s on an idle machine here, 149 s with the load of a full run); later
runs boot it in 1-2 s.
"""

from __future__ import annotations

import json
import re
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
         f"systemctl disable --quiet {BLUE} {GREEN} 2>/dev/null; "
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


def uid_of(h: SystemdHost, pid: int) -> list[str]:
    """The real, effective, saved and filesystem UIDs of a process in the container."""
    status = h.read(f"/proc/{pid}/status")
    return next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))


def assert_runs_as(h: SystemdHost, pid: int, user: str) -> None:
    uid = h.sh(f"id -u {shlex.quote(user)}").stdout.strip()
    assert uid_of(h, pid) == [uid] * 4, (user, h.read(f"/proc/{pid}/status"))


def assert_serving(h: SystemdHost, unit: str, port: int, version: str,
                   user: str = DEPLOY_USER) -> int:
    """`unit` is active under the container's systemd, and its main process is the demo
    app on `port` running release `version` as `user`, and the unit is enabled (it comes
    back after a reboot). Returns its MainPID (in the container)."""
    assert h.is_active(unit) == "active", h.systemctl("status", unit).stdout
    props = h.show(unit, "MainPID", "FragmentPath", "ActiveState")
    pid = int(props["MainPID"])
    assert pid > 0, props
    # the unit bluegreen rendered (into deploy's unit dir, reached through the README's
    # link; or, as root, into /etc/systemd/system). `systemctl enable` of a linked template
    # adds a link of the instance's own name to the same file, which it then loads.
    assert props["FragmentPath"].startswith("/etc/systemd/system/"), props
    real = h.sh(f"readlink -f {props['FragmentPath']} /etc/systemd/system/{APP}@.service"
                ).stdout.split()
    assert real[0] == real[1], (props, real)
    cmd = h.read(f"/proc/{pid}/cmdline").split("\0")
    assert str(port) in cmd and any(part.endswith("app.py") for part in cmd), cmd
    environ = dict(item.split("=", 1) for item in h.read(f"/proc/{pid}/environ").split("\0")
                   if "=" in item)
    assert environ["BLUEGREEN_VERSION"] == version, environ
    assert_runs_as(h, pid, user)
    assert h.systemctl("is-enabled", unit).stdout.strip() == "enabled"
    return pid


def assert_down(h: SystemdHost, unit: str) -> None:
    """Stopped and disabled: a reboot does not bring it back."""
    assert h.is_active(unit) == "inactive", h.systemctl("status", unit).stdout
    assert h.systemctl("is-enabled", unit).stdout.strip() == "disabled"


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

    result = json.loads(p.deploy("v2", "--json").stdout)
    assert p.front_version() == "v2"
    # enable rides in the start command: still <= 4 SSH round trips on the app host
    (sd1_cost,) = [row for row in result["hosts"] if row["host"] == "sd1"]
    assert sd1_cost["connections"] == 1 and sd1_cost["commands"] <= 4, sd1_cost
    print(f"deploy v2: {sd1_cost['commands']} remote commands on sd1")
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
                    f"systemctl restart {GREEN}", f"systemctl stop {GREEN}",
                    f"systemctl enable {BLUE}", f"systemctl disable {GREEN}"):
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
    # the failed release's unit was stopped (and disabled) through `sudo -n systemctl`
    assert_down(h, GREEN)
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
        # a sudoers line from before slots were enabled lacks these: named too
        assert "`/usr/bin/systemctl enable demo@blue.service`" in err, err
        assert "`/usr/bin/systemctl disable demo@green.service`" in err, err
        assert h.is_active(BLUE) == "inactive" and h.is_active(GREEN) == "inactive"
        marker = "(visudo -f /etc/sudoers.d/bluegreen): "
        # the hint goes on after the line with "; then re-run" (every hint ends so)
        printed = err[err.index(marker) + len(marker):].splitlines()[0].strip()
        printed = printed.removesuffix("; then re-run")
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
    h.sh("id -u bgapp >/dev/null 2>&1 || useradd --system --no-create-home bgapp")
    try:
        p.deploy("v1")
        # no [sudo], no process.user: as before this setting existed, the app runs as root
        blue_pid = assert_serving(h, BLUE, p.blue, "v1", user="root")
        p.deploy("v2", "--set", "process.user=bgapp")
        assert p.front_version() == "v2"
        # bluegreen's own file now, not the non-root setup's link (written over it)
        assert h.sh(f"stat -c %F /etc/systemd/system/{APP}@.service").stdout.strip() \
            == "regular file"
        # a re-rendered template restarts nothing: blue runs on as root until its next start
        assert assert_serving(h, BLUE, p.blue, "v1", user="root") == blue_pid
        assert_serving(h, GREEN, p.green, "v2", user="bgapp")
        out = p.fab("rollback").stdout
        assert "rolled back demo to v1" in out, out
        assert p.front_version() == "v1"
        assert assert_serving(h, BLUE, p.blue, "v1", user="root") == blue_pid
    finally:  # the next test's setup puts the link back
        h.sh(f"systemctl stop {BLUE} {GREEN}; rm -f /etc/systemd/system/{APP}@.service")


def test_reboot_brings_back_exactly_the_slots_that_ran(sd_project: Project,
                                                      systemd_host: SystemdHost) -> None:
    """deploy, deploy, switch: both slots warm and enabled. The container halts (every unit
    stopped, as at a shutdown) and boots again from the same disk: both come back, as
    `deploy`, with their releases, and the front door serves the live one without a
    deploy. A slot stopped by a failed deploy is disabled: after the next reboot only the
    live slot runs."""
    p, h = sd_project, systemd_host
    p.deploy("v1")
    p.deploy("v2")
    p.fab("switch")
    assert p.front_version() == "v1"

    took = h.reboot()
    assert h.sh("cat /proc/1/comm").stdout.strip() == "systemd"  # a new boot, same disk
    assert_serving(h, BLUE, p.blue, "v1")
    assert_serving(h, GREEN, p.green, "v2")
    assert p.front_version() == "v1"
    st = p.status()
    assert st["exit_code"] == 0 and st["live"] == "blue" and st["consistent"], st
    sd1 = st["app_hosts"]["sd1"]
    assert sd1["blue"]["healthy"] and sd1["green"]["healthy"], sd1
    print(f"reboot: halt to sshd answering in {took:.2f}s")

    # the idle slot's next release fails its health check: bluegreen stops it, so it must
    # stay stopped across the next reboot too
    proc = p.deploy("v4-unhealthy", "--set", "health.timeout=3", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_down(h, GREEN)
    h.reboot()
    assert_serving(h, BLUE, p.blue, "v1")
    assert_down(h, GREEN)
    assert p.front_version() == "v1"
    assert p.status()["live"] == "blue"


def test_app_user_or_group_missing_on_the_host_the_printed_command_fixes_it(
        sd_project: Project, systemd_host: SystemdHost) -> None:
    """process.user / group that the host does not have: `systemctl restart` fails at once
    (Type=exec), the start phase names the user or group and the command that creates it;
    run as printed, the next deploy starts the app as that user and group."""
    p, h = sd_project, systemd_host
    names = ("bgsvc", "bgteam")
    h.sh(f"userdel {names[0]} 2>/dev/null; groupdel {names[1]} 2>/dev/null; true")
    sets = ("--set", f"process.user={names[0]}", "--set", f"process.group={names[1]}")
    try:
        # systemd resolves User= before Group=: the user is named first
        for needle in ("the app's user 'bgsvc' (User= in the unit) does not exist on sd1",
                       "the app's group 'bgteam' (Group= in the unit) does not exist on sd1"):
            proc = p.deploy("v1", *sets, check=False)
            assert proc.returncode == 1, proc.stdout + proc.stderr
            err = proc.stderr
            assert "phase=start" in err and needle in err, err
            assert "Traceback" not in proc.stdout + err
            assert h.is_active(BLUE) != "active"
            # never enabled: a unit that cannot start must not come back at boot either
            assert h.systemctl("is-enabled", BLUE).stdout.strip() == "disabled"
            start = err.index("create it there (") + len("create it there (")
            h.sh(err[start:err.index(")", start)])  # useradd/groupadd as printed
        p.deploy("v1", *sets)
        assert p.front_version() == "v1"
        pid = assert_serving(h, BLUE, p.blue, "v1", user=names[0])
        gid = h.sh(f"getent group {names[1]} | cut -d: -f3").stdout.strip()
        status = h.read(f"/proc/{pid}/status")
        assert next(line.split()[1:] for line in status.splitlines()
                    if line.startswith("Gid:")) == [gid] * 4, status
    finally:
        h.sh(f"systemctl stop {BLUE}; userdel {names[0]} 2>/dev/null; "
             f"groupdel {names[1]} 2>/dev/null; true")


def test_a_start_that_systemd_refuses_journalctl_as_printed_says_why(
        sd_project: Project, systemd_host: SystemdHost) -> None:
    """`systemctl restart` fails for a reason of the host's own: the app's user (`nobody`
    here) may not enter the release (the app's directory is 0700), so systemd cannot set
    WorkingDirectory=. The start phase points at `journalctl -u UNIT`; run as printed, the
    journal says why; once the directory is fixed the same deploy converges, and traffic
    never left blue."""
    p, h = sd_project, systemd_host
    p.deploy("v1")
    app_dir = shlex.quote(f"{APP_ROOT}/{APP}")
    h.sh(f"chmod 700 {app_dir}")
    try:
        proc = p.deploy("v2", "--set", 'process.user="nobody"', check=False)
    finally:
        h.sh(f"chmod 755 {app_dir}")
    err = proc.stderr
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + err, err
    assert "phase=start" in err and "host=sd1" in err, err
    hint = re.search(r"see `(journalctl -u (\S+))` on the host", err)
    assert hint and hint.group(2) == GREEN, err
    journal = h.sh(hint.group(1) + " --no-pager -n 30").stdout  # as printed, on the host
    assert "working directory" in journal.lower() and "Permission denied" in journal, journal
    assert p.front_version() == "v1"
    assert_serving(h, BLUE, p.blue, "v1")
    proc = p.deploy("v2", "--set", 'process.user="nobody"')  # fixed: the same deploy
    assert p.front_version() == "v2"
    assert_serving(h, GREEN, p.green, "v2", user="nobody")
    assert p.status()["exit_code"] == 0
