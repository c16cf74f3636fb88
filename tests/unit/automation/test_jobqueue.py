"""The SQLite queue: dedupe, coalescing, claiming, interruption, poll state."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from bluegreen.automation.jobqueue import (
    FAILED,
    INTERRUPTED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    SUPERSEDED,
    JobQueue,
    JobRequest,
)


def request(sha: str, lane: str = "demo/production", delivery: str | None = None) -> JobRequest:
    app, env = lane.split("/")
    return JobRequest(lane=lane, app=app, environment=env, rule="r", action="build",
                      provider="github", event={"sha": sha}, delivery_id=delivery,
                      repo="acme/demo", branch="main", sha=sha, who="github:x")


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    return JobQueue(tmp_path / "q.sqlite3")


def test_database_is_in_wal_mode(queue: JobQueue) -> None:
    with sqlite3.connect(queue.db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_delivery_id_is_accepted_once(queue: JobQueue) -> None:
    first = queue.submit("github", "d-1", [request("a" * 40, delivery="d-1")])
    again = queue.submit("github", "d-1", [request("a" * 40, delivery="d-1")])
    assert not first.duplicate and again.duplicate
    assert again.job_ids == first.job_ids
    assert len(queue.list_jobs()) == 1
    other_provider = queue.submit("gitlab", "d-1", [request("a" * 40, delivery="d-1")])
    assert not other_provider.duplicate


def test_newer_push_supersedes_the_pending_job_of_its_lane_only(queue: JobQueue) -> None:
    a = queue.submit("github", None, [request("a" * 40)]).job_ids[0]
    other = queue.submit("github", None, [request("o" * 40, lane="docs/production")]).job_ids[0]
    b = queue.submit("github", None, [request("b" * 40)])
    assert b.superseded == [a]
    old = queue.get(a)
    assert old is not None and old.state == SUPERSEDED and old.superseded_by == b.job_ids[0]
    assert queue.get(other).state == PENDING  # type: ignore[union-attr]
    assert [j.id for j in queue.list_jobs(states=[PENDING])] == [b.job_ids[0], other]


def test_pushes_while_running_collapse_into_one_pending_job(queue: JobQueue) -> None:
    queue.submit("github", None, [request("a" * 40)])
    running = queue.claim_next("demo/production")
    assert running is not None and running.sha == "a" * 40 and running.state == RUNNING
    queue.submit("github", None, [request("b" * 40)])
    c = queue.submit("github", None, [request("c" * 40)]).job_ids[0]
    assert queue.claim_next("demo/production") is None  # one at a time per lane
    queue.finish(running.id, SUCCEEDED, "ok", exit_code=0)
    nxt = queue.claim_next("demo/production")
    assert nxt is not None and nxt.id == c and nxt.sha == "c" * 40
    assert queue.counts()[SUPERSEDED] == 1


def test_quiet_period_holds_a_fresh_job_back(queue: JobQueue) -> None:
    queue.submit("github", None, [request("a" * 40)], now=1000.0)
    assert queue.claim_next("demo/production", quiet_period=5, now=1003.0) is None
    assert queue.seconds_until_due("demo/production", 5, now=1003.0) == pytest.approx(2.0)
    assert queue.claim_next("demo/production", quiet_period=5, now=1005.5) is not None


def test_running_jobs_found_at_start_are_interrupted_not_retried(queue: JobQueue) -> None:
    queue.submit("github", None, [request("a" * 40)])
    job = queue.claim_next("demo/production")
    assert job is not None
    queue.submit("github", None, [request("b" * 40)])
    interrupted = queue.interrupt_running("interrupted: test")
    assert [j.id for j in interrupted] == [job.id]
    after = queue.get(job.id)
    assert after is not None and after.state == INTERRUPTED and after.finished_at
    nxt = queue.claim_next("demo/production")
    assert nxt is not None and nxt.sha == "b" * 40  # pending work still runs


def test_finish_records_outcome_and_only_from_running(queue: JobQueue) -> None:
    job_id = queue.submit("github", None, [request("a" * 40)]).job_ids[0]
    queue.finish(job_id, FAILED, "too early")  # not running yet: no effect
    assert queue.get(job_id).state == PENDING  # type: ignore[union-attr]
    queue.claim_next("demo/production")
    queue.note(job_id, deploy_argv=["python", "-m", "bluegreen"], build_url="http://j/1/")
    queue.finish(job_id, FAILED, "deploy failed (exit 3)", exit_code=3, log_tail="boom")
    job = queue.get(job_id)
    assert job is not None
    assert (job.state, job.exit_code, job.log_tail, job.build_url) == (FAILED, 3, "boom",
                                                                      "http://j/1/")
    assert job.deploy_argv == ["python", "-m", "bluegreen"]
    assert "log_tail" not in job.public() and "event" not in job.public()
    assert job.public(with_log=True)["log_tail"] == "boom"
    with pytest.raises(ValueError):
        queue.finish(job_id, PENDING, "no")


def test_poll_state_is_written_with_the_job_atomically(queue: JobQueue) -> None:
    assert queue.last_seen("/r.git", "main") is None
    queue.record_seen("/r.git", "main", "a" * 40)
    queue.submit("poll", None, [request("b" * 40)], poll_mark=("/r.git", "main", "b" * 40))
    assert queue.last_seen("/r.git", "main") == "b" * 40
    broken = dataclasses.replace(request("c" * 40), app=None)  # violates NOT NULL
    with pytest.raises(sqlite3.IntegrityError):  # a failed enqueue must not move the mark
        queue.submit("poll", None, [broken], poll_mark=("/r.git", "main", "c" * 40))
    assert queue.last_seen("/r.git", "main") == "b" * 40
    assert [j.sha for j in queue.list_jobs()] == ["b" * 40]


def test_retry_requeues_a_finished_job_but_never_over_a_pending_one(queue: JobQueue) -> None:
    first = queue.submit("github", "d-1", [request("a" * 40, delivery="d-1")]).job_ids[0]
    with pytest.raises(ValueError, match="is pending"):
        queue.retry(first)
    queue.claim_next("demo/production")
    queue.finish(first, FAILED, "deploy failed (exit 1)", exit_code=1)
    again = queue.retry(first).job_ids[0]
    retried = queue.get(again)
    assert retried is not None and retried.state == PENDING
    assert (retried.sha, retried.event, retried.delivery_id) == ("a" * 40, {"sha": "a" * 40}, None)
    with pytest.raises(ValueError, match="already has pending job"):
        queue.retry(first)
    with pytest.raises(LookupError):
        queue.retry(999)


def test_pending_jobs_of_lanes_no_longer_configured_are_failed(queue: JobQueue) -> None:
    kept = queue.submit("github", None, [request("a" * 40)]).job_ids[0]
    gone = queue.submit("github", None, [request("b" * 40, lane="old/production")]).job_ids[0]
    assert queue.abandon_pending(["demo/production"], "no rule") == [gone]
    assert queue.get(gone).state == FAILED  # type: ignore[union-attr]
    assert queue.get(kept).state == PENDING  # type: ignore[union-attr]
    assert queue.abandon_pending([], "no rule") == [kept]
