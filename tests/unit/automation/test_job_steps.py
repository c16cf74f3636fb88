"""JobContext: the captured step the guards use, and what the job log may show."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from bluegreen.automation.steps import JobCancelled, JobContext, JobFailed, redact


@pytest.fixture
def ctx(tmp_path: Path) -> JobContext:
    context = JobContext(1, tmp_path / "job.log", threading.Event())
    yield context  # type: ignore[misc]
    context.close()


def test_capture_returns_stdout_and_logs_stderr(ctx: JobContext) -> None:
    code = "import sys; print('out' + '-line'); print('err', file=sys.stderr); sys.exit(3)"
    result = ctx.capture("probe", [sys.executable, "-c", code], env={}, timeout=30)
    assert (result.returncode, result.stdout) == (3, "out-line\n")
    log = ctx.log_path.read_text()
    assert "\nerr\n" in log and "out-line" not in log and "== probe: exit 3" in log


def test_capture_times_out_and_can_be_cancelled(ctx: JobContext) -> None:
    with pytest.raises(JobFailed, match="probe timed out after 0s"):
        ctx.capture("probe", ["sleep", "30"], env={}, timeout=0.3)
    ctx.cancel.set()
    with pytest.raises(JobCancelled):
        ctx.capture("probe", ["sleep", "30"], env={}, timeout=30)


def test_credentials_in_urls_never_reach_the_job_log(ctx: JobContext) -> None:
    url = "https://deploy-bot:ghp_s3cr3t@github.example/acme/demo.git"
    ctx.run("git remote", ["true", url], env={}, timeout=30)
    log = ctx.log_path.read_text()
    assert "ghp_s3cr3t" not in log and "https://***@github.example/acme/demo.git" in log
    assert redact("git@github.com:acme/demo.git") == "git@github.com:acme/demo.git"
