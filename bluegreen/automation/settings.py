"""automation.toml: the typed settings of `bluegreen serve` and `bluegreen poll`.

Fail closed: an unknown key, a wrong type or an impossible combination is a ConfigError
naming the file and the key. Secrets are never in the file: the file names environment
variables, and resolve_secrets() reads them when (and only when) a service starts, so
`bluegreen history` works without them. Relative paths are relative to the file.
"""

from __future__ import annotations

import re
import tomllib
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
from bluegreen.errors import ConfigError

PROVIDERS = ("github", "gitlab", "gitea", "generic", "jenkins")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LANE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class ServiceSettings:
    listen: str = "127.0.0.1"
    port: int = 8765
    state_dir: Path = Path("/var/lib/bluegreen-automation")
    max_body_bytes: int = 1024 * 1024
    threads: int = 4
    quiet_period: float = 5.0  # a pending job waits this long for newer pushes to coalesce
    shutdown_grace: float = 600.0  # on SIGTERM, let a running deploy finish this long
    log_tail_lines: int = 30
    # Hostile clients (a slowloris trickle): see httpserver.py.
    header_timeout: float = 10.0  # a request (headers and body) must arrive within this
    channel_timeout: float = 30.0  # an idle keep-alive connection is closed after this
    connection_limit: int = 200  # open connections; over it the slowest incomplete go first
    client_connection_limit: int = 50  # per client address; 0: no per-client limit
    cleanup_interval: float = 1.0  # how often the timeouts above are enforced


@dataclass(frozen=True)
class JenkinsSettings:
    url: str = ""
    user: str = ""
    api_token_env: str = ""
    queue_poll_interval: float = 2.0
    queue_timeout: float = 600.0
    request_timeout: float = 10.0
    artifact_timeout: float = 600.0
    max_artifact_bytes: int = 2 * 1024**3


@dataclass(frozen=True)
class PollTarget:
    remote: str
    branch: str
    repo: str  # the repository name rules match against (owner/name)
    interval: float = 60.0
    jitter: float = 0.1  # +-10 % of the interval, so many pollers do not fire together
    max_backoff: float = 900.0
    timeout: float = 30.0
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
        return names


@dataclass(frozen=True)
class Secrets:
    by_provider: dict[str, Secret] = field(default_factory=dict)
    jenkins_api_token: Secret | None = None


