"""What the replay and rollback guards rely on: the queue's memory of what a lane deployed,
explicit retries, single-use signatures, and the rollback quarantine read from history."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bluegreen.automation.jobqueue import (
    ALL_LANES,
    FAILED,
    FINISHED,
    SKIPPED,
    STATES,
    SUCCEEDED,
    JobQueue,
    JobRequest,
)
from bluegreen.automation.quarantine import facts_from_history

A, B, C = "a" * 40, "b" * 40, "c" * 40
LANE = "demo/production"


def request(sha: str, lane: str = LANE, delivery: str | None = None) -> JobRequest:
    app, env = lane.split("/")
    return JobRequest(lane=lane, app=app, environment=env, rule="r", action="build",
                      provider="github", event={"sha": sha}, repo="acme/demo",
                      branch="main", sha=sha, who="github:x", delivery_id=delivery)


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    return JobQueue(tmp_path / "q.sqlite3")


def run(queue: JobQueue, sha: str, state: str, now: float, lane: str = LANE) -> int:
    job_id = queue.submit("github", None, [request(sha, lane)], now=now).job_ids[0]
    assert queue.claim_next(lane, now=now) is not None
    queue.finish(job_id, state, state, now=now + 1)
    return job_id


def test_skipped_is_a_finished_state(queue: JobQueue) -> None:
    assert SKIPPED in STATES and SKIPPED in FINISHED
    job_id = run(queue, A, SKIPPED, 10)
    assert queue.counts()[SKIPPED] == 1
    assert queue.retry(job_id).job_ids  # a skipped job can be retried


def test_deployed_lists_only_succeeded_jobs_of_the_lane_newest_first(queue: JobQueue) -> None:
    first = run(queue, A, SUCCEEDED, 10)
    run(queue, B, FAILED, 20)
    run(queue, C, SUCCEEDED, 30, lane="docs/production")
    second = run(queue, B, SUCCEEDED, 40)
    assert [(d.job_id, d.sha) for d in queue.deployed(LANE)] == [(second, B), (first, A)]
    assert [d.sha for d in queue.deployed(LANE, exclude=second)] == [A]
    assert [d.sha for d in queue.deployed(LANE, limit=1)] == [B]


def test_a_retry_is_explicit_and_an_ordinary_job_is_not(queue: JobQueue) -> None:
    job_id = run(queue, A, SKIPPED, 10)
    assert queue.get(job_id).explicit is False  # type: ignore[union-attr]
    again = queue.retry(job_id).job_ids[0]
    retried = queue.get(again)
    assert retried is not None and retried.explicit is True and retried.sha == A
    assert retried.public()["explicit"] is True


def test_an_older_database_gains_the_explicit_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the jobs table as the first release made it
        db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, lane TEXT NOT "
                   "NULL, app TEXT NOT NULL, environment TEXT NOT NULL, rule TEXT NOT NULL, "
                   "action TEXT NOT NULL, state TEXT NOT NULL, provider TEXT NOT NULL, "
                   "delivery_id TEXT, repo TEXT NOT NULL DEFAULT '', branch TEXT NOT NULL "
                   "DEFAULT '', sha TEXT NOT NULL DEFAULT '', who TEXT NOT NULL DEFAULT '', "
                   "build_url TEXT NOT NULL DEFAULT '', event TEXT NOT NULL, created_at REAL "
                   "NOT NULL, started_at REAL, finished_at REAL, superseded_by INTEGER, "
                   "summary TEXT NOT NULL DEFAULT '', exit_code INTEGER, deploy_argv TEXT, "
                   "log_path TEXT NOT NULL DEFAULT '', log_tail TEXT NOT NULL DEFAULT '')")
        db.execute("INSERT INTO jobs (lane, app, environment, rule, action, state, provider, "
                   "event, created_at) VALUES (?, 'demo', 'production', 'r', 'build', "
                   "'succeeded', 'github', '{}', 1)", (LANE,))
    queue = JobQueue(path)
    [old] = queue.list_jobs()
    assert old.explicit is False and old.state == SUCCEEDED


def test_a_signature_is_accepted_once_under_any_delivery_id(queue: JobQueue) -> None:
    first = queue.submit("github", "id-1", [request(A, delivery="id-1")], also_seen="t=1,v1=ab")
    again = queue.submit("github", "id-2", [request(A, delivery="id-2")], also_seen="t=1,v1=ab")
    assert not first.duplicate and again.duplicate and again.job_ids == []
    # a seen delivery id is still answered with its jobs, and records nothing new
    same_id = queue.submit("github", "id-1", [request(A, delivery="id-1")],
                           also_seen="t=2,v1=cd")
    assert same_id.duplicate and same_id.job_ids == first.job_ids
    fresh = queue.submit("github", "id-3", [request(A, delivery="id-3")], also_seen="t=2,v1=cd")
    assert not fresh.duplicate
    assert len(queue.list_jobs()) == 2


def test_a_rolled_back_commit_is_quarantined_until_allowed(queue: JobQueue) -> None:
    assert queue.record_rollback(LANE, B.upper(), release="r-b", at=100, who="ops")
    assert not queue.record_rollback(LANE, B, release="r-b", at=100, who="ops")  # known
    [held] = queue.quarantined(LANE)
    assert (held.lane, held.sha, held.who, held.rolled_back_at) == (LANE, B, "ops", 100)
    assert queue.quarantined("docs/production") == []
    queue.allow(LANE, B, who="alice", why="fixed", at=150)
    assert queue.quarantined(LANE) == []
    # rolled back again later: held again, an older allowance does not cover it
    queue.record_rollback(LANE, B, release="r-b2", at=200, who="ops")
    assert [q.release for q in queue.quarantined(LANE)] == ["r-b2"]
    queue.allow(ALL_LANES, B, who="alice", why="every lane", at=250)
    assert queue.quarantined() == []


def test_an_allowance_recorded_before_the_rollback_was_seen_still_counts(
        queue: JobQueue) -> None:
    queue.allow(ALL_LANES, C, who="alice", why="early", at=300)
    queue.record_rollback(LANE, C, release="r-c", at=290, who="ops")  # learnt later
    assert queue.quarantined(LANE) == []


# ---- reading the deploy history ---------------------------------------------------------

def deploy(sha: str, release: str, at: float, *, result: str = "ok", commit: str | None = None,
           who: str = "github:dev") -> dict[str, object]:
    return {"action": "deploy", "result": result, "release": release, "version": sha,
            "commit": sha if commit is None else commit, "at": at, "who": who}


def rollback(release: str, at: float, *, result: str = "ok") -> dict[str, object]:
    return {"action": "rollback", "result": result, "rolled_back_release": release,
            "release": "whatever", "commit": "", "at": at, "who": "ops@laptop"}


def test_history_facts_name_the_commit_of_the_rolled_back_release() -> None:
    facts = facts_from_history([deploy(A, "rel-a", 1), deploy(B, "rel-b", 2),
                                rollback("rel-b", 3), deploy(B, "rel-b", 4, who="alice")])
    assert [(f.sha, f.release, f.at, f.who) for f in facts.rollbacks] == [
        (B, "rel-b", 3, "ops@laptop")]
    assert [(f.sha, f.at) for f in facts.deploys] == [(A, 1), (B, 2), (B, 4)]


def test_history_facts_skip_failures_and_entries_without_a_commit() -> None:
    facts = facts_from_history([
        deploy(A, "rel-a", 1),
        deploy(B, "rel-b", 2, result="failed"),
        rollback("rel-a", 3, result="failed"),
        deploy("v7", "v7-0123456789ab", 4, commit=""),  # a hand deploy with no commit
        rollback("v7-0123456789ab", 5),  # its commit is unknown: nothing to hold back
        "not an entry", {"action": "?", "result": "unparseable history line"},
    ])
    assert facts.rollbacks == ()
    assert [f.sha for f in facts.deploys] == [A]


def test_history_facts_fall_back_to_a_sha_release_id_and_a_sha_version() -> None:
    # the deploy entry scrolled out of the window read; the release id still names it
    facts = facts_from_history([rollback(f"{C}-0123456789ab", 5)])
    assert [f.sha for f in facts.rollbacks] == [C]
    # a deploy whose version is the SHA and whose commit was not set
    facts = facts_from_history([deploy(A, "rel-a", 1, commit=""), rollback("rel-a", 2)])
    assert [f.sha for f in facts.rollbacks] == [A]


def _open_queue(path: str) -> None:
    JobQueue(Path(path))


def test_processes_creating_the_queue_at_once_all_succeed(tmp_path: Path) -> None:
    """`serve`, `poll` and a CLI may create the database together; switching it to WAL
    used to fail one of them with "database is locked" (seen about once in 30 rounds)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for round_ in range(15):
        path = str(tmp_path / f"q{round_}.sqlite3")
        procs = [context.Process(target=_open_queue, args=(path,)) for _ in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0] * 6
