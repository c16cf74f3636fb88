"""Turn each sender's JSON into one typed event: a PushEvent or a Jenkins BuildEvent.

Pure functions. Three outcomes per payload:
  - an event, when there is something a rule might act on;
  - Ignored(reason), when the payload is well-formed but asks for nothing (a ping, a tag,
    a deleted branch, an event type we do not handle) -> the sender gets a 200;
  - BadPayload(reason), when a field we need is missing or malformed -> 400.
Branch names and commit messages are carried verbatim; they only ever reach a command as
an environment variable or a single argv element, so no character is "dangerous" here.
Control characters are refused because no Git host produces them and an environment
variable cannot carry a NUL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from bluegreen.automation.jsonpath import extract

PUSH = "push"
JENKINS_BUILD = "jenkins_build"
EVENT_KINDS = (PUSH, JENKINS_BUILD)
PUSH_PROVIDERS = ("github", "gitlab", "gitea", "generic", "poll")

ZERO_SHA = re.compile(r"^0+$")
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME = 255


class Ignored(Exception):
    """Well-formed, nothing to do. The reason is shown to the sender and logged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Pong(Ignored):
    """GitHub's ping on webhook creation."""


class BadPayload(Exception):
    """The payload lacks or garbles a field we need. The reason is shown to the sender."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PushEvent:
    provider: str
    repo: str
    branch: str
    sha: str
    pusher: str = ""
    message: str = ""
    clone_url: str = ""  # informational: builds fetch from the rule's configured clone_url
    kind: str = PUSH

    @property
    def who(self) -> str:
        return f"{self.provider}:{self.pusher or 'unknown'}"

    @property
    def version(self) -> str:
        return self.sha

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BuildEvent:
    """One Jenkins Notification plugin message about one build."""

    job: str
    number: int
    phase: str
    status: str
    build_url: str  # absolute (full_url), "" when Jenkins has no root URL configured
    build_path: str  # relative (job/x/12/), used with the configured Jenkins URL
    commit: str = ""
    branch: str = ""
    # file name -> {"archive": url, optionally "sha256": hex}, as the plugin sends it
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)
    provider: str = "jenkins"
    kind: str = JENKINS_BUILD

    @property
    def who(self) -> str:
        return f"jenkins:{self.job}#{self.number}"

    @property
    def version(self) -> str:
        return self.commit or f"{self.job}-{self.number}"

    @property
    def delivery_id(self) -> str:
        # COMPLETED and FINALIZED of one build are one delivery: deploy a build once.
        return f"{self.job}#{self.number}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Event = PushEvent | BuildEvent


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Inverse of to_dict, for jobs read back from the queue."""
    values = dict(data)
    if values.get("kind") == JENKINS_BUILD:
        return BuildEvent(**values)
    return PushEvent(**values)


# ---- shared field checks -------------------------------------------------------------------

def _text(payload: Any, path: str, what: str, *, required: bool = True) -> str:
    value = extract(payload, path)
    if value is None or value == "":
        if required:
            raise BadPayload(f"missing {what} ({path})")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadPayload(f"{what} ({path}) must be a string")
    return str(value)


def _name(value: str, what: str) -> str:
    if len(value) > MAX_NAME:
        raise BadPayload(f"{what} is longer than {MAX_NAME} characters")
    if _CONTROL.search(value):
        raise BadPayload(f"{what} contains control characters")
    return value


def branch_from_ref(ref: str, *, allow_bare: bool = False) -> str:
    """refs/heads/X -> X. Tags and other refs are Ignored. A bare name is accepted only
    where the sender is generic (a hand-written payload often says just "main")."""
    if ref.startswith("refs/heads/"):
        branch = ref[len("refs/heads/"):]
    elif ref.startswith("refs/tags/"):
        raise Ignored(f"tag push {ref!r}: only branches deploy")
    elif ref.startswith("refs/"):
        raise Ignored(f"ref {ref!r} is not a branch")
    elif allow_bare:
        branch = ref
    else:
        raise BadPayload(f"ref {ref!r} is not of the form refs/heads/<branch>")
    if not branch:
        raise BadPayload("empty branch name")
    return _name(branch, "branch name")


def checked_sha(value: str) -> str:
    sha = value.strip().lower()
    if ZERO_SHA.match(sha):
        raise Ignored("branch deleted")
    if not _SHA.match(sha):
        raise BadPayload(f"commit {value[:80]!r} is not a full hex SHA")
    return sha


def _commit_message(payload: Any, sha: str) -> str:
    head = extract(payload, "$.head_commit.message")
    if isinstance(head, str):
        return head
    commits = extract(payload, "$.commits")
    if isinstance(commits, list):
        for commit in commits:
            if isinstance(commit, dict) and commit.get("id") == sha:
                message = commit.get("message")
                return message if isinstance(message, str) else ""
    return ""


