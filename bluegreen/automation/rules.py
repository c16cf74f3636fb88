"""Rules: which event, from which repository and branch, does what to which app.

A rule is matched against an event; every matching rule produces one job (a push to a
monorepo may deploy two apps). Jobs of one app+environment form a *lane*: one worker per
lane, and pushes that arrive while a lane is busy coalesce into one job for the newest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bluegreen.automation.events import JENKINS_BUILD, PUSH, BuildEvent, Event, PushEvent

BUILD = "build"  # check out the pushed commit, run the build command, deploy the artifact
JENKINS = "jenkins"  # trigger a Jenkins job (buildWithParameters), follow it to its build URL
DEPLOY_ARTIFACT = "deploy_artifact"  # fetch a finished Jenkins build's artifact, deploy it
ACTIONS = {BUILD: PUSH, JENKINS: PUSH, DEPLOY_ARTIFACT: JENKINS_BUILD}

DEFAULT_DEPLOY_COMMAND: tuple[str, ...] = (
    "{python}", "-m", "bluegreen", "deploy",
    "--config", "{config}",
    "--artifact", "{artifact}",
    "--version", "{version}",
    "--who", "{who}",
)
DEFAULT_JENKINS_PARAMETERS: dict[str, str] = {"BRANCH": "{branch}", "COMMIT": "{sha}"}


@dataclass(frozen=True)
class Rule:
    name: str
    app: str
    environment: str
    action: str
    branch: re.Pattern[str]  # full match against the branch name
    repo: str = ""  # push rules: repository full name (owner/name, group/sub/project)
    job: str = ""  # deploy_artifact rules: the Jenkins job name in the notification
    providers: tuple[str, ...] = ()  # empty: any sender
    config: str = ""  # the app's bluegreen.toml, passed to the deploy command
    clone_url: str = ""  # build rules: where the worker fetches from (never from the payload)
    build_command: tuple[str, ...] | str = ()  # argv, or one string run with `bash -c`
    artifact: str = ""  # build: glob in the checkout; deploy_artifact: path in the build
    deploy_command: tuple[str, ...] = DEFAULT_DEPLOY_COMMAND
    jenkins_job: str = ""  # jenkins rules: the job to trigger (folders as a/b)
    jenkins_parameters: dict[str, str] = field(default_factory=dict)
    require_checksum: bool = False  # deploy_artifact: refuse an artifact with no sha256
    build_timeout: float = 1800.0
    deploy_timeout: float = 1800.0

    @property
    def lane(self) -> str:
        return lane_name(self.app, self.environment)

    @property
    def event_kind(self) -> str:
        return ACTIONS[self.action]


def lane_name(app: str, environment: str) -> str:
    return f"{app}/{environment}"


def rule_matches(rule: Rule, event: Event) -> bool:
    if event.kind != rule.event_kind:
        return False
    if rule.providers and event.provider not in rule.providers:
        return False
    if isinstance(event, PushEvent):
        if event.repo.lower() != rule.repo.lower():
            return False
    elif isinstance(event, BuildEvent) and event.job != rule.job:
        return False
    return rule.branch.fullmatch(event.branch) is not None


def match_rules(rules: tuple[Rule, ...] | list[Rule], event: Event) -> list[Rule]:
    return [rule for rule in rules if rule_matches(rule, event)]


def no_match_reason(event: Event) -> str:
    source = event.repo if isinstance(event, PushEvent) else f"job {event.job}"
    return (f"no rule matches {event.kind} from {event.provider} for {source!r} "
            f"branch {event.branch!r}")
