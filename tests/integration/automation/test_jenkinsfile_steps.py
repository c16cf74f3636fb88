"""The Jenkinsfile's and the freestyle job's shell steps, run the way Jenkins runs them.

No Jenkins here, but everything a Jenkins agent would hand those steps: a workspace that is a
git checkout of this repository, the environment variables Jenkins sets (GIT_COMMIT,
BUILD_NUMBER, BUILD_URL, JOB_NAME, JENKINS_URL, WORKSPACE, ...), and each step's text run as
`sh -xe <script file>` in that workspace, in the order the job runs them. The deploy goes to
a private nginx on loopback, so the test proves that the commands in the job definitions
really build, deploy and report - and that the deploy records the Jenkins build.

Two steps are replaced, each by exact text (a changed step fails the test loudly instead of
being silently skipped):
  - `python3 -m venv .venv && .venv/bin/pip install ...`: recreating the venv would write into
    the project's shared .venv (the workspace's .venv links to it) and needs PyPI. It is
    replaced by a check that the venv it would build has what the later steps use.
  - `.venv/bin/python -m pytest -q tests/unit`: running the unit suite from inside the suite
    is slow and recursive; the same command runs on one small unit test file instead.
Everything else - build, archive pattern, the `fab deploy` line, `fab status` - runs as written.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from bluegreen import config as config_mod
from testkit.nginx import PrivateNginx
from testkit.ports import free_port
from testkit.procs import stop_pid
from tests.integration.automation.conftest import git

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
JENKINSFILE = ROOT / "Jenkinsfile"
FREESTYLE = ROOT / "jenkins" / "freestyle-config.xml"
VENV = ROOT / ".venv"
STEP_TIMEOUT = 120.0

VENV_STEP = 'python3 -m venv .venv && .venv/bin/pip install --quiet -e ".[dev]"'
VENV_CHECK = 'test -x .venv/bin/fab && .venv/bin/python -c "import bluegreen, fabric"'
UNIT_STEP = ".venv/bin/python -m pytest -q tests/unit"
UNIT_CHEAP = (".venv/bin/python -m pytest -q -p no:cacheprovider "
              "tests/unit/automation/test_jsonpath.py")
SUBSTITUTES = {VENV_STEP: VENV_CHECK, UNIT_STEP: UNIT_CHEAP}


# ---- reading the job definitions ----------------------------------------------------------

@dataclass(frozen=True)
class ShStep:
    section: str  # the stage name, or "post"
    script: str


def _groovy_unescape(text: str) -> str:
    # Single-quoted Groovy strings know only \\ and \' (and \n etc., unused in sh steps).
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text)


def _code(text: str) -> str:
    """The Jenkinsfile without `//` comment lines, which talk about sh steps too."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


def jenkinsfile_sh_steps(text: str) -> list[ShStep]:
    code = _code(text)
    markers = [(m.start(), m.group(1)) for m in re.finditer(r"\bstage\('([^']+)'\)", code)]
    markers += [(m.start(), "post") for m in re.finditer(r"(?m)^\s*post\s*\{", code)]
    markers.sort()
    steps = []
    for m in re.finditer(r"\bsh\s+(?:'''(.*?)'''|'((?:[^'\\\n]|\\.)*)')", code, re.S):
        section = [name for pos, name in markers if pos < m.start()]
        assert section, f"sh step outside any stage: {m.group(0)!r}"
        script = m.group(1) if m.group(1) is not None else m.group(2)
        steps.append(ShStep(section[-1], _groovy_unescape(script)))
    return steps


def jenkinsfile_environment(text: str) -> dict[str, str]:
    block = re.search(r"(?ms)^\s*environment\s*\{(.*?)\}", _code(text))
    assert block, "no environment block in the Jenkinsfile"
    return dict(re.findall(r"(\w+)\s*=\s*'([^']*)'", block.group(1)))


def archive_pattern(text: str) -> str:
    found = re.search(r"archiveArtifacts\s+artifacts:\s*'([^']+)'", _code(text))
    assert found, "no archiveArtifacts step in the Jenkinsfile"
    return found.group(1)


def substituted(script: str, used: set[str]) -> str:
    """The script with each line that is exactly a SUBSTITUTES key replaced; `used` collects
    the keys found, so that a reworded step shows up as a stale substitute, not a skip."""
    lines = []
    for line in script.splitlines():
        if line.strip() in SUBSTITUTES:
            used.add(line.strip())
            line = line.replace(line.strip(), SUBSTITUTES[line.strip()])
        lines.append(line)
    return "\n".join(lines)


# ---- a Jenkins-like agent ------------------------------------------------------------------

