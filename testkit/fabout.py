"""The one parser of what `fab` prints, for tests and benchmarks.

    --> upload    demo-v2.tar.gz to 1 host(s)             a phase starts: name, detail
    <-- upload    ok 0.455s  2694 bytes sent              ... and ends: ok SECONDS, note
    <-- health    FAILED after 10.431s                    ... or fails
    <-- start     16/16 ok 0.420s (slowest app07 0.420s)  on several hosts: how many
                                                          finished ok, the slowest one
    === deploy demo v2 -> green (port 58261), live ...    the plan: the target slot
    === deployed demo v2: live slot green in 2.65s; ...   the summary: fab's own time

`parse_phases` reads a finished run's output. `PhaseReader` reads it line by line while
fab runs and stamps every phase with the reader's clock (time.monotonic()), so phase
windows line up with what a load client recorded on the same clock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

PHASE_START_RE = re.compile(r"^--> (?P<name>\S+)\s*(?P<detail>.*)$")
PHASE_END_RE = re.compile(r"^<-- (?P<name>\S+)\s+(?:(?P<ok>\d+)/(?P<total>\d+) )?"
                          r"(?P<status>ok|FAILED)(?: after)? (?P<secs>\d+(?:\.\d+)?)s"
                          r"(?: \(slowest (?P<slowest>\S+) (?P<slowest_s>\d+(?:\.\d+)?)s\))?"
                          r"(?:\s+(?P<note>.*))?$")
TOTAL_RE = re.compile(r"^=== .* in (?P<secs>\d+(?:\.\d+)?)s\b")
TARGET_SLOT_RE = re.compile(r"^=== deploy \S+ \S+ -> (?P<slot>blue|green) \(port")
BYTES_RE = re.compile(r"(?P<n>\d+) bytes sent")
HEALTHY_RE = re.compile(r"healthy after (?P<secs>\d+(?:\.\d+)?)s")
PROBES_RE = re.compile(r"\((?P<n>\d+) probes?\)")


@dataclass
class Phase:
    """One phase of a fab run. `start`/`end` are the reader's clock (PhaseReader only)."""

    name: str
    seconds: float = 0.0  # as fab reported it
    note: str = ""  # what follows the time on the `<--` line
    ok: bool = True
    detail: str = ""  # what follows the name on the `-->` line
    start: float = 0.0
    end: float = 0.0
    hosts_ok: int | None = None  # a phase on several hosts: how many finished ok
    hosts: int | None = None  # ... of how many
    slowest: str = ""  # ... and which host took longest
    slowest_s: float = 0.0


def parse_phases(stdout: str) -> list[Phase]:
    """Every `<-- phase ok 0.123s  note` line, in order (a phase may appear twice)."""
    phases = []
    for line in stdout.splitlines():
        m = PHASE_END_RE.match(line.rstrip())
        if m:
            phase = Phase(m["name"], float(m["secs"]), (m["note"] or "").strip(),
                          m["status"] == "ok")
            _hosts_of(phase, m)
            phases.append(phase)
    return phases


def _hosts_of(phase: Phase, m: re.Match[str]) -> None:
    if m["total"] is not None:
        phase.hosts_ok, phase.hosts = int(m["ok"]), int(m["total"])
    if m["slowest"] is not None:
        phase.slowest, phase.slowest_s = m["slowest"], float(m["slowest_s"])


class PhaseReader:
    """Feed it fab's output lines as they arrive; `phases` fills in, in order of start.

    A phase that started and never ended (fab killed) stays with ok=False and end=0.
    """

    def __init__(self) -> None:
        self.phases: list[Phase] = []
        self._open: dict[str, Phase] = {}

    def feed(self, line: str, now: float) -> None:
        if m := PHASE_START_RE.match(line):
            phase = Phase(m["name"], ok=False, detail=m["detail"], start=now)
            self._open[phase.name] = phase
            self.phases.append(phase)
        elif (m := PHASE_END_RE.match(line.rstrip())) and m["name"] in self._open:
            phase = self._open.pop(m["name"])
            phase.end, phase.ok = now, m["status"] == "ok"
            phase.seconds, phase.note = float(m["secs"]), (m["note"] or "").strip()
            _hosts_of(phase, m)


def phase_totals(phases: Sequence[Phase]) -> dict[str, float]:
    """Seconds per phase name, a repeated phase summed."""
    totals: dict[str, float] = {}
    for p in phases:
        totals[p.name] = round(totals.get(p.name, 0.0) + p.seconds, 6)
    return totals


def parse_total(stdout: str) -> float | None:
    """fab's own in-process time: the `=== ... in 1.23s` line."""
    for line in reversed(stdout.splitlines()):
        m = TOTAL_RE.match(line)
        if m:
            return float(m["secs"])
    return None


def parse_target_slot(stdout: str) -> str | None:
    """The slot a deploy goes to, from its `=== deploy APP VERSION -> SLOT (port` line."""
    for line in stdout.splitlines():
        m = TARGET_SLOT_RE.match(line)
        if m:
            return m["slot"]
    return None


def uploaded_bytes(phases: Sequence[Phase]) -> int | None:
    for p in phases:
        if p.name == "upload":
            m = BYTES_RE.search(p.note)
            return int(m["n"]) if m else None
    return None


def healthy_after(phases: Sequence[Phase]) -> float | None:
    for p in phases:
        if p.name == "health":
            m = HEALTHY_RE.search(p.note)
            if m:
                return float(m["secs"])
    return None


def reported_probes(phases: Sequence[Phase]) -> int | None:
    """Probe count from the health phase's note, if the tool prints it on success."""
    for p in phases:
        if p.name == "health":
            m = PROBES_RE.search(p.note)
            if m:
                return int(m["n"])
    return None


def phases_text(phases: Sequence[Phase]) -> str:
    """`lock=0.140 state=0.010 ...`: a run's phases on one line."""
    return " ".join(f"{p.name}={p.seconds:.3f}" for p in phases)
