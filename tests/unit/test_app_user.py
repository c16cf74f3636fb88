"""Who the app runs as (process.user / process.group) and what survives a reboot (the
systemd slot is enabled when started, disabled when stopped).

The unit goes through `systemd-analyze verify`, the supervisor program file through
supervisor's own parser; the stop script runs in a real /bin/sh against a recording
`systemctl` stand-in on PATH (the real one runs in tests/integration/test_systemd_backend.py).
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bluegreen import preflight
from bluegreen.config import Config, HostSpec, from_dict
from bluegreen.errors import BluegreenError, ConfigError
from bluegreen.hosts import LocalHost
from bluegreen.process import SupervisorBackend, SystemdBackend, app_user, identity_failure
from tests.unit.test_process_units import (
    needs_systemd_analyze,
    render_unit,
    supervisor_parse,
    systemd_verify,
)


def cfg_of(backend: str = "systemd", *, sudo: bool = False, ssh_user: str = "",
           **process: Any) -> Config:
    raw: dict[str, Any] = {"app": "demo", "start": "run {port}",
                           "process": {"backend": backend, **process},
                           "ssh": {"user": ssh_user}}
    if sudo:
        raw["sudo"] = {"app": ["systemctl"]}
    return from_dict(raw)


# ---------------------------------------------------------------- validation at load

@pytest.mark.parametrize("value", ["ro ot", "app\nUser=root", "app\x1b", "1000", "x:y",
                                   "../etc", "-rf", "a" * 33, "%i"])
def test_a_bad_user_or_group_is_refused_at_load_naming_the_key(value: str) -> None:
    for key in ("user", "group"):
        with pytest.raises(ConfigError) as err:
            cfg_of(**{key: value})
        text = str(err.value)
        assert f"process.{key}: expected a {key} name" in text, text
        assert "Traceback" not in text


@pytest.mark.parametrize("value", ["deploy", "app_1", "svc-web", "www.data", "_apt"])
def test_ordinary_names_are_accepted(value: str) -> None:
    assert cfg_of(user=value, group=value).process.user == value


def test_plain_cannot_switch_users_and_says_so() -> None:
    for key in ("user", "group"):
        with pytest.raises(ConfigError) as err:
            cfg_of("plain", **{key: "app"})
        assert (f"process.{key}: the plain backend runs the app as the SSH user and cannot "
                "switch to another") in str(err.value)


def test_supervisor_has_no_group_setting_and_says_so() -> None:
    with pytest.raises(ConfigError) as err:
        cfg_of("supervisor", supervisor_conf="/etc/s.conf", group="app")
    assert "process.group: supervisor runs a program with its user's own groups" \
        in str(err.value)


# ---------------------------------------------------------------- the default

def test_default_user_is_the_non_root_login_under_sudo_systemctl() -> None:
    spec = HostSpec("app1")
    assert app_user(cfg_of(sudo=True, ssh_user="deploy"), spec) == "deploy"
    # a host of its own user wins over [ssh] user, as it does for the login
    assert app_user(cfg_of(sudo=True, ssh_user="deploy"),
                    HostSpec("app1", user="ops")) == "ops"
    # process.user always wins
    assert app_user(cfg_of(sudo=True, ssh_user="deploy", user="web"), spec) == "web"


def test_default_user_keeps_old_behaviour_without_sudo_or_as_root() -> None:
    spec = HostSpec("app1")
    assert app_user(cfg_of(ssh_user="deploy"), spec) == ""  # root logs in? unknown: as before
    assert app_user(cfg_of(sudo=True, ssh_user="root"), spec) == ""
    assert app_user(cfg_of(sudo=True), spec) == ""  # no user named: the local one, as before
    assert app_user(cfg_of("supervisor", supervisor_conf="/s.conf", ssh_user="deploy"),
                    spec) == ""


# ---------------------------------------------------------------- rendering

def identity(text: str) -> list[str]:
    return re.findall(r"^(?:User|Group)=.*$", text, re.M)


@needs_systemd_analyze
def test_systemd_unit_has_user_and_group_and_still_verifies(tmp_path: Path) -> None:
    cfg = from_dict({"app": "demo", "start": "/bin/sleep 1000 {port}",
                     "paths": {"root": str(tmp_path / "root")},
                     "process": {"backend": "systemd", "user": "www-data", "group": "www-data"}})
    _, _, unit = render_unit(cfg, tmp_path / "units")
    text = (unit.parent / "demo@.service").read_text()
    assert identity(text) == ["User=www-data", "Group=www-data"]
    assert re.search(r"^\[Install\]\nWantedBy=multi-user\.target$", text, re.M), text
    result = systemd_verify(unit)
    complaints = [line for line in result.stderr.splitlines() if "demo@" in line]
    assert result.returncode == 0 and not complaints, result.stderr


def test_systemd_unit_without_a_user_renders_no_user_line(tmp_path: Path) -> None:
    cfg = cfg_of()
    backend = SystemdBackend(cfg)
    assert identity(backend.unit_text(LocalHost(HostSpec("local"), cfg))) == []
    deploy = cfg_of(sudo=True, ssh_user="deploy")
    assert identity(SystemdBackend(deploy).unit_text(LocalHost(HostSpec("local"), deploy))) \
        == ["User=deploy"]


def test_supervisor_program_runs_as_the_user_as_supervisor_reads_it(tmp_path: Path) -> None:
    cfg = from_dict({"app": "demo", "start": "run {port}",
                     "paths": {"root": str(tmp_path)},
                     "process": {"backend": "supervisor", "supervisor_conf": "/s.conf",
                                 "user": "nobody"}})
    backend = SupervisorBackend(cfg)
    host = LocalHost(HostSpec("local"), cfg)
    (tmp_path / "demo" / "slots" / "blue").mkdir(parents=True)  # where its log goes
    program = tmp_path / "demo-blue.conf"
    program.write_text(backend.program_conf(host, "blue", str(tmp_path / "r"), "v1", "a"))
    proc = supervisor_parse(tmp_path / "s.conf", program, tmp_path)
    assert proc.uid == pwd.getpwnam("nobody").pw_uid  # type: ignore[attr-defined]
    no_user = from_dict({"app": "demo", "start": "run {port}",
                         "process": {"backend": "supervisor", "supervisor_conf": "/s.conf"}})
    assert "user=" not in SupervisorBackend(no_user).program_conf(host, "blue", "/r", "v", "a")


# ---------------------------------------------------------------- enable / disable

def run_stop_script(tmp_path: Path, stop_rc: int, disable_rc: int = 0
                    ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """The systemd stop script in /bin/sh, `systemctl` being a stand-in that records its
    arguments and exits as told (stop: stop_rc, disable: disable_rc)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    calls.write_text("")
    fake = bin_dir / "systemctl"
    fake.write_text("#!/bin/sh\n"
                    f'echo "$*" >> {calls}\n'
                    f'case "$1" in stop) echo stop-said; exit {stop_rc};; '
                    f'disable) echo disable-said; exit {disable_rc};; esac\n')
    fake.chmod(0o755)
    cfg = cfg_of()
    script = SystemdBackend(cfg).stop_script(LocalHost(HostSpec("local"), cfg), "blue")
    proc = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                          timeout=10, check=False,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    return proc, calls.read_text().splitlines()


