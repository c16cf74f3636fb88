"""A private nginx under a prefix directory: no root-owned paths, no port 80.

Layout under PREFIX:
    nginx.conf          main config written by this class (never by the deploy tool)
    conf.d/*.conf       included inside `http {}`; the deploy tool renders its upstream +
                        server block here, tests write their own server blocks here
    logs/error.log      nginx error log (level `notice`, so reloads and worker exits show)
    logs/nginx.pid      master PID, as `nginx -s reload|quit` reads it
    logs/stderr.log     the master's own stdout/stderr
    temp/*              every *_temp_path, so nothing touches /var/lib/nginx

The master runs with `-g "daemon off;"` under our own Popen. With `daemon on` the master
is re-parented to PID 1, and on machines where PID 1 does not reap (containers) every
stopped test nginx would stay behind as a zombie. Only the start command carries that
`-g`; `base_args` / `cmd_prefix` (what the deploy tool uses for `-t` and `-s reload`)
do not, so they work exactly as against a daemonized nginx.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from testkit.ports import free_port, port_open
from testkit.procs import (
    child_pids,
    cmdline,
    log_tail,
    pid_alive,
    start_process,
    stop_pids,
    wait_until,
)

NGINX_MODULES_DIR = Path("/usr/lib/nginx/modules")
# ndk must be loaded before lua: the lua module links against NDK symbols.
LUA_MODULES = ("ndk_http_module.so", "ngx_http_lua_module.so")
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class NginxError(RuntimeError):
    """nginx refused a config, failed to start, or failed to apply a reload."""


def _q(value: str | Path) -> str:
    # nginx accepts double-quoted strings anywhere a path goes; quoting keeps tmp paths
    # with unusual characters from breaking the config.
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def nginx_binary() -> str:
    # Resolve once to an absolute path: CI shells for non-root users often lack /usr/sbin
    # on PATH even though nginx is installed there.
    return shutil.which("nginx") or "/usr/sbin/nginx"


class PrivateNginx:
    """One nginx master under `prefix`, front port `port` (picked free when None).

    The config and directories are written at construction so tests can drop files
    into `conf_dir` before `start()`. An empty conf.d is valid: nginx then runs with
    no listening sockets until a server block is added and `reload()` is called.
    """

    def __init__(
        self,
        prefix: Path,
        port: int | None = None,
        lua: bool = False,
        *,
        worker_processes: int = 1,
        access_log: bool = False,
        error_log_level: str = "notice",
        main_extra: Sequence[str] = (),
    ) -> None:
        self._prefix = Path(prefix).resolve()
        self._port = port if port is not None else free_port()
        self.lua = lua
        self.worker_processes = worker_processes
        self.access_log = access_log
        self.error_log_level = error_log_level
        # main-context lines next to worker_processes (worker_shutdown_timeout lives there)
        self.main_extra = list(main_extra)
        self._binary = nginx_binary()
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_layout()

    # ----- paths and command lines -------------------------------------------------
    @property
    def prefix(self) -> Path:
        return self._prefix

    @property
    def conf(self) -> Path:
        return self._prefix / "nginx.conf"

    @property
    def conf_dir(self) -> Path:
        return self._prefix / "conf.d"

    @property
    def port(self) -> int:
        return self._port

    @property
    def logs_dir(self) -> Path:
        return self._prefix / "logs"

    @property
    def error_log(self) -> Path:
        return self.logs_dir / "error.log"

    @property
    def access_log_path(self) -> Path:
        return self.logs_dir / "access.log"

    @property
    def pid_file(self) -> Path:
        return self.logs_dir / "nginx.pid"

    @property
    def stderr_log(self) -> Path:
        return self.logs_dir / "stderr.log"

    @property
    def base_args(self) -> list[str]:
        # `-e stderr`: messages nginx emits before it has read `error_log` from the config
        # (e.g. a missing config file) go to the caller's stderr instead of the
        # compiled-in /var/log/nginx/error.log.
        return [self._binary, "-p", f"{self._prefix}/", "-c", str(self.conf), "-e", "stderr"]

    @property
    def cmd_prefix(self) -> str:
        """`base_args` as one shell string, the form the deploy tool's `nginx.command` takes."""
        return shlex.join(self.base_args)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self._port}{path}"

    # ----- config -------------------------------------------------------------------
    def _write_layout(self) -> None:
        for directory in (self._prefix, self.conf_dir, self.logs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for name in TEMP_PATHS:
            (self._prefix / "temp" / name).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.render_main_conf())

    def render_main_conf(self) -> str:
        lines: list[str] = ["# Written by testkit/nginx.py; conf.d/ is for everyone else."]
        if self.lua:
            for module in LUA_MODULES:
                path = NGINX_MODULES_DIR / module
                if not path.exists():
                    raise FileNotFoundError(
                        f"{path} is missing; install libnginx-mod-http-lua "
                        "(scripts/install-system-deps.sh)"
                    )
                lines.append(f"load_module {_q(path)};")
        if os.geteuid() == 0:
            # As root, workers would drop to `nobody`, which cannot enter pytest's 0700
            # tmp dirs (temp files, lua files). Outside root nginx ignores `user` with a
            # [warn], which we avoid emitting so log scanners see a clean log.
            lines.append("user root;")
        lines += [
            f"worker_processes {self.worker_processes};",
            *self.main_extra,
            f"pid {_q(self.pid_file)};",
            f"error_log {_q(self.error_log)} {self.error_log_level};",
            "events { worker_connections 1024; }",
            "http {",
            f"    access_log {_q(self.access_log_path) if self.access_log else 'off'};",
        ]
        for name in TEMP_PATHS:
            lines.append(f"    {name}_temp_path {_q(self._prefix / 'temp' / name)};")
        lines += [
            f"    include {_q(self.conf_dir / '*.conf')};",
            "}",
            "",
        ]
        return "\n".join(lines)

    def write_conf_d(self, filename: str, text: str) -> Path:
        """Write conf.d/<filename> (a test's own server block); call `reload()` after."""
        path = self.conf_dir / filename
        path.write_text(text)
        return path

    # ----- lifecycle ----------------------------------------------------------------
    def _logs(self) -> str:
        return (
            f"--- {self.error_log} ---\n{log_tail(self.error_log)}\n"
            f"--- {self.stderr_log} ---\n{log_tail(self.stderr_log)}"
        )

    def _run(self, extra: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base_args, *extra],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def test_config(self) -> str:
        """`nginx -t` on the whole config; returns its output, raises NginxError on failure."""
        result = self._run(["-t"])
        if result.returncode != 0:
            raise NginxError(f"nginx -t failed (rc={result.returncode}):\n{result.stderr}")
        return result.stderr

    def start(self, timeout: float = 10.0) -> PrivateNginx:
        if self._proc is not None and pid_alive(self._proc.pid):
            raise NginxError(f"nginx under {self._prefix} is already running")
        self.test_config()
        self._proc = start_process(
            [*self.base_args, "-g", "daemon off;"], self.stderr_log, cwd=self._prefix
        )
        proc = self._proc

        def ready() -> bool:
            if not pid_alive(proc.pid):
                raise NginxError(f"nginx exited during start (rc={proc.poll()}):\n{self._logs()}")
            return self._read_pid_file() == proc.pid and bool(self.worker_pids())

        try:
            wait_until(
                ready,
                timeout,
                lambda: (
                    f"nginx master {proc.pid} wrote no pid file / started no workers\n"
                    + self._logs()
                ),
            )
        except BaseException:
            stop_pids([proc.pid, *child_pids(proc.pid)])
            raise
        return self

    def _read_pid_file(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    @property
    def master_pid(self) -> int | None:
        """PID of the running master, read from the pid file as `nginx -s` does."""
        pid = self._read_pid_file()
        if pid is None or not pid_alive(pid):
            return None
        return pid

    def worker_pids(self, *, include_shutting_down: bool = True) -> list[int]:
        """Worker processes of the master, found through /proc.

        Old workers that finish in-flight requests after a reload retitle themselves
        "worker process is shutting down"; pass include_shutting_down=False to get only
        the current generation.
        """
        master = self._proc.pid if self._proc is not None else self._read_pid_file()
        if master is None:
            return []
        pids = []
        for pid in child_pids(master):
            title = cmdline(pid)
            if "worker process" not in title:
                continue
            if not include_shutting_down and "shutting down" in title:
                continue
            pids.append(pid)
        return pids

    def error_log_text(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def error_log_size(self) -> int:
        try:
            return self.error_log.stat().st_size
        except FileNotFoundError:
            return 0

    def error_log_since(self, offset: int) -> str:
        """Error-log text appended after byte `offset` (from `error_log_size()`)."""
        try:
            with open(self.error_log, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def reload(self, *, wait: bool = True, timeout: float = 10.0) -> None:
        """`nginx -s reload`, then (by default) wait until the new config is what answers.

        `-s reload` returns as soon as the signal is sent. A config that passes the
        parse but fails when the master applies it (e.g. `listen` on a busy port) still
        gives rc=0 and only an [emerg] in the error log, so that is checked too. "New
        config live" means: a new generation of workers exists and every old worker has
        either exited or closed its listening sockets ("shutting down"), so no new
        connection can reach an old worker.
        """
        if self.master_pid is None:
            raise NginxError(f"nginx under {self._prefix} is not running")
        old_workers = set(self.worker_pids())
        offset = self.error_log_size()
        result = self._run(["-s", "reload"])
        if result.returncode != 0:
            raise NginxError(f"nginx -s reload failed (rc={result.returncode}):\n{result.stderr}")
        if not wait:
            return

        def applied() -> bool:
            new_text = self.error_log_since(offset)
            if "[emerg]" in new_text or "[alert]" in new_text:
                raise NginxError(f"nginx rejected the reload:\n{new_text}")
            return bool(set(self.worker_pids()) - old_workers) and all(
                not pid_alive(p) or "shutting down" in cmdline(p) for p in old_workers
            )

        wait_until(
            applied,
            timeout,
            lambda: (
                "nginx reload did not replace the workers "
                f"{sorted(old_workers)} (now {self.worker_pids()})\n{self._logs()}"
            ),
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful `-s quit`, bounded; then SIGTERM/SIGKILL by PID for anything left.

        Safe to call twice and after a failed start.
        """
        master = self._proc.pid if self._proc is not None else self._read_pid_file()
        if master is None:
            return
        workers = child_pids(master)
        if pid_alive(master):
            quit_result = self._run(["-s", "quit"], timeout=timeout)
            if quit_result.returncode != 0:
                # `nginx -s` parses the whole config before signalling, so a test that
                # left a broken file in conf.d makes it fail; SIGQUIT is what it would
                # have sent.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(master, signal.SIGQUIT)
            try:
                wait_until(lambda: not pid_alive(master), timeout, "nginx -s quit")
            except TimeoutError:
                pass  # fall through to stop by PID below
        # Catch workers started by reloads since we listed them above.
        stop_pids([master, *workers, *child_pids(master)], timeout=5.0)
        self._proc = None

    def is_serving(self) -> bool:
        """True when something accepts TCP connections on the front port."""
        return port_open("127.0.0.1", self._port)

    def __enter__(self) -> PrivateNginx:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
