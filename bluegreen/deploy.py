"""The flows, as lists of named phases. Read top to bottom, each list is the whole story.

deploy:   inspect connect lock recover state pre-deploy upload stop start health pre-switch
          switch verify record watch post-switch post-deploy
switch:   connect lock recover state ready health pre-switch switch verify record watch
          post-switch
rollback: connect lock recover state restart ready health pre-switch switch verify record
          watch post-switch post-rollback

`connect` opens every host at once before the lock: an unreachable host, a missing sudo
rule, fails the run before anything changes anywhere (preflight.py).

The old slot stays up, warm, so switching back is one health check and one router change.
What each phase does is in phases.py; failure handling (undo a pending traffic change,
history entry, on-failure hook) is in run.py, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bluegreen import batches, preflight
from bluegreen import phases as p
from bluegreen.errors import BluegreenError, LockHeld
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


def deploy_phases(artifact: Path, version: str) -> list[Phase]:
    return [
        Phase("inspect", lambda r: p.inspect(r, artifact, version), lambda r: str(artifact)),
        CONNECT, LOCK, RECOVER,
        Phase("state", p.plan_deploy, lambda r: ""),
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
        Phase("pre-switch", p.hook("pre-switch"), lambda r: "hook", hook="pre-switch",
              on_failure=p.mark_vetoed),
        SWITCH, VERIFY, RECORD, WATCH, POST_SWITCH,
        Phase("post-deploy", p.hook("post-deploy"), lambda r: "hook", hook="post-deploy"),
    ]


def switch_phases(to: str) -> list[Phase]:
    return [
        Phase("arguments", lambda r: p.check_slot_name(to)),
        CONNECT, LOCK, RECOVER,
        Phase("state", p.read_state),
        Phase("target", lambda r: p.choose_switch_target(r, to)),
        READY, HEALTH, PRE_SWITCH, SWITCH, VERIFY, RECORD, WATCH, POST_SWITCH,
    ]


ROLLBACK = [
    CONNECT, LOCK, RECOVER,
    Phase("state", p.read_state),
    Phase("target", p.choose_rollback_target),
    Phase("restart", p.restart_if_cold),
    READY, HEALTH, PRE_SWITCH, SWITCH, VERIFY, RECORD, WATCH, POST_SWITCH,
    Phase("post-rollback", p.hook("post-rollback"), lambda r: "hook", hook="post-rollback"),
]


def deploy(run: Run, artifact: Path, version: str = "", *, force: bool = False) -> Outcome:
    run.force = force
    return perform(run, deploy_phases(artifact, version), lambda r: (
        f"=== deployed {r.cfg.app} {r.version or r.release_id}: live slot {r.target} in "
        f"{r.outcome.seconds:.2f}s; {r.outcome.from_slot or 'no'} slot kept warm for "
        "`fab switch` / `fab rollback`"))


def switch(run: Run, to: str = "") -> Outcome:
    return perform(run, switch_phases(to), lambda r: (
        f"=== {r.cfg.app}: live slot {r.target} ({r.version or r.release_id}) in "
        f"{r.outcome.seconds:.2f}s"))


def rollback(run: Run) -> Outcome:
    return perform(run, ROLLBACK, lambda r: (
        f"=== rolled back {r.cfg.app} to {r.version or r.release_id} (slot {r.target}) in "
        f"{r.outcome.seconds:.2f}s"))


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


FLOWS: dict[str, Any] = {"deploy": deploy, "switch": switch, "rollback": rollback}
