"""The phases the flows are made of. Each is a small function over one Run.

deploy.py lists them per flow; run.py runs them and handles failure once for all.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

from bluegreen import failpoints, interrupts, journal, preview, release, render
from bluegreen.errors import BluegreenError
from bluegreen.layout import release_id
from bluegreen.lock import new_owner
from bluegreen.routers import switch_notices
from bluegreen.routers.base import Applied, SlotCounters
from bluegreen.run import Run
from bluegreen.state import SlotRecord, State
from bluegreen.traffic import TrafficChange

# ---------------------------------------------------------------- taking hold


def inspect(run: Run, path: Path, version: str) -> str:
    art = release.inspect(path)
    run.artifact = art
    run.version = version or run.ledger.who.commit[:12]
    run.release_id = release_id(run.version, art.checksum)
    run.artifact_name = run.cfg.artifact_name or art.name
    o = run.outcome
    o.version, o.release, o.checksum = run.version, run.release_id, art.checksum
    return f"{art.size} bytes sha256 {art.checksum[:12]}"


def lock(run: Run) -> None:
    run.stack.enter_context(run.ledger.locked(run.outcome.action))


def read_state(run: Run) -> None:
    run.state = run.ledger.read_state()


def check_consistency(run: Run, *, weight: bool = True) -> None:
    """Recorded state and what every router routes to must agree before we change anything
    (a canary's share too, unless the change is a new share, which converges it anyway)."""
    state = run.live
    if state.rollout is not None:
        raise partial_rollout(state)
    for router in run.routers:
        routed = router.routed()
        expected = state.live_on(router.label)
        if routed.slot != expected or routed.file_slot != expected:
            where = (f"routes to {routed.slot or '(no bluegreen config)'}"
                     if routed.slot == routed.file_slot
                     else f"routes to {routed.slot} while its file {router.target} says "
                          f"{routed.file_slot}")
            raise BluegreenError(
                f"state says live slot is {expected or '(none)'} but {router.product} on "
                f"{router.label} {where}", host=router.label, phase="state",
                hint=f"someone changed {router.product} by hand or a switch was interrupted: "
                     f"run `fab switch --to {routed.slot or expected or 'blue'}` to converge")

        if weight and routed.weight != state.weight:
            raise BluegreenError(
                f"state says the canary gets {state.weight}% of users but {router.product} on "
                f"{router.label} gives it {routed.weight}%", host=router.label, phase="state",
                hint="someone set it by hand, or a weight change was cut off: `fab switch "
                     f"--weight {state.weight}` sets it again, `fab switch --abort` ends the "
                     "canary")


def partial_rollout(state: State) -> BluegreenError:
    """A rolling deploy was stopped with hosts on both slots: only resuming it or putting
    every host on one slot is safe."""
    r = state.rollout
    assert r is not None
    return BluegreenError(
        f"a rolling deploy of {r.version or r.release} is partial: {len(r.done)} host(s) "
        f"serve {r.slot} ({', '.join(r.done) or 'none'}), the others {r.from_slot}"
        + (f"; failed: {', '.join(r.failed)}" if r.failed else ""), phase="state",
        hint=f"resume it with the same artifact: `fab deploy --batch {r.batch or 'N'} "
             f"--artifact ...`; or put every host back: `fab switch --to {r.from_slot}`")


# ---------------------------------------------------------------- deploy: prepare the idle slot


def plan_deploy(run: Run) -> None:
    """State, consistency, and the target: the idle slot. A template error stops us before
    anything is uploaded or stopped."""
    read_state(run)
    check_consistency(run)
    refuse_bad_artifact(run)
    refuse_while_canary(run, "a deploy")
    state = run.live
    run.target = state.idle
    render.render(run.cfg, run.target, run.release_id, run.version)
    run.outcome.from_slot, run.outcome.to_slot = state.live, run.target


def announce_deploy(run: Run) -> None:
    cfg, state = run.cfg, run.live
    run.report.say(f"=== deploy {cfg.app} {run.version or run.release_id} -> {run.target} (port "
                   f"{cfg.port_of(run.target)}), live now: {state.live or 'nothing'}; "
                   f"{len(cfg.hosts.app)} app host(s), {len(cfg.traffic_hosts)} traffic host(s)")


def upload(run: Run) -> str:
    """Ship the artifact to every app host, then record the idle slot's new content before
    touching it: whatever happens from here on (a failure, Ctrl-C, a vetoing pre-switch
    hook), state never claims the idle slot still holds its old release, so rollback never
    trusts a slot that was reused."""
    state, art, fleet = run.live, run.artifact, run.fleet
    assert art is not None
    # never prune what a slot holds, nor what rollback would go back to
    protected = [r.release for r in (*state.slots.values(), state.previous_release)
                 if r.release]
    if art.kind != "file" and "{artifact}" in run.cfg.start and not run.cfg.artifact_name:
        # a .war used to be placed whole; unpacked, {artifact} names a file it rarely holds
        run.report.say(f"    warning: start uses {{artifact}}, but {art.name} is unpacked into "
                       f"the release dir, so {{artifact}} names {run.artifact_name} inside it; "
                       "start from {release} (the docBase), ship a .jar to run it whole, or "
                       "set artifact_name to a file in the archive")
    # every host first: one without room (or without unzip for a war) refuses the deploy
    # before any host has been sent a byte
    fleet.on_all(fleet.app_hosts, "upload", lambda h: release.preflight(
        h, fleet.layout(h), art, run.release_id))
    sent = sum(fleet.on_all(fleet.app_hosts, "upload", lambda h: release.ship(
        h, fleet.layout(h), art, run.release_id, run.artifact_name, run.cfg.keep_releases,
        protected)))
    run.outcome.uploaded_bytes = sent
    failpoints.hit("upload.unpacked")
    state.slots[run.target] = SlotRecord(release=run.release_id, version=run.version,
                                         checksum=art.checksum, artifact=run.artifact_name,
                                         deployed_at=time.time(), status="starting")
    run.ledger.save_state(state)
    return f"{sent} bytes sent" + ("" if sent else " (already on every host)")


def stop_target(run: Run) -> str:
    preview.disarm(run)
    return run.slots.stop(run.target)


def start_target(run: Run) -> None:
    run.slots.start(run.target, run.release_id, run.version, run.artifact_name)


def wait_target_healthy(run: Run) -> str:
    report = run.slots.wait_healthy(run.target)
    run.outcome.health_seconds = round(report.elapsed, 3)
    return f"healthy after {report.elapsed:.3f}s ({report.probes} probes)"


def abandon_new_release(run: Run, exc: BluegreenError) -> None:
    """The new release did not come up: show its log, stop it, say traffic was not moved."""
    state, slot = run.live, run.target
    exc.what += "\n" + run.slots.last_logs(slot)
    with run.report.phase("stop", f"failed release in slot {slot}"):
        run.slots.stop_quietly(slot)
    state.slots[slot].status = "failed"
    run.ledger.save_state(state, failing=True)
    where = (f"it stays on {state.live}" if state.live
             else "nothing was live before, and nothing is now")
    exc.hint = f"traffic was NOT switched: {where}. " + exc.hint


def mark_vetoed(run: Run, exc: BluegreenError) -> None:
    run.live.slots[run.target].status = "vetoed"  # healthy, but not to be switched to
    run.ledger.save_state(run.live, failing=True)


# ---------------------------------------------------------------- switch and rollback: choose


def choose_switch_target(run: Run, to: str, *, checked: bool = False) -> None:
    state = run.live
    if not to and not checked:
        check_consistency(run)  # an explicit --to is how you converge
        if not state.live:
            raise BluegreenError("nothing is live yet", phase="switch",
                                 hint="run `fab deploy` first")
    run.target = to or state.idle
    rec = state.slots[run.target]
    o = run.outcome
    o.from_slot, o.to_slot, o.release, o.version = state.live, run.target, rec.release, \
        rec.version
    run.release_id, run.version = rec.release, rec.version


def choose_rollback_target(run: Run) -> None:
    check_consistency(run)
    state = run.live
    refuse_while_canary(run, "a rollback")
    back_to = state.previous_release
    if not state.live or not back_to.release:
        raise BluegreenError("there is no previous release to roll back to",
                             phase="rollback", hint="`fab status` shows the history")
    if back_to.checksum in state.bad_releases:
        raise BluegreenError(
            f"the previous release {back_to.version or back_to.release} was auto-reverted: "
            f"{state.bad_releases[back_to.checksum]}", phase="rollback",
            hint="rollback never goes back to a bad release; `fab deploy` a good build, or "
                 "`fab deploy --force` that artifact if you must")
    run.target = state.idle
    o = run.outcome
    o.from_slot, o.to_slot, o.release, o.version = state.live, run.target, back_to.release, \
        back_to.version
    o.rolled_back_release = state.slots[state.live].release
    run.release_id, run.version = back_to.release, back_to.version


def restart_if_cold(run: Run) -> None:
    """Rollback is instant while the previous release still runs warm in the idle slot. If
    that slot was reused since (say, by a failed deploy), start the previous release again
    from its release dir, which keep_releases retains."""
    state, slot = run.live, run.target
    back_to, held = state.previous_release, state.slots[slot]
    if (held.release == back_to.release and held.status == "running"
            and not run.slots.not_running_on(slot)):
        return
    state.slots[slot] = dataclasses.replace(back_to, status="starting")
    fleet = run.fleet
    missing = [h.label for h in fleet.app_hosts
               if not release.has_release(h, fleet.layout(h), back_to.release)]
    if missing:
        raise BluegreenError(f"release {back_to.release} is no longer on {', '.join(missing)}",
                             phase="rollback", host=",".join(missing),
                             hint="deploy that version again with `fab deploy`")
    preview.disarm(run)
    run.ledger.save_state(state)  # the slot is about to change hands: say so first
    with run.report.phase("stop", f"drain and stop slot {slot}"):
        run.slots.stop(slot)
    with run.report.phase("start", f"{back_to.release} again in slot {slot}"):
        run.slots.start(slot, back_to.release, back_to.version,
                        run.cfg.artifact_name or back_to.artifact)
    state.slots[slot].status = "running"


def check_target_ready(run: Run) -> None:
    """Only a slot whose deploy finished may take traffic; a template error stops us here."""
    rec = run.live.slots[run.target]
    if not rec.release:
        raise BluegreenError(f"slot {run.target} has never held a release", phase="switch",
                             hint="run `fab deploy` first")
    if rec.status not in ("running", "ready"):
        raise BluegreenError(
            f"slot {run.target} holds {rec.version or rec.release}, whose deploy did not "
            f"finish (status: {rec.status})", phase="switch",
            hint="traffic was not touched; `fab deploy` again, or `fab rollback` to "
                 "restart the previous release")
    render.render(run.cfg, run.target, rec.release, rec.version)


def check_target_healthy(run: Run) -> str:
    down = run.slots.not_running_on(run.target)
    if down:
        rec = run.live.slots[run.target]
        raise BluegreenError(
            f"slot {run.target} ({rec.release}) is not running on {', '.join(down)}",
            phase="switch", host=",".join(down),
            hint="traffic was not touched; `fab rollback` restarts the previous "
                 "release, or `fab deploy` ships a new one")
    return wait_target_healthy(run)


# ---------------------------------------------------------------- moving traffic


def switch_traffic(run: Run) -> None:
    """Journal the intent first: if this process dies anywhere from here until `record`,
    the next command finds it and puts traffic back to the committed state."""
    run.ledger.ensure_still_locked()
    rec = run.live.slots[run.target]
    run.change = TrafficChange(
        run.cfg, run.routers, run.target, rec.release, rec.version,
        owner=new_owner(run.ledger.who.name, f"{run.cfg.app} {run.outcome.action}",
                             run.ledger.who.build_url), on_host=run.fleet.record)
    run.change.lock_traffic_hosts(run.report.say)
    previous = {r.label: r.installed() for r in run.routers}
    run.ledger.write_intent(journal.Intent(
        action=run.outcome.action, from_slot=run.live.live, to_slot=run.target,
        who=run.ledger.who.name, previous=previous,
        previous_sum={label: journal.checksum(text) for label, text in previous.items()}))
    for line in switch_notices(run.routers):  # say what this way of switching costs
        run.report.say(f"    {line}")
    failpoints.hit("switch.after-intent")
    measure_before(run)
    run.change.apply()


def verify_traffic(run: Run) -> str:
    assert run.change is not None
    run.change.verify()
    measure_after(run)
    skew = run.outcome.flip_skew_ms = run.change.skew_ms
    return (f"answers from {run.target} in {run.change.verified_in:.3f}s"
            + (f"; flip skew {skew:.1f} ms across {len(run.change.flips)} traffic hosts"
               if skew is not None else ""))


def keep_new_release_idle(run: Run, exc: BluegreenError) -> None:
    """The switch failed and was undone: the new release keeps running, idle."""
    state = run.live
    state.slots[run.target].status = "running"
    run.ledger.save_state(state, failing=True)
    where = f"Traffic stays on {state.live}" if state.live else "Nothing is live yet"
    exc.hint = (f"{exc.hint}. {where}; the new release keeps running idle in "
                f"{run.target}: fix, then `fab switch` or `fab deploy` again")


def record_live(run: Run) -> None:
    """Commit: state says the target is live; the traffic change has nothing left to undo."""
    state, target = run.live, run.target
    run.before = copy.deepcopy(state)
    if state.live and state.live != target:
        state.previous = state.live
        state.previous_release = dataclasses.replace(state.slots[state.live])
    state.live = target
    preview.disarm(run)  # it is live now: no route of its own any more
    state.slots[target].status = "running"
    state.hosts.clear()  # every traffic host was moved: no host differs any more
    state.rollout = None
    state.weight = 0  # a whole switch ends any canary
    if run.outcome.weight:
        run.outcome.weight = 0  # and history says so: the share is what is true now
    # The commit point: once state says the target is live, the change must not be undone
    # by a signal arriving at the end of that write; it waits until the commit is whole.
    with interrupts.uninterruptible():
        run.ledger.save_state(state)
        failpoints.hit("record.after-state")
        if run.change is not None:
            run.change.commit()
        run.ledger.clear_intent()


def recover_interrupted(run: Run) -> None:
    """A journal left by a run that died mid-switch: put every traffic host back to the last
    committed state (the file it had before, re-applied and verified), record it, go on."""
    intent = run.ledger.read_intent()
    if intent is None:
        return
    state = run.ledger.read_state()
    run.report.say(f"    found an interrupted {intent.describe()}: restoring the committed "
                   f"state (live: {state.live or 'nothing'})")
    fixed = []
    for router in run.routers:
        routed = router.routed()
        expected = state.live_on(router.label)
        if (routed.slot == routed.file_slot == expected and expected
                and routed.weight == routed.file_weight == state.weight):
            continue  # this host never changed, or the change was committed
        previous = intent.previous.get(router.label, router.installed())
        offset = router.error_log_size()
        router.restore(router.recovery_applied(previous))
        if expected:
            marker = render.parse_marker(previous)
            router.verify(Applied(previous, offset, weight=marker.weight if marker else 0),
                          expected)
        fixed.append(router.label)
    run.ledger.record({"action": "recover", "result": "ok", "intent": intent.id,
                       "interrupted": intent.action, "from_slot": intent.from_slot,
                       "to_slot": intent.to_slot, "interrupted_who": intent.who,
                       "restored_hosts": fixed, "live": state.live,
                       "note": f"recovered interrupted {intent.action} {intent.id}"})
    run.ledger.clear_intent()
    run.report.say(f"    recovered interrupted {intent.action} {intent.id}: "
                   + (f"restored {', '.join(fixed)}" if fixed
                      else "nothing to undo, it had committed"))


def watch_new_slot(run: Run) -> str:
    """The window after the switch; a breach raises, and `revert_to_warm_slot` undoes."""
    from bluegreen import watch
    cfg = run.cfg.watch
    report = watch.watch(cfg, run.target, run.routers,
                         crashed=lambda: run.slots.not_running_on(run.target, "watch"),
                         say=run.report.say)
    run.outcome.watch = {**report.tally.to_dict(), "seconds": round(report.seconds, 2),
                         "breach": report.breach or None}
    if report.breach:
        raise BluegreenError(f"auto-reverted: {report.breach}", phase="watch",
                             hint="the release was marked bad: `fab rollback` never goes back "
                                  "to it, and deploying the same artifact needs --force; fix "
                                  "the build and `fab deploy` again")
    t = report.tally
    return f"{t.requests} requests, {t.errors} failed over {report.seconds:.1f} s ({t.source})"


def revert_to_warm_slot(run: Run, exc: BluegreenError) -> None:
    """A breach: traffic back to the slot that was live before, at once; the new release
    is marked bad; state is what it was before this run's switch."""
    before = run.before
    bad = run.live.slots[run.target]
    if before is None or not before.live or before.live == run.target:
        exc.hint = ("there is no warm slot to go back to (this was the first deploy): traffic "
                    "stays on the new release; fix the build and `fab deploy` again")
        return
    back = before.live
    rec = before.slots[back]
    started = time.monotonic()
    change = TrafficChange(run.cfg, run.routers, back, rec.release, rec.version,
                           owner=new_owner(run.ledger.who.name, f"{run.cfg.app} revert",
                                           run.ledger.who.build_url))
    try:
        with run.report.phase("revert", f"traffic back to {back} "
                                        f"({rec.version or rec.release})"):
            route_now(run, back, started)  # first: another app's switch may hold the lock
            change.lock_traffic_hosts(run.report.say)
            change.apply()
            change.verify()
    except BluegreenError as revert_exc:
        undone = change.undo()
        exc.what += (f"\n    the revert to {back} FAILED too: {revert_exc.what}\n    so traffic "
                     f"may still be on {run.target} (the revert itself: {undone})")
        exc.hint = f"traffic may still be on {run.target}: run `fab switch --to {back}` now"
        return
    except BaseException:
        change.undo()
        raise
    reason = exc.what.removeprefix("auto-reverted: ")
    state = copy.deepcopy(before)
    state.weight = 0  # the revert rendered no canary: everyone is on the warm slot
    state.slots[run.target] = dataclasses.replace(bad, status="bad")
    if bad.checksum:
        state.bad_releases[bad.checksum] = reason
    run.ledger.save_state(state, failing=True)
    change.commit()
    run.outcome.auto_reverted = True
    run.report.say(f"    reverted to {back} in {time.monotonic() - started:.2f} s; "
                   f"{bad.version or bad.release} is marked bad")


def refuse_bad_artifact(run: Run) -> None:
    """A release the watch reverted is not deployed again by accident."""
    assert run.artifact is not None
    why = run.live.bad_releases.get(run.artifact.checksum)
    if why and not run.force:
        raise BluegreenError(
            f"this artifact (sha256 {run.artifact.checksum[:12]}) was auto-reverted before: "
            f"{why}", phase="state",
            hint="build a fixed release, or deploy this one anyway with --force")


def hook(name: str) -> object:
    def run_it(run: Run) -> None:
        run.ledger.run_hook(name, run.hook_env())
    return run_it


def check_slot_name(to: str) -> None:
    if to and to not in ("blue", "green"):
        raise BluegreenError(f"--to must be blue or green, not {to!r}", phase="switch",
                             hint="use --to blue or --to green, or leave it out to switch "
                                  "to the idle slot")


# ---------------------------------------------------------------- the switch, measured


def measure_before(run: Run) -> None:
    """The routers' own counters just before traffic moves: the start of the switch window
    (None: some router keeps none, and the window will say so rather than show zeros)."""
    run.counts_before = _read_counts(run)


def measure_after(run: Run) -> None:
    """The end of the switch window (after verify): what users saw, summed over both slots
    and every traffic host, goes to the outcome (and so to history)."""
    before = run.counts_before
    now = _read_counts(run) if before is not None else None
    if before is None or now is None:
        return
    requests = failed = 0
    for label, slots in now.items():
        for slot, c in slots.items():
            old = before.get(label, {}).get(slot)
            if old is None or c.requests < old.requests:  # nginx restarted in between
                old = SlotCounters()
            requests += c.requests - old.requests
            failed += max(0, c.failed - old.failed)
    run.outcome.requests, run.outcome.failed_requests = requests, failed


def _read_counts(run: Run) -> dict[str, dict[str, SlotCounters]] | None:
    if run.fleet.dry_run:
        return None
    counts = {}
    for router in run.routers:
        try:
            counted = router.counters()
        except BluegreenError:
            # a router with nothing to count yet (haproxy before its first deploy has no
            # backend): the window is not measured; the switch itself must not fail on it
            return None
        if counted is None:
            return None
        counts[router.label] = counted
    return counts


def measured(run: Run) -> str:
    """The measured line of a run's summary: what users saw during the switch."""
    o = run.outcome
    if o.requests is not None and o.failed_requests is not None:
        counted_by = "/".join(sorted({r.product for r in run.routers})) or "nginx"
        return (f"{o.failed_requests:,} failed of {o.requests:,} requests during the switch "
                f"({counted_by}'s own counts)")
    if run.fleet.dry_run:
        return ""
    kinds = sorted({r.kind for r in run.routers if "counters" not in r.features})
    why = (f"{'/'.join(kinds)} mode keeps no per-request counters (lua mode does)" if kinds
           else "nginx had no bluegreen counters before this switch (the first one, or the "
                "first since the lua file was installed)")
    return f"failed requests during the switch: not measured ({why})"


# ---------------------------------------------------------------- what the routers can do


def require(run: Run, feature: str, what: str) -> None:
    """Refuse, before anything changes, a flow some traffic host cannot do."""
    lacking = [r for r in run.routers if feature not in r.features]
    if lacking:
        modes = ", ".join(f"{r.label} ({r.kind} mode)" for r in lacking)
        raise BluegreenError(
            f"{what} needs a router that can route by request on every traffic host (nginx "
            f"with its lua module, or haproxy), and {modes} cannot",
            phase="state", host=",".join(r.label for r in lacking),
            hint="install libnginx-mod-http-lua there (nginx.mode = \"auto\" finds it) or set "
                 "nginx.mode = \"lua\", or use traffic.router = \"haproxy\"; nothing was "
                 "changed")


def refuse_while_canary(run: Run, action: str) -> None:
    """A deploy or rollback would stop or reuse the idle slot, which a canary's users are
    on: end the canary first."""
    state = run.live
    if state.weight:
        raise BluegreenError(
            f"a canary is running: {state.weight}% of users are on {state.idle} "
            f"({state.slots[state.idle].version or state.slots[state.idle].release}); "
            f"{action} would take that slot from them", phase="state",
            hint="`fab promote` to finish the canary, or `fab switch --abort` to send "
                 "everyone back to the live slot; then run this again")


# -------------------------------------------- prepare now, cut over later (preview.py: the route)


def check_no_switch(run: Run) -> None:
    """`deploy --no-switch`: with a preview configured, every traffic host must be able to
    route it, and the token must be there, before anything is uploaded."""
    if preview.token(run.cfg):
        require(run, "preview", "a preview route (preview.token_env is set)")


def choose_promote_target(run: Run) -> None:
    """`fab promote`: the idle slot a `deploy --no-switch` left ready, or a canary's."""
    state = run.live
    check_consistency(run)
    rec = state.slots[state.idle]
    if not state.live or not (rec.status == "ready" or state.weight):
        raise BluegreenError(
            "there is nothing to promote: no slot is ready and no canary is running",
            phase="switch", hint="`fab deploy --no-switch` prepares a release, `fab switch "
                                 "--weight N` starts a canary; `fab switch` flips anyway")
    choose_switch_target(run, "", checked=True)


def route_now(run: Run, slot: str, breach_seen: float) -> None:
    """A breach: users off the bad release first, where the router can do that at once
    (lua: one POST); the file and its test follow in the revert's traffic change. A host
    that cannot is left to that change; one that fails to is reported, not fatal."""
    moved = []
    for router in run.routers:
        try:
            if router.route_now(slot):
                moved.append(router.label)
        except BluegreenError as exc:
            run.report.say(f"    {router.label}: could not move users at once "
                           f"({exc.what.splitlines()[0]}); the revert's switch will")
    if moved:
        run.report.say(f"    users on {slot} {(time.monotonic() - breach_seen) * 1000:.0f} ms "
                       f"after the breach ({', '.join(moved)}); now the file follows")
