"""`bluegreen poll` against real bare repositories with real pushes."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from bluegreen.automation.jobqueue import JobQueue
from bluegreen.automation.poller import CHANGED, ERROR, FIRST, UNCHANGED, Poller
from bluegreen.automation.settings import load_settings
from tests.integration.automation.conftest import (
    PY,
    GitRemote,
    Harness,
    git,
    wait_for,
)


def poll_target(remote: Path, **overrides: object) -> dict[str, object]:
    target: dict[str, object] = {"remote": str(remote), "branch": "main", "repo": "acme/demo",
                                 "interval": 0.1, "jitter": 0.1, "max_backoff": 0.4,
                                 "timeout": 10.0}
    target.update(overrides)
    return target


def test_poll_records_first_ignores_unchanged_and_enqueues_a_push(harness: Harness) -> None:
    v1 = harness.remote.commit_and_push("v1")
    harness.write_config(polls=[poll_target(harness.remote.bare)])

    first = harness.cli("poll", "--once")
    assert first.returncode == 0, first.stderr
    assert f"main: {FIRST} {v1[:12]}" in first.stdout
    unchanged = harness.cli("poll", "--once")
    assert f"main: {UNCHANGED} {v1[:12]}" in unchanged.stdout
    assert harness.jobs() == []  # starting to poll never redeploys what is live

    v2 = harness.remote.commit_and_push("v2")
    changed = harness.cli("poll", "--once")
    assert f"main: {CHANGED} {v2[:12]} jobs=[1]" in changed.stdout
    assert harness.cli("poll", "--once").stdout.count(UNCHANGED) == 1
    [job] = harness.jobs()
    assert (job.provider, job.sha, job.state, job.branch) == ("poll", v2, "pending", "main")
    assert harness.queue().last_seen(str(harness.remote.bare), "main") == v2

    # The same job a webhook would make: the serve process picks it up and deploys it.
    harness.start()
    assert harness.wait_job(job.id).state == "succeeded"
    [record] = harness.records()
    assert "version=v2" in record["artifact_text"]
    assert record["argv"][record["argv"].index("--who") + 1] == f"poll:{harness.remote.bare}"


def test_deploy_on_start_deploys_the_first_sighting(harness: Harness) -> None:
    v1 = harness.remote.commit_and_push("v1")
    harness.write_config(polls=[poll_target(harness.remote.bare, deploy_on_start=True)])
    out = harness.cli("poll", "--once").stdout
    assert f"main: {CHANGED} {v1[:12]}" in out
    assert [j.sha for j in harness.jobs()] == [v1]


def test_unreachable_remote_is_reported_not_fatal(harness: Harness, tmp_path: Path) -> None:
    harness.remote.commit_and_push("v1")
    harness.write_config(polls=[poll_target(tmp_path / "missing.git"),
                                poll_target(harness.remote.bare)])
    done = harness.cli("poll", "--once")
    assert done.returncode == 1
    assert f"{tmp_path / 'missing.git'} main: {ERROR}" in done.stdout
    assert f"{harness.remote.bare} main: {FIRST}" in done.stdout  # the other target still ran
    assert "remote unavailable" in done.stderr


def test_poller_backs_off_while_the_remote_is_down_and_picks_up_once_it_is_back(
        harness: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    late = tmp_path / "late"
    late.mkdir()
    harness.write_config(polls=[poll_target(late / "remote.git", deploy_on_start=True)])
    settings = load_settings(harness.config_path)
    queue = JobQueue(settings.db_path)
    poller = Poller(settings, queue, env=harness.env())
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    caplog.set_level(logging.WARNING, logger="bluegreen.automation.poller")
    thread.start()
    try:
        wait_for("two failed polls", lambda: sum(
            "remote unavailable" in r.getMessage() for r in caplog.records) >= 2)
        assert thread.is_alive()
        backoff = max(poller.failures.values())
        assert backoff >= 2
        remote = GitRemote.create(late)
        sha = remote.commit_and_push("back")
        job = wait_for("the push to be enqueued", lambda: queue.list_jobs(), timeout=10)[0]
        assert job.sha == sha and job.provider == "poll"
        assert poller.failures == {}
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_poll_service_with_run_jobs_deploys_and_stops_on_sigterm(harness: Harness) -> None:
    harness.remote.commit_and_push("v1")
    harness.write_config(polls=[poll_target(harness.remote.bare)])
    log_path = harness.root / "poll.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([PY, "-m", "bluegreen.automation", "poll", "--run-jobs",
                                 "--config", str(harness.config_path)], cwd=harness.root,
                                env=harness.env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for("the first sighting", lambda: harness.queue().last_seen(
            str(harness.remote.bare), "main") if harness.state_dir.exists() else None)
        v2 = harness.remote.commit_and_push("v2")
        wait_for("the deploy of v2", lambda: [r for r in harness.records()
                                              if f"commit={v2}" in r["artifact_text"]])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert len(harness.records()) == 1
    assert "stopped" in log_path.read_text()
    assert git("rev-parse", "HEAD", cwd=harness.remote.work) == v2
