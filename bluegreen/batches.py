"""Rolling deploys: a batch of hosts at a time, for hosts behind an external balancer.

When every app host is its own traffic host (hosts.traffic empty: a cloud load balancer in
front of many servers, each with its own nginx and slots), `fab deploy --batch 25%` (or
`--batch 2`) ships, starts, health-checks and switches one batch at a time; each host's
nginx routes to its own slots only. Per batch:

    upload stop start health [pre-switch] switch verify watch  -> the batch's hosts serve the
                                                                  new release; state records them
The watch (`[watch]`, as after any switch) is each batch's gate: for watch.seconds the
batch's own front doors are probed and, where the router counts (lua, haproxy), its real
requests judged; a breach marks the release bad, switches the breached batch and the
batches before it back (--keep-partial keeps the earlier ones: they passed their own
watch) and stops the rollout.
A host that fails is left on the old slot (its new slot stopped) and counted; past
`--max-fail` hosts the rollout stops, and the hosts it already switched are switched back
to the old slot (still warm) unless `--keep-partial`. State records which host serves what
(State.hosts, State.rollout), `fab status` shows it, and the same command again resumes:
hosts already switched are skipped, failed ones are retried.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

from bluegreen import interrupts, render
from bluegreen import phases as p
from bluegreen import watch as watch_mod
from bluegreen.config import Config, HostSpec
from bluegreen.errors import BluegreenError
from bluegreen.run import Run
from bluegreen.state import HostLive, Rollout

# ---------------------------------------------------------------- planning (pure)


def batch_size(spec: str, total: int) -> int:
    """`25%` of `total` hosts (rounded up, at least 1) or a plain number (at most total)."""
    spec = spec.strip()
    if total <= 0:
        return 0
    if spec.endswith("%"):
        percent = int(spec[:-1])
        if not 1 <= percent <= 100:
            raise ValueError(f"expected a percentage 1%-100%, got {spec!r}")
        return max(1, min(total, math.ceil(total * percent / 100)))
    if not spec.isdigit() or int(spec) < 1:
        raise ValueError(f"expected a number of hosts (e.g. 2) or a percentage, got {spec!r}")
    return min(total, int(spec))


def plan_batches(labels: list[str], spec: str) -> list[list[str]]:
    """The hosts in order, cut into batches of `batch_size(spec, len(labels))`."""
    size = batch_size(spec, len(labels))
    return [labels[i:i + size] for i in range(0, len(labels), size)] if size else []


# ---------------------------------------------------------------- the flow's phases


def check_layout(cfg: Config) -> None:
    if cfg.hosts.traffic:
        raise BluegreenError(
            "--batch is for app hosts that are each their own traffic host (hosts.traffic "
            "empty, an external balancer in front), but hosts.traffic lists "
            f"{len(cfg.hosts.traffic)} separate traffic host(s)", phase="arguments",
            hint="with separate traffic hosts a deploy switches them all at once, all or "
                 "nothing: leave out --batch (and fleet.batch)")


def local_upstreams(cfg: Config) -> Config:
    """The config the batch routers render with: each host's nginx routes to its own slots
    (127.0.0.1), so a host switches alone; the same file on every host."""
    me = HostSpec("127.0.0.1", name="self", upstream="127.0.0.1")
    return dataclasses.replace(cfg, hosts=dataclasses.replace(cfg.hosts, app=[me]))


def plan_rollout(run: Run) -> None:
    """Read state; check every host serves what state says; start a rollout, or resume the
    one recorded for this same release."""
    p.read_state(run)
    state, cfg = run.live, run.cfg
    check_layout(cfg)
    p.refuse_bad_artifact(run)  # a batch's watch (or any watch) reverted it before
    if not state.live:
        raise BluegreenError("nothing is live yet: a rolling deploy moves hosts from the live "
                             "slot to the other one", phase="state",
                             hint="deploy the first release to every host at once (leave out "
                                  "--batch)")
    for router in run.routers:
        routed = router.routed()
        expected = state.live_on(router.label)
        if routed.slot != expected or routed.file_slot != expected:
            raise BluegreenError(
                f"state says {router.label} serves {expected} but its nginx routes to "
                f"{routed.slot or '(nothing)'}", host=router.label, phase="state",
                hint="a switch was interrupted or nginx was changed by hand: `fab switch "
                     f"--to {state.rollout.from_slot if state.rollout else state.live}` puts "
                     "every host on one slot")
    r = state.rollout
    if r is not None and r.release != run.release_id:
        raise p.partial_rollout(state)
    if r is None:
        r = state.rollout = Rollout(
            release=run.release_id, version=run.version, checksum=run.outcome.checksum or "",
            artifact=run.artifact_name, slot=state.idle, from_slot=state.live,
            batch=cfg.fleet.batch, who=run.ledger.who.name, started_at=time.time())
    else:
        run.report.say(f"    resuming the rolling deploy of {r.version or r.release}: "
                       f"{len(r.done)} of {len(cfg.hosts.app)} host(s) already serve {r.slot}"
                       + (f"; retrying {', '.join(r.failed)}" if r.failed else ""))
        r.failed.clear()
        r.status, r.batch = "running", cfg.fleet.batch
    run.target = r.slot
    render.render(local_upstreams(cfg), run.target, run.release_id, run.version)
    run.outcome.from_slot, run.outcome.to_slot = r.from_slot, r.slot


def announce(run: Run) -> None:
    r, cfg = run.live.rollout, run.cfg
    assert r is not None
    todo = [s.label for s in cfg.hosts.app if s.label not in r.done]
    batches = plan_batches(todo, cfg.fleet.batch)
    run.report.say(
        f"=== rolling deploy {cfg.app} {run.version or run.release_id} -> {r.slot} (port "
        f"{cfg.port_of(r.slot)}): {len(todo)} host(s) in {len(batches)} batch(es) of "
        f"{cfg.fleet.batch}, max {cfg.fleet.max_fail} failed host(s)"
        + (f", {cfg.fleet.pause:g}s pause between batches" if cfg.fleet.pause else "")
        + (f", each batch watched {cfg.watch.seconds:g}s" if cfg.watch.seconds > 0 else
           ", no watch between batches (watch.seconds = 0)")
        + ("; a stopped rollout keeps its switched hosts" if cfg.fleet.keep_partial else
           "; a stopped rollout switches its hosts back"))


class RolloutStopped(BluegreenError):
    """Too many hosts failed: the rollout stopped (switched back, or kept partial)."""


def roll(run: Run) -> str:
    """Every batch in turn; stop (and switch back unless --keep-partial) past max-fail."""
    state, cfg = run.live, run.cfg
    r = state.rollout
    assert r is not None
    todo = [s.label for s in cfg.hosts.app if s.label not in r.done]
    batches = plan_batches(todo, cfg.fleet.batch)
    render_cfg = local_upstreams(cfg)
    state.slots[r.slot] = dataclasses.replace(state.slots[r.slot], status="rolling")
    try:
        for i, labels in enumerate(batches, 1):
            if i > 1 and cfg.fleet.pause:
                _pause(run, cfg.fleet.pause, i, len(batches))
            run.report.say(f"=== batch {i}/{len(batches)}: {' '.join(labels)}")
            switched = _one_batch(run, render_cfg, labels)
            run.ledger.heartbeat()
            breach = _gate(run, render_cfg, switched, i, len(batches))
            if breach is not None:
                raise _breached(run, render_cfg, switched, breach, i, len(batches))
            if len(r.failed) > cfg.fleet.max_fail:
                raise _stop(run, render_cfg, i, len(batches))
    except (BluegreenError, KeyboardInterrupt) as exc:
        if isinstance(exc, RolloutStopped):
            raise
        # an error outside a host's own steps (state, lock) or an interrupt: what was
        # committed stays, and the same command resumes it
        r.status = "stopped"
        _save(run)
        run.outcome.rollout = _summary(r, len(cfg.hosts.app))
        raise
    if not r.failed:
        r.status = "done"
    run.outcome.rollout = _summary(r, len(cfg.hosts.app))
    if r.failed:
        r.status = "incomplete"
        _save(run)
        raise BluegreenError(
            f"rolling deploy incomplete: {len(r.done)} of {len(cfg.hosts.app)} host(s) serve "
            f"{run.version or run.release_id}; failed (within --max-fail "
            f"{cfg.fleet.max_fail}): " + "; ".join(f"{h}: {w}" for h, w in r.failed.items()),
            host=",".join(r.failed), phase="rollout",
            hint="fix those hosts and run the same command again: it resumes, retrying "
                 f"only them; or put every host back with `fab switch --to {r.from_slot}`")
    return f"{len(r.done)} host(s) in {len(batches)} batch(es)"


def _summary(r: Rollout, total: int) -> dict[str, Any]:
    return {"batch": r.batch, "hosts": total, "done": len(r.done),
            "failed": dict(r.failed), "status": r.status}


def _pause(run: Run, seconds: float, nxt: int, total: int) -> None:
    run.report.say(f"    pausing {seconds:g}s before batch {nxt}/{total}")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        interrupts.checkpoint()
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        run.ledger.heartbeat()


def _save(run: Run) -> None:
    run.ledger.save_state(run.live, failing=True)


def _sub(run: Run, cfg: Config, labels: list[str], target: str) -> Run:
    """A run over one batch: the same lock, state, ledger and report; its own routers."""
    return dataclasses.replace(run, cfg=cfg, fleet=run.fleet.view(labels), _routers=None,
                               change=None, target=target)


def _failed_hosts(exc: BluegreenError, labels: list[str]) -> list[str]:
    named = [h for h in exc.host.split(",") if h in labels]
    return named or list(labels)


def _step(run: Run, name: str, detail: str, fn: Callable[[Run], str | None],
          labels: list[str], render_cfg: Config) -> list[str]:
    """One step on the batch's hosts that are still in; the hosts that failed it."""
    b = _sub(run, render_cfg, labels, run.target)
    with run.report.phase(name, detail) as note:
        if name in OBSERVES and run.fleet.plan is not None:  # a dry run: nothing to watch
            run.fleet.plan.add("all", f"{name} on {', '.join(labels)}: {detail}")
            return []
        try:
            note.text = fn(b) or ""
        except BluegreenError as exc:
            failed = _failed_hosts(exc, labels)
            first = exc.what.strip().splitlines()[0] if exc.what.strip() else "failed"
            for h in failed:
                run.live.rollout.failed[h] = f"{name}: {first}"[:300]  # type: ignore[union-attr]
            if len(failed) == len(labels):
                raise _BatchFailed(failed) from exc
            # keep going with the rest: the phase line says how many hosts are left
            note.text = f"{len(failed)} host(s) left out: {', '.join(failed)}"
            return failed
    return []


