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


# ---------------------------------------------------------------- bad input, same shape as
# bluegreen.toml: ConfigError(file, dotted key, what was expected), never a traceback.


def test_settings_file_with_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "automation.toml"
    path.write_bytes(BASE.encode() + b'[jenkins]\nuser = "b\xf6t"\n')
    with pytest.raises(ConfigError, match="not UTF-8") as caught:
        load_settings(path)
    assert caught.value.source == str(path) and caught.value.line == BASE.count("\n") + 2


def test_settings_path_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory") as caught:
        load_settings(tmp_path)
    assert caught.value.source == str(tmp_path)


def test_missing_settings_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as caught:
        load_settings(tmp_path / "nope.toml")
    assert caught.value.source == str(tmp_path / "nope.toml")
    assert "--config" in caught.value.problem


def test_settings_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML at line 3") as caught:
        load(tmp_path, "[service]\nport = 1\nthreads = = 2\n")
    assert caught.value.line == 3 and caught.value.source.endswith("automation.toml")


SERVICE = "[service]\nstate_dir = \"state\"\n"

BAD_VALUES = [
    ("[service]\nport = -1\n", "service.port", "1-65535"),
    ("[service]\nport = 8080.5\n", "service.port", "expected an integer"),
    ("[service]\nthreads = 0\n", "service.threads", ">= 1"),
    ("[service]\nmax_body_bytes = 0\n", "service.max_body_bytes", ">= 1"),
    ("[service]\nlisten = \"127.0.0.1\\n0.0.0.0\"\n", "service.listen", "one line"),
    ("[service]\nlisten = 5\n", "service.listen", "expected a string"),
    ("[service]\nstate_dir = 5\n", "service.state_dir", "expected a path"),
    ("[service]\nquiet_period = -1\n", "service.quiet_period", ">= 0"),
    ("[service]\nshutdown_grace = nan\n", "service.shutdown_grace", "finite"),
    ("[jenkins]\nqueue_timeout = 0\n", "jenkins.queue_timeout", ">= 0.1"),
    ("[jenkins]\nmax_artifact_bytes = -1\n", "jenkins.max_artifact_bytes", ">= 1"),
    ("[jenkins]\nurl = \"http:// jenkins\"\n", "jenkins.url", "http"),
    ("[jenkins]\napi_token_env = 7\n", "jenkins.api_token_env", "expected a string"),
    ("[git]\ntimeout = \"soon\"\n", "git.timeout", "expected a number"),
    ("[git]\ntimout = 5\n", "git.timout", "unknown key"),
    ("[generic]\nref = 5\n", "generic.ref", "expected a string"),
    ("[generic]\ndelivery_header = \"X-Id\\r\\nX-Evil: 1\"\n", "generic.delivery_header",
     "one line"),
    ("service = 5\n", "service", "expected a table"),
    ("poll = 5\n", "poll", "array of tables"),
    ("[[poll]]\nremote = \"/srv/git/demo.git\"\nbranch = \"main\"\n", "poll[0].repo",
     "required key is missing"),
    ("[[poll]]\nremote = \"r\"\nbranch = \"main\"\nrepo = \"acme/demo\"\njitter = 1.5\n",
     "poll[0].jitter", "< 1"),
    ("[[poll]]\nremote = \"r\"\nbranch = \"main\"\nrepo = \"acme/demo\"\ninterval = 0\n",
     "poll[0].interval", ">= 0.05"),
]


@pytest.mark.parametrize("extra, key, problem", BAD_VALUES)
def test_bad_values_name_file_key_and_expectation(tmp_path: Path, extra: str, key: str,
                                                  problem: str) -> None:
    text = BASE.replace(SERVICE, "")
    text = extra + text if not extra.startswith("[") else text + extra  # a bare key goes first
    if not extra.startswith(("[service]", "service =")):
        text += SERVICE
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert (caught.value.key, caught.value.source) == (key, str(tmp_path / "automation.toml"))
    assert problem in caught.value.problem


