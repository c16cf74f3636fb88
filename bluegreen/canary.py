"""Canary by weight: part of the users on the idle slot, a sticky cohort each, with the
watch as the gate of every step. Journaled like a switch, so a run killed half-way is put
back to the committed share by the next command.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

from bluegreen import journal
from bluegreen.errors import ArgumentError, BluegreenError
from bluegreen.lock import new_owner
from bluegreen.phases import (
    check_consistency,
    choose_switch_target,
    measure_after,
    measure_before,
    require,
    route_now,
)
from bluegreen.run import Run
from bluegreen.traffic import TrafficChange


def check_weight(weight: int) -> None:
    if not 0 <= weight <= 100:
        raise ArgumentError("--weight", f"must be a percent from 0 to 100, not {weight}",
                            hint="e.g. --weight 10; 100 switches whole, --abort (or 0) ends "
                                 "a canary")


def parse_steps(text: str) -> list[int]:
    """`--canary 5,25,100`: rising percents, each 1-100."""
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        steps = []
    if (not steps or any(not 1 <= s <= 100 for s in steps)
            or any(b <= a for a, b in itertools.pairwise(steps))):
        raise ArgumentError("--canary", f"must be rising percents 1-100, e.g. 5,25,100, not "
                                        f"{text!r}",
                            hint="end with 100 to switch whole; without it the deploy ends "
                                 "with the canary running (`fab promote` finishes it)")
    return steps


def choose_canary_target(run: Run) -> None:
    """A canary goes to the idle slot, which must hold a finished, healthy release."""
    state = run.live
    check_consistency(run, weight=False)
    if not state.live:
        raise BluegreenError("nothing is live yet: a canary needs a live slot to share with",
                             phase="switch", hint="run `fab deploy` first")
    require(run, "weights", "a canary")
    choose_switch_target(run, "", checked=True)


def set_weight(run: Run, weight: int) -> None:
    """Give the idle slot `weight` percent of users, journaled like a switch: a run killed
    half-way is put back to the committed share by the next command."""
    run.ledger.ensure_still_locked()
    state = run.live
    rec = state.slots[state.live]
    run.weight = weight
    measure_before(run)
    run.change = TrafficChange(
        run.cfg, run.routers, state.live, rec.release, rec.version, weight=weight,
        owner=new_owner(run.ledger.who.name, f"{run.cfg.app} canary", run.ledger.who.build_url))
    run.change.lock_traffic_hosts(run.report.say)
    previous = {r.label: r.installed() for r in run.routers}
    run.ledger.write_intent(journal.Intent(
        action="canary", from_slot=state.live, to_slot=state.idle, who=run.ledger.who.name,
        previous=previous,
        previous_sum={label: journal.checksum(text) for label, text in previous.items()}))
    run.change.apply()


def verify_weight(run: Run) -> str:
    assert run.change is not None
    run.change.verify()
    measure_after(run)
    side = (f"both {run.live.live} and {run.target} answer" if run.weight
            else f"answers from {run.live.live}")
    return f"{side} in {run.change.verified_in:.3f}s"


def record_weight(run: Run) -> None:
    """Commit the share: state says it, the change has nothing left to undo."""
    state = run.live
    state.weight = run.weight
    canary = state.slots[state.idle]
    if run.weight and canary.status == "starting":
        # a canary deploy's slot serves users now: its deploy finished (the walk may end
        # below 100); a slot `--no-switch` left ready stays ready for `fab promote`
        canary.status = "running"
    run.outcome.weight = run.weight
    run.ledger.save_state(state)
    if run.change is not None:
        run.change.commit()
    run.ledger.clear_intent()


def watch_canary(run: Run, seconds: float) -> str:
    """The gate of a canary step: the watch, for `seconds`, of the canary slot only. Its
    probes carry a cohort cookie inside the share, so they reach the canary too."""
    from bluegreen import watch
    from bluegreen.routers.base import cohort_in  # the hash both routers use
    cfg = dataclasses.replace(run.cfg.watch, seconds=seconds)
    for router in run.routers:
        router.probe_headers = {
            "Cookie": f"{run.cfg.canary.cookie}={cohort_in(run.weight, canary=True)}"}
    try:
        report = watch.watch(cfg, run.target, run.routers,
                             crashed=lambda: run.slots.not_running_on(run.target, "watch"),
                             say=run.report.say)
    finally:
        for router in run.routers:
            router.probe_headers = None
    run.outcome.watch = {**report.tally.to_dict(), "seconds": round(report.seconds, 2),
                         "breach": report.breach or None, "weight": run.weight}
    if report.breach:
        raise BluegreenError(f"auto-reverted: {report.breach}", phase="watch",
                             hint="the canary went back to 0% (everyone on the live slot) "
                                  "and the release was marked bad; fix the build and "
                                  "`fab deploy` again")
    t = report.tally
    return f"{t.requests} requests, {t.errors} failed over {report.seconds:.1f} s ({t.source})"


def revert_canary(run: Run, exc: BluegreenError) -> None:
    """A breach during a canary step: everyone back on the live slot at once, the canary's
    release marked bad (rollback never returns to it, a redeploy needs --force)."""
    state = run.live
    started = time.monotonic()
    rec = state.slots[state.live]
    change = TrafficChange(run.cfg, run.routers, state.live, rec.release, rec.version,
                           owner=new_owner(run.ledger.who.name, f"{run.cfg.app} revert",
                                           run.ledger.who.build_url))
    try:
        with run.report.phase("revert", f"canary back to 0%: everyone on {state.live} "
                                        f"({rec.version or rec.release})"):
            route_now(run, state.live, started)  # first: another app may hold the lock
            change.lock_traffic_hosts(run.report.say)
            change.apply()
            change.verify()
    except BluegreenError as revert_exc:
        undone = change.undo()
        exc.what += (f"\n    the revert to 0% FAILED too: {revert_exc.what}\n    so the canary "
                     f"may still have its share of users (the revert itself: {undone})")
        exc.hint = "the canary may still get users: run `fab switch --abort` now"
        return
    except BaseException:
        change.undo()
        raise
    bad = state.slots[run.target]
    reason = exc.what.removeprefix("auto-reverted: ")
    state.weight = 0
    state.slots[run.target] = dataclasses.replace(bad, status="bad")
    if bad.checksum:
        state.bad_releases[bad.checksum] = reason
    run.ledger.save_state(state, failing=True)
    change.commit()
    run.outcome.auto_reverted, run.outcome.weight = True, 0
    run.report.say(f"    reverted to 0% in {time.monotonic() - started:.2f} s; "
                   f"{bad.version or bad.release} is marked bad")


def abort_canary(run: Run) -> str:
    """`fab switch --abort`: everyone back on the live slot (the canary keeps running)."""
    state = run.live
    if not state.weight:
        return "no canary is running: nothing to do"
    run.target = state.idle
    set_weight(run, 0)
    run.change.verify()  # type: ignore[union-attr]
    measure_after(run)
    record_weight(run)
    return f"everyone on {state.live} again; {run.target} keeps running, idle"


def check_canary_deploy(run: Run) -> None:
    """`deploy --canary`: a live slot to share users with, and routers that can split."""
    if not run.live.live:
        raise BluegreenError("nothing is live yet: a canary needs a live slot to share users "
                             "with", phase="state",
                             hint="deploy the first release without --canary; nothing was "
                                  "changed")
    require(run, "weights", "a canary")


def check_canary_to(to: str) -> None:
    if to:
        raise ArgumentError("--to", "does not go with --weight: a canary always goes to the "
                                    "idle slot", hint="leave --to out")
