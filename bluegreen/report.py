"""Console output that reads like a story in a Jenkins log: one line per phase start and end.

A phase that acts on several hosts at once says how many finished and which was slowest on
its closing line; a host that fails gets a line of its own the moment it fails; a phase
that runs long prints a progress line now and then. At 16 or 200 hosts the log stays one
screen per phase:

    --> upload    demo.tar.gz to 16 host(s)
        health    12/16 hosts done after 10.0s; waiting for app03, app09, app11 (+1)
        app07: FAILED after 0.41s: port 8082 is held by a process bluegreen did not start
    <-- upload    15/16 FAILED after 0.512s (slowest app09 0.510s)
    <-- start     16/16 ok 0.420s (slowest app07 0.420s)  note

One host (or none) keeps the plain form `<-- lock      ok 0.010s`. testkit/fabout.py
parses both.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

WAITING_SHOWN = 3  # hosts named on a progress line; the rest are counted


@dataclass
class PhaseNote:
    text: str = ""


@dataclass
class PhaseTally:
    """Which hosts a phase acted on and how long each took (summed when it acts twice)."""

    expected: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)

    def expect(self, labels: Sequence[str]) -> None:
        for label in labels:
            if label not in self.expected:
                self.expected.append(label)

    def done(self, label: str, seconds: float, failed: bool = False) -> None:
        self.expect([label])
        self.seconds[label] = self.seconds.get(label, 0.0) + seconds
        if failed:
            self.failed.add(label)

    @property
    def ok_count(self) -> int:
        return len([h for h in self.seconds if h not in self.failed])

    @property
    def slowest(self) -> tuple[str, float] | None:
        if not self.seconds:
            return None
        label = max(self.seconds, key=lambda h: (self.seconds[h], h))
        return label, self.seconds[label]

    def waiting(self) -> list[str]:
        return [h for h in self.expected if h not in self.seconds]


def phase_end_line(name: str, ok: bool, took: float, tally: PhaseTally | None = None,
                   note: str = "") -> str:
    """`<-- upload    16/16 ok 0.420s (slowest app07 0.420s)  note`; with one host or none,
    the plain `<-- upload    ok 0.420s  note`."""
    counts = slowest = ""
    if tally is not None and len(tally.expected) > 1:
        counts = f"{tally.ok_count}/{len(tally.expected)} "
        worst = tally.slowest
        if worst is not None:
            slowest = f" (slowest {worst[0]} {worst[1]:.3f}s)"
    status = f"ok {took:.3f}s" if ok else f"FAILED after {took:.3f}s"
    return f"<-- {name:<9} {counts}{status}{slowest}{'  ' + note if note else ''}"


def progress_line(name: str, tally: PhaseTally, elapsed: float) -> str:
    """A long phase, still running: how many hosts are done and which it waits for."""
    waiting = tally.waiting()
    named = ", ".join(waiting[:WAITING_SHOWN])
    more = f" (+{len(waiting) - WAITING_SHOWN})" if len(waiting) > WAITING_SHOWN else ""
    failed = f", {len(tally.failed)} failed" if tally.failed else ""
    return (f"    {name:<9} {len(tally.seconds)}/{len(tally.expected)} hosts done{failed} "
            f"after {elapsed:.1f}s; waiting for {named}{more}")


def host_failure_line(label: str, seconds: float, what: str) -> str:
    first = what.strip().splitlines()[0] if what.strip() else "failed"
    return f"    {label}: FAILED after {seconds:.2f}s: {first}"


@dataclass
class Reporter:
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    durations: dict[str, float] = field(default_factory=dict)
    quiet: bool = False
    _open: list[tuple[str, float, PhaseTally]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, line: str) -> None:
        if not self.quiet:
            with self._lock:
                print(line, file=self.stream, flush=True)

    # ---- what Fleet tells the open phase about its hosts
    def hosts_started(self, labels: Sequence[str]) -> None:
        if self._open:
            self._open[-1][2].expect(labels)

    def host_done(self, label: str, seconds: float, error: str | None = None) -> None:
        if self._open:
            self._open[-1][2].done(label, seconds, failed=error is not None)
        if error is not None:
            self.say(host_failure_line(label, seconds, error))

    def progress(self) -> None:
        """A progress line for the innermost open phase (Fleet calls it while waiting)."""
        if self._open:
            name, start, tally = self._open[-1]
            if len(tally.expected) > 1:
                self.say(progress_line(name, tally, time.monotonic() - start))

    @contextmanager
    def phase(self, name: str, detail: str = "") -> Iterator[PhaseNote]:
        self.say(f"--> {name:<9} {detail}".rstrip())
        note = PhaseNote()
        start = time.monotonic()
        tally = PhaseTally()
        self._open.append((name, start, tally))
        try:
            yield note
        except BaseException:
            took = time.monotonic() - start
            self._close(name, took)
            self.say(phase_end_line(name, False, took, tally))
            raise
        took = time.monotonic() - start
        self._close(name, took)
        self.say(phase_end_line(name, True, took, tally, note.text))

    def _close(self, name: str, took: float) -> None:
        self.durations[name] = self.durations.get(name, 0.0) + took
        if self._open:
            self._open.pop()
