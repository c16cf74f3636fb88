"""Running one job's commands: each in its own process group, with a timeout, into one log.

Every child starts in a new session so that a timeout (or a forced shutdown) can stop the
whole tree - a build script's grandchildren included - with one killpg, and so that a
Ctrl-C on the service's terminal does not hit a deploy half-way through a switch.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

KILL_GRACE = 10.0  # seconds between SIGTERM and SIGKILL for a child that overran
_URL_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """`https://user:token@host/x` -> `https://***@host/x`: a clone URL with credentials
    in it must not land in a job log."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


class JobFailed(Exception):
    """A step failed; the message is the job's one-line summary."""

    def __init__(self, summary: str, *, exit_code: int | None = None) -> None:
        super().__init__(summary)
        self.summary = summary
        self.exit_code = exit_code


class JobCancelled(Exception):
    """The service is shutting down past its grace period and stopped this job's step."""


class JobSkipped(Exception):
    """A guard decided this job must not deploy (a replayed webhook, an older commit, a
    rolled-back commit). Not a failure: the job ends `skipped`, the summary says why and
    how a person can deploy it anyway."""

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary


@dataclass(frozen=True)
class StepResult:
    returncode: int
    duration: float
    stdout: str = ""  # only from JobContext.capture()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail_lines(path: Path, lines: int, max_bytes: int = 64 * 1024) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class JobContext:
    """One job's log file and cancellation flag; runs its steps."""

    def __init__(self, job_id: int, log_path: Path, cancel: threading.Event) -> None:
        self.job_id = job_id
        self.log_path = log_path
        self.cancel = cancel
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: BinaryIO = log_path.open("ab")

    def close(self) -> None:
        self._log.close()

    def say(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log.write(f"[{stamp}] {line}\n".encode("utf-8", "replace"))
        self._log.flush()

    def run(self, phase: str, argv: Sequence[str], *, env: Mapping[str, str], timeout: float,
            cwd: Path | None = None, check: bool = True) -> StepResult:
        """Run argv (never through a shell) with stdout+stderr appended to the job log."""
        return self._run(phase, argv, env=env, timeout=timeout, cwd=cwd, check=check,
                         capture=False)

    def capture(self, phase: str, argv: Sequence[str], *, env: Mapping[str, str],
                timeout: float, cwd: Path | None = None) -> StepResult:
        """Like run(), but stdout is returned (only stderr goes to the job log), and the
        exit code is the caller's to judge."""
        return self._run(phase, argv, env=env, timeout=timeout, cwd=cwd, check=False,
                         capture=True)

    def _run(self, phase: str, argv: Sequence[str], *, env: Mapping[str, str], timeout: float,
             cwd: Path | None, check: bool, capture: bool) -> StepResult:
        self.say(f"== {phase}: {redact(repr(list(argv)))}" + (f" (in {cwd})" if cwd else ""))
        started = time.monotonic()
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if capture else self._log,
                                    stderr=self._log if capture else subprocess.STDOUT,
                                    env=dict(env), cwd=cwd, start_new_session=True)
        except OSError as exc:
            self.say(f"== {phase}: could not start: {exc}")
            raise JobFailed(f"{phase}: could not start {argv[0]!r}: {exc.strerror}") from None
        deadline = started + timeout
        out = b""
        while True:
            try:
                if capture:  # communicate() may be called again after a timeout
                    out, _ = proc.communicate(timeout=0.2)
                    returncode = proc.returncode
                else:
                    returncode = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.cancel.is_set():
                _stop_group(proc)
                self.say(f"== {phase}: stopped, the service is shutting down")
                raise JobCancelled(phase)
            if time.monotonic() >= deadline:
                _stop_group(proc)
                self.say(f"== {phase}: timed out after {timeout:g}s, stopped")
                raise JobFailed(f"{phase} timed out after {timeout:.0f}s")
        duration = time.monotonic() - started
        self.say(f"== {phase}: exit {returncode} in {duration:.1f}s")
        if check and returncode != 0:
            raise JobFailed(f"{phase} failed (exit {returncode})", exit_code=returncode)
        return StepResult(returncode, duration, (out or b"").decode("utf-8", "replace"))