OBSERVES = ("health", "verify")  # only watch effects: a dry run plans them instead


class _BatchFailed(Exception):
    def __init__(self, hosts: list[str]) -> None:
        super().__init__(", ".join(hosts))
        self.hosts = hosts


def _one_batch(run: Run, render_cfg: Config, labels: list[str]) -> list[str]:
    """The batch's steps up to its switch; the hosts it switched (none when it failed)."""
    state = run.live
    r = state.rollout
    assert r is not None
    slot, port = r.slot, run.cfg.port_of(r.slot)
    live = list(labels)
    started: list[str] = []
    try:
        steps: list[tuple[str, str, Callable[[Run], str | None]]] = [
            ("upload", f"{run.artifact_name} to {len(labels)} host(s)", p.upload),
            ("stop", f"drain and stop slot {slot} (port {port})", p.stop_target),
            ("start", f"{run.release_id} in slot {slot}", p.start_target),
            ("health", f"GET {run.cfg.health.path} on port {port}", p.wait_target_healthy),
        ]
        for name, detail, fn in steps:
            if name == "start":
                started = list(live)
            failed = _step(run, name, detail, fn, live, render_cfg)
            live = [h for h in live if h not in failed]
            if failed and name in ("start", "health"):
                _stop_quietly(run, render_cfg, failed, slot)
            if len(r.failed) > run.cfg.fleet.max_fail:
                _stop_quietly(run, render_cfg, [h for h in started if h in live], slot)
                return []
        state.slots[slot] = dataclasses.replace(state.slots[slot], status="rolling")
        if run.ledger.has_hook("pre-switch"):
            with run.report.phase("pre-switch", "hook"):
                p.hook("pre-switch")(run)  # type: ignore[operator]
        _switch(run, render_cfg, live, slot)
    except _BatchFailed:
        _stop_quietly(run, render_cfg, [h for h in started if h not in r.done], slot)
        return []
    return live


