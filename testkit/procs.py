"""Start real processes, remember their PIDs, and stop them by PID.

Every helper in testkit starts its processes through `start_process` so that a
session-level safety net (`stop_all_started`) can stop anything a crashed test left
behind, and every stop goes through `stop_pids`: SIGTERM, a bounded wait, SIGKILL, a
second bounded wait. Nothing here matches processes by name, so a test can never hit
a process it did not start.

Zombies count as dead: on some machines PID 1 is not a real init and never reaps
orphans, so a `/proc/PID` entry in state Z is the normal end of an orphaned process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

# PID -> Popen for every process started here that has not been stopped yet. Keeping the
# Popen (not just the PID) lets us reap our own children so they do not linger as zombies.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def start_process(
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` with stdout+stderr appended to `log_path` and record its PID.

    The child gets its own session so a Ctrl-C in the terminal running pytest does not
    reach it half-way through a test; teardown stops it by PID instead.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    _STARTED[proc.pid] = proc
    return proc


def started_pids() -> list[int]:
    """PIDs started by `start_process` that have not been stopped through this module."""
    return sorted(_STARTED)


def _reap(pid: int) -> None:
    # Collect the exit status of children we started, or they stay zombies until the
    # test process exits. Only through our own Popen: a bare waitpid() here could steal
    # the exit status of a child some other code (the deploy tool) is waiting for.
    proc = _STARTED.get(pid)
    if proc is not None:
        proc.poll()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses; everything after the last ')'
    # is space-separated and starts with the state field.
    return raw[raw.rindex(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """True when `pid` exists and is not a zombie (see module docstring)."""
    _reap(pid)
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X", "x")


def cmdline(pid: int) -> str:
    """The process's command line with NULs turned into spaces, or "" when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def child_pids(pid: int) -> list[int]:
    """Live direct children of `pid`, found by scanning /proc (no psutil dependency)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None or fields[0] in ("Z", "X", "x"):
            continue
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def descendant_pids(pid: int) -> list[int]:
    """Live children, grandchildren, ... of `pid`.

    Needed for daemons such as sshd whose per-connection children call setsid(), so
    they escape the process group and would survive a signal to the group.
    """
    found: list[int] = []
    frontier = [pid]
    while frontier:
        nxt: list[int] = []
        for parent in frontier:
            for child in child_pids(parent):
                if child not in found:
                    found.append(child)
                    nxt.append(child)
        frontier = nxt
    return found


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    describe: str | Callable[[], str],
    *,
    interval: float = 0.05,
) -> None:
    """Poll `predicate` until true; raise TimeoutError with `describe` after `timeout` s.

    `describe` may be a callable so the message can include log text read at failure
    time rather than when the wait began.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            message = describe() if callable(describe) else describe
            raise TimeoutError(f"timed out after {timeout:.1f}s: {message}")
        time.sleep(interval)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_pids(pids: Iterable[int], timeout: float = 5.0, *, expect: str | None = None) -> None:
    """Stop every PID: SIGTERM all, wait up to `timeout`, SIGKILL the rest, wait again.

    `expect`, when given, must appear in a PID's command line or that PID is left
    alone: a PID read from a file may have been reused by an unrelated process.
    Raises TimeoutError if something survives SIGKILL (e.g. stuck in uninterruptible
    sleep), because silently leaking it would poison later tests.
    """
    requested = list(dict.fromkeys(pids))
    targets = [p for p in requested if pid_alive(p)]
    if expect is not None:
        targets = [p for p in targets if expect in cmdline(p)]
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in targets):
        time.sleep(0.02)
    survivors = [p for p in targets if pid_alive(p)]
    for pid in survivors:
        _signal(pid, signal.SIGKILL)
    kill_deadline = time.monotonic() + 5.0
    while time.monotonic() < kill_deadline and any(pid_alive(p) for p in survivors):
        time.sleep(0.02)
    for pid in requested:
        if pid_alive(pid):
            continue  # left alone by `expect`, or reported below; keep it registered
        proc = _STARTED.pop(pid, None)
        if proc is not None:
            # Record the return code so Popen.__del__ does not raise a ResourceWarning
            # about a child it believes is still running.
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
    still = [p for p in survivors if pid_alive(p)]
    if still:
        details = ", ".join(f"{p} ({cmdline(p)!r})" for p in still)
        raise TimeoutError(f"processes survived SIGKILL for 5s: {details}")


def stop_pid(pid: int, timeout: float = 5.0, *, expect: str | None = None) -> None:
    """Stop one PID; see `stop_pids`."""
    stop_pids([pid], timeout, expect=expect)


def stop_tree(pid: int, timeout: float = 5.0) -> None:
    """Stop `pid` and every descendant it has right now, all with one deadline."""
    stop_pids([pid, *descendant_pids(pid)], timeout)


def stop_all_started(timeout: float = 5.0) -> list[int]:
    """Safety net for session teardown: stop whatever `start_process` started and is
    still alive (with descendants). Returns the PIDs that were still running."""
    leftover = [p for p in list(_STARTED) if pid_alive(p)]
    everything: list[int] = []
    for pid in leftover:
        everything.extend([pid, *descendant_pids(pid)])
    stop_pids(everything, timeout)
    _STARTED.clear()
    return leftover


def log_tail(path: Path, max_chars: int = 4000) -> str:
    """The last `max_chars` of a log file, for error messages; never raises."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log file at {path})"
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    if not text.strip():
        return f"(log file {path} is empty)"
    if len(text) > max_chars:
        text = "..." + text[-max_chars:]
    return text
