"""automation.toml: typed, fail-closed loading; rules and their matching."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from bluegreen.automation.events import BuildEvent, PushEvent
from bluegreen.automation.rules import match_rules, rule_matches
from bluegreen.automation.settings import (
    Settings,
    load_settings,
    parse_settings,
    resolve_secrets,
)
from bluegreen.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]
SHA = "c" * 40

BASE = """
[service]
state_dir = "state"
[secrets]
github = "GH_SECRET"
[[rules]]
name = "main"
repo = "acme/demo"
branch = "main"
app = "demo"
action = "build"
clone_url = "/srv/git/demo.git"
build_command = "make dist"
artifact = "dist/*.tar.gz"
config = "demo.toml"
"""


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "automation.toml"
    path.write_text(text)
    return load_settings(path)


def test_example_config_loads_and_every_poll_target_has_a_rule() -> None:
    settings = load_settings(REPO_ROOT / "examples" / "automation.toml")
    assert {r.action for r in settings.rules} == {"build", "jenkins", "deploy_artifact"}
    assert settings.polls and settings.polls[0].deploy_on_start is False
    assert settings.secret_envs["github"] == "BLUEGREEN_GITHUB_SECRET"


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    settings = load(tmp_path, BASE)
    assert settings.service.state_dir == tmp_path / "state"
    assert settings.rules[0].config == str(tmp_path / "demo.toml")
    assert settings.rules[0].lane == "demo/production"


@pytest.mark.parametrize("extra, key, problem", [
    ("[service]\nprot = 1\n", "service.prot", "unknown key"),
    ("[sevice]\n", "sevice", "unknown key"),
    ("[service]\nport = \"8080\"\n", "service.port", "expected an integer"),
    ("[service]\nport = 70000\n", "service.port", "1-65535"),
    ("[service]\nquiet_period = true\n", "service.quiet_period", "boolean"),
    ("[secrets]\ngithub = \"hunter2 with spaces\"\n", "secrets.github", "NAME of an environment"),
    ("[secrets]\nbitbucket = \"X\"\n", "secrets.bitbucket", "unknown key"),
    ("[generic]\nref = \"$..ref\"\n", "generic.ref", "cannot parse"),
    ("[jenkins]\nurl = \"jenkins.local\"\n", "jenkins.url", "http"),
])
def test_wrong_keys_and_types_name_the_key(tmp_path: Path, extra: str, key: str,
                                           problem: str) -> None:
    text = BASE.replace("[service]\nstate_dir = \"state\"\n", "").replace(
        "[secrets]\ngithub = \"GH_SECRET\"\n", "") + extra
    if "[service]" not in extra:
        text += "[service]\nstate_dir = \"state\"\n"
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert caught.value.key == key
    assert problem in caught.value.problem
    assert caught.value.source.endswith("automation.toml")


RULE_ERRORS = [
    ("action = \"build\"", "action = \"ship\"", "rules[0].action", "expected one of"),
    ("branch = \"main\"", "branch = \"(main\"", "rules[0].branch", "regular expression"),
    ("build_command = \"make dist\"", "build_command = []", "rules[0].build_command", "required"),
    ("clone_url = \"/srv/git/demo.git\"", "", "rules[0].clone_url", "required"),
    ("artifact = \"dist/*.tar.gz\"", "artifact = \"../x\"", "rules[0].artifact", "relative"),
    ("app = \"demo\"", "app = \"de mo\"", "rules[0].app", "letters"),
    ("name = \"main\"", "name = \"main\"\ndeploy_command = [\"x\", \"{branch}\"]",
     "rules[0].deploy_command", "unknown placeholder {branch}"),
    ("name = \"main\"", "name = \"main\"\nevents = [\"jenkins_build\"]", "rules[0].events",
     "acts on 'push'"),
    ("name = \"main\"", "name = \"main\"\nproviders = [\"svn\"]", "rules[0].providers", "svn"),
    ("name = \"main\"", "name = \"main\"\njob = \"x\"", "rules[0].job", "only deploy_artifact"),
]


@pytest.mark.parametrize("old, new, key, problem", RULE_ERRORS)
def test_rule_mistakes_are_config_errors(tmp_path: Path, old: str, new: str, key: str,
                                         problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BASE.replace(old, new))
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_poll_target_no_rule_matches_is_refused(tmp_path: Path) -> None:
    text = BASE + '[[poll]]\nremote = "/srv/git/demo.git"\nbranch = "dev"\nrepo = "acme/demo"\n'
    with pytest.raises(ConfigError, match="no rule matches") as caught:
        load(tmp_path, text)
    assert caught.value.key == "poll[0]"


def test_jenkins_rules_need_jenkins_settings(tmp_path: Path) -> None:
    text = BASE + ('[[rules]]\nname = "j"\nrepo = "acme/demo"\nbranch = "dev"\napp = "demo"\n'
                   'environment = "staging"\naction = "jenkins"\njenkins_job = "build"\n')
    with pytest.raises(ConfigError, match=r"jenkins\.url, jenkins\.user"):
        load(tmp_path, text)


def test_secrets_are_read_from_the_named_environment_variables(tmp_path: Path) -> None:
    settings = load(tmp_path, BASE)
    secrets = resolve_secrets(settings, {"GH_SECRET": "s3cret"})
    assert secrets.by_provider["github"].value == b"s3cret"
    with pytest.raises(ConfigError, match="GH_SECRET is not set") as caught:
        resolve_secrets(settings, {})
    assert "s3cret" not in str(caught.value)
    assert resolve_secrets(settings, {}, webhooks=False).by_provider == {}


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(tmp_path, "[service\n")


def _settings_with_rules(rules_toml: str) -> Settings:
    return parse_settings(tomllib.loads(rules_toml), "mem.toml", Path("/tmp"))


def test_rules_match_repo_case_insensitively_and_branch_as_full_regex() -> None:
    settings = _settings_with_rules(BASE.replace('branch = "main"', 'branch = "main|release/.+"'))
    rule = settings.rules[0]
    push = PushEvent(provider="github", repo="ACME/Demo", branch="main", sha=SHA)
    assert rule_matches(rule, push)
    assert rule_matches(rule, PushEvent("gitlab", "acme/demo", "release/1.2", SHA))
    assert not rule_matches(rule, PushEvent("github", "acme/demo", "mainline", SHA))
    assert not rule_matches(rule, PushEvent("github", "acme/demo", "x-main", SHA))
    assert not rule_matches(rule, PushEvent("github", "acme/other", "main", SHA))


def test_provider_filter_and_event_kind_are_respected() -> None:
    settings = _settings_with_rules(BASE.replace('name = "main"',
                                                 'name = "main"\nproviders = ["poll"]'))
    assert match_rules(settings.rules, PushEvent("poll", "acme/demo", "main", SHA))
    assert not match_rules(settings.rules, PushEvent("github", "acme/demo", "main", SHA))
    build = BuildEvent(job="acme/demo", number=1, phase="FINALIZED", status="SUCCESS",
                       build_url="", build_path="", branch="main")
    assert not match_rules(settings.rules, build)


def test_deploy_artifact_rules_match_the_jenkins_job() -> None:
    text = BASE + ('[jenkins]\nurl = "http://127.0.0.1:9/"\n'
                   '[[rules]]\nname = "j"\njob = "demo-build"\nbranch = "main"\napp = "demo"\n'
                   'environment = "prod2"\naction = "deploy_artifact"\nartifact = "dist/a.tgz"\n'
                   'config = "demo.toml"\n')
    settings = _settings_with_rules(text)
    build = BuildEvent(job="demo-build", number=3, phase="FINALIZED", status="SUCCESS",
                       build_url="", build_path="", branch="main")
    assert [r.name for r in match_rules(settings.rules, build)] == ["j"]
    assert settings.jenkins.url == "http://127.0.0.1:9/"
    assert settings.rules[1].branch == re.compile("main")
