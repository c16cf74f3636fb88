"""A user's app repository, and `fab` run in it the way a user runs it.

A `Project` is a directory with bluegreen.toml and a one-line fabfile.py, the nginx in
front of it, and the demo app's artifacts. `Project.fab` runs the real `fab` as a
subprocess (found by `fab_path`, the one way to find it) and hands back its exit code,
output, wall time and peak RSS. `Project.stop_everything` stops what the deploys started,
by the PIDs bluegreen recorded. Tests and benchmarks write bluegreen.toml only here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from testkit import REPO
from testkit.nginx import PrivateNginx
from testkit.ports import free_port
from testkit.procs import descendant_pids, pid_alive, stop_pids
from testkit.sshd import TestSshd

FABFILE = "from bluegreen.tasks import ns  # noqa: F401\n"
# What bluegreen reads from a CI job's environment (who deployed, build URL, commit) or as
# config (BLUEGREEN_*). A `fab` run here never inherits them, so a test or benchmark run
# inside a Jenkins job behaves as anywhere else; pass them explicitly through `env`.
CI_VARS = frozenset({"GIT_COMMIT", "BUILD_NUMBER", "BUILD_URL", "JOB_NAME", "JENKINS_URL"})


@functools.cache
def fab_path() -> str:
    """`fab` of the interpreter running us (the project's venv), else the repo's .venv, else
    the one on PATH. Never raises: a missing `fab` fails where it is run, loudly."""
    here = Path(sys.executable).parent / "fab"
    for candidate in (here, REPO / ".venv" / "bin" / "fab"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("fab") or str(here)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without CI_VARS and BLUEGREEN*, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k not in CI_VARS and not k.startswith("BLUEGREEN")}
    env.update(extra or {})
    return env


class Ran(subprocess.CompletedProcess):  # type: ignore[type-arg]
    """A finished child: returncode, stdout, stderr (str), plus what `run` measured."""

    wall: float = 0.0  # seconds from start to exit
    maxrss_mb: float = 0.0  # the child's own peak RSS (wait4 rusage), MB
    timed_out: bool = False  # killed by its PID after `timeout`


def run(argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
        timeout: float = 180.0, on_line: Callable[[str, float], None] | None = None,
        merge_stderr: bool = False) -> Ran:
    """Run a child, wall-timed, with its own peak RSS; past `timeout` it is killed by its
    PID (SIGKILL), never by name. `on_line(line, now)` sees every stdout line as it
    arrives, `now` from time.monotonic(). With `merge_stderr`, stderr goes to stdout."""
    with tempfile.TemporaryFile() as err_file:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env) if env is not None else None,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if merge_stderr else err_file,
                                text=True, errors="replace")
        state = {"done": False, "killed": False}
        lock = threading.Lock()

        def kill() -> None:
            with lock:
                if not state["done"]:
                    state["killed"] = True
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                lines.append(line)
                if on_line is not None:
                    on_line(line, time.monotonic())
            # wait without reaping, so the timer can never signal a recycled pid
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        except BaseException:  # interrupted: stop the child by its PID, then reap it
            with lock:
                state["done"] = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)
            proc.returncode = -signal.SIGKILL
            raise
        finally:
            with lock:
                state["done"] = True
            timer.cancel()
            if proc.stdout is not None:
                proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err_file.seek(0)
        stderr = "" if merge_stderr else err_file.read().decode(errors="replace")
    stdout = "\n".join(lines) + ("\n" if lines else "")
    done = Ran(list(argv), proc.returncode, stdout, stderr)
    done.wall, done.maxrss_mb, done.timed_out = wall, usage.ru_maxrss / 1024.0, state["killed"]
    return done


def ssh_toml(sshd: TestSshd) -> str:
    """The [ssh] table for logging in to `sshd` as root with its keys."""
    return (f'[ssh]\nuser = "root"\nkey_file = "{sshd.user_key}"\n'
            f'known_hosts = "{sshd.known_hosts}"\n')


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass
class Project:
    """A user's app repository: bluegreen.toml + fabfile.py + hooks/, and the nginx in front.

    Every knob the tests and benchmarks turn is a field; `extra_toml` is written as is
    after the top-level keys (a table there must not repeat one written from a field,
    e.g. [env] when `app_env` is set).
    """

    dir: Path
    nginx: PrivateNginx
    artifacts: dict[str, Path] = field(default_factory=dict)
    hosts_toml: str = 'app = ["local"]'  # the body of [hosts]
    ssh_toml: str = ""  # an [ssh] table (see ssh_toml())
    extra_toml: str = ""
    env: dict[str, str] = field(default_factory=dict)  # environment of every `fab` run
    mode: str = "reload"  # nginx.mode: reload, or lua (needs an nginx with the lua module)
    app: str = "demo"
    app_env: dict[str, str] = field(default_factory=dict)  # [env]: the app's environment
    keep_releases: int | None = None
    # the [watch] table: off unless a test is about it (it adds its seconds to every switch)
    watch_toml: str = "seconds = 0"
    nginx_toml: str = ""  # more [nginx] keys (server_name, ...)
    health_timeout: float = 10
    health_interval: float | None = None
    stop_timeout: float | None = None  # [process] stop_timeout
    drain_timeout: float = 5  # nginx.drain_timeout
    blue: int = field(default_factory=free_port)
    green: int = field(default_factory=free_port)
    control_port: int | None = None  # nginx.control_port; lua mode: a free port when None

    def __post_init__(self) -> None:
        if self.control_port is None:
            self.control_port = free_port() if self.mode == "lua" else 0

    # ----- where things are ---------------------------------------------------------
    @property
    def srv(self) -> Path:
        """paths.root: every app host's files live under it (the `local` host's too)."""
        return self.dir / "srv"

    @property
    def app_root(self) -> Path:
        return self.srv / self.app

    @property
    def history(self) -> Path:
        return self.app_root / "history.jsonl"

    def state(self) -> dict[str, Any]:
        """state.json as bluegreen recorded it on the `local` host, {} before the first."""
        try:
            return json.loads((self.app_root / "state.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def app_log(self, slot: str) -> str:
        try:
            return (self.app_root / "slots" / slot / "app.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ----- bluegreen.toml -----------------------------------------------------------
    def render_toml(self) -> str:
        n = self.nginx
        lines = [f"app = {_toml(self.app)}", 'start = "{release}/bin/runner {port}"']
        if self.keep_releases is not None:
            lines.append(f"keep_releases = {self.keep_releases}")
        lines += [self.extra_toml, "", "[hosts]", self.hosts_toml, "",
                  "[slots]", f"blue = {self.blue}", f"green = {self.green}", "",
                  "[paths]", f"root = {_toml(str(self.srv))}", "",
                  "[health]", f"timeout = {_toml(float(self.health_timeout))}"]
        if self.health_interval is not None:
            lines.append(f"interval = {_toml(float(self.health_interval))}")
        if self.stop_timeout is not None:
            lines += ["", "[process]", f"stop_timeout = {_toml(float(self.stop_timeout))}"]
        lines += ["", "[nginx]",
                  f"command = {_toml(n.cmd_prefix)}",
                  f"target = {_toml(str(n.conf_dir) + '/{app}.conf')}",
                  f"listen = {_toml(f'127.0.0.1:{n.port}')}",
                  f"error_log = {_toml(str(n.error_log))}",
                  f"pid_file = {_toml(str(n.pid_file))}",
                  f"drain_timeout = {_toml(float(self.drain_timeout))}",
                  f"mode = {_toml(self.mode)}",
                  f"control_port = {self.control_port}"]
        if self.nginx_toml:
            lines.append(self.nginx_toml)
        lines += ["", "[watch]", self.watch_toml]
        if self.app_env:
            lines += ["", "[env]", *(f"{k} = {_toml(v)}" for k, v in self.app_env.items())]
        lines += ["", self.ssh_toml]
        return "\n".join(lines).rstrip("\n") + "\n"

    def write(self) -> Project:
        if self not in _WRITTEN:
            _WRITTEN.append(self)  # its apps are stopped when its test ends (testkit.fixtures)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "fabfile.py").write_text(FABFILE)
        (self.dir / "bluegreen.toml").write_text(self.render_toml())
        return self

    # ----- running fab --------------------------------------------------------------
    def fab(self, *args: str, check: bool | None = True, timeout: float = 120,
            env: dict[str, str] | None = None,
            on_line: Callable[[str, float], None] | None = None,
            merge_stderr: bool = False) -> Ran:
        """`fab ARGS` in the project. check=True: it must succeed; False: it must fail;
        None: either. See `run` for on_line and merge_stderr."""
        extra = {**self.env, **(env or {})}
        if on_line is not None:
            extra.setdefault("PYTHONUNBUFFERED", "1")  # lines arrive when fab prints them
        proc = run([fab_path(), *args], cwd=self.dir, env=clean_env(extra), timeout=timeout,
                   on_line=on_line, merge_stderr=merge_stderr)
        what = f"fab {shlex.join(args)}"
        if check is not None and proc.timed_out:
            raise AssertionError(f"{what} killed after {timeout}s:\n{proc.stdout}\n{proc.stderr}")
        if check is True and proc.returncode != 0:
            raise AssertionError(f"{what} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        if check is False and proc.returncode == 0:
            raise AssertionError(f"{what} unexpectedly succeeded:\n{proc.stdout}")
        return proc

    def deploy(self, version: str, *extra: str, check: bool | None = True,
               env: dict[str, str] | None = None, artifact: Path | None = None,
               timeout: float = 120) -> Ran:
        """`fab deploy` of `artifact`, by default the project's artifact for `version`."""
        path = artifact if artifact is not None else self.artifacts[version]
        return self.fab("deploy", "--artifact", str(path), "--version", version, *extra,
                        check=check, env=env, timeout=timeout)

    def status(self) -> dict[str, Any]:
        """`fab status --json`; its exit code (0 ok, 4 unhealthy, 5 inconsistent) is in the
        result as `exit_code`: a degraded state is something tests look at, not a crash."""
        proc = self.fab("status", "--json", check=None)
        assert proc.returncode in (0, 4, 5), f"fab status failed ({proc.returncode}):\n" \
            f"{proc.stdout}\n{proc.stderr}"
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    def front(self, path: str = "/") -> requests.Response:
        return requests.get(self.nginx.url(path), timeout=5)

    def front_version(self) -> str:
        r = self.front()
        assert r.status_code == 200, r.text
        return r.headers["X-App-Version"]

    # ----- teardown -----------------------------------------------------------------
    def slot_pids(self) -> list[int]:
        """PIDs from the slots' pidfiles (any app root under srv/) that are still the
        processes bluegreen started: pid and start time, as bluegreen itself checks."""
        pids = []
        for pidfile in self.srv.glob("**/slots/*/pid"):
            try:
                pid_s, start_s = pidfile.read_text().split()[:2]
                pid = int(pid_s)
                stat = Path(f"/proc/{pid}/stat").read_text()
            except (OSError, ValueError):
                continue
            if stat[stat.rindex(")") + 2:].split()[19] == start_s and pid_alive(pid):
                pids.append(pid)
        return pids

    def stop_everything(self) -> None:
        """Stop both slots by PID: each app runs in its own session (setsid), so its
        group gets SIGTERM, then the app and everything it started are stopped by PID."""
        pids = self.slot_pids()
        everything = [p for pid in pids for p in (pid, *descendant_pids(pid))]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        if everything:
            stop_pids(everything, timeout=5.0)


# Every project written in this process: the apps `fab` starts are not our children (setsid,
# supervisord, systemd), so nothing else stops them when a test forgets to.
_WRITTEN: list[Project] = []


def stop_projects(under: Path | None = None) -> int:
    """Stop the slot processes of every written project whose directory is below `under`
    (None: all of them); how many projects had something running."""
    stopped = 0
    for proj in list(_WRITTEN):
        if under is not None and not proj.dir.resolve().is_relative_to(under.resolve()):
            continue
        _WRITTEN.remove(proj)
        if proj.slot_pids():
            stopped += 1
            proj.stop_everything()
    return stopped


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0,
             what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