def test_a_stopped_slot_is_disabled_in_the_same_script(tmp_path: Path) -> None:
    proc, calls = run_stop_script(tmp_path, stop_rc=0)
    assert (proc.returncode, proc.stdout.split()[-1]) == (0, "stopped"), proc
    assert calls == ["stop demo@blue.service", "disable demo@blue.service"]


def test_a_never_loaded_unit_is_neither_stopped_nor_disabled(tmp_path: Path) -> None:
    proc, calls = run_stop_script(tmp_path, stop_rc=5)
    assert (proc.returncode, proc.stdout.split()[-1]) == (0, "none"), proc
    assert calls == ["stop demo@blue.service"]


def test_a_failed_disable_is_an_error_that_quotes_systemctl(tmp_path: Path) -> None:
    proc, _ = run_stop_script(tmp_path, stop_rc=0, disable_rc=1)
    assert proc.returncode == 1
    assert "systemctl disable failed: disable-said" in proc.stderr, proc.stderr


def test_start_enables_only_after_the_restart_succeeded() -> None:
    """One remote command (no extra round trip): daemon-reload && restart && enable."""
    sent: list[str] = []

    class Recorder(LocalHost):
        def write_atomic(self, path: str, text: str, mode: int = 0o644) -> None:
            pass

        def run(self, cmd: str, **kw: Any) -> Any:  # type: ignore[override]
            sent.append(cmd)

    cfg = cfg_of(sudo=True, ssh_user="deploy")
    SystemdBackend(cfg).start(Recorder(HostSpec("local"), cfg), "green", "/r/v2", "v2", "a")
    assert len(sent) == 1, sent
    assert "sudo -n systemctl daemon-reload && { sudo -n systemctl restart " \
        "demo@green.service || " in sent[0], sent[0]
    assert sent[0].endswith("&& sudo -n systemctl enable demo@green.service"), sent[0]
    # and the connect phase asks sudo for exactly these
    rules = preflight.sudo_rules(cfg, "app")
    assert {"systemctl enable demo@green.service", "systemctl disable demo@green.service",
            "systemctl enable demo@blue.service", "systemctl disable demo@blue.service"} \
        <= set(rules)


def test_a_missing_user_or_group_on_the_host_gets_its_own_hint() -> None:
    hint = identity_failure("ExecMainStatus=217\n", "webapp", "", "app1")
    assert hint.startswith("the app's user 'webapp' (User= in the unit) does not exist on "
                           "app1: create it there (useradd --system webapp)"), hint
    assert "groupadd --system web" in identity_failure("ExecMainStatus=216", "", "web", "a")
    assert identity_failure("ExecMainStatus=203\n", "webapp", "", "app1") == ""
    assert identity_failure("", "webapp", "", "app1") == ""


def test_supervisor_stops_before_supervisorctl_when_the_files_cannot_be_handed_over(
        tmp_path: Path) -> None:
    """chown to process.user fails (here: no such user; in life: a non-root SSH user):
    the start phase says so, and supervisorctl (a recorder here) is never called."""
    calls = tmp_path / "calls"
    ctl = tmp_path / "supervisorctl"
    ctl.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    ctl.chmod(0o755)
    cfg = from_dict({"app": "demo", "start": "run {port}", "paths": {"root": str(tmp_path)},
                     "process": {"backend": "supervisor", "supervisor_conf": "/s.conf",
                                 "supervisorctl": str(ctl), "user": "bgnosuchuser",
                                 "supervisor_include_dir": str(tmp_path / "inc")}})
    host = LocalHost(HostSpec("local"), cfg)
    release = tmp_path / "demo" / "releases" / "r1"
    release.mkdir(parents=True)
    (tmp_path / "demo" / "slots" / "blue").mkdir(parents=True)
    (tmp_path / "inc").mkdir()
    with pytest.raises(BluegreenError) as err:
        SupervisorBackend(cfg).start(host, "blue", str(release), "v1", "a")
    e = err.value
    assert "supervisor cannot start demo-blue as process.user bgnosuchuser" in str(e), e
    assert e.phase == "start" and "log in as root (ssh.user) or as bgnosuchuser" in e.hint
    assert not calls.exists()
