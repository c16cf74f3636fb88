"""The supervisor backend against a real supervisord (from the venv) with a private config.

supervisord runs in the foreground (nodaemon) as our child; teardown stops every program
it runs, then supervisord itself, by PID, and checks that none of them survive.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.nginx import PrivateNginx
from testkit.procs import log_tail, pid_alive, start_process, stop_pids
from testkit.project import Project

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent
SUPERVISORD = VENV_BIN / "supervisord"
SUPERVISORCTL = VENV_BIN / "supervisorctl"


@dataclass
class Supervisord:
    """A private supervisord: its socket and files live in a short /tmp dir (a unix socket
    path must fit in 108 bytes, which pytest's tmp paths may not)."""

    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.dir / "supervisord.conf"

    @property
    def include_dir(self) -> Path:
        return self.dir / "programs"

    @property
    def sock(self) -> Path:
        return self.dir / "s.sock"

    @property
    def log(self) -> Path:
        return self.dir / "supervisord.log"

    def write(self) -> None:
        self.include_dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"[unix_http_server]\nfile={self.sock}\nchmod=0700\n\n"
            f"[supervisord]\nnodaemon=true\nuser=root\npidfile={self.dir}/supervisord.pid\n"
            f"logfile={self.log}\nchildlogdir={self.dir}\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=unix://{self.sock}\n\n"
            f"[include]\nfiles = {self.include_dir}/*.conf\n")

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SUPERVISORCTL), "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=30, check=False)

    def start(self, timeout: float = 15.0) -> None:
        self.proc = start_process([str(SUPERVISORD), "-n", "-c", str(self.conf)],
                                  self.dir / "stdout.log")
        deadline = time.monotonic() + timeout
        while True:
            # 0: all running, 3: some not running; 4 (or other): cannot reach supervisord yet
            if self.ctl("status").returncode in (0, 3):
                return
            if not pid_alive(self.proc.pid) or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"supervisord did not come up:\n{log_tail(self.log)}\n"
                                   f"{log_tail(self.dir / 'stdout.log')}")
            time.sleep(0.05)

    def program_pids(self) -> list[int]:
        out = self.ctl("pid", "all").stdout
        return [int(p) for p in out.split() if p.isdigit() and int(p) > 0]

    def status(self, program: str) -> str:
        return self.ctl("status", program).stdout

    def stop(self) -> None:
        """Every program, then supervisord, by PID; raises if any of them survives."""
        if self.proc is None:
            return
        pid = self.proc.pid
        programs = self.program_pids() if pid_alive(pid) else []
        if programs:
            self.ctl("stop", "all")
        stop_pids([pid], timeout=10)  # SIGTERM: supervisord stops its children, then exits
        stop_pids(programs, timeout=5)  # anything its stop missed
        self.proc = None
        left = [p for p in [pid, *programs] if pid_alive(p)]
        assert not left, f"supervisord or its programs survived: {left}"


@pytest.fixture
def supervisord() -> Iterator[Supervisord]:
    work = Path(tempfile.mkdtemp(prefix="bgsv-", dir="/tmp"))
    sv = Supervisord(work)
    sv.write()
    sv.start()
    try:
        yield sv
    finally:
        try:
            sv.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)