@dataclass
class Agent:
    """One job's workspace, the environment Jenkins gives its steps, and the nginx in front."""

    workspace: Path
    srv: Path
    nginx: PrivateNginx
    blue: int
    green: int
    control_port: int  # lua mode's control listener; set in reload mode too, unused there
    front: requests.Session

    def config_overrides(self) -> dict[str, str]:
        """BLUEGREEN__SECTION__KEY variables that point examples/demo/bluegreen.toml (the
        job's BLUEGREEN_CONFIG) at this test's nginx, ports and directories instead of the
        demo's, exactly as an operator would adapt it on an agent."""
        return {
            "BLUEGREEN__PATHS__ROOT": str(self.srv),
            "BLUEGREEN__SLOTS__BLUE": str(self.blue),
            "BLUEGREEN__SLOTS__GREEN": str(self.green),
            "BLUEGREEN__NGINX__COMMAND": self.nginx.cmd_prefix,
            "BLUEGREEN__NGINX__TARGET": f"{self.nginx.conf_dir}/{{app}}.conf",
            "BLUEGREEN__NGINX__LISTEN": f"127.0.0.1:{self.nginx.port}",
            "BLUEGREEN__NGINX__ERROR_LOG": str(self.nginx.error_log),
            "BLUEGREEN__NGINX__PID_FILE": str(self.nginx.pid_file),
            "BLUEGREEN__NGINX__CONTROL_PORT": str(self.control_port),
            "BLUEGREEN__NGINX__DRAIN_TIMEOUT": "5",
            "BLUEGREEN__HEALTH__TIMEOUT": "15",
        }

    def env(self, *, commit: str, build_number: int, job: str, ref: str,
            extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # A clean environment like an agent's, not the test runner's: nothing of ours (no
        # PYTHONPATH, no BLUEGREEN_* from a developer shell, no proxy) may make it work.
        base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
                if k in os.environ}
        jenkins_url = "http://127.0.0.1:9/"  # never contacted; loopback discard port
        job_path = "".join(f"job/{part}/" for part in job.split("/"))
        env = {
            **base,
            "CI": "true",
            "JENKINS_URL": jenkins_url,
            "JOB_NAME": job,
            "JOB_BASE_NAME": job.rsplit("/", 1)[-1],
            "JOB_URL": f"{jenkins_url}{job_path}",
            "BUILD_NUMBER": str(build_number),
            "BUILD_ID": str(build_number),
            "BUILD_TAG": f"jenkins-{job.replace('/', '-')}-{build_number}",
            "BUILD_URL": f"{jenkins_url}{job_path}{build_number}/",
            "NODE_NAME": "built-in",
            "EXECUTOR_NUMBER": "0",
            "WORKSPACE": str(self.workspace),
            "GIT_COMMIT": commit,
            "GIT_BRANCH": "origin/" + ref.removeprefix("refs/heads/"),
            "GIT_URL": "https://git.example.com/acme/bluegreen.git",
            "ref": ref,  # the Generic Webhook Trigger's variable / the job parameter
            **self.config_overrides(),
        }
        env.update(extra or {})
        return env

    def sh(self, script: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        """What the Jenkins `sh` step and the freestyle Shell builder do: write the script
        to a file and run `/bin/sh -xe` on it in the workspace."""
        script_file = self.workspace.parent / "workspace@tmp" / "script.sh"
        script_file.parent.mkdir(exist_ok=True)
        script_file.write_text(script + "\n")
        return subprocess.run(["/bin/sh", "-xe", str(script_file)], cwd=self.workspace,
                              env=dict(env), capture_output=True, text=True,
                              timeout=STEP_TIMEOUT, stdin=subprocess.DEVNULL, check=False)

    def commit(self, message: str) -> str:
        """A new commit in the workspace, like the next push Jenkins checks out."""
        with (self.workspace / "CI-CHANGES").open("a") as changes:
            changes.write(message + "\n")
        git("add", "-A", cwd=self.workspace)
        git("commit", "-q", "-m", message, cwd=self.workspace)
        return git("rev-parse", "HEAD", cwd=self.workspace)

    def front_version(self) -> str | None:
        try:
            reply = self.front.get(self.nginx.url("/"), timeout=5)
        except requests.RequestException:
            return None
        return reply.headers.get("X-App-Version") if reply.status_code == 200 else None

    def status(self, env: Mapping[str, str]) -> dict[str, Any]:
        done = subprocess.run([str(VENV / "bin" / "fab"), "status", "--json"],
                              cwd=self.workspace, env=dict(env), capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return dict(json.loads(done.stdout))

    def stop_slots(self) -> None:
        """Stop what the deploys started, by the PIDs in their pidfiles."""
        for pidfile in self.srv.glob("**/slots/*/pid"):
            try:
                pid = int(pidfile.read_text().split()[0])
            except (ValueError, IndexError, OSError):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, 15)
                stop_pid(pid, timeout=5)


def make_workspace(dest: Path) -> str:
    """A checkout of this repository as Jenkins' Git step leaves it; returns its commit.

    The files are the ones git would check out (tracked, plus new ones not ignored, so the
    test sees the tree as it is now); .venv links to the project's venv (see SUBSTITUTES).
    """
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True,
                            timeout=30, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_symlink():  # git checks a link out as a link (bluegreen/templates)
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).symlink_to(os.readlink(source))
        elif source.is_file():  # listed but deleted meanwhile: not in the checkout either
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / ".venv").symlink_to(VENV, target_is_directory=True)
    git("init", "-q", "--initial-branch=main", str(dest))
    git("add", "-A", cwd=dest)
    git("commit", "-q", "-m", "workspace", cwd=dest)
    return git("rev-parse", "HEAD", cwd=dest)


