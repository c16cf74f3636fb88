"""Pure helpers of the poller and the two Jenkins paths."""

from __future__ import annotations

import pytest

from bluegreen.automation.build import build_argv
from bluegreen.automation.events import BuildEvent, Ignored
from bluegreen.automation.jenkins_notify import (
    artifact_url,
    check_ready,
    is_under,
    listed_artifact,
    parse_checksum_file,
)
from bluegreen.automation.jenkins_trigger import job_path, queue_api_url
from bluegreen.automation.poller import next_delay, parse_ls_remote
from bluegreen.automation.settings import PollTarget
from bluegreen.automation.steps import JobFailed

SHA = "d" * 40
JENKINS = "http://127.0.0.1:8080/"


def test_ls_remote_output_is_matched_on_the_whole_ref_name() -> None:
    output = (f"{'1' * 40}\trefs/heads/x/refs/heads/main\n"
              f"{SHA.upper()}\trefs/heads/main\n")
    assert parse_ls_remote(output, "main") == SHA
    assert parse_ls_remote(output, "dev") is None
    assert parse_ls_remote("", "main") is None


def test_poll_delay_backs_off_exponentially_up_to_the_cap_with_jitter() -> None:
    target = PollTarget(remote="r", branch="main", repo="a/b", interval=10, jitter=0.1,
                        max_backoff=60)
    middle = lambda: 0.5  # noqa: E731 - no jitter
    assert next_delay(target, 0, middle) == 10
    assert next_delay(target, 1, middle) == 20
    assert next_delay(target, 2, middle) == 40
    assert next_delay(target, 3, middle) == 60
    assert next_delay(target, 50, middle) == 60
    assert next_delay(target, 0, lambda: 0.0) == pytest.approx(9.0)
    assert next_delay(target, 0, lambda: 1.0) == pytest.approx(11.0)


def test_build_command_string_runs_under_bash_c_verbatim() -> None:
    assert build_argv('make "$BLUEGREEN_COMMIT"') == ["bash", "-c", 'make "$BLUEGREEN_COMMIT"']
    assert build_argv(("make", "dist")) == ["make", "dist"]


@pytest.mark.parametrize("name, path", [
    ("demo", "job/demo/"),
    ("folder/demo", "job/folder/job/demo/"),
    ("my job", "job/my%20job/"),
    ("a/b?c", "job/a/job/b%3Fc/"),
])
def test_jenkins_job_path_handles_folders_and_quoting(name: str, path: str) -> None:
    assert job_path(name) == path


def test_queue_url_is_rebuilt_on_the_configured_jenkins() -> None:
    assert queue_api_url(JENKINS, "http://jenkins.internal:8080/queue/item/42/") == (
        JENKINS + "queue/item/42/api/json")
    with pytest.raises(JobFailed, match="unexpected Location"):
        queue_api_url(JENKINS, "http://evil.example/whatever")


def build(phase: str = "FINALIZED", artifacts: dict[str, dict[str, str]] | None = None,
          build_url: str = JENKINS + "job/demo-build/12/") -> BuildEvent:
    return BuildEvent(job="demo-build", number=12, phase=phase, status="SUCCESS",
                      build_url=build_url, build_path="job/demo-build/12/", commit=SHA,
                      branch="main", artifacts=artifacts or {})


LISTED = {"demo.tar.gz": {"archive": JENKINS + "job/demo-build/12/artifact/dist/demo.tar.gz",
                          "sha256": "E" * 64},
          "notes.txt": {"archive": JENKINS + "job/demo-build/12/artifact/notes.txt"}}


def test_listed_artifact_matches_the_archive_path_or_file_name() -> None:
    assert listed_artifact(build(artifacts=LISTED), "dist/demo.tar.gz") is not None
    assert listed_artifact(build(artifacts=LISTED), "dist/*.tar.gz") is not None
    assert listed_artifact(build(artifacts=LISTED), "demo.tar.gz") is not None
    assert listed_artifact(build(artifacts=LISTED), "dist/other.zip") is None
    with pytest.raises(JobFailed, match="2 archived artifacts"):
        listed_artifact(build(artifacts=LISTED), "*")


def test_completed_without_the_artifact_listed_waits_for_finalized() -> None:
    with pytest.raises(Ignored, match="waiting for FINALIZED"):
        check_ready(build(phase="COMPLETED"), "dist/demo.tar.gz")
    check_ready(build(phase="COMPLETED", artifacts=LISTED), "dist/demo.tar.gz")
    check_ready(build(phase="FINALIZED"), "dist/demo.tar.gz")


def test_artifact_url_prefers_the_listing_and_its_checksum() -> None:
    url, sha = artifact_url(build(artifacts=LISTED), "dist/demo.tar.gz", JENKINS)
    assert url.endswith("/artifact/dist/demo.tar.gz") and sha == "e" * 64
    url, sha = artifact_url(build(), "dist/demo.tar.gz", JENKINS)
    assert url == JENKINS + "job/demo-build/12/artifact/dist/demo.tar.gz" and sha == ""
    url, _ = artifact_url(build(build_url=""), "dist/demo.tar.gz", JENKINS)
    assert url == JENKINS + "job/demo-build/12/artifact/dist/demo.tar.gz"
    with pytest.raises(JobFailed, match="lists no archived artifact"):
        artifact_url(build(), "dist/*.tar.gz", JENKINS)


def test_only_urls_under_the_configured_jenkins_are_fetched() -> None:
    assert is_under(JENKINS + "job/x/1/artifact/a", JENKINS)
    assert not is_under("http://127.0.0.1:8080.evil.example/job/x", JENKINS)
    assert not is_under("http://127.0.0.1:9090/job/x", JENKINS)
    assert not is_under("http://127.0.0.1:8080", JENKINS)


@pytest.mark.parametrize("text", [
    "A" * 64,
    f"{'a' * 64}  dist/demo.tar.gz\n",
    f"SHA256 (demo.tar.gz) = {'a' * 64}\n",
])
def test_checksum_files_in_common_formats(text: str) -> None:
    assert parse_checksum_file(text) == "a" * 64


def test_checksum_file_without_a_checksum_fails() -> None:
    with pytest.raises(JobFailed):
        parse_checksum_file("not found")
