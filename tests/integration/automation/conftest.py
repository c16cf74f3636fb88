"""Real git remotes on disk, the real service as a subprocess on a loopback port, a recorder
standing in for the deploy, and a tiny fake Jenkins. Everything started here is stopped here,
by PID or by its shutdown handle."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from bluegreen.automation.jobqueue import Job, JobQueue

ROOT = Path(__file__).resolve().parents[3]
PY = sys.executable
SECRETS = {"GH_SECRET": "gh-test-secret", "GL_TOKEN": "gl-test-token",
           "GITEA_SECRET": "gitea-test-secret", "GENERIC_TOKEN": "generic-test-token",
           "JENKINS_NOTIFY_TOKEN": "jenkins-notify-token", "JENKINS_API_TOKEN": "api-token-123"}
GIT_ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_TERMINAL_PROMPT": "0"}

# The build the test rules run: everything about the commit comes from the environment or
# the checkout, so the artifact proves which commit was built and what the build was told.
BUILD_COMMAND = ('mkdir -p dist && { printf "version=%s\\n" "$(cat VERSION)"; '
                 'printf "commit=%s\\n" "$BLUEGREEN_COMMIT"; '
                 'printf "branch=%s\\n" "$BLUEGREEN_BRANCH"; } > dist/app.txt')

RECORDER = r'''
"""Stands in for `python -m bluegreen deploy`: records argv and environment, then obeys the
control file (sleep N seconds, exit with code X)."""
import hashlib, json, os, sys, time
from pathlib import Path

control_path, out_path, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
control = json.loads(Path(control_path).read_text()) if Path(control_path).exists() else {}
artifact = argv[argv.index("--artifact") + 1] if "--artifact" in argv else ""
data = Path(artifact).read_bytes() if artifact and Path(artifact).is_file() else b""
record = {
    "argv": argv,
    "env": {k: v for k, v in os.environ.items() if k.startswith("BLUEGREEN_")},
    "env_names": sorted(os.environ),
    "pid": os.getpid(),
    "artifact_sha256": hashlib.sha256(data).hexdigest(),
    "artifact_text": data.decode("utf-8", "replace")[:4000],
}
with open(out_path, "a", encoding="utf-8") as fh:
    fh.write(json.dumps(record) + "\n")
print("recorder: deploy", argv[argv.index("--version") + 1] if "--version" in argv else "?")
sys.stdout.flush()
time.sleep(float(control.get("sleep", 0)))
code = int(control.get("exit", 0))
if code:
    print("recorder: failing on purpose with", code, file=sys.stderr)
sys.exit(code)
'''


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV},
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise AssertionError(f"git {args} failed: {done.stderr}")
    return done.stdout.strip()


@dataclass
class GitRemote:
    """A bare repository (the remote) and a working clone that pushes to it for real."""

    bare: Path
    work: Path
    current: str = "main"

    @classmethod
    def create(cls, root: Path) -> GitRemote:
        bare, work = root / "remote.git", root / "dev-clone"
        git("init", "-q", "--bare", "--initial-branch=main", str(bare))
        git("init", "-q", "--initial-branch=main", str(work))
        git("remote", "add", "origin", str(bare), cwd=work)
        return cls(bare, work)

    def commit(self, version: str, message: str = "", branch: str = "main") -> str:
        if self.current != branch:
            exists = subprocess.run(["git", "rev-parse", "--verify", "--quiet",
                                     f"refs/heads/{branch}"], cwd=self.work, capture_output=True,
                                    env={**os.environ, **GIT_ENV}, timeout=30,
                                    check=False).returncode == 0
            git("checkout", "-q", *(() if exists else ("-b",)), branch, cwd=self.work)
            self.current = branch
        (self.work / "VERSION").write_text(version + "\n")
        git("add", "VERSION", cwd=self.work)
        git("commit", "-q", "-m", message or f"version {version}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def push(self, branch: str = "main") -> str:
        git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def commit_and_push(self, version: str, message: str = "", branch: str = "main") -> str:
        self.commit(version, message, branch)
        return self.push(branch)


def github_payload(branch: str, sha: str, *, pusher: str = "octocat", message: str = "msg",
                   repo: str = "acme/demo") -> dict[str, Any]:
    return {"ref": f"refs/heads/{branch}", "before": "0" * 39 + "1", "after": sha,
            "repository": {"full_name": repo, "clone_url": "https://example.invalid/x.git"},
            "pusher": {"name": pusher}, "sender": {"login": pusher},
            "head_commit": {"id": sha, "message": message}}


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    return json.dumps(value)  # a JSON string/number/bool/array of these is valid TOML


def toml_table(name: str, values: dict[str, Any], *, array: bool = False) -> str:
    header = f"[[{name}]]" if array else f"[{name}]"
    return "\n".join([header, *(f"{k} = {toml_value(v)}" for k, v in values.items())]) + "\n"


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Harness:
    """One test's world: a git remote, a config, the service, the recorder's output."""

    root: Path
    remote: GitRemote
    services: list[Service] = field(default_factory=list)
    http: requests.Session = field(default_factory=requests.Session)
    extra_env: dict[str, str] = field(default_factory=dict)  # added to every process we start

    def __post_init__(self) -> None:
        self.http.trust_env = False  # loopback only, never through a proxy from the env
        self.recorder = self.root / "recorder.py"
        self.recorder.write_text(RECORDER)
        self.control = self.root / "recorder-control.json"
        self.records_path = self.root / "deploys.jsonl"
        self.config_path = self.root / "automation.toml"
        self.state_dir = self.root / "state"
        self.app_config = self.root / "demo-bluegreen.toml"

    # ---- config ---------------------------------------------------------------------------

    def deploy_command(self) -> list[str]:
        return ["{python}", str(self.recorder), str(self.control), str(self.records_path),
                "--config", "{config}", "--artifact", "{artifact}", "--version", "{version}",
                "--who", "{who}"]

    def build_rule(self, **overrides: Any) -> dict[str, Any]:
        rule = {"name": "demo-main", "repo": "acme/demo", "branch": "main", "app": "demo",
                "action": "build", "clone_url": str(self.remote.bare),
                "build_command": BUILD_COMMAND, "artifact": "dist/app.txt",
                "config": str(self.app_config), "deploy_command": self.deploy_command(),
                "build_timeout": 60.0, "deploy_timeout": 60.0}
        rule.update(overrides)
        return rule

    def write_config(self, rules: list[dict[str, Any]] | None = None, *,
                     polls: list[dict[str, Any]] | None = None, jenkins: dict[str, Any] | None
                     = None, generic: dict[str, Any] | None = None, **service: Any) -> Path:
        settings = {"listen": "127.0.0.1", "port": 0, "state_dir": str(self.state_dir),
                    "max_body_bytes": 4096, "quiet_period": 0.0, "shutdown_grace": 15.0}
        settings.update(service)
        parts = [toml_table("service", settings),
                 toml_table("secrets", {"github": "GH_SECRET", "gitlab": "GL_TOKEN",
                                        "gitea": "GITEA_SECRET", "generic": "GENERIC_TOKEN",
                                        "jenkins": "JENKINS_NOTIFY_TOKEN"})]
        if generic:
            parts.append(toml_table("generic", generic))
        if jenkins:
            parts.append(toml_table("jenkins", jenkins))
        parts.append(toml_table("git", {"timeout": 30.0}))
        for rule in rules if rules is not None else [self.build_rule()]:
            parts.append(toml_table("rules", rule, array=True))
        for target in polls or []:
            parts.append(toml_table("poll", target, array=True))
        self.config_path.write_text("\n".join(parts))
        return self.config_path

    def set_recorder(self, *, sleep: float = 0.0, exit_code: int = 0) -> None:
        self.control.write_text(json.dumps({"sleep": sleep, "exit": exit_code}))

    # ---- processes ------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env.update(GIT_ENV)
        env.update(SECRETS)
        env["PYTHONPATH"] = str(ROOT)
        env.update(self.extra_env)
        return env

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "bluegreen.automation", *args,
                               "--config", str(self.config_path)], cwd=self.root,
                              env=self.env(), capture_output=True, text=True, timeout=timeout,
                              check=False)

    def start(self) -> Service:
        log_path = self.root / f"serve-{len(self.services)}.log"
        runtime = self.state_dir / "serve.json"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([PY, "-m", "bluegreen.automation", "serve", "--config",
                                     str(self.config_path), "--log-level", "DEBUG"],
                                    cwd=self.root, env=self.env(), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        service = Service(proc, "", log_path)
        self.services.append(service)

        def ready() -> str:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode}:\n{service.log()}")
            with contextlib.suppress(FileNotFoundError, ValueError):
                data = json.loads(runtime.read_text())
                if data.get("pid") == proc.pid:
                    return str(data["url"])
            return ""

        service.url = wait_for("serve to listen", ready, timeout=20)
        return service

    def stop_all(self) -> None:
        for service in self.services:
            service.stop(timeout=20)
        for record in self.records():
            kill_if_ours(record["pid"], str(self.recorder))

    # ---- observing ------------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        if not self.records_path.exists():
            return []
        return [json.loads(line) for line in self.records_path.read_text().splitlines() if line]

    def queue(self) -> JobQueue:
        return JobQueue(self.state_dir / "automation.sqlite3")

    def jobs(self) -> list[Job]:
        return sorted(self.queue().list_jobs(limit=500), key=lambda j: j.id)

    def wait_job(self, job_id: int, states: tuple[str, ...] = ("succeeded", "failed",
                 "interrupted", "skipped"), timeout: float = 20.0) -> Job:
        queue = self.queue()

        def done() -> Job | None:
            job = queue.get(job_id)
            return job if job is not None and job.state in states else None

        return wait_for(f"job {job_id} to reach {states}", done, timeout)

    # ---- sending --------------------------------------------------------------------------

    def post(self, service: Service, provider: str, body: bytes, headers: dict[str, str],
             query: str = "") -> requests.Response:
        url = f"{service.url}/hooks/{provider}" + (f"?{query}" if query else "")
        return self.http.post(url, data=body, headers={"Content-Type": "application/json",
                                                       **headers}, timeout=10)

    def post_github(self, service: Service, payload: dict[str, Any] | bytes, *,
                    event: str = "push", delivery: str | None = None,
                    secret: str = SECRETS["GH_SECRET"], signature: str | None = None,
                    no_delivery: bool = False) -> requests.Response:
        """A signed GitHub webhook. `signature` replays a captured one as it was;
        `no_delivery` leaves the X-GitHub-Delivery header out."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"X-GitHub-Event": event,
                   "X-Hub-Signature-256": signature or sign(secret, body)}
        if not no_delivery:
            headers["X-GitHub-Delivery"] = delivery or hashlib.sha256(body).hexdigest()[:32]
        return self.post(service, "github", body, headers)


