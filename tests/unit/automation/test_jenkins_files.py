"""The Jenkinsfile, the freestyle job, the systemd units and the README agree with each other."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bluegreen.automation.cli import add_commands
from bluegreen.automation.settings import load_settings

ROOT = Path(__file__).resolve().parents[3]
JENKINSFILE = ROOT / "Jenkinsfile"
FREESTYLE = ROOT / "jenkins" / "freestyle-config.xml"
SYSTEMD = ROOT / "deploy" / "systemd"
DEPLOY = re.compile(r"fab deploy --[^'\n]*")


def deploy_commands(text: str) -> set[str]:
    return {" ".join(m.group(0).split()) for m in DEPLOY.finditer(text)}


@pytest.fixture(scope="module")
def job() -> ET.Element:
    return ET.parse(FREESTYLE).getroot()  # noqa: S314 - our own file, not untrusted input


def shell_steps(job: ET.Element) -> list[str]:
    return [el.text or "" for el in job.iterfind("./builders/hudson.tasks.Shell/command")]


def test_freestyle_job_polls_scm_and_has_the_generic_trigger(job: ET.Element) -> None:
    assert job.tag == "project"
    assert job.find("./scm").get("class") == "hudson.plugins.git.GitSCM"  # type: ignore[union-attr]
    assert job.findtext("./scm/branches/hudson.plugins.git.BranchSpec/name") == "${ref}"
    assert job.findtext("./triggers/hudson.triggers.SCMTrigger/spec") == "H/2 * * * *"
    gwt = job.find("./triggers/org.jenkinsci.plugins.gwt.GenericTrigger")
    assert gwt is not None
    variable = gwt.find("./genericVariables/org.jenkinsci.plugins.gwt.GenericVariable")
    assert variable is not None
    assert (variable.findtext("key"), variable.findtext("value")) == ("ref", "$.ref")
    assert gwt.findtext("regexpFilterText") == "$ref"
    assert gwt.findtext("tokenCredentialId")
    assert job.findtext("./concurrentBuild") == "false"
    param = job.find(".//hudson.model.StringParameterDefinition")
    assert param is not None and param.findtext("name") == "ref"
    assert param.findtext("defaultValue") == "refs/heads/main"


def test_freestyle_job_deploys_with_fab_and_shows_the_result(job: ET.Element) -> None:
    steps = shell_steps(job)
    assert len(steps) == 3
    assert "build.py" in steps[0] and "pytest" in steps[1]
    assert "fab deploy" in steps[2] and "fab status" in steps[2]
    assert job.findtext("./publishers/hudson.tasks.ArtifactArchiver/artifacts") == (
        "dist/demo-*.tar.gz")


def groovy_value(text: str, name: str) -> str:
    match = re.search(rf"{name}:\s*'([^']*)'", text)
    assert match, f"{name} not found in the Jenkinsfile"
    return match.group(1)


def test_jenkinsfile_has_the_triggers_options_stages_and_post_step() -> None:
    text = JENKINSFILE.read_text()
    assert "pollSCM('H/2 * * * *')" in text
    assert "GenericTrigger(" in text
    assert "genericVariables: [[key: 'ref', value: '$.ref']]" in text
    assert groovy_value(text, "regexpFilterText") == "$ref"
    assert "disableConcurrentBuilds()" in text
    stages = re.findall(r"stage\('([^']+)'\)", text)
    assert stages == ["build", "test", "deploy"]
    post = text[text.index("post {"):]
    assert "fab status" in post
    # Groovy must never interpolate webhook data into a script: sh steps are single-quoted.
    assert not re.search(r'\bsh\s+"', text) and not re.search(r'\bsh\s+"""', text)


def test_jenkinsfile_and_freestyle_job_use_the_same_triggers(job: ET.Element) -> None:
    text = JENKINSFILE.read_text()
    gwt = job.find("./triggers/org.jenkinsci.plugins.gwt.GenericTrigger")
    assert gwt is not None
    expression = groovy_value(text, "regexpFilterExpression")
    assert expression == gwt.findtext("regexpFilterExpression")
    assert groovy_value(text, "tokenCredentialId") == gwt.findtext("tokenCredentialId")
    pattern = re.compile(expression)
    assert pattern.search("refs/heads/main") and pattern.search("refs/heads/feature/login-2")
    for ref in ("refs/heads/mainx", "refs/tags/v1", "refs/heads/feature/$(touch${IFS}x)"):
        assert not pattern.search(ref), ref


def test_jenkinsfile_freestyle_job_and_guide_say_the_same_deploy_command(job: ET.Element) -> None:
    from_jenkinsfile = deploy_commands(JENKINSFILE.read_text())
    from_freestyle = deploy_commands("\n".join(shell_steps(job)))
    from_guide = deploy_commands((ROOT / "jenkins" / "README.md").read_text())
    assert len(from_jenkinsfile) == 1
    assert from_jenkinsfile == from_freestyle == from_guide
    command = next(iter(from_jenkinsfile))
    assert '--version "$GIT_COMMIT"' in command and "--artifact" in command


def test_readme_says_the_same_deploy_command() -> None:
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not written yet")
    expected = deploy_commands(JENKINSFILE.read_text())
    assert expected <= deploy_commands(readme.read_text())


def unit_lines(name: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), value.strip())
    return values


@pytest.mark.parametrize("unit, command", [("bluegreen-serve.service", "serve"),
                                           ("bluegreen-poll.service", "poll")])
def test_systemd_units_run_the_real_commands(unit: str, command: str) -> None:
    values = unit_lines(unit)
    argv = shlex.split(values["ExecStart"])
    assert Path(argv[0]).name == "bluegreen" and argv[1] == command
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv[1:])
    assert args.automation_config == "/etc/bluegreen/automation.toml"
    assert values["KillMode"] == "mixed"
    assert values["StateDirectory"] == "bluegreen-automation"


def test_serve_unit_waits_longer_than_the_shutdown_grace() -> None:
    grace = load_settings(ROOT / "examples" / "automation.toml").service.shutdown_grace
    assert float(unit_lines("bluegreen-serve.service")["TimeoutStopSec"]) > grace


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = [str(SYSTEMD / "bluegreen-serve.service"), str(SYSTEMD / "bluegreen-poll.service")]
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path, check=False)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "is not executable" not in line]  # /opt/bluegreen absent
    assert problems == []