def demo_nginx_mode() -> str:
    """nginx.mode of the config both jobs deploy with (the demo's): `lua` switching needs an
    nginx with the lua module loaded, so the test picks its nginx to match."""
    path = ROOT / jenkinsfile_environment(JENKINSFILE.read_text())["BLUEGREEN_CONFIG"]
    return str(tomllib.loads(path.read_text()).get("nginx", {}).get("mode", "reload"))


@pytest.fixture
def agent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Agent]:
    if not (VENV / "bin" / "fab").exists():
        pytest.skip(f"no venv with fab at {VENV} (make setup)")
    nginx: PrivateNginx = request.getfixturevalue(
        "private_nginx_lua" if demo_nginx_mode() == "lua" else "private_nginx")
    workspace = tmp_path / "jenkins" / "workspace"
    workspace.mkdir(parents=True)
    front = requests.Session()
    front.trust_env = False  # loopback only: never through a proxy from the environment
    worker = Agent(workspace, tmp_path / "srv", nginx, free_port(), free_port(), free_port(),
                   front)
    try:
        yield worker
    finally:
        worker.stop_slots()
        front.close()


# Every key of the demo config that names something shared on this machine (`make demo`'s
# nginx, its ports, /tmp/bluegreen-demo): the test's overrides must replace each one.
SHARED_KEYS = (("paths", "root"), ("slots", "blue"), ("slots", "green"), ("nginx", "command"),
               ("nginx", "target"), ("nginx", "listen"), ("nginx", "error_log"),
               ("nginx", "pid_file"), ("nginx", "control_port"))


def assert_config_is_private(agent: Agent, env: Mapping[str, str], config: str) -> None:
    """A run of this test must never touch the demo's nginx, ports or directories."""
    demo = config_mod.load(agent.workspace / config, environ={})  # file + built-in defaults
    effective = config_mod.load(agent.workspace / config, environ=env)
    for section, key in SHARED_KEYS:
        value = getattr(getattr(effective, section), key)
        assert value != getattr(getattr(demo, section), key), f"{section}.{key} = {value!r}"
    assert [h.address for h in effective.hosts.app] == ["local"]
    assert {effective.slots.blue, effective.slots.green} == {agent.blue, agent.green}
    assert effective.nginx.listen == f"127.0.0.1:{agent.nginx.port}"


def assert_deploy_recorded(agent: Agent, env: Mapping[str, str], commit: str) -> None:
    assert agent.front_version() == commit
    last = agent.status(env)["history"][-1]
    assert (last["action"], last["result"], last["version"]) == ("deploy", "ok", commit)
    assert last["who"] == f"jenkins:{env['JOB_NAME']}#{env['BUILD_NUMBER']}"
    assert last["build_url"] == env["BUILD_URL"]
    assert last["commit"] == commit


# ---- the tests ------------------------------------------------------------------------------

def run_pipeline(agent: Agent, env: Mapping[str, str]) -> list[tuple[ShStep, str]]:
    """Run the Jenkinsfile's sh steps in order, like a declarative pipeline: the first failing
    step stops the stages, the post step runs anyway. Returns (step, output) pairs."""
    text = JENKINSFILE.read_text()
    steps = jenkinsfile_sh_steps(text)
    used: set[str] = set()
    ran: list[tuple[ShStep, str]] = []
    failed: tuple[ShStep, subprocess.CompletedProcess[str]] | None = None
    for step in steps:
        if failed is not None and step.section != "post":
            continue
        done = agent.sh(substituted(step.script, used), env)
        ran.append((step, done.stdout + done.stderr))
        if done.returncode != 0 and step.section != "post":
            failed = (step, done)
    assert used == set(SUBSTITUTES), f"stale substitutes: {set(SUBSTITUTES) - used}"
    if failed is not None:
        step, done = failed
        raise AssertionError(f"step in stage {step.section!r} failed ({done.returncode}): "
                             f"{step.script}\n{done.stdout}\n{done.stderr}")
    return ran


