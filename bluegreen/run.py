"""One run of a flow: the typed object every phase works on, and the loop that runs phases.

Failure handling lives here once, not in every phase: a phase that fails gets its own
`on_failure` (say, stop the new slot), a traffic change still pending is undone, the failure
is recorded in history and the on-failure hook runs; then the error goes to the user.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

from bluegreen import failpoints, interrupts
from bluegreen.config import Config
from bluegreen.errors import BluegreenError
from bluegreen.fleet import Fleet
from bluegreen.ledger import Ledger
from bluegreen.release import Artifact
from bluegreen.report import Reporter
from bluegreen.routers import Router, router_for
from bluegreen.slots import Slots
from bluegreen.state import State
from bluegreen.traffic import TrafficChange


@dataclass
class Outcome:
    """What a run did, as recorded in history (unset fields are left out)."""

    action: str
    version: str | None = None
    release: str | None = None
    checksum: str | None = None
    from_slot: str | None = None
    to_slot: str | None = None
    rolled_back_release: str | None = None
    uploaded_bytes: int | None = None
    health_seconds: float | None = None
    watch: dict[str, object] | None = None  # what the watch window saw
    auto_reverted: bool | None = None
    result: str | None = None
    phase: str | None = None
    error: str | None = None
    failed_host: str | None = None
    seconds: float | None = None
    flip_skew_ms: float | None = None  # first to last traffic host's flip (2+ hosts)
    rollout: dict[str, Any] | None = None  # a rolling deploy: batches, hosts done, failed

    def entry(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Run:
    cfg: Config
    fleet: Fleet
    ledger: Ledger
    report: Reporter
    outcome: Outcome
    began: float = field(default_factory=time.monotonic)
    stack: ExitStack = field(default_factory=ExitStack)  # what the run holds: the lock
    state: State | None = None
    target: str = ""  # the slot traffic moves to
    artifact: Artifact | None = None
    release_id: str = ""
    version: str = ""
    artifact_name: str = ""
    change: TrafficChange | None = None
    before: State | None = None  # state as it was before `record` made the target live
    force: bool = False  # deploy an artifact the watch once reverted
    _routers: list[Router] | None = None

    @property
    def routers(self) -> list[Router]:
        if self._routers is None:
            self._routers = [router_for(self.cfg, h) for h in self.fleet.traffic_hosts]
        return self._routers

    @property
    def slots(self) -> Slots:
        return Slots(self.cfg, self.fleet, self.routers, self.report)

    @property
    def live(self) -> State:
        """The state read in the `state` phase (phases after it may rely on it)."""
        assert self.state is not None, "the state phase runs first"
        return self.state

    def hook_env(self) -> dict[str, str]:
        return self.ledger.hook_env(self.outcome.action, self.target, self.release_id,
                                    self.version)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.began, 3)


class Interrupted(KeyboardInterrupt):
    """A signal stopped the run; `summary` says what it left behind, truthfully."""

    summary: str = ""


@dataclass(frozen=True)
class Phase:
    name: str
    fn: Callable[[Run], str | None]  # may return a note for the phase's closing line
    detail: Callable[[Run], str] | None = None  # the opening line; None: no lines at all
    observes: bool = False  # only watches effects: a dry run puts it in the plan instead
    on_failure: Callable[[Run, BluegreenError], None] | None = None
    hook: str = ""  # a user hook: shown and run only when it exists
    when: Callable[[Run], bool] | None = None  # runs only when this says so (config)


def run_phase(run: Run, phase: Phase) -> None:
    if phase.hook and not run.ledger.has_hook(phase.hook):
        return
    if phase.when is not None and not phase.when(run):
        return
    run.fleet.enter_phase(phase.name)
    if phase.detail is None:
        phase.fn(run)
        return
    run.ledger.heartbeat(phase.name)
    with run.report.phase(phase.name, phase.detail(run)) as note:
        if phase.observes and run.fleet.plan is not None:
            run.fleet.plan.add("all", f"{phase.name}: {phase.detail(run)}")
            return
        note.text = phase.fn(run) or ""


def perform(run: Run, phases: list[Phase], summary: Callable[[Run], str]) -> Outcome:
    """Run the phases in order; on any failure or interrupt undo what is pending, record,
    release the lock, re-raise."""
    current = phases[0]
    try:
        for current in phases:
            failpoints.hit(f"before:{current.name}")
            run_phase(run, current)
            failpoints.hit(f"after:{current.name}")
            interrupts.checkpoint()
            run.ledger.heartbeat()
    except KeyboardInterrupt as stop:
        exc = Interrupted()
        with interrupts.cleaning_up():
            try:
                _clean_up_after(run, current, exc)
            finally:
                run.stack.__exit__(type(exc), exc, exc.__traceback__)
        raise exc from stop
    except BaseException as exc:
        with interrupts.cleaning_up():
            try:
                _clean_up_after(run, current, exc)
            finally:
                # the lock's context sees the failure: a release that fails now is a
                # warning, never a new error that hides the real one
                run.stack.__exit__(type(exc), exc, exc.__traceback__)
        raise
    with run.stack:
        run.outcome.result, run.outcome.seconds = "ok", run.elapsed()
        run.ledger.record(run.outcome.entry())
    run.report.say(("(dry run) " if run.fleet.dry_run else "") + summary(run))
    return run.outcome


def _clean_up_after(run: Run, current: Phase, exc: BaseException) -> None:
    restored = _undo(run)
    if isinstance(exc, BluegreenError):
        if restored:
            exc.hint = (exc.hint + "; " if exc.hint else "") + restored
        if current.on_failure is not None:
            current.on_failure(run, exc)
        _record_failure(run, exc)
    else:
        done = run.change is not None and run.change.committed
        summary = (f"the switch to {run.target} had committed ({run.version or run.release_id}"
                   f" is live); only the phases after it did not run" if done
                   else restored or "traffic was not touched")
        if isinstance(exc, Interrupted):
            exc.summary = f"interrupted in {current.name}: {summary}"
        if run.ledger.owner is not None:
            run.outcome.result, run.outcome.phase = "interrupted", current.name
            run.outcome.error = f"interrupted in {current.name}; {summary}"
            run.outcome.seconds = run.elapsed()
            run.ledger.record(run.outcome.entry())


def _undo(run: Run) -> str:
    """Undo a traffic change that did not commit; the journal goes once it is undone (if
    undoing fails, the intent stays for the next command to recover)."""
    if run.change is None or (not run.change.pending and not run.change.locked):
        return ""  # committed (or never started): nothing of it to undo
    pending = run.change.pending
    restored = run.change.undo()
    if pending and "could NOT" not in restored:
        run.ledger.clear_intent()
    return restored


def _record_failure(run: Run, exc: BluegreenError) -> None:
    if run.ledger.owner is None:
        return  # nothing was changed before the lock, and history is the lock holder's
    o = run.outcome
    o.result, o.phase, o.error, o.failed_host = "failed", exc.phase, exc.what, exc.host
    o.seconds = run.elapsed()
    run.ledger.record(o.entry())
    run.ledger.on_failure(exc, run.hook_env())
