"""The flows, as lists of named phases. Read top to bottom, each list is the whole story.

deploy:   inspect connect lock recover state pre-deploy upload stop start health pre-switch
          switch verify record watch post-switch post-deploy
switch:   connect lock recover state ready health pre-switch switch verify record watch
          post-switch
rollback: connect lock recover state restart ready health pre-switch switch verify record
          watch post-switch post-rollback

`connect` opens every host at once before the lock: an unreachable host, a missing sudo
rule, fails the run before anything changes anywhere (preflight.py).

deploy --no-switch: ... upload stop start health ready  (the slot waits, reachable by preview)
promote:  lock recover state target ready health pre-switch switch verify record watch
          post-switch post-deploy
deploy --canary 5,25,100: ... health pre-switch, then per step below 100: weight verify
          record watch(--step); the last step, 100: switch verify record watch ...
switch --weight N: lock recover state target ready health weight verify record watch
switch --abort:    lock recover state abort
maintenance on|off: lock recover state maintenance

The old slot stays up, warm, so switching back is one health check and one router change.
What each phase does is in phases.py; failure handling (undo a pending traffic change,
history entry, on-failure hook) is in run.py, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bluegreen import batches, preflight, preview
from bluegreen import canary as c
from bluegreen import phases as p
from bluegreen.errors import ArgumentError, BluegreenError, LockHeld
from bluegreen.maintenance import set_maintenance
from bluegreen.run import Outcome, Phase, Run, perform


def _switch_detail(run: Run) -> str:
    return (f"{run.cfg.traffic.router} -> {run.target} (port {run.cfg.port_of(run.target)}) on "
            f"{len(run.cfg.traffic_hosts)} traffic host(s)")


CONNECT = Phase("connect", preflight.connect)  # prints its own lines, only for remote hosts
LOCK = Phase("lock", p.lock, lambda r: f"on {r.cfg.primary.label}")
RECOVER = Phase("recover", p.recover_interrupted)
PRE_SWITCH = Phase("pre-switch", p.hook("pre-switch"), lambda r: "hook", hook="pre-switch")
SWITCH = Phase("switch", p.switch_traffic, _switch_detail, on_failure=p.keep_new_release_idle)
VERIFY = Phase("verify", p.verify_traffic,
               lambda r: f"{r.cfg.verify_path} through every front door answers from "
                         f"{r.target}", observes=True, on_failure=p.keep_new_release_idle)
RECORD = Phase("record", p.record_live)
WATCH = Phase("watch", p.watch_new_slot,
              lambda r: f"slot {r.target} for {r.cfg.watch.seconds:g} s: processes, "
                        f"{', '.join(r.cfg.watch.probe_paths)} through every front door",
              observes=True, on_failure=p.revert_to_warm_slot,
              when=lambda r: r.cfg.watch.seconds > 0)
POST_SWITCH = Phase("post-switch", p.hook("post-switch"), lambda r: "hook", hook="post-switch")
READY = Phase("ready", p.check_target_ready)
HEALTH = Phase("health", p.check_target_healthy,
               lambda r: f"slot {r.target} ({r.version or r.release_id})", observes=True)


def deploy_phases(artifact: Path, version: str, *, no_switch: bool = False,
                  canary: list[int] | None = None, step: float = 0.0) -> list[Phase]:
    if no_switch:
        return [*_prepare_phases(artifact, version, no_switch=True),
                Phase("ready", preview.mark_ready, lambda r: f"slot {r.target} waits for `fab "
                                                      "promote`")]
    steps = [w for w in canary or [] if w < 100]
    return [*_prepare_phases(artifact, version, canary=bool(canary)),
            Phase("pre-switch", p.hook("pre-switch"), lambda r: "hook", hook="pre-switch",
                  on_failure=p.mark_vetoed),
            *[phase for w in steps for phase in canary_step(w, step)],
            *([SWITCH, VERIFY, RECORD, WATCH, POST_SWITCH,
               Phase("post-deploy", p.hook("post-deploy"), lambda r: "hook",
                     hook="post-deploy")]
              if not canary or canary[-1] == 100 else [])]


def _prepare_phases(artifact: Path, version: str, *, no_switch: bool = False,
                    canary: bool = False) -> list[Phase]:
    """A deploy up to a healthy idle slot: what every kind of deploy shares."""
    return [
        Phase("inspect", lambda r: p.inspect(r, artifact, version), lambda r: str(artifact)),
        CONNECT, LOCK, RECOVER,
        Phase("state", p.plan_deploy, lambda r: ""),
        *([Phase("preview-check", p.check_no_switch)] if no_switch else []),
        *([Phase("canary-check", c.check_canary_deploy)] if canary else []),
        Phase("announce", p.announce_deploy),
        Phase("pre-deploy", p.hook("pre-deploy"), lambda r: "hook", hook="pre-deploy"),
        Phase("upload", p.upload,
              lambda r: f"{r.artifact.name} to {len(r.cfg.hosts.app)} host(s)"),  # type: ignore[union-attr]
        Phase("stop", p.stop_target,
              lambda r: f"drain and stop slot {r.target} (port {r.cfg.port_of(r.target)})"),
        Phase("start", p.start_target, lambda r: f"{r.release_id} in slot {r.target}",
              on_failure=p.abandon_new_release),
        Phase("health", p.wait_target_healthy,
              lambda r: f"GET {r.cfg.health.path} on port {r.cfg.port_of(r.target)}",
              observes=True, on_failure=p.abandon_new_release),
    ]


def canary_step(weight: int, seconds: float) -> list[Phase]:
    """One step of a canary: give the idle slot `weight` percent of users (a journaled
    traffic change), prove both sides answer, record it, then watch the canary for
    `seconds`: a breach sends everyone back to the live slot and fails the run."""
    return [
        Phase("weight", lambda r: c.set_weight(r, weight),
              lambda r: f"{weight}% of users to {r.target} (by cohort cookie "
                        f"{r.cfg.canary.cookie}), the rest stay on {r.live.live}",
              on_failure=p.keep_new_release_idle),
        Phase("verify", c.verify_weight, lambda r: f"{r.cfg.verify_path} through every front "
                                                   "door, on both sides", observes=True,
              on_failure=p.keep_new_release_idle),
        Phase("record", c.record_weight),
        Phase("watch", lambda r: c.watch_canary(r, seconds),
              lambda r: f"canary {r.target} at {weight}% for {seconds:g} s",
              observes=True, on_failure=c.revert_canary),
    ]


def switch_phases(to: str, weight: int | None = None) -> list[Phase]:
    return [
        Phase("arguments", lambda r: p.check_slot_name(to)),
        *([Phase("arguments", lambda r: c.check_weight(weight))] if weight is not None else []),
        CONNECT, LOCK, RECOVER,
        Phase("state", p.read_state),
        Phase("target", lambda r: p.choose_switch_target(r, to)),
        READY, HEALTH, PRE_SWITCH, SWITCH, VERIFY, RECORD, WATCH, POST_SWITCH,
    ]


def weight_phases(weight: int, to: str = "") -> list[Phase]:
    """`fab switch --weight N` (0 < N < 100): a canary on the idle slot, gated by the watch."""
    return [
        Phase("arguments", lambda r: c.check_weight(weight)),
        Phase("arguments", lambda r: c.check_canary_to(to)),
        LOCK, RECOVER,
        Phase("state", p.read_state),
        Phase("target", c.choose_canary_target),
        READY, HEALTH,
        *[phase for phase in canary_step(weight, 0.0) if phase.name != "watch"],
        Phase("watch", lambda r: c.watch_canary(r, r.cfg.watch.seconds),
              lambda r: f"canary {r.target} at {weight}% for {r.cfg.watch.seconds:g} s",
              observes=True, on_failure=c.revert_canary,
              when=lambda r: r.cfg.watch.seconds > 0),
    ]


ABORT = [
    LOCK, RECOVER,
    Phase("state", p.read_state),
    Phase("abort", c.abort_canary, lambda r: "canary back to 0%: everyone on the live slot"),
]

PROMOTE = [
    LOCK, RECOVER,
    Phase("state", p.read_state),
    Phase("target", p.choose_promote_target),
    READY, HEALTH, PRE_SWITCH, SWITCH, VERIFY, RECORD, WATCH, POST_SWITCH,
    Phase("post-deploy", p.hook("post-deploy"), lambda r: "hook", hook="post-deploy"),
]


ROLLBACK = [
    CONNECT, LOCK, RECOVER,
    Phase("state", p.read_state),
    Phase("target", p.choose_rollback_target),
    Phase("restart", p.restart_if_cold),
    READY, HEALTH, PRE_SWITCH, SWITCH, VERIFY, RECORD, WATCH, POST_SWITCH,
    Phase("post-rollback", p.hook("post-rollback"), lambda r: "hook", hook="post-rollback"),
]


def _with_measure(line: str, run: Run) -> str:
    """Every summary ends with what users saw during the switch, as nginx counted it."""
    seen = p.measured(run)
    return f"{line}\n    {seen}" if seen else line


def deploy(run: Run, artifact: Path, version: str = "", *, force: bool = False,
           no_switch: bool = False, canary: str = "", step: float | None = None) -> Outcome:
    run.force = force
    steps = c.parse_steps(canary) if canary else None
    if no_switch and steps:
        raise ArgumentError("--canary", "does not go with --no-switch",
                            hint="--no-switch prepares a release for `fab promote`; "
                                 "--canary walks it live step by step")
    if step is not None and not 0 < step <= MAX_STEP:
        raise ArgumentError("--step", f"must be seconds from 0 to {MAX_STEP:g} (exclusive of "
                                      f"0), not {step:g}", hint="e.g. --step 60")
    run.outcome.canary = steps
    phases = deploy_phases(artifact, version, no_switch=no_switch, canary=steps,
                           step=run.cfg.canary.step if step is None else step)
    if no_switch:
        return perform(run, phases, lambda r: (
            f"=== prepared {r.cfg.app} {r.version or r.release_id} in slot {r.target} "
            f"(ready) in {r.outcome.seconds:.2f}s; live stays {r.outcome.from_slot or 'nothing'}"
            "; `fab promote` switches to it"))

    def summary(r: Run) -> str:
        if steps and steps[-1] < 100 and r.live.weight:
            return _with_measure(
                f"=== {r.cfg.app} {r.version or r.release_id} is a canary: {r.live.weight}% "
                f"of users on {r.target} in {r.outcome.seconds:.2f}s; `fab promote` finishes "
                "it, `fab switch --abort` ends it", r)
        return _with_measure(
            f"=== deployed {r.cfg.app} {r.version or r.release_id}: live slot {r.target} in "
            f"{r.outcome.seconds:.2f}s; {r.outcome.from_slot or 'no'} slot kept warm for "
            "`fab switch` / `fab rollback`", r)
    return perform(run, phases, summary)


def switch(run: Run, to: str = "", *, weight: int | None = None,
           abort: bool = False) -> Outcome:
    if abort or weight == 0:
        return perform(run, ABORT, lambda r: f"=== {r.cfg.app}: no canary, everyone on "
                                             f"{r.live.live} ({r.outcome.seconds:.2f}s)")
    if weight is not None and weight < 100:
        return perform(run, weight_phases(weight, to), lambda r: _with_measure(
            f"=== {r.cfg.app}: {weight}% of users on {r.target} "
            f"({r.version or r.release_id}), the rest on {r.live.live}, in "
            f"{r.outcome.seconds:.2f}s; `fab promote` finishes the canary, "
            "`fab switch --abort` ends it", r))
    return perform(run, switch_phases(to, weight), lambda r: _with_measure(
        f"=== {r.cfg.app}: live slot {r.target} ({r.version or r.release_id}) in "
        f"{r.outcome.seconds:.2f}s", r))


def promote(run: Run) -> Outcome:
    return perform(run, PROMOTE, lambda r: _with_measure(
        f"=== promoted {r.cfg.app} {r.version or r.release_id}: live slot {r.target} in "
        f"{r.outcome.seconds:.2f}s; {r.outcome.from_slot or 'no'} slot kept warm", r))


def rollback(run: Run) -> Outcome:
    return perform(run, ROLLBACK, lambda r: _with_measure(
        f"=== rolled back {r.cfg.app} to {r.version or r.release_id} (slot {r.target}) in "
        f"{r.outcome.seconds:.2f}s", r))


def maintenance(run: Run, on: bool, message: str = "", retry_after: int = 60) -> Outcome:
    text = (message or DEFAULT_MAINTENANCE) if on else None
    phases = [
        Phase("arguments", lambda r: check_maintenance_args(text, retry_after)),
        LOCK, RECOVER,
        Phase("state", p.read_state),
        Phase("maintenance", lambda r: set_maintenance(r, page_text(r, on, message),
                                                       retry_after),
              lambda r: (f"503 + Retry-After {retry_after} s at every front door" if on
                         else "serve the live slot again at every front door")),
    ]
    return perform(run, phases, lambda r: (
        f"=== {r.cfg.app}: maintenance {'on' if on else 'off'} "
        f"({r.outcome.seconds:.2f}s); the slots were not touched"))


DEFAULT_MAINTENANCE = "Down for maintenance; back soon."
MAX_MESSAGE = 500  # characters: the lua mode sends it in a URL
MAX_RETRY_AFTER = 86400  # a day: clients (and crawlers) come back within it
MAX_STEP = 86400.0  # a canary step longer than a day is a typo


def page_text(run: Run, on: bool, message: str) -> str | None:
    """The maintenance page's message: --message, else the one state records while
    maintenance is on (`fab maintenance on` again, as status says after an nginx restart
    lost the page, puts that page back rather than the default), else the default."""
    if not on:
        return None
    return message or run.live.maintenance or DEFAULT_MAINTENANCE


def check_maintenance_args(text: str | None, retry_after: int) -> None:
    if not 0 <= retry_after <= MAX_RETRY_AFTER:
        raise ArgumentError("--retry-after", f"must be seconds from 0 to {MAX_RETRY_AFTER}, "
                                             f"not {retry_after}", hint="e.g. --retry-after 600")
    if text is None:
        return
    from bluegreen.config import check_label
    check_label("--message", text)
    if len(text) > MAX_MESSAGE:
        raise ArgumentError("--message", f"is {len(text)} characters; at most {MAX_MESSAGE}",
                            hint="say it in a line, and link to more")


def batch_phases(artifact: Path, version: str) -> list[Phase]:
    """`fab deploy --batch`: the same deploy, one batch of hosts at a time (batches.py)."""
    return [
        Phase("inspect", lambda r: p.inspect(r, artifact, version), lambda r: str(artifact)),
        CONNECT, LOCK, RECOVER,
        Phase("state", batches.plan_rollout, lambda r: ""),
        Phase("announce", batches.announce),
        Phase("pre-deploy", p.hook("pre-deploy"), lambda r: "hook", hook="pre-deploy"),
        Phase("rollout", batches.roll, lambda r: f"batches of {r.cfg.fleet.batch}"),
        Phase("record", batches.commit),
        Phase("post-deploy", p.hook("post-deploy"), lambda r: "hook", hook="post-deploy"),
    ]


def deploy_in_batches(run: Run, artifact: Path, version: str = "") -> Outcome:
    return perform(run, batch_phases(artifact, version), lambda r: (
        f"=== deployed {r.cfg.app} {r.version or r.release_id} to every host in batches: "
        f"live slot {r.target} in {r.outcome.seconds:.2f}s; {r.outcome.from_slot} slot kept "
        "warm for `fab rollback`"))


def recover_if_pending(run: Run) -> None:
    """Before `status` reports: recover an interrupted switch when no live run holds the
    lock (if one does, it is that run's switch in progress: status shows it as pending)."""
    if run.fleet.dry_run:
        return
    try:
        if run.ledger.read_intent() is None:
            return
    except BluegreenError:
        return  # an unreadable journal: status shows it, with what to do
    try:
        with run.ledger.locked("recover"):
            p.recover_interrupted(run)
    except LockHeld:
        return


FLOWS: dict[str, Any] = {"deploy": deploy, "switch": switch, "rollback": rollback,
                         "promote": promote, "maintenance": maintenance}