def test_jenkinsfile_sh_steps_build_deploy_and_record_the_jenkins_build(agent: Agent) -> None:
    text = JENKINSFILE.read_text()
    steps = jenkinsfile_sh_steps(text)
    # The shape this test relies on: build, test, deploy, then the post step.
    assert [s.section for s in steps] == ["build", "build", "test", "deploy", "post"]
    assert "fab deploy" in steps[3].script and "fab status" in steps[4].script
    # The deploy stage runs for main only; every run here is a main build.
    when = _code(text)[_code(text).index("stage('deploy')"):]
    assert "== 'refs/heads/main'" in when[:when.index("steps")]
    environment = jenkinsfile_environment(text)
    assert "BLUEGREEN_CONFIG" in environment

    job = "demo/build-and-deploy"  # a job in a folder: JOB_NAME carries the folder
    builds: list[str] = []
    for number, message in ((41, None), (42, "next push")):
        commit = (make_workspace(agent.workspace) if message is None
                  else agent.commit(message))
        env = agent.env(commit=commit, build_number=number, job=job, ref="refs/heads/main",
                        extra=environment)
        if message is None:
            assert_config_is_private(agent, env, environment["BLUEGREEN_CONFIG"])
        ran = run_pipeline(agent, env)
        # archiveArtifacts fails a Jenkins build whose pattern matches nothing; it must
        # archive this build's tarball.
        archived = glob.glob(str(agent.workspace / archive_pattern(text)))
        assert str(agent.workspace / "dist" / f"demo-{commit}.tar.gz") in archived
        assert_deploy_recorded(agent, env, commit)
        post_output = ran[-1][1]
        assert "app demo: live slot" in post_output
        assert f"jenkins:{job}#{number}" in post_output
        builds.append(commit)
    # The second build moved traffic off the first build's commit.
    assert agent.front_version() == builds[1] != builds[0]


def freestyle_steps() -> list[str]:
    root = ET.parse(FREESTYLE).getroot()  # noqa: S314 - our own file, not untrusted input
    return [el.text or "" for el in root.iterfind("./builders/hudson.tasks.Shell/command")]


def test_freestyle_shell_steps_deploy_main_only_and_record_the_build(agent: Agent) -> None:
    root = ET.parse(FREESTYLE).getroot()  # noqa: S314 - our own file
    pattern = root.findtext("./publishers/hudson.tasks.ArtifactArchiver/artifacts")
    assert pattern
    commit = make_workspace(agent.workspace)
    job = "demo-freestyle"

    def run_job(number: int, ref: str) -> list[str]:
        """The builders in order (a failing one fails the build and stops the rest)."""
        env = agent.env(commit=commit, build_number=number, job=job, ref=ref)
        used: set[str] = set()
        outputs: list[str] = []
        for command in freestyle_steps():
            done = agent.sh(substituted(command, used), env)
            outputs.append(done.stdout + done.stderr)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        assert used == set(SUBSTITUTES), f"stale substitutes: {set(SUBSTITUTES) - used}"
        assert str(agent.workspace / "dist" / f"demo-{commit}.tar.gz") in glob.glob(
            str(agent.workspace / pattern))
        return outputs

    # A feature branch: built and tested, never deployed.
    outputs = run_job(7, "refs/heads/feature/login")
    assert "built and tested, not deployed" in outputs[-1]
    assert "fab deploy" not in outputs[-1]  # `sh -x` would have traced it
    assert agent.front_version() is None and not agent.srv.exists()

    # main: deployed, and the EXIT trap shows the result.
    config = re.search(r"export BLUEGREEN_CONFIG=(\S+)", freestyle_steps()[-1])
    assert config, "the deploy step no longer exports BLUEGREEN_CONFIG"
    env = agent.env(commit=commit, build_number=8, job=job, ref="refs/heads/main",
                    extra={"BLUEGREEN_CONFIG": config.group(1)})
    assert_config_is_private(agent, env, config.group(1))
    outputs = run_job(8, "refs/heads/main")
    assert "app demo: live slot blue" in outputs[-1]
    assert_deploy_recorded(agent, env, commit)