@pytest.mark.parametrize("old, new, key, problem", [
    ("action = \"build\"", "", "rules[0].action", "required key is missing"),
    ("repo = \"acme/demo\"", "", "rules[0].repo", "required key is missing"),
    ("config = \"demo.toml\"", "", "rules[0].config", "required key is missing"),
    ("name = \"main\"", "name = \"main\"\ndeploy_command = []", "rules[0].deploy_command",
     "empty"),
    ("name = \"main\"", "name = \"main\"\nbuild_timeout = 0", "rules[0].build_timeout", ">= 0.1"),
    ("name = \"main\"", "name = \"main\"\nrequire_checksum = \"yes\"",
     "rules[0].require_checksum", "true or false"),
    ("build_command = \"make dist\"", "build_command = 5", "rules[0].build_command",
     "argv list"),
])
def test_more_rule_mistakes_name_the_key(tmp_path: Path, old: str, new: str, key: str,
                                         problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BASE.replace(old, new))
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_build_command_on_a_rule_that_does_not_build_is_refused(tmp_path: Path) -> None:
    text = BASE + ('[[rules]]\nname = "j"\nrepo = "acme/demo"\nbranch = "dev"\napp = "demo"\n'
                   'action = "jenkins"\njenkins_job = "b"\nbuild_command = "make"\n')
    with pytest.raises(ConfigError, match="only build rules") as caught:
        load(tmp_path, text)
    assert caught.value.key == "rules[1].build_command"


def test_a_secret_pasted_instead_of_a_variable_name_is_never_echoed(tmp_path: Path) -> None:
    text = BASE.replace('github = "GH_SECRET"', 'github = "s3cr3t-v@lue"')
    with pytest.raises(ConfigError, match="NAME of an environment variable") as caught:
        load(tmp_path, text)
    assert "s3cr3t" not in str(caught.value)


def test_missing_jenkins_api_token_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    text = BASE + ('[jenkins]\nurl = "http://127.0.0.1:9/"\nuser = "bot"\n'
                   'api_token_env = "JENKINS_TOKEN"\n')
    settings = load(tmp_path, text)
    with pytest.raises(ConfigError, match="JENKINS_TOKEN is not set") as caught:
        resolve_secrets(settings, {"GH_SECRET": "x"})
    assert caught.value.key == "jenkins.api_token_env"
    assert caught.value.source == str(tmp_path / "automation.toml")


# ---- every key, hostile values: Settings or a ConfigError, nothing else

HOSTILE: list[object] = ["", "x\ny", "../x", "(", "$..x", "~nobody-here/x", "a\x00b", -1, 0, 1,
                         70000, 10**30, -0.5,
                         float("nan"), float("inf"), 1e300, True, [], ["x"], [1], {},
                         {"a": 1}, {"a": [1]}]


def _automation_keys() -> list[str]:
    from dataclasses import fields, is_dataclass
    from typing import get_args, get_type_hints

    from bluegreen.automation.settings import AutomationFile

    keys = []
    for section in fields(AutomationFile):
        tp = get_type_hints(AutomationFile)[section.name]
        table = tp if is_dataclass(tp) else get_args(tp)[0]
        keys += [f"{section.name}.{f.name}" for f in fields(table)]
    return keys


@pytest.mark.parametrize("key", _automation_keys())
def test_every_automation_key_answers_hostile_values_with_a_config_error(key: str) -> None:
    section, name = key.split(".")
    poll = {"remote": "/srv/git/demo.git", "branch": "main", "repo": "acme/demo"}
    for value in HOSTILE:
        data = tomllib.loads(BASE)
        data["poll"] = [dict(poll)]
        target = data[section][0] if isinstance(data.get(section), list) else \
            data.setdefault(section, {})
        target[name] = value
        try:
            settings = parse_settings(data, "mem.toml", Path("/tmp"))
        except ConfigError as exc:
            # a poll target no rule matches any more is blamed on the poll target
            assert exc.source == "mem.toml" and exc.key.startswith((section, "poll")), (
                key, value)
            continue
        assert 0 <= settings.service.port <= 65535
        for number in (settings.git_timeout, settings.service.quiet_period,
                       settings.jenkins.request_timeout, *(p.interval for p in settings.polls)):
            assert number == number and number >= 0 and number != float("inf")
