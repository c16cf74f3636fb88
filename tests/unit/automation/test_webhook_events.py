"""Parsing each sender's payload into a typed event, and refusing what is not one."""

from __future__ import annotations

from typing import Any

import pytest

from bluegreen.automation.events import (
    BadPayload,
    BuildEvent,
    GenericPaths,
    Ignored,
    Pong,
    PushEvent,
    event_from_dict,
    jenkins_branch,
    parse_generic,
    parse_gitea,
    parse_github,
    parse_gitlab,
    parse_jenkins,
)

SHA = "a" * 40
SHA2 = "b" * 40


def github_push(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "ref": "refs/heads/main", "before": SHA2, "after": SHA, "deleted": False,
        "repository": {"full_name": "acme/demo", "clone_url": "https://github.com/acme/demo.git"},
        "pusher": {"name": "octocat", "email": "o@example.com"},
        "sender": {"login": "octocat"},
        "head_commit": {"id": SHA, "message": "Fix the thing"},
        "commits": [{"id": SHA, "message": "Fix the thing"}],
    }
    payload.update(overrides)
    return payload


def test_github_push_becomes_a_push_event() -> None:
    event = parse_github("push", github_push())
    assert event == PushEvent(provider="github", repo="acme/demo", branch="main", sha=SHA,
                              pusher="octocat", message="Fix the thing",
                              clone_url="https://github.com/acme/demo.git")
    assert event.who == "github:octocat"
    assert event.version == SHA


def test_github_ping_is_a_pong_and_other_events_are_ignored() -> None:
    with pytest.raises(Pong):
        parse_github("ping", {"zen": "Keep it logically awesome."})
    with pytest.raises(Ignored, match="issues"):
        parse_github("issues", github_push())


@pytest.mark.parametrize("overrides, reason", [
    ({"ref": "refs/tags/v1.0"}, "tag push"),
    ({"ref": "refs/pull/1/head"}, "not a branch"),
    ({"deleted": True}, "branch deleted"),
    ({"after": "0" * 40}, "branch deleted"),
])
def test_github_tags_deletions_and_other_refs_are_ignored(overrides: dict[str, Any],
                                                          reason: str) -> None:
    with pytest.raises(Ignored, match=reason):
        parse_github("push", github_push(**overrides))


@pytest.mark.parametrize("payload, reason", [
    ([1, 2], "JSON object"),
    ("just a string", "JSON object"),
    (github_push(ref=None), "missing ref"),
    (github_push(after="abc123"), "not a full hex SHA"),
    (github_push(after="g" * 40), "not a full hex SHA"),
    (github_push(repository={}), "missing repository"),
    (github_push(ref="main"), "refs/heads"),
    (github_push(ref="refs/heads/"), "empty branch"),
    (github_push(ref="refs/heads/a\nb"), "control characters"),
    (github_push(ref="refs/heads/a\x00b"), "control characters"),
    (github_push(ref={"not": "a string"}), "must be a string"),
])
def test_github_malformed_payloads_are_bad(payload: Any, reason: str) -> None:
    with pytest.raises(BadPayload, match=reason):
        parse_github("push", payload)


def test_branch_names_and_messages_with_shell_metacharacters_are_kept_verbatim() -> None:
    branch = "feat/$(touch${IFS}/tmp/pwned);rm${IFS}-rf${IFS}x`id`|&<>'\""
    message = "$(touch /tmp/pwned); rm -rf / `reboot` && echo ${HOME}"
    event = parse_github("push", github_push(ref=f"refs/heads/{branch}",
                                             head_commit={"id": SHA, "message": message},
                                             pusher={"name": "$(whoami)"}))
    assert event.branch == branch
    assert event.message == message
    assert event.who == "github:$(whoami)"


def test_sha256_repositories_are_accepted_and_sha_is_lowercased() -> None:
    assert parse_github("push", github_push(after="C" * 64)).sha == "c" * 64


def test_gitea_push_uses_pusher_login() -> None:
    payload = github_push(pusher={"login": "gitea-user", "username": "gitea-user"})
    event = parse_gitea("push", payload)
    assert (event.provider, event.repo, event.branch, event.pusher) == (
        "gitea", "acme/demo", "main", "gitea-user")
    with pytest.raises(Ignored):
        parse_gitea("create", payload)


def gitlab_push(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "object_kind": "push", "ref": "refs/heads/main", "before": SHA2, "after": SHA,
        "checkout_sha": SHA, "user_username": "gl-user", "user_name": "GL User",
        "project": {"path_with_namespace": "group/sub/demo",
                    "git_http_url": "https://gitlab.example.com/group/sub/demo.git"},
        "commits": [{"id": SHA2, "message": "older"}, {"id": SHA, "message": "newest"}],
    }
    payload.update(overrides)
    return payload


def test_gitlab_push_hook_becomes_a_push_event() -> None:
    event = parse_gitlab("Push Hook", gitlab_push())
    assert (event.provider, event.repo, event.branch, event.sha, event.pusher, event.message) == (
        "gitlab", "group/sub/demo", "main", SHA, "gl-user", "newest")