def kill_if_ours(pid: int, marker: str) -> None:
    """Stop a recorder a killed service left behind; check the cmdline so a reused PID is
    never signalled."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return
    if marker in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    world = Harness(tmp_path, GitRemote.create(tmp_path))
    world.set_recorder()
    try:
        yield world
    finally:
        world.stop_all()
        world.http.close()


# ---- a tiny fake Jenkins ----------------------------------------------------------------------

Route = Callable[["FakeJenkins", BaseHTTPRequestHandler, bytes], tuple[int, dict[str, str], bytes]]


class FakeJenkins:
    """Answers the few Jenkins endpoints the service uses; records every request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                owner.requests.append({"method": self.command, "path": path,
                                       "headers": dict(self.headers), "body": body})
                route = owner.routes.get((self.command, path))
                status, headers, payload = (route(owner, self, body) if route
                                            else (404, {}, b"not found"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={
            "poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def route(self, method: str, path: str, status: int = 200, body: bytes | dict[str, Any] = b"",
              headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode() if isinstance(body, dict) else body

        def fixed(_j: FakeJenkins, _h: BaseHTTPRequestHandler,
                  _b: bytes) -> tuple[int, dict[str, str], bytes]:
            return status, dict(headers or {}), payload

        self.routes[(method, path)] = fixed

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def fake_jenkins() -> Iterator[FakeJenkins]:
    jenkins = FakeJenkins()
    try:
        yield jenkins
    finally:
        jenkins.stop()