def _require_object(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise BadPayload("payload must be a JSON object")
    return payload


# ---- per sender ----------------------------------------------------------------------------

def parse_github(event_name: str, payload: Any) -> PushEvent:
    if event_name == "ping":
        raise Pong("pong")
    if event_name != "push":
        raise Ignored(f"event {event_name[:60]!r} is not handled (only push)")
    data = _require_object(payload)
    if data.get("deleted") is True:
        raise Ignored("branch deleted")
    branch = branch_from_ref(_text(data, "$.ref", "ref"))
    sha = checked_sha(_text(data, "$.after", "after"))
    return PushEvent(
        provider="github",
        repo=_name(_text(data, "$.repository.full_name", "repository"), "repository"),
        branch=branch,
        sha=sha,
        pusher=_name(_text(data, "$.pusher.name", "pusher", required=False)
                     or _text(data, "$.sender.login", "sender", required=False), "pusher"),
        message=_commit_message(data, sha),
        clone_url=_text(data, "$.repository.clone_url", "clone url", required=False),
    )


def parse_gitea(event_name: str, payload: Any) -> PushEvent:
    if event_name != "push":
        raise Ignored(f"event {event_name[:60]!r} is not handled (only push)")
    data = _require_object(payload)
    branch = branch_from_ref(_text(data, "$.ref", "ref"))
    sha = checked_sha(_text(data, "$.after", "after"))
    pusher = (_text(data, "$.pusher.login", "pusher", required=False)
              or _text(data, "$.pusher.username", "pusher", required=False)
              or _text(data, "$.sender.login", "sender", required=False))
    return PushEvent(
        provider="gitea",
        repo=_name(_text(data, "$.repository.full_name", "repository"), "repository"),
        branch=branch,
        sha=sha,
        pusher=_name(pusher, "pusher"),
        message=_commit_message(data, sha),
        clone_url=_text(data, "$.repository.clone_url", "clone url", required=False),
    )


def parse_gitlab(event_name: str, payload: Any) -> PushEvent:
    data = _require_object(payload)
    is_push = event_name == "Push Hook" or (
        event_name == "System Hook" and data.get("object_kind") == "push")
    if not is_push:
        raise Ignored(f"event {event_name[:60]!r} is not handled (only Push Hook)")
    branch = branch_from_ref(_text(data, "$.ref", "ref"))
    sha = checked_sha(_text(data, "$.after", "after"))
    pusher = (_text(data, "$.user_username", "user", required=False)
              or _text(data, "$.user_name", "user", required=False))
    return PushEvent(
        provider="gitlab",
        repo=_name(_text(data, "$.project.path_with_namespace", "project"), "project"),
        branch=branch,
        sha=sha,
        pusher=_name(pusher, "pusher"),
        message=_commit_message(data, sha),
        clone_url=_text(data, "$.project.git_http_url", "clone url", required=False),
    )


@dataclass(frozen=True)
class GenericPaths:
    """Where the generic endpoint finds each field, as JSONPath (Generic Webhook Trigger style)."""

    ref: str = "$.ref"
    sha: str = "$.after"
    repo: str = "$.repository.full_name"
    pusher: str = "$.pusher.name"
    message: str = "$.head_commit.message"


def parse_generic(payload: Any, paths: GenericPaths) -> PushEvent:
    data = _require_object(payload)
    branch = branch_from_ref(_text(data, paths.ref, "ref"), allow_bare=True)
    sha = checked_sha(_text(data, paths.sha, "commit"))
    message = extract(data, paths.message)
    return PushEvent(
        provider="generic",
        repo=_name(_text(data, paths.repo, "repository"), "repository"),
        branch=branch,
        sha=sha,
        pusher=_name(_text(data, paths.pusher, "pusher", required=False), "pusher"),
        message=message if isinstance(message, str) else "",
    )


DEPLOYABLE_PHASES = ("COMPLETED", "FINALIZED")


def jenkins_branch(raw: str) -> str:
    """Jenkins reports GIT_BRANCH as `origin/main`; rules are written against `main`."""
    for prefix in ("refs/heads/", "refs/remotes/origin/", "origin/"):
        if raw.startswith(prefix):
            return raw[len(prefix):]
    return raw


def parse_jenkins(payload: Any) -> BuildEvent:
    """A Notification plugin message. Only COMPLETED/FINALIZED with SUCCESS is deployable."""
    data = _require_object(payload)
    job = _name(_text(data, "$.name", "job name"), "job name")
    number_value = extract(data, "$.build.number")
    if isinstance(number_value, bool) or not isinstance(number_value, int) or number_value < 0:
        raise BadPayload("missing build number ($.build.number)")
    phase = _text(data, "$.build.phase", "build phase").upper()
    status = _text(data, "$.build.status", "build status", required=False).upper()
    if phase not in DEPLOYABLE_PHASES:
        raise Ignored(f"phase {phase[:20]!r}: deploys happen on COMPLETED or FINALIZED")
    if status != "SUCCESS":
        raise Ignored(f"build status {status[:20]!r}: only SUCCESS deploys")
    commit = _text(data, "$.build.scm.commit", "commit", required=False).lower()
    if commit and not _SHA.match(commit):
        raise BadPayload("build.scm.commit is not a full hex SHA")
    artifacts_value = extract(data, "$.build.artifacts") or {}
    if not isinstance(artifacts_value, dict):
        raise BadPayload("build.artifacts must be an object")
    artifacts: dict[str, dict[str, str]] = {}
    for name, locations in artifacts_value.items():
        if isinstance(locations, dict):
            artifacts[str(name)] = {str(k): str(v) for k, v in locations.items()
                                    if isinstance(v, str)}
    return BuildEvent(
        job=job,
        number=number_value,
        phase=phase,
        status=status,
        build_url=_text(data, "$.build.full_url", "build url", required=False),
        build_path=_text(data, "$.build.url", "build path", required=False),
        commit=commit,
        branch=_name(jenkins_branch(_text(data, "$.build.scm.branch", "branch", required=False)),
                     "branch"),
        artifacts=artifacts,
    )