def test_gitlab_system_hook_push_counts_tag_push_does_not() -> None:
    assert parse_gitlab("System Hook", gitlab_push()).sha == SHA
    with pytest.raises(Ignored):
        parse_gitlab("Tag Push Hook", gitlab_push(ref="refs/tags/v1"))
    with pytest.raises(Ignored):
        parse_gitlab("System Hook", gitlab_push(object_kind="merge_request"))


def test_gitlab_branch_deletion_is_ignored() -> None:
    with pytest.raises(Ignored, match="deleted"):
        parse_gitlab("Push Hook", gitlab_push(after="0" * 40, checkout_sha=None))


def test_generic_payload_uses_configured_paths_and_accepts_bare_branch_names() -> None:
    paths = GenericPaths(ref="$.push.changes[0].new.name", sha="$.push.changes[0].new.target.hash",
                         repo="$.repository.full_name", pusher="$.actor.nickname")
    payload = {"push": {"changes": [{"new": {"name": "release/1.2", "target": {"hash": SHA}}}]},
               "repository": {"full_name": "team/app"}, "actor": {"nickname": "bb"}}
    event = parse_generic(payload, paths)
    assert (event.provider, event.repo, event.branch, event.sha, event.pusher) == (
        "generic", "team/app", "release/1.2", SHA, "bb")


def test_generic_payload_missing_the_sha_is_bad() -> None:
    with pytest.raises(BadPayload, match=r"missing commit \(\$.after\)"):
        parse_generic({"ref": "refs/heads/main", "repository": {"full_name": "a/b"}},
                      GenericPaths())


def jenkins_message(phase: str = "FINALIZED", status: str = "SUCCESS",
                    **build: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "full_url": "http://jenkins.example/job/demo-build/12/", "number": 12,
        "phase": phase, "status": status, "url": "job/demo-build/12/",
        "scm": {"url": "https://example/acme/demo.git", "branch": "origin/main", "commit": SHA},
        "artifacts": {"demo.tar.gz": {
            "archive": "http://jenkins.example/job/demo-build/12/artifact/dist/demo.tar.gz"}},
    }
    body.update(build)
    return {"name": "demo-build", "url": "job/demo-build/", "build": body}


def test_jenkins_finalized_success_becomes_a_build_event() -> None:
    event = parse_jenkins(jenkins_message())
    assert isinstance(event, BuildEvent)
    assert (event.job, event.number, event.branch, event.commit) == ("demo-build", 12, "main", SHA)
    assert event.delivery_id == "demo-build#12"
    assert event.who == "jenkins:demo-build#12"
    assert event.version == SHA
    assert event.artifacts["demo.tar.gz"]["archive"].endswith("/artifact/dist/demo.tar.gz")


def test_jenkins_completed_success_is_deployable_too() -> None:
    assert parse_jenkins(jenkins_message(phase="COMPLETED")).phase == "COMPLETED"


@pytest.mark.parametrize("phase, status, reason", [
    ("STARTED", "", "phase 'STARTED'"),
    ("QUEUED", "", "phase 'QUEUED'"),
    ("FINALIZED", "FAILURE", "status 'FAILURE'"),
    ("COMPLETED", "UNSTABLE", "status 'UNSTABLE'"),
    ("FINALIZED", "ABORTED", "status 'ABORTED'"),
])
def test_jenkins_other_phases_and_statuses_are_ignored(phase: str, status: str,
                                                       reason: str) -> None:
    with pytest.raises(Ignored, match=reason):
        parse_jenkins(jenkins_message(phase=phase, status=status))


def test_jenkins_without_commit_uses_job_and_number_as_version() -> None:
    event = parse_jenkins(jenkins_message(scm={}))
    assert event.version == "demo-build-12"
    assert event.branch == ""


def test_jenkins_malformed_messages_are_bad() -> None:
    with pytest.raises(BadPayload, match="build number"):
        parse_jenkins(jenkins_message(number="12"))
    with pytest.raises(BadPayload, match="job name"):
        parse_jenkins({"build": jenkins_message()["build"]})
    with pytest.raises(BadPayload, match="artifacts"):
        parse_jenkins(jenkins_message(artifacts=["x"]))


@pytest.mark.parametrize("raw, branch", [("origin/main", "main"), ("refs/heads/dev", "dev"),
                                         ("feature/x", "feature/x"),
                                         ("refs/remotes/origin/rel/1", "rel/1")])
def test_jenkins_branch_strips_remote_prefixes(raw: str, branch: str) -> None:
    assert jenkins_branch(raw) == branch


def test_events_round_trip_through_their_dict_form() -> None:
    push = parse_github("push", github_push())
    build = parse_jenkins(jenkins_message())
    assert event_from_dict(push.to_dict()) == push
    assert event_from_dict(build.to_dict()) == build
