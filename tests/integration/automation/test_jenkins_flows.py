"""Both Jenkins paths against a fake Jenkins on loopback: triggering a job through the remote
API, and deploying the artifact of a build the Notification plugin reports."""

from __future__ import annotations

import base64
import hashlib
import json
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.integration.automation.conftest import (
    SECRETS,
    FakeJenkins,
    Harness,
    github_payload,
)

AUTH = "Basic " + base64.b64encode(f"deploy-bot:{SECRETS['JENKINS_API_TOKEN']}".encode()).decode()


def jenkins_settings(fake: FakeJenkins) -> dict[str, Any]:
    return {"url": fake.url, "user": "deploy-bot", "api_token_env": "JENKINS_API_TOKEN",
            "queue_poll_interval": 0.05, "queue_timeout": 5.0, "request_timeout": 5.0,
            "artifact_timeout": 10.0}


def test_push_triggers_jenkins_and_follows_the_queue_item_to_the_build(
        harness: Harness, fake_jenkins: FakeJenkins) -> None:
    build_url = fake_jenkins.url + "job/demo/job/deploy/5/"
    polls: list[int] = []

    def trigger(_j: FakeJenkins, handler: BaseHTTPRequestHandler,
                _body: bytes) -> tuple[int, dict[str, str], bytes]:
        if handler.headers.get("Authorization") != AUTH:
            return 401, {}, b"bad credentials"
        # Jenkins names itself by its own root URL; the service must not follow that host.
        return 201, {"Location": "http://jenkins.internal.invalid/queue/item/17/"}, b""

    def queue_item(_j: FakeJenkins, _h: BaseHTTPRequestHandler,
                   _body: bytes) -> tuple[int, dict[str, str], bytes]:
        polls.append(1)
        if len(polls) < 3:
            return 200, {}, json.dumps({"why": "Waiting for next available executor",
                                        "executable": None}).encode()
        return 200, {}, json.dumps({"executable": {"number": 5, "url": build_url}}).encode()

    fake_jenkins.routes[("POST", "/job/demo/job/deploy/buildWithParameters")] = trigger
    fake_jenkins.routes[("GET", "/queue/item/17/api/json")] = queue_item
    rule = {"name": "via-jenkins", "repo": "acme/demo", "branch": "main", "app": "demo",
            "action": "jenkins", "jenkins_job": "demo/deploy",
            "jenkins_parameters": {"ref": "refs/heads/{branch}", "COMMIT": "{sha}",
                                   "WHO": "{who}"}}
    harness.write_config([rule], jenkins=jenkins_settings(fake_jenkins))
    service = harness.start()
    sha = harness.remote.commit_and_push("v1")

    reply = harness.post_github(service, github_payload("main", sha, pusher="carol"))
    assert reply.status_code == 202
    job = harness.wait_job(reply.json()["job"])
    assert job.state == "succeeded", job.summary
    assert job.build_url == build_url and build_url in job.summary
    post = next(r for r in fake_jenkins.requests if r["method"] == "POST")
    form = dict(pair.split("=", 1) for pair in post["body"].decode().split("&"))
    assert form == {"ref": "refs%2Fheads%2Fmain", "COMMIT": sha, "WHO": "github%3Acarol"}
    assert len(polls) == 3
    assert all(r["headers"].get("Authorization") == AUTH for r in fake_jenkins.requests)
    assert harness.records() == []  # Jenkins deploys; the service only triggered it
    assert SECRETS["JENKINS_API_TOKEN"] not in service.log()


def test_jenkins_refusal_and_cancelled_queue_items_fail_the_job(
        harness: Harness, fake_jenkins: FakeJenkins) -> None:
    fake_jenkins.route("POST", "/job/deploy/buildWithParameters", 403, b"forbidden")
    rule = {"name": "via-jenkins", "repo": "acme/demo", "branch": "main", "app": "demo",
            "action": "jenkins", "jenkins_job": "deploy"}
    harness.write_config([rule], jenkins=jenkins_settings(fake_jenkins))
    service = harness.start()
    sha = harness.remote.commit_and_push("v1")
    job = harness.wait_job(harness.post_github(service, github_payload("main", sha)).json()["job"])
    assert job.state == "failed"
    assert "HTTP 403" in job.summary and "Job/Build permission" in job.summary

    fake_jenkins.route("POST", "/job/deploy/buildWithParameters", 201,
                       headers={"Location": fake_jenkins.url + "queue/item/3/"})
    fake_jenkins.route("GET", "/queue/item/3/api/json", 200, {"cancelled": True})
    sha2 = harness.remote.commit_and_push("v2")
    job = harness.wait_job(harness.post_github(service, github_payload("main", sha2)).json()["job"])
    assert (job.state, job.summary) == ("failed", "the queued Jenkins build was cancelled")


ARTIFACT = b"demo release 7\n" * 100


def notification(fake: FakeJenkins, number: int, phase: str, *, status: str = "SUCCESS",
                 listed: bool = True, full_url: str | None = None) -> bytes:
    base = full_url or f"{fake.url}job/demo-build/{number}/"
    build: dict[str, Any] = {
        "full_url": base, "number": number, "phase": phase, "status": status,
        "url": f"job/demo-build/{number}/",
        "scm": {"branch": "origin/main", "commit": f"{number:040x}"}}
    if listed:
        build["artifacts"] = {"demo.tar.gz": {"archive": base + "artifact/dist/demo.tar.gz"}}
    return json.dumps({"name": "demo-build", "url": "job/demo-build/", "build": build}).encode()


