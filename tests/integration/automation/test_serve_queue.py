"""Coalescing, restarts and shutdowns, against the real service and real git pushes."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from tests.integration.automation.conftest import (
    Harness,
    github_payload,
    kill_if_ours,
    wait_for,
)


def versions(harness: Harness) -> list[str]:
    return [r["argv"][r["argv"].index("--version") + 1] for r in harness.records()]


def test_two_rapid_pushes_while_a_deploy_runs_give_one_deploy_of_the_newer(
        harness: Harness) -> None:
    harness.write_config()
    harness.set_recorder(sleep=1.5)
    service = harness.start()
    a = harness.remote.commit_and_push("a")
    first = harness.post_github(service, github_payload("main", a)).json()["job"]
    wait_for("deploy of a to start", harness.records)
    b = harness.remote.commit_and_push("b")
    job_b = harness.post_github(service, github_payload("main", b)).json()
    c = harness.remote.commit_and_push("c")
    job_c = harness.post_github(service, github_payload("main", c)).json()
    assert job_c["superseded"] == [job_b["job"]]
    harness.set_recorder()

    assert harness.wait_job(job_c["job"]).state == "succeeded"
    assert versions(harness) == [a, c]
    states = {j.id: (j.state, j.superseded_by) for j in harness.jobs()}
    assert states == {first: ("succeeded", None), job_b["job"]: ("superseded", job_c["job"]),
                      job_c["job"]: ("succeeded", None)}
    assert "version=c" in harness.records()[-1]["artifact_text"]


def test_two_rapid_pushes_within_the_quiet_period_give_one_deploy(harness: Harness) -> None:
    harness.write_config(quiet_period=1.0)
    service = harness.start()
    a = harness.remote.commit_and_push("a")
    harness.post_github(service, github_payload("main", a))
    b = harness.remote.commit_and_push("b")
    job_b = harness.post_github(service, github_payload("main", b)).json()["job"]
    assert harness.wait_job(job_b).state == "succeeded"
    time.sleep(0.3)
    assert versions(harness) == [b]
    assert [j.state for j in harness.jobs()] == ["superseded", "succeeded"]


def test_restart_resumes_pending_jobs_and_reports_the_interrupted_one(harness: Harness) -> None:
    harness.write_config()
    harness.set_recorder(sleep=60)
    first = harness.start()
    a = harness.remote.commit_and_push("a")
    job_a = harness.post_github(first, github_payload("main", a)).json()["job"]
    wait_for("deploy of a to start", harness.records)
    b = harness.remote.commit_and_push("b")
    job_b = harness.post_github(first, github_payload("main", b)).json()["job"]

    first.stop(signal.SIGKILL)  # a crash mid-deploy: no chance to record anything
    orphan = harness.records()[0]["pid"]
    assert Path(f"/proc/{orphan}").exists()  # the deploy outlived the service (own session)
    kill_if_ours(orphan, str(harness.recorder))
    queue = harness.queue()
    assert queue.get(job_a).state == "running"  # type: ignore[union-attr]
    assert queue.get(job_b).state == "pending"  # type: ignore[union-attr]

    harness.set_recorder()
    second = harness.start()
    assert harness.wait_job(job_b).state == "succeeded"
    interrupted = queue.get(job_a)
    assert interrupted is not None and interrupted.state == "interrupted"
    assert "not retried" in interrupted.summary
    assert versions(harness) == [a, b]  # a was not run again
    health = harness.http.get(f"{second.url}/healthz", timeout=5).json()
    assert health["interrupted_on_start"] == [job_a]
    assert f"job {job_a} " in second.log() and "interrupted by a restart" in second.log()
    listing = harness.cli("jobs")
    assert "interrupted" in listing.stdout

    # Re-running the interrupted deploy is a person's decision, made with `jobs --retry`.
    retried = harness.cli("jobs", "--retry", str(job_a))
    assert retried.returncode == 0, retried.stderr
    again = int(retried.stdout.split()[-1])
    assert harness.wait_job(again).state == "succeeded"
    assert versions(harness) == [a, b, a]


def test_sigterm_past_the_grace_period_stops_the_deploy_and_records_it(
        harness: Harness) -> None:
    harness.write_config(shutdown_grace=0.5)
    harness.set_recorder(sleep=60)
    service = harness.start()
    a = harness.remote.commit_and_push("a")
    job = harness.post_github(service, github_payload("main", a)).json()["job"]
    record = wait_for("deploy to start", harness.records)[0]
    started = time.monotonic()
    assert service.stop(timeout=30) == 0
    assert time.monotonic() - started < 15
    stopped = harness.queue().get(job)
    assert stopped is not None and stopped.state == "interrupted"
    assert "grace period over" in stopped.summary
    assert not Path(f"/proc/{record['pid']}").exists()  # the deploy's process group was stopped


def test_a_second_server_on_the_same_state_dir_is_refused(harness: Harness) -> None:
    harness.write_config()
    harness.start()
    refused = harness.cli("serve", timeout=20)
    assert refused.returncode != 0
    assert "another process already runs jobs" in refused.stderr


def test_a_port_in_use_is_a_clear_error_not_a_traceback(harness: Harness) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        harness.write_config(port=taken.getsockname()[1])
        refused = harness.cli("serve", timeout=30)
    assert refused.returncode == 1
    assert "cannot listen on 127.0.0.1:" in refused.stderr
    assert "Traceback" not in refused.stderr
