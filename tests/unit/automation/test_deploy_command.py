"""The deploy subprocess's argv and environment."""

from __future__ import annotations

import sys

from bluegreen.automation.deploy_command import (
    DEPLOY_PLACEHOLDERS,
    child_env,
    render_argv,
    unknown_placeholders,
)
from bluegreen.automation.rules import DEFAULT_DEPLOY_COMMAND


def test_default_argv_is_the_core_contract() -> None:
    argv = render_argv(DEFAULT_DEPLOY_COMMAND, config="/etc/demo.toml", artifact="/a/demo.tgz",
                       version="abc123", who="github:octocat")
    assert argv == [sys.executable, "-m", "bluegreen", "deploy", "--config", "/etc/demo.toml",
                    "--artifact", "/a/demo.tgz", "--version", "abc123", "--who",
                    "github:octocat"]


def test_substitution_is_single_pass_so_values_stay_literal() -> None:
    argv = render_argv(["x", "--who={who}", "{artifact}"], config="c", artifact="/a",
                       version="v", who="{artifact} $(touch /tmp/pwned); {config}")
    assert argv == ["x", "--who={artifact} $(touch /tmp/pwned); {config}", "/a"]


def test_unknown_placeholders_are_reported() -> None:
    assert unknown_placeholders(["{config}", "{branch}", "{sha}x"], DEPLOY_PLACEHOLDERS) == [
        "branch", "sha"]
    assert unknown_placeholders(DEFAULT_DEPLOY_COMMAND, DEPLOY_PLACEHOLDERS) == []


def test_child_env_adds_job_facts_and_withholds_service_secrets() -> None:
    base = {"PATH": "/usr/bin", "GH_SECRET": "s", "JENKINS_TOKEN": "t",
            "BLUEGREEN_BUILD_URL": "stale", "HOME": "/home/x"}
    env = child_env(base, job_id=7, commit="abc", branch="feat/$(x)", repo="acme/demo",
                    withheld=["GH_SECRET", "JENKINS_TOKEN"])
    assert env["BLUEGREEN_JOB_ID"] == "7"
    assert env["BLUEGREEN_COMMIT"] == "abc"
    assert env["BLUEGREEN_BRANCH"] == "feat/$(x)"
    assert env["BLUEGREEN_REPO"] == "acme/demo"
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert "GH_SECRET" not in env and "JENKINS_TOKEN" not in env
    assert "BLUEGREEN_BUILD_URL" not in env  # unknown for this job: no stale value leaks in
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/x"
    with_url = child_env(base, job_id=1, commit="", branch="", build_url="http://j/1/")
    assert with_url["BLUEGREEN_BUILD_URL"] == "http://j/1/"
