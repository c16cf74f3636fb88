"""The lane threads survive what they cannot control: a busy database, a bug around a job."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bluegreen.automation.jobqueue import FAILED, JobQueue, JobRequest
from bluegreen.automation.settings import Secrets, load_settings
from bluegreen.automation.worker import Runner, RunnerLockHeld

CONFIG = """
[service]
state_dir = "state"
quiet_period = 0.0
[[rules]]
name = "main"
repo = "acme/demo"
branch = "main"
app = "demo"
action = "build"
clone_url = "/nonexistent/demo.git"
build_command = "true"
artifact = "a"
config = "demo.toml"
"""


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    path = tmp_path / "automation.toml"
    path.write_text(CONFIG)
    settings = load_settings(path)
    worker = Runner(settings, Secrets(), JobQueue(settings.db_path), environ={})
    yield worker
    worker.stop(5)


def wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_lane_survives_a_database_error(runner: Runner, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    calls = {"n": 0}
    real = runner.queue.claim_next

    def flaky(lane: str, **kw: float):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise sqlite3.OperationalError("database is locked")
        return real(lane, **kw)

    monkeypatch.setattr(runner.queue, "claim_next", flaky)
    monkeypatch.setattr("bluegreen.automation.worker.IDLE_CHECK", 0.05)
    caplog.set_level(logging.ERROR, logger="bluegreen.automation.worker")
    runner.start()
    wait(lambda: calls["n"] >= 4)
    assert runner.alive() == {"demo/production": True}
    assert sum("could not read the queue" in r.getMessage() for r in caplog.records) == 2


def test_an_internal_error_around_a_job_fails_it_instead_of_leaving_it_running(
        runner: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_note(*_a: object, **_k: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(runner.queue, "note", broken_note)
    runner.start()
    job_id = runner.queue.submit("github", None, [JobRequest(
        lane="demo/production", app="demo", environment="production", rule="main",
        action="build", provider="github", event={}, sha="a" * 40)]).job_ids[0]
    runner.wake("demo/production")
    wait(lambda: runner.queue.get(job_id).state == FAILED)  # type: ignore[union-attr]
    assert runner.queue.get(job_id).summary == "internal error: RuntimeError"  # type: ignore[union-attr]
    assert runner.alive() == {"demo/production": True}


def test_only_one_runner_per_state_dir(runner: Runner) -> None:
    runner.start()
    other = Runner(runner.settings, Secrets(), runner.queue, environ={})
    with pytest.raises(RunnerLockHeld, match="another process already runs jobs"):
        other.start()
