"""The real service (waitress on a loopback port) receiving real HTTP about real git pushes."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from pathlib import Path

from tests.integration.automation.conftest import (
    SECRETS,
    Harness,
    github_payload,
    sign,
    wait_for,
)


def test_bad_requests_get_precise_statuses_and_never_deploy(harness: Harness) -> None:
    sha = harness.remote.commit_and_push("v1")
    harness.write_config()
    service = harness.start()
    good = github_payload("main", sha)
    body = json.dumps(good).encode()

    def github(body: bytes, **headers: str) -> tuple[int, dict]:
        reply = harness.post(service, "github", body, {"X-GitHub-Event": "push",
                                                       "X-GitHub-Delivery": "d-bad", **headers})
        return reply.status_code, reply.json()

    # wrong and missing signatures
    assert github(body, **{"X-Hub-Signature-256": sign("wrong secret", body)})[0] == 401
    assert github(body)[0] == 401
    assert github(body, **{"X-Hub-Signature-256": "sha256=" + "0" * 64})[0] == 401
    # malformed JSON, correctly signed
    status, reply = github(b'{"ref": "refs/heads/main",', **{
        "X-Hub-Signature-256": sign(SECRETS["GH_SECRET"], b'{"ref": "refs/heads/main",')})
    assert status == 400 and "not valid JSON" in reply["error"]
    # a JSON array, correctly signed
    assert github(b"[]", **{"X-Hub-Signature-256": sign(SECRETS["GH_SECRET"], b"[]")})[0] == 400
    # oversized (limit 4096): answered from the Content-Length, before any signature check
    big = b'{"pad": "' + b"x" * 5000 + b'"}'
    reply = harness.post(service, "github", big, {
        "X-GitHub-Event": "push", "X-Hub-Signature-256": sign(SECRETS["GH_SECRET"], big)})
    assert reply.status_code == 413
    # unknown event and ping: understood, nothing to do
    reply = harness.post_github(service, good, event="issues")
    assert (reply.status_code, reply.json()["status"]) == (200, "ignored")
    reply = harness.post_github(service, {"zen": "hi", "hook_id": 1}, event="ping")
    assert (reply.status_code, reply.json()) == (200, {"status": "pong"})
    # a branch outside the rules, a tag, a deleted branch, another repository
    for payload, why in ((github_payload("develop", sha), "no rule matches"),
                         ({**good, "ref": "refs/tags/v1"}, "tag push"),
                         ({**good, "deleted": True, "after": "0" * 40}, "branch deleted"),
                         (github_payload("main", sha, repo="acme/other"), "no rule matches")):
        reply = harness.post_github(service, payload)
        assert reply.status_code == 200, payload
        assert reply.json()["status"] == "ignored" and why in reply.json()["reason"]
    # GitLab with a wrong token, Gitea with a wrong signature, generic without a token
    gitlab = harness.post(service, "gitlab", body, {"X-Gitlab-Event": "Push Hook",
                                                    "X-Gitlab-Token": "nope"})
    gitea = harness.post(service, "gitea", body, {"X-Gitea-Event": "push",
                                                  "X-Gitea-Signature": "ab" * 32})
    generic = harness.post(service, "generic", body, {})
    assert (gitlab.status_code, gitea.status_code, generic.status_code) == (401, 401, 401)
    # wrong method, unknown endpoint
    assert harness.http.get(f"{service.url}/hooks/github", timeout=5).status_code == 405
    assert harness.http.post(f"{service.url}/hooks/bitbucket", data=b"{}",
                             timeout=5).status_code == 404

    time.sleep(0.5)  # a wrongly enqueued job would be claimed by now (quiet_period = 0)
    assert harness.jobs() == []
    assert harness.records() == []
    jobs = harness.http.get(f"{service.url}/jobs", timeout=5).json()
    assert jobs["jobs"] == [] and sum(jobs["counts"].values()) == 0
    log = service.log()
    assert "rejected provider=github" in log and "status=401" in log
    for secret in SECRETS.values():
        assert secret not in log, "a secret reached the service log"
    assert sign("wrong secret", body)[7:] not in log, "a presented signature was logged"


def test_content_length_over_the_limit_is_refused_without_reading_the_body(
        harness: Harness) -> None:
    harness.write_config()
    service = harness.start()
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 1000000000\r\nX-GitHub-Event: push\r\n\r\n")
        started = time.monotonic()
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 2.0
    assert harness.jobs() == []


def test_github_push_builds_the_exact_pushed_commit_and_deploys_it(harness: Harness) -> None:
    v1 = harness.remote.commit_and_push("v1")
    v2 = harness.remote.commit_and_push("v2")  # the branch has moved on past v1
    harness.write_config()
    service = harness.start()

    reply = harness.post_github(service, github_payload("main", v1, pusher="alice"),
                                delivery="delivery-1")
    assert reply.status_code == 202, reply.text
    assert reply.json()["status"] == "queued"
    # The branch has moved on, so the webhook alone never deploys v1 (a late or replayed
    # push must not roll production back); a person asking for it explicitly does.
    late = harness.wait_job(reply.json()["job"])
    assert late.state == "skipped" and "no longer the tip" in late.summary, late.summary
    retried = harness.cli("jobs", "--retry", str(late.id))
    assert retried.returncode == 0, retried.stderr
    job = harness.wait_job(int(retried.stdout.split()[-1]))
    assert job.state == "succeeded", (job.summary, job.log_tail)

    [record] = harness.records()
    assert "version=v1" in record["artifact_text"]  # v1 was checked out, not the branch tip v2
    assert f"commit={v1}" in record["artifact_text"]
    argv = record["argv"]
    assert argv[argv.index("--version") + 1] == v1
    assert argv[argv.index("--who") + 1] == "github:alice"
    assert argv[argv.index("--config") + 1] == str(harness.app_config)
    artifact = Path(argv[argv.index("--artifact") + 1])
    assert artifact.name == "app.txt" and artifact.is_absolute()
    env = record["env"]
    assert (env["BLUEGREEN_COMMIT"], env["BLUEGREEN_BRANCH"]) == (v1, "main")
    assert env["BLUEGREEN_JOB_ID"] == str(job.id)
    for name in ("GH_SECRET", "GL_TOKEN", "GENERIC_TOKEN", "JENKINS_NOTIFY_TOKEN"):
        assert name not in record["env_names"], f"{name} leaked into the deploy"

    # the exact argv is stored for the audit trail: python, recorder, control, out, then args
    assert job.deploy_argv is not None and job.deploy_argv[4:] == argv
    assert job.exit_code == 0 and "recorder: deploy" in job.log_tail
    assert Path(job.log_path).is_file() and "== build" in Path(job.log_path).read_text()

    reply = harness.post_github(service, github_payload("main", v2, pusher="bob"),
                                delivery="delivery-2")
    job2 = harness.wait_job(reply.json()["job"])
    assert job2.state == "succeeded"
    assert "version=v2" in harness.records()[-1]["artifact_text"]

    listing = harness.http.get(f"{service.url}/jobs", timeout=5).json()["jobs"]
    assert [(j["id"], j["state"], j["sha"]) for j in listing] == [
        (job2.id, "succeeded", v2), (job.id, "succeeded", v1), (late.id, "skipped", v1)]
    health = harness.http.get(f"{service.url}/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json()["workers"] == {"demo/production": True}
    jobs = harness.cli("jobs")
    assert jobs.returncode == 0 and f"{v2[:12]}" in jobs.stdout
    detail = harness.cli("jobs", "--job", str(job.id))
    assert "deployed" in detail.stdout and "recorder: deploy" in detail.stdout


def test_replayed_delivery_is_answered_duplicate_and_deploys_once(harness: Harness) -> None:
    sha = harness.remote.commit_and_push("v1")
    harness.write_config()
    service = harness.start()
    payload = github_payload("main", sha)
    first = harness.post_github(service, payload, delivery="same-guid")
    assert first.status_code == 202
    harness.wait_job(first.json()["job"])
    again = harness.post_github(service, payload, delivery="same-guid")
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate" and again.json()["job"] == first.json()["job"]
    time.sleep(0.3)
    assert len(harness.records()) == 1 and len(harness.jobs()) == 1


def test_shell_metacharacters_in_branch_message_and_pusher_stay_data(harness: Harness,
                                                                     tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    branch = (f"x$(touch${{IFS}}{pwned}1);rm${{IFS}}-rf${{IFS}}{tmp_path}"
              f"`touch${{IFS}}{pwned}2`|&'\"<>")
    message = f"$(touch {pwned}3); rm -rf {tmp_path} `touch {pwned}4` && echo ${{HOME}}"
    pusher = f"$(touch {pwned}5)"
    sha = harness.remote.commit_and_push("meta", message=message, branch=branch)
    harness.write_config([harness.build_rule(branch=".*")])
    service = harness.start()

    reply = harness.post_github(service, github_payload(branch, sha, pusher=pusher,
                                                        message=message))
    assert reply.status_code == 202, reply.text
    job = harness.wait_job(reply.json()["job"])
    assert job.state == "succeeded", (job.summary, job.log_tail)
    assert job.branch == branch

    [record] = harness.records()
    assert record["env"]["BLUEGREEN_BRANCH"] == branch
    assert f"branch={branch}\n" in record["artifact_text"]  # the build saw it verbatim too
    argv = record["argv"]
    assert argv[argv.index("--who") + 1] == f"github:{pusher}"
    assert argv[argv.index("--version") + 1] == sha
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("pwned")) == []
    assert harness.remote.bare.is_dir() and harness.config_path.is_file()  # nothing removed


def test_gitlab_gitea_and_generic_pushes_deploy(harness: Harness) -> None:
    # One push per sender, each the branch tip when it arrives (a lane never deploys the
    # same commit twice on its own, so three senders of one commit would deploy it once).
    sha = harness.remote.commit_and_push("v1")
    harness.write_config(generic={"ref": "$.ref", "sha": "$.commit", "repo": "$.project",
                                  "pusher": "$.who", "delivery_header": "X-Request-Id"})
    service = harness.start()

    gitlab_body = json.dumps({
        "object_kind": "push", "ref": "refs/heads/main", "after": sha, "checkout_sha": sha,
        "user_username": "gl-user", "project": {"path_with_namespace": "acme/demo"},
        "commits": [{"id": sha, "message": "m"}]}).encode()
    reply = harness.post(service, "gitlab", gitlab_body, {
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRETS["GL_TOKEN"],
        "Idempotency-Key": "gl-1"})
    assert reply.status_code == 202, reply.text
    assert harness.wait_job(reply.json()["job"]).state == "succeeded"

    sha = harness.remote.commit_and_push("v2")
    gitea_body = json.dumps({**github_payload("main", sha), "pusher": {"login": "tea"}}).encode()
    signature = hmac.new(SECRETS["GITEA_SECRET"].encode(), gitea_body, hashlib.sha256)
    reply = harness.post(service, "gitea", gitea_body, {
        "X-Gitea-Event": "push", "X-Gitea-Signature": signature.hexdigest(),
        "X-Gitea-Delivery": "tea-1"})
    assert reply.status_code == 202, reply.text
    assert harness.wait_job(reply.json()["job"]).state == "succeeded"

    sha = harness.remote.commit_and_push("v3")
    generic_body = json.dumps({"ref": "main", "commit": sha, "project": "acme/demo",
                               "who": "script"}).encode()
    reply = harness.post(service, "generic", generic_body, {
        "Authorization": f"Bearer {SECRETS['GENERIC_TOKEN']}", "X-Request-Id": "gen-1"})
    assert reply.status_code == 202, reply.text
    assert harness.wait_job(reply.json()["job"]).state == "succeeded"
    replay = harness.post(service, "generic", generic_body, {"X-Request-Id": "gen-1"},
                          query=f"token={SECRETS['GENERIC_TOKEN']}")
    assert replay.json()["status"] == "duplicate"

    whos = [r["argv"][r["argv"].index("--who") + 1] for r in harness.records()]
    assert whos == ["gitlab:gl-user", "gitea:tea", "generic:script"]


def test_failed_deploy_is_recorded_with_exit_code_and_log_tail(harness: Harness) -> None:
    sha = harness.remote.commit_and_push("v1")
    harness.write_config()
    harness.set_recorder(exit_code=3)
    service = harness.start()
    reply = harness.post_github(service, github_payload("main", sha))
    job = harness.wait_job(reply.json()["job"])
    assert (job.state, job.exit_code) == ("failed", 3)
    assert job.summary == "deploy failed (exit 3)"
    assert "failing on purpose with 3" in job.log_tail
    # the lane keeps working after a failure
    harness.set_recorder()
    sha2 = harness.remote.commit_and_push("v2")
    reply = harness.post_github(service, github_payload("main", sha2))
    assert harness.wait_job(reply.json()["job"]).state == "succeeded"


def test_failed_build_never_deploys(harness: Harness) -> None:
    sha = harness.remote.commit_and_push("v1")
    harness.write_config([harness.build_rule(build_command="echo compiling; exit 7")])
    service = harness.start()
    reply = harness.post_github(service, github_payload("main", sha))
    job = harness.wait_job(reply.json()["job"])
    assert (job.state, job.summary) == ("failed", "build failed (exit 7)")
    assert "compiling" in job.log_tail
    assert harness.records() == []


def test_unknown_commit_fails_the_job_without_deploying(harness: Harness) -> None:
    harness.remote.commit_and_push("v1")
    harness.write_config()
    service = harness.start()
    reply = harness.post_github(service, github_payload("main", "f" * 40))
    # not the branch tip: never deployed automatically ...
    skipped = harness.wait_job(reply.json()["job"])
    assert skipped.state == "skipped" and "no longer the tip" in skipped.summary
    # ... and asked for explicitly, the fetch finds no such commit
    retried = harness.cli("jobs", "--retry", str(skipped.id))
    assert retried.returncode == 0, retried.stderr
    job = harness.wait_job(int(retried.stdout.split()[-1]))
    assert job.state == "failed" and "will not serve it" in job.summary
    assert harness.records() == []


def test_sigterm_lets_a_running_deploy_finish_then_exits_cleanly(harness: Harness) -> None:
    sha = harness.remote.commit_and_push("v1")
    harness.write_config()
    harness.set_recorder(sleep=1.5)
    service = harness.start()
    reply = harness.post_github(service, github_payload("main", sha))
    wait_for("the deploy to start", harness.records)
    assert service.stop() == 0
    job = harness.queue().get(reply.json()["job"])
    assert job is not None and job.state == "succeeded"
    assert "stopped" in service.log().splitlines()[-1]
    assert not (harness.state_dir / "serve.json").exists()
