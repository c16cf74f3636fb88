"""What the deploy integration tests share: build the demo app, write a project, run `fab`.

Tests drive bluegreen the way a user does: a directory with bluegreen.toml and a one-line
fabfile.py, and `fab` run as a subprocess, reading its exit code and what it printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")
sys.path.insert(0, str(REPO / "examples" / "demo"))

from build import build  # noqa: E402  (examples/demo/build.py)

from tests.support.nginx import PrivateNginx  # noqa: E402
from tests.support.ports import free_port  # noqa: E402


def build_artifacts(out: Path) -> dict[str, Path]:
    return {v: build(v, out) for v in ("v1", "v2", "v3", "v4-unhealthy")}


@dataclass
class Project:
    """A user's app repository: bluegreen.toml + fabfile.py + hooks/, and the nginx in front."""

    dir: Path
    nginx: PrivateNginx
    artifacts: dict[str, Path]
    hosts_toml: str
    ssh_toml: str = ""
    extra_toml: str = ""
    env: dict[str, str] = field(default_factory=dict)
    mode: str = "reload"  # nginx.mode: reload, or lua (needs an nginx with the lua module)
    blue: int = field(default_factory=free_port)
    green: int = field(default_factory=free_port)

    def write(self) -> Project:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "fabfile.py").write_text("from bluegreen.tasks import ns  # noqa: F401\n")
        (self.dir / "bluegreen.toml").write_text(textwrap.dedent(f"""\
            app = "demo"
            start = "{{release}}/bin/runner {{port}}"
            {self.extra_toml}
            [hosts]
            {self.hosts_toml}

            [slots]
            blue = {self.blue}
            green = {self.green}

            [paths]
            root = "{self.dir / 'srv'}"

            [health]
            timeout = 10

            [nginx]
            command = "{self.nginx.cmd_prefix}"
            target = "{self.nginx.conf_dir}/{{app}}.conf"
            listen = "127.0.0.1:{self.nginx.port}"
            error_log = "{self.nginx.error_log}"
            pid_file = "{self.nginx.pid_file}"
            drain_timeout = 5
            mode = "{self.mode}"
            control_port = {free_port() if self.mode == "lua" else 0}

            {self.ssh_toml}
            """))
        return self

    def fab(self, *args: str, check: bool | None = True, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([FAB, *args], cwd=self.dir, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **self.env, **(env or {})},
                              check=False)
        if check is True and proc.returncode != 0:
            raise AssertionError(f"fab {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        if check is False and proc.returncode == 0:
            raise AssertionError(f"fab {' '.join(args)} unexpectedly succeeded:\n{proc.stdout}")
        return proc

    def deploy(self, version: str, *extra: str, check: bool | None = True,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.fab("deploy", "--artifact", str(self.artifacts[version]), "--version",
                        version, *extra, check=check, env=env)

    def status(self) -> dict[str, Any]:
        return json.loads(self.fab("status", "--json").stdout)

    def front(self, path: str = "/") -> requests.Response:
        return requests.get(self.nginx.url(path), timeout=5)

    def front_version(self) -> str:
        r = self.front()
        assert r.status_code == 200, r.text
        return r.headers["X-App-Version"]

    def stop_everything(self) -> None:
        """Stop both slots by their pidfiles (what the tests started, by PID)."""
        from tests.support.procs import stop_pid

        for pidfile in (self.dir / "srv").glob("**/slots/*/pid"):
            try:
                pid = int(pidfile.read_text().split()[0])
            except (ValueError, IndexError, OSError):
                continue
            try:
                os.killpg(pid, 15)
            except ProcessLookupError:
                continue
            stop_pid(pid, timeout=5)


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