def _switch(run: Run, render_cfg: Config, labels: list[str], slot: str) -> None:
    """Move the batch's routers to `slot`, verify, commit them in state (or undo them)."""
    b = _sub(run, render_cfg, labels, slot)
    b.outcome = dataclasses.replace(run.outcome)  # the switch notes its skew on its own
    state = run.live
    rec = state.slots[slot]
    try:
        with run.report.phase("switch", f"nginx -> {slot} on {len(labels)} host(s)"):
            p.switch_traffic(b)
        with run.report.phase("verify", f"{run.cfg.verify_path} answers from {slot}") as note:
            if run.fleet.plan is not None:
                run.fleet.plan.add("all", f"verify on {', '.join(labels)}: "
                                          f"{run.cfg.verify_path} answers from {slot}")
            else:
                note.text = p.verify_traffic(b)
    except (BluegreenError, KeyboardInterrupt) as exc:
        restored = b.change.undo() if b.change is not None else "traffic was not touched"
        if "could NOT" not in restored:
            run.ledger.clear_intent()
        run.report.say(f"    {restored}")
        if isinstance(exc, KeyboardInterrupt):
            raise
        for h in _failed_hosts(exc, labels):
            state.rollout.failed[h] = f"switch: {exc.what.splitlines()[0]}"[:300]  # type: ignore[union-attr]
        raise _BatchFailed(labels) from exc
    now = time.time()
    for h in labels:
        state.hosts[h] = HostLive(slot, rec.release, rec.version, now)
        if h not in state.rollout.done:  # type: ignore[union-attr]
            state.rollout.done.append(h)  # type: ignore[union-attr]
    run.ledger.save_state(state)
    if b.change is not None:
        b.change.commit()
    run.ledger.clear_intent()
    skew = b.outcome.flip_skew_ms
    if skew is not None:
        worst = run.outcome.flip_skew_ms or 0.0
        run.outcome.flip_skew_ms = max(worst, skew)