class _Table:
    """One TOML table being read: typed getters, and an error for every key left unread."""

    def __init__(self, source: str, prefix: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.prefix = prefix
        self.data = dict(data)
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def _get(self, name: str, kinds: tuple[type, ...], what: str, default: Any) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise self.fail(name, f"is required ({what})")
            return default
        value = self.data[name]
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(name, f"expected {what}, got a boolean")
        if not isinstance(value, kinds):
            raise self.fail(name, f"expected {what}, got {type(value).__name__}")
        return value

    def str(self, name: str, default: Any = "") -> str:
        return self._get(name, (str,), "a string", default)

    def int(self, name: str, default: Any, minimum: int = 0) -> int:
        value = self._get(name, (int,), "an integer", default)
        if value < minimum:
            raise self.fail(name, f"must be >= {minimum}")
        return value

    def float(self, name: str, default: Any, minimum: float = 0.0) -> float:
        value = float(self._get(name, (int, float), "a number", default))
        if value < minimum:
            raise self.fail(name, f"must be >= {minimum}")
        return value

    def bool(self, name: str, default: bool) -> bool:
        return self._get(name, (bool,), "true or false", default)

    def str_list(self, name: str, default: Any) -> list[str]:
        value = self._get(name, (list,), "a list of strings", default)
        if not all(isinstance(v, str) for v in value):
            raise self.fail(name, "expected a list of strings")
        return list(value)

    def str_map(self, name: str, default: Any) -> dict[str, str]:
        value = self._get(name, (dict,), "a table of strings", default)
        if not all(isinstance(v, str) for v in value.values()):
            raise self.fail(name, "expected a table whose values are strings")
        return dict(value)

    def table(self, name: str) -> _Table:
        value = self._get(name, (dict,), "a table", {})
        return _Table(self.source, self.key(name), value)

    def tables(self, name: str) -> list[_Table]:
        value = self._get(name, (list,), "an array of tables ([[...]])", [])
        if not all(isinstance(v, dict) for v in value):
            raise self.fail(name, "expected an array of tables ([[...]])")
        return [_Table(self.source, f"{self.key(name)}[{i}]", v) for i, v in enumerate(value)]

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.fail(unknown[0], "unknown key (misspelt? see examples/automation.toml)")


_REQUIRED = object()


def _path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _env_name(table: _Table, name: str, value: str) -> str:
    if value and not _ENV_NAME.match(value):
        raise table.fail(name, "must be the NAME of an environment variable, not a secret")
    return value


def _service(t: _Table, base: Path) -> ServiceSettings:
    d = ServiceSettings()
    service = ServiceSettings(
        listen=t.str("listen", d.listen),
        port=t.int("port", d.port),
        state_dir=_path(base, t.str("state_dir", str(d.state_dir))),
        max_body_bytes=t.int("max_body_bytes", d.max_body_bytes, minimum=1),
        threads=t.int("threads", d.threads, minimum=1),
        quiet_period=t.float("quiet_period", d.quiet_period),
        shutdown_grace=t.float("shutdown_grace", d.shutdown_grace),
        log_tail_lines=t.int("log_tail_lines", d.log_tail_lines, minimum=1),
        header_timeout=t.float("header_timeout", d.header_timeout, 0.1),
        channel_timeout=t.float("channel_timeout", d.channel_timeout, 1.0),
        connection_limit=t.int("connection_limit", d.connection_limit, minimum=1),
        client_connection_limit=t.int("client_connection_limit", d.client_connection_limit),
        cleanup_interval=t.float("cleanup_interval", d.cleanup_interval, 0.1),
    )
    if service.port > 65535:
        raise t.fail("port", "must be <= 65535")
    t.finish()
    return service


def _jenkins(t: _Table) -> JenkinsSettings:
    d = JenkinsSettings()
    url = t.str("url", "")
    if url and not re.match(r"^https?://", url):
        raise t.fail("url", "must start with http:// or https://")
    settings = JenkinsSettings(
        url=url.rstrip("/") + "/" if url else "",
        user=t.str("user", ""),
        api_token_env=_env_name(t, "api_token_env", t.str("api_token_env", "")),
        queue_poll_interval=t.float("queue_poll_interval", d.queue_poll_interval, 0.01),
        queue_timeout=t.float("queue_timeout", d.queue_timeout, 0.1),
        request_timeout=t.float("request_timeout", d.request_timeout, 0.1),
        artifact_timeout=t.float("artifact_timeout", d.artifact_timeout, 0.1),
        max_artifact_bytes=t.int("max_artifact_bytes", d.max_artifact_bytes, minimum=1),
    )
    t.finish()
    return settings


GENERIC_AUTH = ("token", "signature", "either")


def _generic(t: _Table) -> tuple[GenericPaths, str, str, float]:
    d = GenericPaths()
    values = {name: t.str(name, getattr(d, name))
              for name in ("ref", "sha", "repo", "pusher", "message")}
    for name, value in values.items():
        try:
            parse_path(value)
        except ValueError as exc:
            raise t.fail(name, str(exc)) from None
    header = t.str("delivery_header", "")
    auth = t.str("auth", "either")
    if auth not in GENERIC_AUTH:
        raise t.fail("auth", f"must be one of {', '.join(GENERIC_AUTH)}")
    tolerance = t.float("signature_tolerance", 300.0, 1.0)
    t.finish()
    return GenericPaths(**values), header, auth, tolerance


def _rule(t: _Table, base: Path, index: int) -> Rule:
    action = t.str("action", _REQUIRED)
    if action not in ACTIONS:
        raise t.fail("action", f"must be one of {', '.join(sorted(ACTIONS))}")
    name = t.str("name", f"rule{index}")
    app = t.str("app", _REQUIRED)
    environment = t.str("environment", "production")
    for key, value in (("app", app), ("environment", environment)):
        if not _LANE_PART.match(value):
            raise t.fail(key, "use letters, digits, '.', '_' and '-' (it names a directory)")
    events = t.str_list("events", [ACTIONS[action]])
    if events != [ACTIONS[action]]:
        raise t.fail("events", f"action {action!r} acts on {ACTIONS[action]!r} events only")
    pattern = t.str("branch", _REQUIRED)
    try:
        branch = re.compile(pattern)
    except re.error as exc:
        raise t.fail("branch", f"not a valid regular expression: {exc}") from None
    providers = tuple(t.str_list("providers", []))
    for provider in providers:
        allowed = PUSH_PROVIDERS if action != DEPLOY_ARTIFACT else ("jenkins",)
        if provider not in allowed:
            raise t.fail("providers", f"{provider!r} is not one of {', '.join(allowed)}")

    repo = t.str("repo", _REQUIRED if action != DEPLOY_ARTIFACT else "")
    job = t.str("job", _REQUIRED if action == DEPLOY_ARTIFACT else "")
    if action == DEPLOY_ARTIFACT and repo:
        raise t.fail("repo", "deploy_artifact rules match the Jenkins `job`, not a repo")
    if action != DEPLOY_ARTIFACT and job:
        raise t.fail("job", "only deploy_artifact rules match a Jenkins job")

    needs_deploy = action in (BUILD, DEPLOY_ARTIFACT)
    config = t.str("config", _REQUIRED if needs_deploy else "")
    deploy_command = tuple(t.str_list("deploy_command", list(DEFAULT_DEPLOY_COMMAND)))
    if not deploy_command:
        raise t.fail("deploy_command", "must not be empty")
    bad = unknown_placeholders(deploy_command, DEPLOY_PLACEHOLDERS)
    if bad:
        raise t.fail("deploy_command", f"unknown placeholder {{{bad[0]}}}; known: "
                     + ", ".join(f"{{{p}}}" for p in sorted(DEPLOY_PLACEHOLDERS)))

    clone_url = t.str("clone_url", _REQUIRED if action == BUILD else "")
    build_command: tuple[str, ...] | str = ()
    if action == BUILD:
        t.seen.add("build_command")
        raw = t.data.get("build_command")
        if isinstance(raw, str) and raw.strip():
            build_command = raw
        elif isinstance(raw, list) and raw and all(isinstance(v, str) for v in raw):
            build_command = tuple(raw)
        else:
            raise t.fail("build_command", "is required: an argv list, or one string run "
                         "with bash -c (the commit is in $BLUEGREEN_COMMIT)")
    artifact = t.str("artifact", _REQUIRED if needs_deploy else "")
    if artifact and (Path(artifact).is_absolute() or ".." in Path(artifact).parts):
        raise t.fail("artifact", "must be a relative path inside the checkout / build")

    jenkins_job = t.str("jenkins_job", _REQUIRED if action == JENKINS else "")
    jenkins_parameters = t.str_map("jenkins_parameters", dict(DEFAULT_JENKINS_PARAMETERS))
    bad = unknown_placeholders(jenkins_parameters.values(), JENKINS_PLACEHOLDERS)
    if bad:
        raise t.fail("jenkins_parameters", f"unknown placeholder {{{bad[0]}}}")
    rule = Rule(
        name=name,
        app=app,
        environment=environment,
        action=action,
        branch=branch,
        repo=repo,
        job=job,
        providers=providers,
        config=str(_path(base, config)) if config else "",
        clone_url=clone_url,
        build_command=build_command,
        artifact=artifact,
        deploy_command=deploy_command,
        jenkins_job=jenkins_job,
        jenkins_parameters=jenkins_parameters if action == JENKINS else {},
        require_checksum=t.bool("require_checksum", False),
        build_timeout=t.float("build_timeout", 1800.0, 0.1),
        deploy_timeout=t.float("deploy_timeout", 1800.0, 0.1),
    )
    t.finish()
    return rule


def _poll(t: _Table) -> PollTarget:
    d = PollTarget(remote="", branch="", repo="")
    remote = t.str("remote", _REQUIRED)
    target = PollTarget(
        remote=remote,
        branch=t.str("branch", _REQUIRED),
        repo=t.str("repo", _REQUIRED),
        interval=t.float("interval", d.interval, 0.05),
        jitter=t.float("jitter", d.jitter),
        max_backoff=t.float("max_backoff", d.max_backoff, 0.05),
        timeout=t.float("timeout", d.timeout, 0.1),
        deploy_on_start=t.bool("deploy_on_start", d.deploy_on_start),
    )
    if target.jitter >= 1:
        raise t.fail("jitter", "is a fraction of the interval; must be < 1")
    t.finish()
    return target


def parse_settings(data: Mapping[str, Any], source: str, base: Path) -> Settings:
    root = _Table(source, "", data)
    service = _service(root.table("service"), base)
    secrets_table = root.table("secrets")
    secret_envs: dict[str, str] = {}
    for provider in PROVIDERS:
        value = _env_name(secrets_table, provider, secrets_table.str(provider, ""))
        if value:
            secret_envs[provider] = value
    secrets_table.finish()
    generic, delivery_header, generic_auth, tolerance = _generic(root.table("generic"))
    jenkins = _jenkins(root.table("jenkins"))
    git = root.table("git")
    git_timeout = git.float("timeout", 600.0, 0.1)
    ls_remote_timeout = git.float("ls_remote_timeout", 30.0, 0.1)
    git.finish()
    rule_tables = root.tables("rules")
    rules = tuple(_rule(t, base, i) for i, t in enumerate(rule_tables))
    poll_tables = root.tables("poll")
    polls = tuple(_poll(t) for t in poll_tables)
    root.finish()

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
    for i, target in enumerate(polls):
        probe = PushEvent(provider="poll", repo=target.repo, branch=target.branch, sha="0" * 40)
        if not match_rules(rules, probe):
            raise ConfigError(source, f"poll[{i}]", f"no rule matches repo {target.repo!r} "
                              f"branch {target.branch!r}: polling it could never deploy")
    return Settings(source=source, service=service, secret_envs=secret_envs, generic=generic,
                    generic_delivery_header=delivery_header, jenkins=jenkins,
                    git_timeout=git_timeout, rules=rules, polls=polls, generic_auth=generic_auth,
                    generic_signature_tolerance=tolerance,
                    git_ls_remote_timeout=ls_remote_timeout)


def load_settings(path: str | Path) -> Settings:
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(file), "", "file not found (pass --config)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(file), "", f"not valid TOML: {exc}") from None
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
