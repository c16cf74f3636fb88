"""The whole automatic path for real, with no stand-in anywhere.

A bare git repository holds the demo app's sources; a developer clone commits and pushes to
it; the real `bluegreen serve` (the installed console script, on a loopback port) receives a
signed GitHub push webhook; its worker checks out the pushed commit, runs the build command
from automation.toml, and runs the real `python -m bluegreen deploy` against a bluegreen.toml
for the `local` host behind a private nginx. The proof is the traffic: nginx serves the
pushed commit's version. A failing build must leave traffic where it was.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from testkit.nginx import PrivateNginx
from testkit.project import Project
from tests.integration.automation.conftest import (
    PY,
    Harness,
    Service,
    git,
    github_payload,
    wait_for,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "examples" / "demo"
BLUEGREEN = str(Path(PY).parent / "bluegreen")  # the console script pyproject installs
PUSHER = "alice-dev"
# Everything about the commit reaches the build through the environment, never the string.
BUILD_COMMAND = 'python3 build.py "$BLUEGREEN_COMMIT" --out dist'
# Bounds: one deploy of the demo app takes ~1-2 s here; the rest is slack for slow CI.
JOB_TIMEOUT = 30.0
TRAFFIC_TIMEOUT = 15.0


@dataclass
class World:
    harness: Harness
    project: Project
    front: requests.Session

    @property
    def work(self) -> Path:
        return self.harness.remote.work

    def commit_and_push(self, message: str) -> str:
        """Commit whatever the work tree holds now (plus a line that makes the commit new)
        and push it to the bare remote for real."""
        with (self.work / "CHANGES").open("a") as changes:
            changes.write(message + "\n")
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        return self.harness.remote.push("main")

    def front_version(self) -> str | None:
        try:
            reply = self.front.get(self.project.nginx.url("/"), timeout=2)
        except requests.RequestException:
            return None
        return reply.headers.get("X-App-Version") if reply.status_code == 200 else None

    def wait_traffic(self, sha: str) -> None:
        wait_for(f"nginx to serve {sha[:12]}", lambda: self.front_version() == sha,
                 timeout=TRAFFIC_TIMEOUT)

    def deploy_history(self) -> list[dict[str, Any]]:
        return list(self.project.status()["history"])


def start_serve(harness: Harness) -> Service:
    """`bluegreen serve` through the installed entry point (what the systemd unit runs),
    registered with the harness so its teardown stops it by PID."""
    log_path = harness.root / f"serve-{len(harness.services)}.log"
    runtime = harness.state_dir / "serve.json"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([BLUEGREEN, "serve", "--config", str(harness.config_path),
                                 "--log-level", "DEBUG"], cwd=harness.root, env=harness.env(),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    service = Service(proc, "", log_path)
    harness.services.append(service)

    def ready() -> str:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}:\n{service.log()}")
        with contextlib.suppress(FileNotFoundError, ValueError):
            data = json.loads(runtime.read_text())
            if data.get("pid") == proc.pid:  # not a stale file from an earlier run
                return str(data["url"])
        return ""

    service.url = wait_for("serve to listen", ready, timeout=20)
    return service


@pytest.fixture
def world(harness: Harness, private_nginx: PrivateNginx, tmp_path: Path) -> Iterator[World]:
    # The app's own bluegreen.toml, exactly as a user writes it (host `local`).
    project = Project(tmp_path / "app", private_nginx, {}, 'app = ["local"]').write()
    # The developer's repository: the demo app's sources, as they are in this repo.
    shutil.copytree(DEMO / "app", harness.remote.work / "app")
    shutil.copy2(DEMO / "build.py", harness.remote.work / "build.py")
    rule = harness.build_rule(build_command=BUILD_COMMAND, artifact="dist/demo-*.tar.gz",
                              config=str(project.dir / "bluegreen.toml"))
    del rule["deploy_command"]  # the built-in default: the real `python -m bluegreen deploy`
    harness.write_config([rule])
    front = requests.Session()
    front.trust_env = False  # loopback only: never through a proxy from the environment
    try:
        yield World(harness, project, front)
    finally:
        # The service first, so that no job can start a slot after the slots are stopped.
        harness.stop_all()
        project.stop_everything()
        front.close()


def test_pushes_deploy_for_real_and_a_failing_build_changes_nothing(world: World) -> None:
    harness = world.harness
    service = start_serve(harness)

    # ---- first push: nothing was live; afterwards nginx serves this commit
    first = world.commit_and_push("demo app")
    reply = harness.post_github(service, github_payload("main", first, pusher=PUSHER))
    assert reply.status_code == 202, reply.text
    first_job = harness.wait_job(reply.json()["job"], timeout=JOB_TIMEOUT)
    assert first_job.state == "succeeded", (first_job.summary, first_job.log_tail,
                                            service.log())
    world.wait_traffic(first)

    # ---- second push: traffic moves to the new commit
    (world.work / "app" / "app.py").write_text(
        (world.work / "app" / "app.py").read_text() + "\n# second release\n")
    second = world.commit_and_push("second release")
    reply = harness.post_github(service, github_payload("main", second, pusher=PUSHER))
    assert reply.status_code == 202, reply.text
    second_job = harness.wait_job(reply.json()["job"], timeout=JOB_TIMEOUT)
    assert second_job.state == "succeeded", (second_job.summary, second_job.log_tail)
    world.wait_traffic(second)

    # The job ran the real deploy, with the built artifact of exactly that commit.
    argv = second_job.deploy_argv or []
    # {python} is the service's own interpreter (the console script's python3 shebang)
    assert Path(argv[0]).parent == Path(PY).parent
    assert argv[1:4] == ["-m", "bluegreen", "deploy"]
    assert argv[argv.index("--version") + 1] == second
    assert argv[argv.index("--who") + 1] == f"github:{PUSHER}"
    assert Path(argv[argv.index("--artifact") + 1]).name == f"demo-{second}.tar.gz"

    # ---- the service's view: GET /jobs and `bluegreen jobs --json`
    listed = harness.http.get(f"{service.url}/jobs", timeout=5).json()
    by_id = {job["id"]: job for job in listed["jobs"]}
    for job, sha in ((first_job, first), (second_job, second)):
        assert by_id[job.id]["state"] == "succeeded"
        assert (by_id[job.id]["sha"], by_id[job.id]["who"]) == (sha, f"github:{PUSHER}")
    history = subprocess.run([BLUEGREEN, "jobs", "--json", "--config",
                              str(harness.config_path)], env=harness.env(),
                             capture_output=True, text=True, timeout=30, check=True)
    finished = {job["sha"]: job for job in json.loads(history.stdout)}
    assert finished[first]["state"] == finished[second]["state"] == "succeeded"

    # ---- the app's view: the deploy history records who and what
    deploys = world.deploy_history()
    assert [(h["action"], h["result"]) for h in deploys] == [("deploy", "ok")] * 2
    assert [h["version"] for h in deploys] == [first, second]
    assert all(h["who"] == f"github:{PUSHER}" for h in deploys)
    assert [h["commit"] for h in deploys] == [first, second]  # from BLUEGREEN_COMMIT

    # ---- a commit whose build exits 1: the job fails, traffic and history stay put
    (world.work / "build.py").write_text(
        'import sys\nprint("build: compile error", file=sys.stderr)\nsys.exit(1)\n')
    broken = world.commit_and_push("broken build")
    reply = harness.post_github(service, github_payload("main", broken, pusher=PUSHER))
    assert reply.status_code == 202, reply.text
    broken_job = harness.wait_job(reply.json()["job"], timeout=JOB_TIMEOUT)
    assert broken_job.state == "failed"
    assert broken_job.summary == "build failed (exit 1)" and broken_job.exit_code == 1
    assert "build: compile error" in broken_job.log_tail
    assert broken_job.deploy_argv is None  # the deploy never ran
    assert world.front_version() == second
    assert len(world.deploy_history()) == 2
    assert world.project.status()["live"] == "green"  # first deploy blue, second green


def test_automatic_deploys_respect_a_rollback_until_a_person_allows_it(world: World) -> None:
    """Issue 10: after `fab rollback`, the webhook service does not deploy the rolled-back
    commit, nor an ancestor of it, until `bluegreen release allow` (or a deploy by hand).
    Here B2 reached production outside the service (a Jenkins pipeline's `fab deploy`),
    so only the app's deploy history can tell the service that B2 was rolled back."""
    harness = world.harness
    service = start_serve(harness)
    base = world.commit_and_push("demo app")
    reply = harness.post_github(service, github_payload("main", base, pusher=PUSHER))
    assert harness.wait_job(reply.json()["job"], timeout=JOB_TIMEOUT).state == "succeeded"
    world.wait_traffic(base)

    # Two commits pushed together; a pipeline deploys the tip by hand, and it is bad.
    b1 = world.commit_and_push("b1")
    b2 = world.commit_and_push("b2")
    dist = harness.root / "pipeline-dist"
    subprocess.run([PY, "build.py", b2, "--out", str(dist)], cwd=world.work, check=True,
                   capture_output=True, timeout=60)
    world.project.fab("deploy", "--artifact", str(dist / f"demo-{b2}.tar.gz"), "--version",
                      b2, env={"GIT_COMMIT": b2, "BLUEGREEN_WHO": "jenkins:pipeline#7"})
    world.wait_traffic(b2)
    world.project.fab("rollback", env={"BLUEGREEN_WHO": "ops@laptop"})
    world.wait_traffic(base)

    # B2's webhook arrives late (a redelivery, a queue backlog): B2 is the branch tip and
    # this lane never deployed it, so only the rollback stands in the way.
    late = harness.post_github(service, github_payload("main", b2, pusher=PUSHER),
                               delivery="late-b2")
    job = harness.wait_job(late.json()["job"], timeout=JOB_TIMEOUT)
    assert job.state == "skipped", (job.summary, job.log_tail)
    assert f"{b2[:12]} was rolled back in demo/production" in job.summary
    assert "ops@laptop" in job.summary and f"bluegreen release allow {b2[:12]}" in job.summary
    assert world.front_version() == base

    # The branch is force-pushed back to B1: the tip again, never deployed, and not behind
    # what the lane deployed (base) - but an ancestor of the rolled-back B2.
    git("push", "-q", "--force", "origin", f"{b1}:refs/heads/main", cwd=world.work)
    back = harness.post_github(service, github_payload("main", b1, pusher=PUSHER),
                               delivery="forced-b1")
    job = harness.wait_job(back.json()["job"], timeout=JOB_TIMEOUT)
    assert job.state == "skipped", (job.summary, job.log_tail)
    assert f"{b1[:12]} is an ancestor of {b2[:12]}, which was rolled back" in job.summary
    assert world.front_version() == base

    listed = harness.cli("release", "list")
    assert listed.returncode == 0 and b2[:12] in listed.stdout, listed.stderr

    # A person allows B2 again; the next push of it deploys.
    git("push", "-q", "--force", "origin", f"{b2}:refs/heads/main", cwd=world.work)
    allowed = harness.cli("release", "allow", b2[:10])
    assert allowed.returncode == 0, allowed.stderr
    assert f"allowed {b2[:12]}" in allowed.stdout
    again = harness.post_github(service, github_payload("main", b2, pusher=PUSHER),
                                delivery="after-allow")
    job = harness.wait_job(again.json()["job"], timeout=JOB_TIMEOUT)
    assert job.state == "succeeded", (job.summary, job.log_tail)
    world.wait_traffic(b2)
    assert harness.cli("release", "list").stdout.startswith("no rolled-back commits")
    actions = [(h["action"], h["result"]) for h in world.deploy_history()]
    assert actions == [("deploy", "ok"), ("deploy", "ok"), ("rollback", "ok"), ("deploy", "ok")]