def supervisor_toml(sv: Supervisord, env: dict[str, str] | None = None,
                    user: str = "") -> str:
    lines = ["[process]", 'backend = "supervisor"', f'supervisor_conf = "{sv.conf}"',
             f'supervisorctl = "{SUPERVISORCTL}"', f'supervisor_include_dir = "{sv.include_dir}"',
             "stop_timeout = 5"]
    if user:
        lines.append(f"user = {_toml_str(user)}")
    if env:
        lines.append("[env]")
        lines += [f"{k} = {_toml_str(v)}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture
def sv_project(tmp_path: Path, private_nginx: PrivateNginx, artifacts: dict[str, Path],
               supervisord: Supervisord) -> Iterator[Project]:
    proj = Project(tmp_path / "app", private_nginx, artifacts, 'app = ["local"]',
                   extra_toml=supervisor_toml(supervisord)).write()
    try:
        yield proj
    finally:
        proj.stop_everything()


def assert_running(sv: Supervisord, program: str, port: int) -> int:
    """The program is RUNNING under supervisor and it is the demo app on `port`."""
    status = sv.status(program)
    assert "RUNNING" in status, status
    (pid,) = [int(p) for p in sv.ctl("pid", program).stdout.split()]
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert str(port).encode() in cmd, cmd  # the demo app, given its slot's port
    assert any(part.endswith(b"app.py") for part in cmd), cmd
    return pid


def test_deploy_switch_rollback_under_supervisor(sv_project: Project,
                                                 supervisord: Supervisord) -> None:
    p, sv = sv_project, supervisord
    p.deploy("v1")
    assert p.front_version() == "v1"
    blue_pid = assert_running(sv, "demo-blue", p.blue)
    assert (sv.include_dir / "demo-blue.conf").exists()

    p.deploy("v2")
    assert p.front_version() == "v2"
    assert_running(sv, "demo-green", p.green)
    assert assert_running(sv, "demo-blue", p.blue) == blue_pid  # v1 kept warm, untouched
    st = p.status()
    assert st["live"] == "green" and st["consistent"]
    local = st["app_hosts"]["local"]
    assert local["blue"]["healthy"] and local["green"]["healthy"]

    p.fab("switch")
    assert p.front_version() == "v1"
    assert p.status()["live"] == "blue"

    out = p.fab("rollback").stdout
    assert "rolled back demo to v2" in out
    assert p.front_version() == "v2"
    assert "RUNNING" in sv.status("demo-green") and "RUNNING" in sv.status("demo-blue")


def test_unhealthy_build_under_supervisor_leaves_traffic_on_old_release(
        sv_project: Project, supervisord: Supervisord) -> None:
    p, sv = sv_project, supervisord
    p.deploy("v1")
    proc = p.deploy("v4-unhealthy", "--set", "health.timeout=2", check=False)
    assert proc.returncode != 0
    assert "phase=health" in proc.stderr and "did not become healthy" in proc.stderr
    assert "traffic was NOT switched: it stays on blue" in proc.stderr
    assert "last log lines of green" in proc.stderr and "v4-unhealthy" in proc.stderr
    assert p.front_version() == "v1"
    assert "RUNNING" not in sv.status("demo-green")  # the failed release was stopped
    assert_running(sv, "demo-blue", p.blue)
    st = p.status()
    assert st["live"] == "blue" and st["slots"]["green"]["status"] == "failed"
    assert st["app_hosts"]["local"]["green"]["running"] is False
    p.deploy("v2")  # and a good build converges
    assert p.front_version() == "v2"


def test_env_and_version_reach_the_app_byte_for_byte(
        tmp_path: Path, private_nginx: PrivateNginx, artifacts: dict[str, Path],
        supervisord: Supervisord) -> None:
    """Values supervisor's own config syntax cannot carry (quotes, backslashes, " ;", " #",
    %) reach the program's environment unchanged."""
    env = {"GREETING": 'say "hi" \\ back\\slash 100% ;semi #hash $HOME',
           "EMPTY": "", "BIND": "127.0.0.1"}
    proj = Project(tmp_path / "app", private_nginx, artifacts, 'app = ["local"]',
                   extra_toml=supervisor_toml(supervisord, env)).write()
    try:
        version = "v1 ;x #y 5%"
        proj.fab("deploy", "--artifact", str(artifacts["v1"]), "--version", version)
        assert proj.front_version() == "v1"
        pid = assert_running(supervisord, "demo-blue", proj.blue)
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        seen = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
        for key, value in env.items():
            assert seen[key] == value, key
        assert seen["BLUEGREEN_VERSION"] == version
        assert seen["BLUEGREEN_SLOT"] == "blue" and seen["PORT"] == str(proj.blue)
    finally:
        proj.stop_everything()


def test_supervisord_down_is_a_clear_error_not_a_health_timeout(
        sv_project: Project, supervisord: Supervisord) -> None:
    p, sv = sv_project, supervisord
    p.deploy("v1")
    sv.stop()  # supervisord and its programs are gone
    began = time.monotonic()
    proc = p.deploy("v2", check=False)
    assert proc.returncode != 0
    assert "phase=stop" in proc.stderr and "supervisorctl stop failed" in proc.stderr, \
        proc.stderr
    assert "is supervisord running?" in proc.stderr
    assert time.monotonic() - began < 8  # not the 10 s health timeout
    st = p.status()
    assert st["live"] == "blue" and st["slots"]["blue"]["version"] == "v1"


def test_process_user_runs_the_program_as_that_user(
        private_nginx: PrivateNginx, artifacts: dict[str, Path],
        supervisord: Supervisord) -> None:
    """process.user = "nobody": supervisor's user= drops to it, and the slot's 0600 env
    file and start script were handed to it (else it could read neither). The project
    lives in a world-traversable directory: pytest's own tmp dirs are root-only."""
    where = Path(tempfile.mkdtemp(prefix="bgsvu-", dir="/tmp"))
    where.chmod(0o755)
    p = Project(where / "app", private_nginx, artifacts, 'app = ["local"]',
                extra_toml=supervisor_toml(supervisord, env={"SECRET": "s3"},
                                           user="nobody")).write()
    try:
        p.deploy("v1")
        assert p.front_version() == "v1"
        pid = assert_running(supervisord, "demo-blue", p.blue)
        status = Path(f"/proc/{pid}/status").read_text()
        uid = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert uid == [str(pwd.getpwnam("nobody").pw_uid)] * 4, status
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"SECRET=s3" in environ  # it could read the 0600 env file
        env_file = p.app_root / "slots" / "blue" / "env"
        assert env_file.stat().st_uid == pwd.getpwnam("nobody").pw_uid
        assert env_file.stat().st_mode & 0o077 == 0  # still private: to nobody else
    finally:
        p.stop_everything()
        shutil.rmtree(where, ignore_errors=True)
