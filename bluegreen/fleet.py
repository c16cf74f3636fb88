"""The hosts of one run: opened once, reused for every step, fanned out with a bound, closed.

A dry run's fleet hands out DryRunHosts over the real ones: the flow does not know it is a
dry run, except for the phases that only observe effects (health, verify), which the phase
runner replaces by a line in the plan.

Every fan-out is timed per host: the open phase's closing line says how many hosts finished
and which was slowest, a failing host gets its own line, and the run ends with one row per
host (`rows()`, `table()`): its time in each phase, its result, and what it cost in SSH
connections, remote commands, file operations and HTTP tunnels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bluegreen import failpoints
from bluegreen.config import Config, HostSpec
from bluegreen.errors import BluegreenError
from bluegreen.hosts import DryRunHost, Host, open_host
from bluegreen.layout import Layout
from bluegreen.plan import Plan
from bluegreen.report import Reporter

SUDO_REFUSALS = ("sudo: a password is required", "is not allowed to execute",
                 "sudo: a terminal is required")


def explain_sudo_failure(text: str) -> str:
    """A hint for a command that sudo refused at run time ('' when it was not sudo)."""
    if not any(r in text for r in SUDO_REFUSALS):
        return ""
    return ("sudo refused a command: a sudoers rule is missing for the SSH user (every run "
            "checks them in its connect phase; README, \"Fleets\", has the lines)")

T = TypeVar("T")
DEFAULT_PARALLEL = 32  # hosts acted on at once; each holds one SSH connection
PROGRESS_EVERY = 10.0  # seconds between progress lines of a long fan-out


@dataclass
class HostRow:
    """One host over the whole run."""

    label: str
    roles: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    failed_phase: str = ""
    error: str = ""

    def add(self, phase: str, seconds: float, error: str | None) -> None:
        self.phases[phase] = round(self.phases.get(phase, 0.0) + seconds, 4)
        if error is not None and not self.failed_phase:
            self.failed_phase, self.error = phase, error.strip().splitlines()[0][:200] \
                if error.strip() else "failed"


@dataclass
class Fleet:
    cfg: Config
    plan: Plan | None = None  # set: a dry run, changes go to the plan
    parallel: int = DEFAULT_PARALLEL
    opener: Callable[[HostSpec, Config], Host] = open_host  # tests pass a recording fake
    report: Reporter | None = None  # told per host as hosts finish: progress, failures
    progress_every: float = PROGRESS_EVERY
    only: frozenset[str] | None = None  # a batch: the hosts (labels) this view acts on
    _hosts: dict[HostSpec, Host] = field(default_factory=dict)
    _rows: dict[str, HostRow] = field(default_factory=dict)

    @property
    def dry_run(self) -> bool:
        return self.plan is not None

    def host(self, spec: HostSpec) -> Host:
        if spec not in self._hosts:
            real = self.opener(spec, self.cfg)
            failpoints.track(real)  # the fault suite's `drop` cuts its connection
            self._hosts[spec] = real if self.plan is None else DryRunHost(real, self.plan)
        return self._hosts[spec]

    def _in_view(self, specs: list[HostSpec]) -> list[HostSpec]:
        return specs if self.only is None else [s for s in specs if s.label in self.only]

    @property
    def app_hosts(self) -> list[Host]:
        return [self.host(s) for s in self._in_view(self.cfg.hosts.app)]

    @property
    def traffic_hosts(self) -> list[Host]:
        return [self.host(s) for s in self._in_view(self.cfg.traffic_hosts)]

    @property
    def all_specs(self) -> list[HostSpec]:
        """Every host of the run (app and traffic), each once, app hosts first."""
        seen: dict[str, HostSpec] = {}
        for spec in [*self.cfg.hosts.app, *self.cfg.traffic_hosts]:
            seen.setdefault(spec.label, spec)
        return list(seen.values())

    @property
    def primary(self) -> Host:
        """Where the lock, state, history and the switch journal live."""
        return self.host(self.cfg.primary)

    def view(self, labels: Sequence[str]) -> Fleet:
        """The same open connections, acting only on `labels` (a batch of a rollout)."""
        return Fleet(self.cfg, self.plan, self.parallel, self.opener, self.report,
                     self.progress_every, frozenset(labels), self._hosts, self._rows)

    @staticmethod
    def layout(host: Host) -> Layout:
        return Layout(host.root)

    # ---------------------------------------------------------------- accounting
    def record(self, label: str, phase: str, seconds: float, error: str | None = None) -> None:
        """One host's share of a phase (Fleet's own fan-outs and the traffic change)."""
        row = self._rows.get(label)
        if row is None:
            row = self._rows[label] = HostRow(label, self._roles(label))
        row.add(phase, seconds, error)
        if self.report is not None:
            self.report.host_done(label, seconds, error)

    def _roles(self, label: str) -> list[str]:
        roles = []
        if any(s.label == label for s in self.cfg.hosts.app):
            roles.append("app")
        if any(s.label == label for s in self.cfg.traffic_hosts):
            roles.append("traffic")
        return roles

    def rows(self) -> list[dict[str, Any]]:
        """Per host: phases and seconds, result, and what the run cost there."""
        out = []
        for spec in self.all_specs:
            row = self._rows.get(spec.label) or HostRow(spec.label, self._roles(spec.label))
            h = self._hosts.get(spec)
            stats = h.stats if h is not None else None
            out.append({
                "host": spec.label, "role": "+".join(row.roles),
                "result": "failed" if row.failed_phase else ("ok" if row.phases else "-"),
                "failed_phase": row.failed_phase or None, "error": row.error or None,
                "phases": dict(row.phases), "seconds": round(sum(row.phases.values()), 3),
                "connections": stats.connects if stats else 0,
                "commands": stats.commands if stats else 0,
                "file_ops": stats.file_ops if stats else 0,
                "tunnels": stats.tunnels if stats else 0,
            })
        return out

    # ---------------------------------------------------------------- fan-out
    def on_all(self, hosts: list[Host], phase: str, fn: Callable[[Host], T]) -> list[T]:
        """Run fn on every host, at most `parallel` at once; if any fail, raise one error
        naming all of them (results keep the hosts' order)."""
        def wrapped(h: Host) -> T | BluegreenError:
            h.phase = phase
            start = time.monotonic()
            try:
                result = fn(h)
            except BluegreenError as exc:
                exc.host = exc.host or h.label
                exc.phase = exc.phase or phase
                refused = explain_sudo_failure(
                    exc.what + getattr(exc, "stderr", "") + getattr(exc, "stdout", ""))
                if refused and refused not in exc.hint:
                    exc.hint = refused + (f"; {exc.hint}" if exc.hint else "")
                self.record(h.label, phase, time.monotonic() - start, exc.what)
                return exc
            except BaseException:
                self.record(h.label, phase, time.monotonic() - start, "interrupted")
                raise
            self.record(h.label, phase, time.monotonic() - start)
            return result

        if self.report is not None:
            self.report.hosts_started([h.label for h in hosts])
        if len(hosts) == 1:
            results = [wrapped(hosts[0])]
        else:
            results = self._fan_out(hosts, wrapped)
        errors = [r for r in results if isinstance(r, BluegreenError)]
        if errors:
            if len(errors) == 1:
                raise errors[0]
            raise BluegreenError(
                f"{len(errors)} of {len(hosts)} hosts failed in {phase}:\n  "
                + "\n  ".join(e.render().replace("\n", "\n  ") for e in errors),
                host=",".join(e.host for e in errors), phase=phase, hint=errors[0].hint)
        return results  # type: ignore[return-value]

    def _fan_out(self, hosts: list[Host], fn: Callable[[Host], T]) -> list[T]:
        """Every host through a bounded pool; a progress line every `progress_every`
        seconds while some are still running."""
        with ThreadPoolExecutor(max_workers=max(1, min(self.parallel, len(hosts)))) as pool:
            futures: list[Future[T]] = [pool.submit(fn, h) for h in hosts]
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=self.progress_every,
                                     return_when=FIRST_COMPLETED)
                if not done and self.report is not None:
                    self.report.progress()
            return [f.result() for f in futures]

    def connect_all(self, then: Callable[[Host], object] | None = None
                    ) -> list[BluegreenError]:
        """Open every host's connection at once (bounded), and run `then` on each host as
        soon as its connection is open; the hosts that cannot be reached (or whose `then`
        failed), each with why. Nothing is changed anywhere."""
        hosts = [self.host(s) for s in self.all_specs]

        def one(h: Host) -> BluegreenError | None:
            h.phase = "connect"
            start = time.monotonic()
            try:
                h.connect()
                if then is not None:
                    then(h)
            except BluegreenError as exc:
                exc.host = exc.host or h.label
                self.record(h.label, "connect", time.monotonic() - start, exc.what)
                return exc
            self.record(h.label, "connect", time.monotonic() - start)
            return None

        if self.report is not None:
            self.report.hosts_started([h.label for h in hosts])
        results = [one(hosts[0])] if len(hosts) == 1 else self._fan_out(hosts, one)
        return [r for r in results if r is not None]

    def enter_phase(self, name: str) -> None:
        """Errors say where they happened: every host of the run is now in `name`."""
        for h in self._hosts.values():
            h.phase = name

    def close(self) -> None:
        if self.only is not None:
            return  # a view: the whole fleet closes the connections
        for h in self._hosts.values():
            h.close()
        self._hosts.clear()


def format_table(rows: list[dict[str, Any]]) -> str:
    """The per-host summary at the end of a run: one line per host, the phases as columns
    (in the order they first ran), then what the run cost on that host."""
    phases: list[str] = []
    for r in rows:
        for name in r["phases"]:
            if name not in phases:
                phases.append(name)
    width = max([len("host"), *(len(r["host"]) for r in rows)])
    head = (f"{'host':<{width}} {'role':<11} {'result':<6} "
            + "".join(f"{p[:8]:>9}" for p in phases)
            + f"{'total':>9} {'conn':>4} {'cmds':>4} {'files':>5} {'tun':>4}")
    lines = [head]
    for r in rows:
        cells = "".join(f"{r['phases'][p]:>9.3f}" if p in r["phases"] else f"{'-':>9}"
                        for p in phases)
        line = (f"{r['host']:<{width}} {r['role']:<11} {r['result']:<6} {cells}"
                f"{r['seconds']:>9.3f} {r['connections']:>4} {r['commands']:>4} "
                f"{r['file_ops']:>5} {r['tunnels']:>4}")
        if r["failed_phase"]:
            line += f"  {r['failed_phase']}: {r['error']}"
        lines.append(line)
    return "\n".join(lines)
