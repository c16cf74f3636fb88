"""automation.toml: the typed settings of `bluegreen serve` and `bluegreen poll`.

Fail closed: an unknown key, a wrong type or an impossible combination is a ConfigError
naming the file and the key. Secrets are never in the file: the file names environment
variables, and resolve_secrets() reads them when (and only when) a service starts, so
`bluegreen history` works without them. Relative paths are relative to the file.

The file is read by the same binder as bluegreen.toml (bluegreen.config): the dataclasses
below describe it key by key, with their checks; what spans keys (a rule's action decides
which of its keys are required) is checked after binding, in the same error shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bluegreen.automation.deploy_command import (
    DEPLOY_PLACEHOLDERS,
    JENKINS_PLACEHOLDERS,
    unknown_placeholders,
)
from bluegreen.automation.events import PUSH_PROVIDERS, GenericPaths, PushEvent
from bluegreen.automation.jsonpath import parse_path
from bluegreen.automation.rules import (
    ACTIONS,
    BUILD,
    DEFAULT_DEPLOY_COMMAND,
    DEFAULT_JENKINS_PARAMETERS,
    DEPLOY_ARTIFACT,
    JENKINS,
    Rule,
    match_rules,
)
from bluegreen.automation.signatures import Secret
from bluegreen.binder import Binder, read_toml, seconds, setting
from bluegreen.errors import ConfigError

PROVIDERS = ("github", "gitlab", "gitea", "generic", "jenkins")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LANE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _env_name(value: str) -> str:
    if value and not _ENV_NAME.match(value):
        raise ValueError("must be the NAME of an environment variable, not a secret")
    return value


def _http_url(value: str) -> str:
    if value and not re.match(r"^https?://[^\s/]", value):
        raise ValueError("expected a URL that starts with http:// or https://")
    return value.rstrip("/") + "/" if value else ""


def _json_path(value: str) -> str:
    parse_path(value)  # its ValueError names the offending position
    return value


# An environment variable's NAME: never echoed, in case a secret was pasted instead.
_ENV_VAR = {"check": _env_name, "secret": True}


@dataclass(frozen=True)
class ServiceSettings:
    listen: str = setting("127.0.0.1", nonempty=True, one_line=True)
    port: int = setting(8765, port="any free port")
    state_dir: Path = Path("/var/lib/bluegreen-automation")
    max_body_bytes: int = setting(1024 * 1024, ge=1)
    threads: int = setting(4, ge=1, le=1024)
    # a pending job waits this long for newer pushes to coalesce
    quiet_period: float = seconds(5.0, ge=0)
    shutdown_grace: float = seconds(600.0, ge=0)  # on SIGTERM, let a running deploy finish
    log_tail_lines: int = setting(30, ge=1)
    # Hostile clients (a slowloris trickle): see httpserver.py.
    header_timeout: float = seconds(10.0, ge=0.1)  # headers and body must arrive within this
    channel_timeout: float = seconds(30.0, ge=1.0)  # an idle keep-alive connection closes
    connection_limit: int = setting(200, ge=1)  # over it the slowest incomplete go first
    client_connection_limit: int = setting(50, ge=0)  # per client address; 0: no limit
    cleanup_interval: float = seconds(1.0, ge=0.1)  # how often the timeouts are enforced
    # the NAME of the variable holding the token of /ui/ and /metrics; unset: they answer
    # only on a loopback listen address, to loopback clients not behind a proxy
    ui_token_env: str = setting("", **_ENV_VAR)


@dataclass(frozen=True)
class JenkinsSettings:
    url: str = setting("", one_line=True, check=_http_url)
    user: str = setting("", one_line=True)
    api_token_env: str = setting("", **_ENV_VAR)
    queue_poll_interval: float = seconds(2.0, ge=0.01)
    queue_timeout: float = seconds(600.0, ge=0.1)
    request_timeout: float = seconds(10.0, ge=0.1)
    artifact_timeout: float = seconds(600.0, ge=0.1)
    max_artifact_bytes: int = setting(2 * 1024**3, ge=1)


@dataclass(frozen=True)
class PollTarget:
    remote: str = setting(nonempty=True)
    branch: str = setting(nonempty=True, one_line=True)
    repo: str = setting(nonempty=True, one_line=True)  # what rules match against (owner/name)
    interval: float = seconds(60.0, ge=0.05)
    # +-10 % of the interval, so many pollers do not fire together
    jitter: float = setting(0.1, ge=0, lt=1, range="a fraction of the interval, >= 0 and < 1")
    max_backoff: float = seconds(900.0, ge=0.05)
    timeout: float = seconds(30.0, ge=0.1)
    deploy_on_start: bool = False

    @property
    def key(self) -> str:
        return f"{self.remote} {self.branch}"


@dataclass(frozen=True)
class Settings:
    source: str
    service: ServiceSettings
    secret_envs: dict[str, str]  # provider -> environment variable NAME
    generic: GenericPaths
    generic_delivery_header: str
    jenkins: JenkinsSettings
    git_timeout: float
    rules: tuple[Rule, ...]
    polls: tuple[PollTarget, ...]
    # generic endpoint: "token", "signature" (X-Bluegreen-Signature: t=..,v1=..) or "either"
    generic_auth: str = "either"
    generic_signature_tolerance: float = 300.0  # seconds a signed timestamp stays valid
    git_ls_remote_timeout: float = 30.0  # the tip check before a push job builds

    @property
    def db_path(self) -> Path:
        return self.service.state_dir / "automation.sqlite3"

    @property
    def lanes(self) -> list[str]:
        return sorted({rule.lane for rule in self.rules})

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)

    def withheld_env(self) -> list[str]:
        names = list(self.secret_envs.values())
        if self.jenkins.api_token_env:
            names.append(self.jenkins.api_token_env)
        if self.service.ui_token_env:
            names.append(self.service.ui_token_env)
        return names


@dataclass(frozen=True)
class Secrets:
    by_provider: dict[str, Secret] = field(default_factory=dict)
    jenkins_api_token: Secret | None = None


# ---------------------------------------------------------------- the file, as written


@dataclass(frozen=True)
class _SecretsFile:
    """provider = "NAME_OF_ENV_VAR"; a provider without a line has its endpoint disabled."""

    github: str = setting("", **_ENV_VAR)
    gitlab: str = setting("", **_ENV_VAR)
    gitea: str = setting("", **_ENV_VAR)
    generic: str = setting("", **_ENV_VAR)
    jenkins: str = setting("", **_ENV_VAR)


GENERIC_AUTH = ("token", "signature", "either")


@dataclass(frozen=True)
class _GenericFile:
    ref: str = setting(GenericPaths.ref, check=_json_path)
    sha: str = setting(GenericPaths.sha, check=_json_path)
    repo: str = setting(GenericPaths.repo, check=_json_path)
    pusher: str = setting(GenericPaths.pusher, check=_json_path)
    message: str = setting(GenericPaths.message, check=_json_path)
    delivery_header: str = setting("", one_line=True)
    auth: str = setting("either", choices=GENERIC_AUTH)
    signature_tolerance: float = seconds(300.0, ge=1.0)


@dataclass(frozen=True)
class _GitFile:
    timeout: float = seconds(600.0, ge=0.1)
    ls_remote_timeout: float = seconds(30.0, ge=0.1)


_NAME_PART = {"pattern": _LANE_PART, "one_line": True,
              "what": "letters, digits, '.', '_' and '-' (it names a directory)"}


@dataclass(frozen=True, kw_only=True)
class _RuleFile:
    """One [[rules]] table. Which keys are required depends on `action`: see _rule()."""

    action: str = setting(choices=tuple(sorted(ACTIONS)))
    name: str = setting("", one_line=True)
    app: str = setting(**_NAME_PART)
    environment: str = setting("production", **_NAME_PART)
    events: list[str] | None = None  # default: the one kind the action acts on
    branch: str = setting(what="a regular expression matched against the whole branch name")
    providers: list[str] = field(default_factory=list)
    repo: str = setting("", one_line=True)
    job: str = setting("", one_line=True)
    config: str = ""
    deploy_command: list[str] = field(default_factory=lambda: list(DEFAULT_DEPLOY_COMMAND),
                                      metadata={"nonempty": True})
    clone_url: str = ""
    build_command: str | list[str] | None = field(
        default=None, metadata={"what": "an argv list, or one string run with bash -c"})
    artifact: str = ""
    jenkins_job: str = setting("", one_line=True)
    jenkins_parameters: dict[str, str] = field(
        default_factory=lambda: dict(DEFAULT_JENKINS_PARAMETERS))
    require_checksum: bool = False
    build_timeout: float = seconds(1800.0, ge=0.1)
    deploy_timeout: float = seconds(1800.0, ge=0.1)


@dataclass(frozen=True, kw_only=True)
class AutomationFile:
    service: ServiceSettings = field(default_factory=ServiceSettings)
    secrets: _SecretsFile = field(default_factory=_SecretsFile)
    generic: _GenericFile = field(default_factory=_GenericFile)
    jenkins: JenkinsSettings = field(default_factory=JenkinsSettings)
    git: _GitFile = field(default_factory=_GitFile)
    rules: list[_RuleFile] = field(default_factory=list)
    poll: list[PollTarget] = field(default_factory=list)


# ---------------------------------------------------------------- across keys


def _rule(spec: _RuleFile, base: Path, index: int, binder: Binder) -> Rule:
    key = f"rules[{index}]"

    def fail(name: str, problem: str) -> ConfigError:
        return binder.error(f"{key}.{name}", problem)

    def require(name: str, value: object, what: str) -> None:
        if not value:
            raise fail(name, f"required key is missing for action = {action!r} ({what})")

    action = spec.action
    events = spec.events if spec.events is not None else [ACTIONS[action]]
    if events != [ACTIONS[action]]:
        raise fail("events", f"action {action!r} acts on {ACTIONS[action]!r} events only")
    try:
        branch = re.compile(spec.branch)
    except re.error as exc:
        raise fail("branch", f"not a valid regular expression: {exc}") from None
    allowed = PUSH_PROVIDERS if action != DEPLOY_ARTIFACT else ("jenkins",)
    for provider in spec.providers:
        if provider not in allowed:
            raise fail("providers", f"{provider!r} is not one of {', '.join(allowed)}")

    if action == DEPLOY_ARTIFACT:
        require("job", spec.job, "the Jenkins job whose builds it deploys")
        if spec.repo:
            raise fail("repo", "deploy_artifact rules match the Jenkins `job`, not a repo")
    else:
        require("repo", spec.repo, "the repository it matches, owner/name")
        if spec.job:
            raise fail("job", "only deploy_artifact rules match a Jenkins job")

    needs_deploy = action in (BUILD, DEPLOY_ARTIFACT)
    if needs_deploy:
        require("config", spec.config, "the app's bluegreen.toml")
    bad = unknown_placeholders(spec.deploy_command, DEPLOY_PLACEHOLDERS)
    if bad:
        raise fail("deploy_command", f"unknown placeholder {{{bad[0]}}}; known: "
                   + ", ".join(f"{{{p}}}" for p in sorted(DEPLOY_PLACEHOLDERS)))

    build_command: tuple[str, ...] | str = ()
    if action == BUILD:
        require("clone_url", spec.clone_url, "where the worker fetches the commit from")
        raw = spec.build_command
        if isinstance(raw, str) and raw.strip():
            build_command = raw
        elif isinstance(raw, list) and raw:
            build_command = tuple(raw)
        else:
            raise fail("build_command", "is required: an argv list, or one string run "
                       "with bash -c (the commit is in $BLUEGREEN_COMMIT)")
    elif spec.build_command is not None:
        raise fail("build_command", f"only build rules run a build_command; action "
                   f"{action!r} does not build")
    if needs_deploy:
        require("artifact", spec.artifact, "the file to deploy, a relative path or glob")
    if spec.artifact and (Path(spec.artifact).is_absolute() or ".." in Path(spec.artifact).parts):
        raise fail("artifact", "must be a relative path inside the checkout / build")

    if action == JENKINS:
        require("jenkins_job", spec.jenkins_job, "the Jenkins job to trigger, folders as a/b")
    bad = unknown_placeholders(spec.jenkins_parameters.values(), JENKINS_PLACEHOLDERS)
    if bad:
        raise fail("jenkins_parameters", f"unknown placeholder {{{bad[0]}}}")
    return Rule(
        name=spec.name or f"rule{index}",
        app=spec.app,
        environment=spec.environment,
        action=action,
        branch=branch,
        repo=spec.repo,
        job=spec.job,
        providers=tuple(spec.providers),
        config=str(binder.path(spec.config, f"{key}.config")) if spec.config else "",
        clone_url=spec.clone_url,
        build_command=build_command,
        artifact=spec.artifact,
        deploy_command=tuple(spec.deploy_command),
        jenkins_job=spec.jenkins_job,
        jenkins_parameters=spec.jenkins_parameters if action == JENKINS else {},
        require_checksum=spec.require_checksum,
        build_timeout=spec.build_timeout,
        deploy_timeout=spec.deploy_timeout,
    )


def parse_settings(data: Mapping[str, Any], source: str, base: Path) -> Settings:
    binder = Binder(source, base_dir=base)
    raw = binder.bind(AutomationFile, dict(data))
    secret_envs = {provider: getattr(raw.secrets, provider) for provider in PROVIDERS
                   if getattr(raw.secrets, provider)}
    rules = tuple(_rule(spec, base, i, binder) for i, spec in enumerate(raw.rules))
    jenkins = raw.jenkins
    names = [r.name for r in rules]
    for i, rule in enumerate(rules):
        if names.index(rule.name) != i:
            raise ConfigError(source, f"rules[{i}].name", f"duplicate rule name {rule.name!r}")
        if rule.action == JENKINS and not (jenkins.url and jenkins.user and jenkins.api_token_env):
            raise ConfigError(source, "jenkins", f"rule {rule.name!r} triggers Jenkins: set "
                              "jenkins.url, jenkins.user and jenkins.api_token_env")
        if rule.action == DEPLOY_ARTIFACT and not jenkins.url:
            raise ConfigError(source, "jenkins.url", f"rule {rule.name!r} fetches Jenkins "
                              "artifacts; only URLs under jenkins.url are fetched")
    for i, target in enumerate(raw.poll):
        probe = PushEvent(provider="poll", repo=target.repo, branch=target.branch, sha="0" * 40)
        if not match_rules(rules, probe):
            raise ConfigError(source, f"poll[{i}]", f"no rule matches repo {target.repo!r} "
                              f"branch {target.branch!r}: polling it could never deploy")
    generic = raw.generic
    return Settings(
        source=source, service=raw.service, secret_envs=secret_envs,
        generic=GenericPaths(ref=generic.ref, sha=generic.sha, repo=generic.repo,
                             pusher=generic.pusher, message=generic.message),
        generic_delivery_header=generic.delivery_header, jenkins=jenkins,
        git_timeout=raw.git.timeout, rules=rules, polls=tuple(raw.poll),
        generic_auth=generic.auth, generic_signature_tolerance=generic.signature_tolerance,
        git_ls_remote_timeout=raw.git.ls_remote_timeout)


def load_settings(path: str | Path) -> Settings:
    file = Path(path)
    data = read_toml(file, what="automation settings file", hint="pass --config PATH")
    return parse_settings(data, str(file), file.resolve().parent)


def resolve_secrets(settings: Settings, environ: Mapping[str, str], *,
                    webhooks: bool = True) -> Secrets:
    """Read the secrets a process needs (the poller needs no webhook secrets). A named
    variable that is unset or empty is an error: an endpoint whose secret is missing would
    otherwise accept anyone or no one."""
    by_provider: dict[str, Secret] = {}
    for provider, env_name in (settings.secret_envs.items() if webhooks else ()):
        value = environ.get(env_name, "")
        if not value:
            raise ConfigError(settings.source, f"secrets.{provider}",
                              f"environment variable {env_name} is not set or empty")
        by_provider[provider] = Secret(value)
    token: Secret | None = None
    if settings.jenkins.api_token_env:
        value = environ.get(settings.jenkins.api_token_env, "")
        if not value:
            raise ConfigError(settings.source, "jenkins.api_token_env", "environment variable "
                              f"{settings.jenkins.api_token_env} is not set or empty")
        token = Secret(value)
    return Secrets(by_provider=by_provider, jenkins_api_token=token)