def serve_artifact(fake: FakeJenkins, number: int, data: bytes, checksum: str | None) -> None:
    path = f"/job/demo-build/{number}/artifact/dist/demo.tar.gz"
    fake.route("GET", path, 200, data)
    if checksum is not None:
        fake.route("GET", path + ".sha256", 200, f"{checksum}  demo.tar.gz\n".encode())


def deploy_artifact_rule(harness: Harness, **overrides: Any) -> dict[str, Any]:
    rule = {"name": "from-jenkins", "job": "demo-build", "branch": "main", "app": "demo",
            "action": "deploy_artifact", "artifact": "dist/demo.tar.gz",
            "config": str(harness.app_config), "deploy_command": harness.deploy_command(),
            "require_checksum": True}
    rule.update(overrides)
    return rule


def test_notification_fetches_verifies_and_deploys_a_finished_build_once(
        harness: Harness, fake_jenkins: FakeJenkins) -> None:
    serve_artifact(fake_jenkins, 7, ARTIFACT, hashlib.sha256(ARTIFACT).hexdigest())
    harness.write_config([deploy_artifact_rule(harness)], jenkins=jenkins_settings(fake_jenkins))
    service = harness.start()
    token = f"token={SECRETS['JENKINS_NOTIFY_TOKEN']}"

    def notify(body: bytes, query: str = token) -> dict[str, Any]:
        reply = harness.post(service, "jenkins", body, {}, query=query)
        return {"code": reply.status_code, **reply.json()}

    assert notify(notification(fake_jenkins, 7, "STARTED"), query="token=wrong")["code"] == 401
    started = notify(notification(fake_jenkins, 7, "STARTED"))
    assert (started["code"], started["status"]) == (200, "ignored")
    early = notify(notification(fake_jenkins, 7, "COMPLETED", listed=False))
    assert early["code"] == 200 and "waiting for FINALIZED" in early["reason"]
    queued = notify(notification(fake_jenkins, 7, "FINALIZED"))
    assert queued["code"] == 202, queued
    again = notify(notification(fake_jenkins, 7, "FINALIZED"))
    assert (again["code"], again["status"], again["job"]) == (200, "duplicate", queued["job"])

    job = harness.wait_job(queued["job"])
    assert job.state == "succeeded", (job.summary, job.log_tail)
    [record] = harness.records()
    assert record["artifact_sha256"] == hashlib.sha256(ARTIFACT).hexdigest()
    argv = record["argv"]
    assert argv[argv.index("--version") + 1] == f"{7:040x}"
    assert argv[argv.index("--who") + 1] == "jenkins:demo-build#7"
    assert record["env"]["BLUEGREEN_BUILD_URL"] == f"{fake_jenkins.url}job/demo-build/7/"
    assert record["env"]["BLUEGREEN_BRANCH"] == "main"
    fetched = [r for r in fake_jenkins.requests if r["method"] == "GET"]
    assert {r["path"] for r in fetched} == {"/job/demo-build/7/artifact/dist/demo.tar.gz",
                                            "/job/demo-build/7/artifact/dist/demo.tar.gz.sha256"}
    assert all(r["headers"].get("Authorization") == AUTH for r in fetched)
    assert "(verified)" in job.log_tail


def test_bad_artifacts_fail_the_job_and_never_deploy(harness: Harness,
                                                     fake_jenkins: FakeJenkins) -> None:
    serve_artifact(fake_jenkins, 8, ARTIFACT, "0" * 64)  # checksum mismatch
    # build 9: the artifact is missing (404) and so is its checksum
    serve_artifact(fake_jenkins, 10, b"", None)  # empty artifact, no checksum published
    serve_artifact(fake_jenkins, 11, ARTIFACT, None)  # fine, but no checksum published
    harness.write_config([deploy_artifact_rule(harness, require_checksum=False)],
                         jenkins=jenkins_settings(fake_jenkins))
    service = harness.start()
    token = f"token={SECRETS['JENKINS_NOTIFY_TOKEN']}"

    def run(body: bytes) -> str:
        reply = harness.post(service, "jenkins", body, {}, query=token)
        assert reply.status_code == 202, reply.text
        job = harness.wait_job(reply.json()["job"])
        assert job.state == "failed"
        return job.summary

    assert "sha256 mismatch" in run(notification(fake_jenkins, 8, "FINALIZED"))
    assert "HTTP 404" in run(notification(fake_jenkins, 9, "FINALIZED"))
    assert "artifact is empty" in run(notification(fake_jenkins, 10, "FINALIZED"))
    elsewhere = "http://127.0.0.1:9/job/demo-build/12/"  # not under jenkins.url
    assert "not under jenkins.url" in run(notification(fake_jenkins, 12, "FINALIZED",
                                                       full_url=elsewhere))
    assert harness.records() == []
    assert not any("/12/" in r["path"] for r in fake_jenkins.requests)

    # the same rule deploys an unverified artifact when no checksum is demanded...
    reply = harness.post(service, "jenkins", notification(fake_jenkins, 11, "FINALIZED"), {},
                         query=token)
    assert harness.wait_job(reply.json()["job"]).state == "succeeded"
    assert len(harness.records()) == 1


def test_require_checksum_refuses_an_unverifiable_artifact(harness: Harness,
                                                           fake_jenkins: FakeJenkins) -> None:
    serve_artifact(fake_jenkins, 11, ARTIFACT, None)
    harness.write_config([deploy_artifact_rule(harness)], jenkins=jenkins_settings(fake_jenkins))
    service = harness.start()
    reply = harness.post(service, "jenkins", notification(fake_jenkins, 11, "FINALIZED"), {},
                         query=f"token={SECRETS['JENKINS_NOTIFY_TOKEN']}")
    job = harness.wait_job(reply.json()["job"])
    assert job.state == "failed" and "require_checksum" in job.summary
    assert harness.records() == []