class _Breach(Exception):
    """Closes the watch phase's line as FAILED; the rollout then stops (`_breached`)."""


def _gate(run: Run, render_cfg: Config, labels: list[str], at: int,
          total: int) -> watch_mod.WatchReport | None:
    """The batch's watch: its hosts' slot processes, probes through their front doors and
    their routers' counts of real requests; the report when it saw a breach, else None."""
    cfg = run.cfg.watch
    if cfg.seconds <= 0 or not labels:
        return None
    b = _sub(run, render_cfg, labels, run.target)
    detail = (f"batch {at}/{total}: slot {run.target} on {len(labels)} host(s) for "
              f"{cfg.seconds:g} s: processes, {', '.join(cfg.probe_paths)} through their "
              "front doors")
    report: watch_mod.WatchReport | None = None
    try:
        with run.report.phase("watch", detail) as note:
            if run.fleet.plan is not None:  # a dry run: nothing switched, nothing to watch
                run.fleet.plan.add("all", f"watch on {', '.join(labels)}: {detail}")
                return None
            report = watch_mod.watch(cfg, run.target, b.routers,
                                     crashed=lambda: b.slots.not_running_on(run.target, "watch"),
                                     say=run.report.say)
            t = report.tally
            run.outcome.watch = {**t.to_dict(), "seconds": round(report.seconds, 2),
                                 "breach": report.breach or None, "batch": at,
                                 "hosts": list(labels)}
            if report.breach:
                run.report.say(f"    breach: {report.breach}")
                raise _Breach
            note.text = (f"{t.requests} requests, {t.errors} failed over "
                         f"{report.seconds:.1f} s ({t.source})")
    except _Breach:
        return report
    if report is not None and report.tally.source == "probes" and at == 1:
        # once per run: in this mode the gate is weaker than it looks
        kinds = sorted({r.kind for r in b.routers})
        run.report.say(f"    note: {'/'.join(kinds)} mode keeps no per-request counters: each "
                       "batch's gate is its slot's processes and the probes only, not real "
                       "users' requests (nginx.mode = \"lua\" or the haproxy router count "
                       "them)")
    return None


def _breached(run: Run, render_cfg: Config, labels: list[str],
              report: watch_mod.WatchReport, at: int, total: int) -> RolloutStopped:
    """A batch's watch saw a breach: the release is marked bad, the breached batch goes
    back at once, the earlier batches too (unless --keep-partial: they passed their own
    watch), and the rollout stops."""
    state, cfg = run.live, run.cfg
    r = state.rollout
    assert r is not None
    reason = f"{report.breach} on {', '.join(labels)} (batch {at}/{total})"
    bad = state.slots[r.slot]
    state.slots[r.slot] = dataclasses.replace(bad, status="bad")
    if r.checksum:
        state.bad_releases[r.checksum] = reason
    for h in labels:
        r.failed[h] = f"watch: {report.breach}"[:300]
    run.outcome.auto_reverted = True
    back = list(labels) if cfg.fleet.keep_partial else list(r.done)
    what = (f"rolling deploy stopped in batch {at}/{total}: its watch on "
            f"{', '.join(labels)} saw {report.breach}; {bad.version or bad.release} is "
            "marked bad")
    try:
        _switch_back(run, render_cfg, back, r.from_slot)
    except BluegreenError:
        _save(run)  # the release stays marked bad whatever the switch back did
        run.outcome.rollout = _summary(r, len(cfg.hosts.app))
        raise
    r.done = [h for h in r.done if h not in back]
    run.outcome.rollout = _summary(r, len(cfg.hosts.app))
    run.outcome.rollout["switched_back"] = back
    hint = ("build a fixed release and deploy it; this artifact is refused from now on "
            "(--force deploys it anyway)")
    if r.done:
        r.status = "stopped"
        _save(run)
        return RolloutStopped(
            what + f"; switched the batch back to {r.from_slot}, kept partial: "
            f"{len(r.done)} host(s) serve {r.slot} ({', '.join(r.done)})",
            host=",".join(labels), phase="watch",
            hint="the kept hosts serve the bad release: `fab switch --to "
                 f"{r.from_slot}` puts every host back; then " + hint)
    state.rollout = None
    _save(run)
    return RolloutStopped(what + f"; switched {len(back)} host(s) back to {r.from_slot} "
                          f"({', '.join(back)}): every host serves {r.from_slot}",
                          host=",".join(labels), phase="watch", hint=hint)


