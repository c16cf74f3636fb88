"""The WSGI app called directly (no server): routing, size limits and status codes."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from bluegreen.automation.jobqueue import JobQueue
from bluegreen.automation.settings import load_settings, resolve_secrets
from bluegreen.automation.wsgi import HookApp
from tests.unit.automation.rules import MAIN_RULE

CONFIG = """
[service]
state_dir = "state"
max_body_bytes = 2000
[secrets]
github = "GH"
generic = "GEN"
""" + MAIN_RULE
SHA = "e" * 40


class ExplodingInput(io.BytesIO):
    def read(self, *args: Any) -> bytes:
        raise AssertionError("the body must not be read")


AppParts = tuple[HookApp, JobQueue, list[str]]


@pytest.fixture
def app(tmp_path: Path) -> AppParts:
    path = tmp_path / "automation.toml"
    path.write_text(CONFIG)
    settings = load_settings(path)
    queue = JobQueue(settings.db_path)
    woken: list[str] = []
    hook_app = HookApp(settings, resolve_secrets(settings, {"GH": "gh-secret", "GEN": "tok"}),
                       queue, wake=woken.append, health=lambda: (True, {"workers": {}}))
    return hook_app, queue, woken


def call(app: HookApp, method: str, path: str, body: bytes = b"", headers: dict[str, str] |
         None = None, query: str = "", stream: io.BytesIO | None = None,
         content_length: str | None = None, content_type: str = "application/json",
         ) -> tuple[int, dict[str, Any], dict[str, str]]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
        "REMOTE_ADDR": "127.0.0.1", "CONTENT_TYPE": content_type,
        "wsgi.input": stream if stream is not None else io.BytesIO(body)}
    if content_length is not None:
        environ["CONTENT_LENGTH"] = content_length
    elif method == "POST":
        environ["CONTENT_LENGTH"] = str(len(body))
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    seen: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        seen["status"] = int(status.split()[0])
        seen["headers"] = dict(response_headers)

    chunks = app(environ, start_response)
    return seen["status"], json.loads(b"".join(chunks)), seen["headers"]


def github_headers(body: bytes, event: str = "push", delivery: str = "d1") -> dict[str, str]:
    sig = hmac.new(b"gh-secret", body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={sig}", "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery}


def push_body(branch: str = "main") -> bytes:
    return json.dumps({"ref": f"refs/heads/{branch}", "after": SHA,
                       "repository": {"full_name": "acme/demo"},
                       "pusher": {"name": "dev"}}).encode()


def test_signed_push_is_queued_with_202_and_wakes_its_lane(app: AppParts) -> None:
    hook_app, queue, woken = app
    body = push_body()
    status, reply, headers = call(hook_app, "POST", "/hooks/github", body, github_headers(body))
    assert status == 202 and reply["status"] == "queued"
    assert woken == ["demo/production"]
    job = queue.get(reply["job"])
    assert job is not None and job.sha == SHA and job.delivery_id == "d1"
    assert headers["Content-Type"] == "application/json"


def test_oversized_content_length_is_413_without_reading_the_body(app: AppParts) -> None:
    hook_app, queue, _ = app
    status, reply, _ = call(hook_app, "POST", "/hooks/github", stream=ExplodingInput(),
                            content_length="2001", headers=github_headers(b""))
    assert status == 413 and "2001" in reply["error"]
    assert queue.list_jobs() == []


def test_missing_content_length_is_411(app: AppParts) -> None:
    hook_app, _, _ = app
    status, _, _ = call(hook_app, "POST", "/hooks/github", stream=ExplodingInput(),
                        content_length="")
    assert status == 411


def test_form_encoded_hooks_are_415_before_reading(app: AppParts) -> None:
    hook_app, _, _ = app
    status, reply, _ = call(hook_app, "POST", "/hooks/github", stream=ExplodingInput(),
                            content_length="14",
                            content_type="application/x-www-form-urlencoded")
    assert status == 415 and "application/json" in reply["error"]


@pytest.mark.parametrize("method, path, status, allow", [
    ("GET", "/hooks/github", 405, "POST"),
    ("POST", "/jobs", 405, "GET"),
    ("GET", "/nope", 404, None),
    ("POST", "/hooks/bitbucket", 404, None),
    ("POST", "/hooks/gitlab", 404, None),  # provider without a configured secret: disabled
])
def test_routing_errors(app: AppParts, method: str, path: str, status: int,
                        allow: str | None) -> None:
    hook_app, _, _ = app
    got, _, headers = call(hook_app, method, path, b"{}")
    assert got == status
    assert headers.get("Allow") == allow


def test_unauthenticated_garbage_gets_401_not_400(app: AppParts) -> None:
    hook_app, _, _ = app
    status, reply, _ = call(hook_app, "POST", "/hooks/github", b"{not json",
                            {"X-GitHub-Event": "push"})
    assert status == 401 and "missing X-Hub-Signature-256" in reply["error"]


def test_signed_garbage_gets_400(app: AppParts) -> None:
    hook_app, _, _ = app
    body = b"{not json"
    status, reply, _ = call(hook_app, "POST", "/hooks/github", body, github_headers(body))
    assert status == 400 and "not valid JSON" in reply["error"]


def test_missing_event_header_is_400(app: AppParts) -> None:
    hook_app, _, _ = app
    body = push_body()
    headers = github_headers(body)
    del headers["X-GitHub-Event"]
    status, reply, _ = call(hook_app, "POST", "/hooks/github", body, headers)
    assert status == 400 and "x-github-event" in reply["error"]


def test_generic_without_delivery_header_dedupes_identical_bodies(app: AppParts) -> None:
    hook_app, queue, _ = app
    body = push_body()
    first = call(hook_app, "POST", "/hooks/generic", body, {"Authorization": "Bearer tok"})
    second = call(hook_app, "POST", "/hooks/generic", body, query="token=tok")
    assert first[0] == 202 and second[0] == 200
    assert second[1]["status"] == "duplicate" and second[1]["job"] == first[1]["job"]
    assert len(queue.list_jobs()) == 1


def test_healthz_and_jobs(app: AppParts) -> None:
    hook_app, _, _ = app
    status, reply, _ = call(hook_app, "GET", "/healthz")
    assert status == 200 and reply["status"] == "ok"
    body = push_body()
    call(hook_app, "POST", "/hooks/github", body, github_headers(body))
    status, reply, _ = call(hook_app, "GET", "/jobs", query="state=pending&limit=5")
    assert status == 200 and [j["state"] for j in reply["jobs"]] == ["pending"]
    assert "log_tail" not in reply["jobs"][0]
    assert call(hook_app, "GET", "/jobs", query="state=bogus")[0] == 400
    assert call(hook_app, "GET", "/jobs", query="limit=x")[0] == 400


# ---- generic endpoint: a timestamped signature beside the plain token ----------------------

def stamped(body: bytes, timestamp: int | None = None, secret: bytes = b"tok") -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def generic_app(tmp_path: Path, auth: str) -> AppParts:
    path = tmp_path / "automation.toml"
    path.write_text(CONFIG + f'[generic]\nauth = "{auth}"\nsignature_tolerance = 60\n')
    settings = load_settings(path)
    queue = JobQueue(settings.db_path)
    hook_app = HookApp(settings, resolve_secrets(settings, {"GH": "gh-secret", "GEN": "tok"}),
                       queue, wake=lambda _lane: None, health=lambda: (True, {}))
    return hook_app, queue, []


def test_generic_accepts_a_fresh_timestamped_signature_once(app: AppParts) -> None:
    hook_app, queue, _ = app
    body = push_body()
    header = {"X-Bluegreen-Signature": stamped(body)}
    status, reply, _ = call(hook_app, "POST", "/hooks/generic", body, header)
    assert status == 202, reply
    # the same signed request again, under a delivery id of the sender's choosing
    status, reply, _ = call(hook_app, "POST", "/hooks/generic", body,
                            {**header, "X-Request-Id": "new-id"})
    assert (status, reply["status"]) == (200, "duplicate")
    # ... or with a junk v1= added to the captured header
    padded = {"X-Bluegreen-Signature": header["X-Bluegreen-Signature"] + ",v1=" + "0" * 64}
    status, reply, _ = call(hook_app, "POST", "/hooks/generic", body, padded)
    assert (status, reply["status"]) == (200, "duplicate")
    assert len(queue.list_jobs()) == 1


def test_generic_rejects_a_stale_or_bad_signature_and_a_token_does_not_rescue_it(
        app: AppParts) -> None:
    hook_app, queue, _ = app
    body = push_body()
    stale = {"X-Bluegreen-Signature": stamped(body, int(time.time()) - 3600)}
    status, reply, _ = call(hook_app, "POST", "/hooks/generic", body, stale)
    assert status == 401 and "old" in reply["error"]
    wrong = {"X-Bluegreen-Signature": stamped(body, secret=b"guess"),
             "Authorization": "Bearer tok"}
    status, reply, _ = call(hook_app, "POST", "/hooks/generic", body, wrong)
    assert status == 401 and "does not match" in reply["error"]
    assert queue.list_jobs() == []


def test_generic_auth_signature_refuses_the_plain_token(tmp_path: Path) -> None:
    hook_app, _, _ = generic_app(tmp_path, "signature")
    body = push_body()
    status, reply, _ = call(hook_app, "POST", "/hooks/generic", body,
                            {"Authorization": "Bearer tok"})
    assert status == 401 and "missing X-Bluegreen-Signature" in reply["error"]
    status, _, _ = call(hook_app, "POST", "/hooks/generic", body,
                        {"X-Bluegreen-Signature": stamped(body)})
    assert status == 202
    # the configured tolerance (60 s) is the window
    status, reply, _ = call(hook_app, "POST", "/hooks/generic", body,
                            {"X-Bluegreen-Signature": stamped(body, int(time.time()) - 90)})
    assert status == 401 and "tolerance of 60s" in reply["error"]


def test_generic_auth_token_ignores_the_signature_header(tmp_path: Path) -> None:
    hook_app, _, _ = generic_app(tmp_path, "token")
    body = push_body()
    status, reply, _ = call(hook_app, "POST", "/hooks/generic", body,
                            {"X-Bluegreen-Signature": stamped(body)})
    assert status == 401 and "missing token" in reply["error"]
    status, _, _ = call(hook_app, "POST", "/hooks/generic", body,
                        {"X-Bluegreen-Signature": "garbage", "Authorization": "Bearer tok"})
    assert status == 202
