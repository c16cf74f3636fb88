"""Clear names (issue 12) and the person's side of the guards: `bluegreen jobs` lists the
automation jobs, `bluegreen history` points elsewhere, `bluegreen release allow|list` lifts
and shows the rollback quarantine. Bad input gets a message and an exit code, never a
traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bluegreen.automation.__main__ import main as automation_main
from bluegreen.automation.jobqueue import SKIPPED, SUCCEEDED, JobQueue, JobRequest
from bluegreen.cli import main as bluegreen_main
from tests.unit.automation.rules import MAIN_RULE

CONFIG = """
[service]
state_dir = "state"
""" + MAIN_RULE
A, B = "a" * 40, "b" * 40
LANE = "demo/production"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "automation.toml"
    path.write_text(CONFIG)
    return path


def queue_of(config: Path) -> JobQueue:
    return JobQueue(config.parent / "state" / "automation.sqlite3")


def add_job(queue: JobQueue, sha: str, state: str, summary: str) -> int:
    request = JobRequest(lane=LANE, app="demo", environment="production", rule="main",
                         action="build", provider="github", event={}, repo="acme/demo",
                         branch="main", sha=sha, who="github:dev")
    job_id = queue.submit("github", None, [request]).job_ids[0]
    queue.claim_next(LANE)
    queue.finish(job_id, state, summary)
    return job_id


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = automation_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_bluegreen_history_is_the_deploy_history_and_jobs_have_their_own_command(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`bluegreen history` is `fab history` (deploys, switches, rollbacks of an app); the
    automation jobs are `bluegreen jobs`: two names, two things."""
    assert bluegreen_main(["history", "--json", "--config", "x.toml"]) == 2
    _, err = capsys.readouterr()
    assert "x.toml" in err and "config file not found" in err  # it wants an app's config
    from bluegreen.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"history", "jobs", "serve", "poll"} <= set(sub.choices)  # type: ignore[attr-defined]
    assert "Deploys" in sub.choices["history"].format_help()  # type: ignore[index]


def test_jobs_lists_every_state_newest_first_and_filters(
        capsys: pytest.CaptureFixture[str], config: Path) -> None:
    queue = queue_of(config)
    first = add_job(queue, A, SUCCEEDED, "deployed aaaaaaaaaaaa")
    second = add_job(queue, A, SKIPPED, "commit aaaaaaaaaaaa is already deployed")
    code, out, _ = run(capsys, "jobs", "--config", str(config))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["ID", "STATE"]
    assert [line.split()[:2] for line in lines[1:]] == [[str(second), "skipped"],
                                                         [str(first), "succeeded"]]
    code, out, _ = run(capsys, "jobs", "--config", str(config), "--state", "skipped", "--json")
    assert code == 0 and [j["id"] for j in json.loads(out)] == [second]
    code, out, _ = run(capsys, "jobs", "--config", str(config), "--job", str(second))
    assert code == 0 and f"job {second}: skipped: commit aaaaaaaaaaaa" in out


def test_jobs_bad_input_is_a_message_not_a_traceback(
        capsys: pytest.CaptureFixture[str], config: Path) -> None:
    add_job(queue_of(config), A, SUCCEEDED, "deployed")
    code, _, err = run(capsys, "jobs", "--config", str(config), "--job", "999")
    assert code == 1 and "no job 999" in err and "Traceback" not in err
    code, _, err = run(capsys, "jobs", "--config", str(config), "--retry", "999")
    assert code == 1 and "no job 999" in err
    with pytest.raises(SystemExit) as exited:
        automation_main(["jobs", "--config", str(config), "--limit", "0"])
    assert exited.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_release_list_and_allow_lift_the_quarantine(
        capsys: pytest.CaptureFixture[str], config: Path) -> None:
    queue = queue_of(config)
    queue.record_rollback(LANE, B, release="rel-b", at=100.0, who="ops@laptop")
    code, out, _ = run(capsys, "release", "list", "--config", str(config))
    assert code == 0 and LANE in out and B[:12] in out and "ops@laptop" in out
    assert "bluegreen release allow" in out
    code, out, _ = run(capsys, "release", "allow", B[:8], "--config", str(config))
    assert code == 0 and f"allowed {B[:12]}" in out and LANE in out
    assert queue.quarantined() == []
    code, out, _ = run(capsys, "release", "--config", str(config))  # list is the default
    assert code == 0 and "no rolled-back commits" in out


def test_release_allow_before_the_rollback_is_seen_needs_the_full_sha(
        capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, _, err = run(capsys, "release", "allow", A[:10], "--config", str(config))
    assert code == 1 and "no rolled-back commit starts with" in err
    code, out, _ = run(capsys, "release", "allow", A.upper(), "--config", str(config))
    assert code == 0 and "not quarantined (yet)" in out
    queue_of(config).record_rollback(LANE, A, release="rel-a", at=1.0, who="ops")
    assert queue_of(config).quarantined() == []  # the allowance is newer than that rollback


@pytest.mark.parametrize("argv, message", [
    (["release", "allow", "not-a-sha"], "is not a commit SHA"),
    (["release", "allow", "abc"], "is not a commit SHA"),
    (["release", "allow", A, "--lane", "other/production"], "no rule deploys to lane"),
])
def test_release_allow_refuses_bad_input_clearly(
        capsys: pytest.CaptureFixture[str], config: Path, argv: list[str],
        message: str) -> None:
    code, _, err = run(capsys, *argv, "--config", str(config))
    assert code == 1 and message in err and "Traceback" not in err


def test_release_allow_is_refused_with_a_rollback_ambiguity(
        capsys: pytest.CaptureFixture[str], config: Path) -> None:
    queue = queue_of(config)
    queue.record_rollback(LANE, "abcdef1" + "0" * 33, release="r1", at=1.0, who="ops")
    queue.record_rollback(LANE, "abcdef1" + "1" * 33, release="r2", at=2.0, who="ops")
    code, _, err = run(capsys, "release", "allow", "abcdef1", "--config", str(config))
    assert code == 1 and "matches 2 rolled-back commits" in err
    assert len(queue.quarantined()) == 2


def test_an_unusable_state_dir_is_a_message_not_a_traceback(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the state dir should be")
    path = tmp_path / "automation.toml"
    path.write_text(CONFIG)
    code, _, err = run(capsys, "release", "allow", A, "--config", str(path))
    assert code == 1 and "cannot use the automation state" in err
    assert "Traceback" not in err