def _stop_quietly(run: Run, render_cfg: Config, labels: list[str], slot: str) -> None:
    if not labels:
        return
    b = _sub(run, render_cfg, labels, slot)
    with run.report.phase("stop", f"new release in slot {slot} on {', '.join(labels)}"):
        b.slots.stop_quietly(slot)


def _stop(run: Run, render_cfg: Config, at: int, total: int) -> RolloutStopped:
    """Past max-fail: switch the hosts already switched back (unless --keep-partial)."""
    state, cfg = run.live, run.cfg
    r = state.rollout
    assert r is not None
    failed = "; ".join(f"{h}: {w}" for h, w in r.failed.items())
    what = (f"rolling deploy stopped in batch {at}/{total}: {len(r.failed)} host(s) failed, "
            f"more than --max-fail {cfg.fleet.max_fail} ({failed})")
    run.outcome.rollout = _summary(r, len(cfg.hosts.app))
    if cfg.fleet.keep_partial or not r.done:
        if r.done:
            r.status = "stopped"
            _save(run)
            return RolloutStopped(
                what + f"; kept partial: {len(r.done)} host(s) serve {r.slot} "
                f"({', '.join(r.done)})", host=",".join(r.failed), phase="rollout",
                hint="fix the failed hosts and run the same command again (it resumes), or "
                     f"put every host back with `fab switch --to {r.from_slot}`")
        state.rollout = None
        state.slots[r.slot] = dataclasses.replace(state.slots[r.slot], status="failed")
        _save(run)
        return RolloutStopped(what + f"; no host was switched: every host serves "
                              f"{r.from_slot}", host=",".join(r.failed), phase="rollout",
                              hint="fix the failed hosts and deploy again")
    back = list(r.done)
    _switch_back(run, render_cfg, back, r.from_slot)
    state.rollout = None
    state.slots[r.slot] = dataclasses.replace(state.slots[r.slot], status="failed")
    _save(run)
    if run.outcome.rollout is not None:
        run.outcome.rollout["switched_back"] = back
    return RolloutStopped(what + f"; switched {len(back)} host(s) back to {r.from_slot} "
                          f"({', '.join(back)}): every host serves {r.from_slot}",
                          host=",".join(r.failed), phase="rollout",
                          hint="the new release keeps running idle where it started; fix the "
                               "failed hosts and deploy again")


def _switch_back(run: Run, render_cfg: Config, labels: list[str], slot: str) -> None:
    state = run.live
    b = _sub(run, render_cfg, labels, slot)
    b.outcome = dataclasses.replace(run.outcome)
    try:
        with run.report.phase("switch", f"back to {slot} on {len(labels)} host(s)"):
            p.switch_traffic(b)
        with run.report.phase("verify", f"{run.cfg.verify_path} answers from {slot}") as note:
            note.text = p.verify_traffic(b)
    except BluegreenError as exc:
        restored = b.change.undo() if b.change is not None else ""
        raise BluegreenError(
            f"the rollout stopped and switching its hosts back to {slot} failed too: "
            f"{exc.what}", host=exc.host, phase="rollout",
            hint=f"{restored}; state still records the partial rollout: `fab switch --to "
                 f"{slot}` puts every host back") from exc
    for h in labels:
        state.hosts.pop(h, None)
    if b.change is not None:
        b.change.commit()
    run.ledger.clear_intent()


def commit(run: Run) -> None:
    """Every host serves the new release: it is the live slot, as after any deploy."""
    state = run.live
    r = state.rollout
    assert r is not None
    if state.live and state.live != r.slot:
        state.previous = state.live
        state.previous_release = dataclasses.replace(state.slots[state.live])
    state.live = r.slot
    state.slots[r.slot] = dataclasses.replace(state.slots[r.slot], status="running")
    state.hosts.clear()
    state.rollout = None
    run.ledger.save_state(state)
