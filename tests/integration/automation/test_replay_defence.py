"""Replayed webhooks never roll production back (issue 8).

A signed push body stays valid forever: whoever captured one (a proxy log, a leaked delivery
page) can send it again with a new delivery id, or none. The delivery id is chosen by the
sender, so it cannot be the defence. The worker checks, before it builds, that the commit
is still the tip of its branch at the remote and that it is neither what the lane already
deployed nor an ancestor of it. A person can still ask for an older commit explicitly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from tests.integration.automation.conftest import (
    SECRETS,
    Harness,
    git,
    github_payload,
    sign,
)


def versions(harness: Harness) -> list[str]:
    return [r["argv"][r["argv"].index("--version") + 1] for r in harness.records()]


def test_replayed_push_with_a_new_delivery_id_or_none_does_not_deploy_the_older_commit(
        harness: Harness) -> None:
    harness.write_config()
    service = harness.start()
    v1 = harness.remote.commit_and_push("v1")
    old_body = json.dumps(github_payload("main", v1, pusher="alice")).encode()
    old_signature = sign(SECRETS["GH_SECRET"], old_body)
    first = harness.post_github(service, old_body, delivery="guid-1")
    assert first.status_code == 202, first.text
    assert harness.wait_job(first.json()["job"]).state == "succeeded"
    v2 = harness.remote.commit_and_push("v2")
    second = harness.post_github(service, github_payload("main", v2, pusher="bob"),
                                 delivery="guid-2")
    assert harness.wait_job(second.json()["job"]).state == "succeeded"
    assert versions(harness) == [v1, v2]

    # The captured v1 delivery, byte for byte, with a new delivery id: accepted (it is
    # correctly signed) but never deployed.
    replay = harness.post_github(service, old_body, delivery="guid-attacker",
                                 signature=old_signature)
    assert replay.status_code == 202, replay.text
    replayed = harness.wait_job(replay.json()["job"])
    assert replayed.state == "skipped", (replayed.state, replayed.summary, replayed.log_tail)
    assert f"{v1[:12]} is no longer the tip of branch 'main'" in replayed.summary
    assert v2[:12] in replayed.summary

    # ... and without any delivery id at all.
    bare = harness.post_github(service, old_body, no_delivery=True, signature=old_signature)
    assert bare.status_code == 202, bare.text
    bare_job = harness.wait_job(bare.json()["job"])
    assert bare_job.state == "skipped", (bare_job.summary, bare_job.log_tail)

    # Replaying the current tip (already deployed) does not redeploy it either.
    tip_body = json.dumps(github_payload("main", v2, pusher="bob")).encode()
    again = harness.post_github(service, tip_body, delivery="guid-attacker-2")
    again_job = harness.wait_job(again.json()["job"])
    assert again_job.state == "skipped"
    assert f"{v2[:12]} is already deployed" in again_job.summary

    time.sleep(0.3)
    assert versions(harness) == [v1, v2]  # production never went back to v1
    assert harness.records()[-1]["artifact_text"].startswith("version=v2")

    # The reason is visible where people look: `bluegreen jobs`.
    listing = harness.cli("jobs", "--state", "skipped")
    assert listing.returncode == 0, listing.stderr
    assert "is no longer the tip" in listing.stdout and "already deployed" in listing.stdout
    assert service.log().count(" skipped: ") >= 3

    # A person may still ask for v1 explicitly: `bluegreen jobs --retry` deploys it.
    retried = harness.cli("jobs", "--retry", str(replayed.id))
    assert retried.returncode == 0, retried.stderr
    again_id = int(retried.stdout.split()[-1])
    explicit = harness.wait_job(again_id)
    assert explicit.state == "succeeded", (explicit.summary, explicit.log_tail)
    assert versions(harness) == [v1, v2, v1]


def test_a_branch_force_pushed_back_to_an_older_commit_is_not_deployed_again(
        harness: Harness) -> None:
    harness.write_config()
    service = harness.start()
    v1 = harness.remote.commit("v1")  # never deployed on its own: pushed together with v2
    v2 = harness.remote.commit_and_push("v2")
    assert harness.wait_job(harness.post_github(
        service, github_payload("main", v2)).json()["job"]).state == "succeeded"

    # The remote's main goes back to v1 (a force-push): v1 is the tip now and was never
    # deployed, but it is an ancestor of what this lane deployed last, so deploying it
    # automatically would be a rollback.
    git("push", "-q", "--force", "origin", f"{v1}:refs/heads/main", cwd=harness.remote.work)
    reply = harness.post_github(service, github_payload("main", v1), delivery="after-force")
    job = harness.wait_job(reply.json()["job"])
    assert job.state == "skipped", (job.summary, job.log_tail)
    assert f"{v1[:12]} is an ancestor of {v2[:12]}" in job.summary
    assert "bluegreen jobs --retry" in job.summary
    assert versions(harness) == [v2]


def test_an_unreachable_remote_fails_the_job_and_deploys_nothing(harness: Harness) -> None:
    # The remote answers nothing at all: ls-remote must give up within its timeout.
    harness.extra_env["GIT_SSH_COMMAND"] = "sleep 60; true"
    harness.write_config([harness.build_rule(clone_url="ssh://git.example.invalid/demo.git")])
    config = harness.config_path.read_text().replace('[git]\ntimeout = 30.0',
                                                     '[git]\ntimeout = 30.0\n'
                                                     'ls_remote_timeout = 1.0')
    harness.config_path.write_text(config)
    service = harness.start()
    started = time.monotonic()
    reply = harness.post_github(service, github_payload("main", "a" * 40))
    job = harness.wait_job(reply.json()["job"])
    assert time.monotonic() - started < 15
    assert job.state == "failed", (job.summary, job.log_tail)
    assert "could not ask the remote" in job.summary and "not deployed" in job.summary
    assert "timed out after 1s" in job.summary
    assert harness.records() == []


def stamped(body: bytes, timestamp: int) -> str:
    mac = hmac.new(SECRETS["GENERIC_TOKEN"].encode(), f"{timestamp}.".encode() + body,
                   hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def test_generic_timestamped_signature_deploys_once_and_expires(harness: Harness) -> None:
    harness.write_config(generic={"ref": "$.ref", "sha": "$.commit", "repo": "$.project",
                                  "pusher": "$.who", "delivery_header": "X-Request-Id",
                                  "auth": "signature", "signature_tolerance": 120})
    service = harness.start()
    sha = harness.remote.commit_and_push("v1")
    body = json.dumps({"ref": "main", "commit": sha, "project": "acme/demo",
                       "who": "ci-script"}).encode()
    signature = stamped(body, int(time.time()))
    headers = {"X-Bluegreen-Signature": signature, "X-Request-Id": "run-1"}

    reply = harness.post(service, "generic", body, headers)
    assert reply.status_code == 202, reply.text
    assert harness.wait_job(reply.json()["job"]).state == "succeeded"

    # The same signed request, captured and sent again under a new id: a duplicate.
    again = harness.post(service, "generic", body, {**headers, "X-Request-Id": "run-2"})
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    # A signature made 10 minutes ago (a replay from a log, say) is refused outright ...
    old = harness.post(service, "generic", body, {
        "X-Bluegreen-Signature": stamped(body, int(time.time()) - 600), "X-Request-Id": "r-3"})
    assert old.status_code == 401 and "old" in old.json()["error"]
    # ... and with auth = "signature" the plain token no longer opens the endpoint.
    token = harness.post(service, "generic", body, {
        "Authorization": f"Bearer {SECRETS['GENERIC_TOKEN']}", "X-Request-Id": "r-4"})
    assert token.status_code == 401

    time.sleep(0.3)
    assert [r["argv"][r["argv"].index("--who") + 1] for r in harness.records()] == [
        "generic:ci-script"]
    log = service.log()
    assert signature.split("v1=")[1] not in log and SECRETS["GENERIC_TOKEN"] not in log
