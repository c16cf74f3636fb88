"""The flows: deploy, switch, rollback, status. Each is a short sequence of named phases.

Read top to bottom, `Orchestrator.deploy` is the whole story:
lock -> read state -> pre-deploy -> upload -> drain+stop idle -> start -> health
-> pre-switch -> switch (render, test, install, reload, verify) -> record -> post-switch
-> prune. The old slot stays up, warm, so switching back is one health check + one reload.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bluegreen import commands, health, hooks, lock, release, traffic
from bluegreen.commands import Layout
from bluegreen.config import Config, HostSpec, other_slot
from bluegreen.errors import BluegreenError, LockHeld
from bluegreen.hosts import DryRunHost, Host, open_host
from bluegreen.process import Backend, backend_for
from bluegreen.report import Reporter
from bluegreen.state import SlotRecord, State, append_history, read_history, read_state, write_state

T = TypeVar("T")


@dataclass(frozen=True)
class Who:
    """Who and what asked for this change, for the lock, the hooks and the audit trail."""

    name: str
    build_url: str = ""
    commit: str = ""

    @classmethod
    def from_env(cls, name: str = "", env: dict[str, str] | None = None) -> Who:
        env = dict(os.environ) if env is None else env
        if not name:
            name = env.get("BLUEGREEN_WHO", "")
        if not name and env.get("JENKINS_URL") and env.get("JOB_NAME"):
            name = f"jenkins:{env['JOB_NAME']}#{env.get('BUILD_NUMBER', '?')}"
        if not name:
            try:
                user = getpass.getuser()
            except (KeyError, OSError):
                user = "unknown"
            name = f"{user}@{socket.gethostname()}"
        return cls(name=name,
                   build_url=env.get("BLUEGREEN_BUILD_URL") or env.get("BUILD_URL", ""),
                   commit=env.get("BLUEGREEN_COMMIT") or env.get("GIT_COMMIT", ""))


@dataclass
class Orchestrator:
    cfg: Config
    who: Who
    dry_run: bool = False
    report: Reporter = field(default_factory=Reporter)
    planned: list[str] = field(default_factory=list)  # dry-run: the commands we would send
    _hosts: dict[HostSpec, Host] = field(default_factory=dict)
    _owner: lock.Owner | None = None  # the lock this run holds, re-checked before changes

    # ------------------------------------------------------------ hosts

    def host(self, spec: HostSpec) -> Host:
        if spec not in self._hosts:
            h = open_host(spec, self.cfg)
            self._hosts[spec] = DryRunHost(h, self.planned) if self.dry_run else h
        return self._hosts[spec]

    @property
    def app_hosts(self) -> list[Host]:
        return [self.host(s) for s in self.cfg.hosts.app]

    @property
    def traffic_hosts(self) -> list[Host]:
        return [self.host(s) for s in self.cfg.traffic_hosts]

    @property
    def primary(self) -> Host:
        return self.host(self.cfg.primary)

    def layout(self, host: Host) -> Layout:
        return Layout(host.root)

    @property
    def backend(self) -> Backend:
        return backend_for(self.cfg)

    def close(self) -> None:
        for h in self._hosts.values():
            h.close()

    def on_all(self, hosts: list[Host], phase: str, fn: Callable[[Host], T]) -> list[T]:
        """Run fn on every host in parallel; if any fail, raise one error naming all of them."""
        def wrapped(h: Host) -> T | BaseException:
            h.phase = phase
            try:
                return fn(h)
            except BluegreenError as exc:
                exc.host = exc.host or h.label
                exc.phase = exc.phase or phase
                return exc
        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            results = list(pool.map(wrapped, hosts))
        errors = [r for r in results if isinstance(r, BluegreenError)]
        if errors:
            if len(errors) == 1:
                raise errors[0]
            raise BluegreenError(
                f"{len(errors)} of {len(hosts)} hosts failed in {phase}:\n  "
                + "\n  ".join(e.render().replace("\n", "\n  ") for e in errors),
                host=",".join(e.host for e in errors), phase=phase, hint=errors[0].hint)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------ shared pieces

    def hook_env(self, action: str, slot: str = "", release_id: str = "", version: str = "",
                 extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            "BLUEGREEN_ACTION": action,
            "BLUEGREEN_APP": self.cfg.app,
            "BLUEGREEN_HOSTS": ",".join(s.label for s in self.cfg.hosts.app),
            "BLUEGREEN_TRAFFIC_HOSTS": ",".join(s.label for s in self.cfg.traffic_hosts),
            "BLUEGREEN_SLOT": slot,
            "BLUEGREEN_PORT": str(self.cfg.port_of(slot)) if slot else "",
            "BLUEGREEN_RELEASE": release_id,
            "BLUEGREEN_VERSION": version,
            "BLUEGREEN_WHO": self.who.name,
            "BLUEGREEN_BUILD_URL": self.who.build_url,
            "BLUEGREEN_COMMIT": self.who.commit,
            "BLUEGREEN_DRY_RUN": "1" if self.dry_run else "",
        }
        return {**env, **(extra or {})}

    def hook(self, name: str, env: dict[str, str]) -> None:
        if hooks.hook_path(self.cfg, name).exists():
            with self.report.phase(name, "hook"):
                hooks.run_hook(self.cfg, name, env, dry_run=self.dry_run, out=self.planned)

    def check_consistency(self, state: State) -> None:
        """Recorded state and the live nginx config must agree before we change anything."""
        for h in self.traffic_hosts:
            routed, in_file = traffic.routed_slot(self.cfg, h)
            if routed != state.live or in_file != state.live:
                where = (f"routes to {routed or '(no bluegreen config)'}" if routed == in_file
                         else f"routes to {routed} while its file {self.cfg.nginx_target} says "
                              f"{in_file}")
                raise BluegreenError(
                    f"state says live slot is {state.live or '(none)'} but nginx on {h.label} "
                    f"{where}",
                    host=h.label, phase="state",
                    hint="someone changed nginx by hand or a switch was interrupted: run "
                         f"`fab switch --to {routed or state.live or 'blue'}` to converge")

    def stop_slot(self, slot: str) -> str:
        """Drain, stop and free the slot on every app host: one round trip per host.

        Draining first means nginx (old workers included) has nothing in flight to the slot
        when it stops, bounded by nginx.drain_timeout; what is cut then is reported.
        """
        backend, port = self.backend, self.cfg.port_of(slot)
        conn_drain = self.cfg.nginx.drain_timeout
        if self.cfg.nginx.mode == "lua" and not self.dry_run:
            # nginx counts in-flight requests per port; idle pooled upstream connections
            # stay open in lua mode, so connection counts would never reach 0
            in_flight = traffic.drain(self.cfg, self.traffic_hosts, port, conn_drain)
            self._report_cut("requests still in flight", port,
                             [f"{h}: {n}" for h, n in (in_flight or {}).items()])
            if in_flight is not None:
                conn_drain = 0

        def one(h: Host) -> tuple[int, str]:
            out = h.run(commands.drain_stop_free(
                port, conn_drain, backend.stop_script(h, slot),
                self.cfg.process.port_free_timeout),
                timeout=self.cfg.nginx.drain_timeout + self.cfg.process.stop_timeout
                + self.cfg.process.port_free_timeout + 30,
                hint=f"bluegreen never kills what it did not start: stop that process, or "
                     f"move slots.{slot} to a free port").stdout.split()
            left = int(out[out.index("drain-left") + 1]) if "drain-left" in out else 0
            outcome = next((w for w in reversed(out)
                            if w in ("none", "gone", "stopped", "killed")), "stopped")
            return left, outcome
        results = self.on_all(self.app_hosts, "stop", one)
        self._report_cut("connections cut", port, [
            f"{h.label}: {left}" for h, (left, _) in zip(self.app_hosts, results, strict=True)
            if left])
        return ", ".join(sorted({outcome for _, outcome in results}))

    def _report_cut(self, what: str, port: int, per_host: list[str]) -> None:
        if per_host:
            self.report.say(f"    drain timeout ({self.cfg.nginx.drain_timeout:g}s) expired; "
                            f"{what} on port {port}: {', '.join(per_host)}")

    def start_slot(self, slot: str, release_id: str, version: str, artifact_name: str) -> None:
        backend = self.backend

        self.on_all(self.app_hosts, "start", lambda h: backend.start(
            h, slot, self.layout(h).release(release_id), version, artifact_name))

    def wait_slot_healthy(self, slot: str) -> health.HealthReport:
        """All app hosts healthy; the slowest host's report."""
        if self.dry_run:
            self.planned.append(f"[app hosts] poll GET {self.cfg.health.path} on port "
                                f"{self.cfg.port_of(slot)} until HTTP {self.cfg.health.status} "
                                f"x{self.cfg.health.successes} (at most "
                                f"{self.cfg.health.timeout:g}s)")
            return health.HealthReport(0.0, 0, "dry run")
        backend, port = self.backend, self.cfg.port_of(slot)
        reports = self.on_all(self.app_hosts, "health", lambda h: health.wait_healthy(
            h, port, self.cfg.health, alive=lambda: backend.running(h, slot)))
        return max(reports, key=lambda r: r.elapsed)

    def last_logs(self, slot: str, lines: int = 20) -> str:
        chunks = []
        for h in self.app_hosts:
            try:
                text = self.backend.logs(h, slot, lines).rstrip()
            except BluegreenError as exc:
                text = f"(could not read the log: {exc.what})"
            chunks.append(f"  --- last log lines of {slot} on {h.label} ---\n"
                          + ("\n".join("  | " + line for line in text.splitlines())
                             or "  | (empty)"))
        return "\n".join(chunks)

    def record(self, entry: dict[str, Any]) -> None:
        if self.dry_run:
            return
        entry = {"at": time.time(), "who": self.who.name, "build_url": self.who.build_url,
                 "commit": self.who.commit, "app": self.cfg.app,
                 "hosts": [s.label for s in self.cfg.hosts.app],
                 "phases": {k: round(v, 3) for k, v in self.report.durations.items()},
                 **entry}
        try:
            append_history(self.primary, self.layout(self.primary), entry)
        except BluegreenError as exc:  # the audit trail must not mask the real outcome
            self.report.say(f"    warning: could not append to history: {exc.what}")

    def save_state(self, state: State, *, failing: bool = False) -> None:
        """Record state. While handling a failure (`failing`), a failed write is a warning:
        the error being reported is the one the user must see, and traffic is untouched."""
        if self.dry_run:
            return
        try:
            if not failing:
                self.ensure_still_locked()
            write_state(self.primary, self.layout(self.primary), state)
        except BluegreenError as exc:
            if not failing:
                raise
            self.report.say(f"    warning: could not record the failed slot in state: "
                            f"{exc.what}")

    def owner(self, action: str) -> lock.Owner:
        return lock.new_owner(self.who.name, action, self.who.build_url)

    def locked(self, action: str) -> AbstractContextManager[Any]:
        if self.dry_run:
            return nullcontext()
        self._owner = self.owner(action)
        return lock.held(self.primary, self.layout(self.primary), self._owner)

    def ensure_still_locked(self) -> None:
        """Before traffic or state changes: is the lock still ours? `fab unlock` on a run
        that was in fact alive lets a second deploy in; two writers must not both switch."""
        if self.dry_run or self._owner is None:
            return
        held = lock.status(self.primary, self.layout(self.primary))
        if held is None or held.token != self._owner.token:
            raise LockHeld(
                "the deploy lock was broken while this run held it"
                + (f"; it is now held by {held.describe()}" if held else ""),
                host=self.primary.label, phase="lock",
                hint="someone ran `fab unlock`: nothing more was changed by this run; check "
                     "`fab status`, then re-run")

    @contextmanager
    def audited(self, outcome: dict[str, Any], began: float) -> Iterator[None]:
        """A failed action is recorded in history and runs the on-failure hook, then raises."""
        try:
            yield
        except BluegreenError as exc:
            outcome.update(result="failed", phase=exc.phase, error=exc.what,
                           failed_host=exc.host, seconds=round(time.monotonic() - began, 3))
            self.record(outcome)
            self._on_failure(exc, outcome)
            raise

    # ------------------------------------------------------------ deploy

    def deploy(self, artifact_path: Path, version: str = "") -> dict[str, Any]:
        cfg, began = self.cfg, time.monotonic()
        with self.report.phase("inspect", str(artifact_path)) as note:
            art = release.inspect(artifact_path)
            note.text = f"{art.size} bytes sha256 {art.checksum[:12]}"
        version = version or self.who.commit[:12]
        release_id = commands.release_id(version, art.checksum)
        outcome: dict[str, Any] = {"action": "deploy", "version": version, "release": release_id,
                                   "checksum": art.checksum}
        with ExitStack() as held:
            with self.report.phase("lock", f"on {self.primary.label}"):
                held.enter_context(self.locked("deploy"))
            self._deploy_locked(art, release_id, version, outcome, began)
        outcome.update(result="ok", seconds=round(time.monotonic() - began, 3))
        self.record(outcome)
        self.report.say(f"=== deployed {cfg.app} {version or release_id}: live slot "
                        f"{outcome['to_slot']} in {outcome['seconds']:.2f}s; "
                        f"{outcome['from_slot'] or 'no'} slot kept warm for `fab switch` / "
                        "`fab rollback`")
        return outcome

    def _deploy_locked(self, art: release.Artifact, release_id: str, version: str,
                       outcome: dict[str, Any], began: float) -> None:
        cfg = self.cfg
        with self.audited(outcome, began):
            with self.report.phase("state"):
                state = read_state(self.primary, self.layout(self.primary), cfg.app)
                self.check_consistency(state)
                # a template error must stop us before anything is uploaded or stopped
                traffic.render(cfg, state.idle, release_id, version)
            idle, live = state.idle, state.live
            outcome.update(from_slot=live, to_slot=idle)
            self.report.say(f"=== deploy {cfg.app} {version or release_id} -> {idle} (port "
                            f"{cfg.port_of(idle)}), live now: {live or 'nothing'}; "
                            f"{len(self.app_hosts)} app host(s), "
                            f"{len(self.traffic_hosts)} traffic host(s)")
            env = self.hook_env("deploy", idle, release_id, version)
            self.hook("pre-deploy", env)
            self._deploy_to_idle(state, art, release_id, version, idle, env, outcome)

    def _deploy_to_idle(self, state: State, art: release.Artifact, release_id: str,
                        version: str, idle: str, env: dict[str, str],
                        outcome: dict[str, Any]) -> None:
        cfg = self.cfg
        file_name = cfg.artifact_name or art.name
        # never prune what a slot holds, nor what rollback would go back to
        protected = [r.release for r in (*state.slots.values(), state.previous_release)
                     if r.release]
        with self.report.phase("upload", f"{art.name} to {len(self.app_hosts)} host(s)") as note:
            sent = sum(self.on_all(self.app_hosts, "upload", lambda h: release.ship(
                h, self.layout(h), art, release_id, file_name, cfg.keep_releases, protected)))
            note.text = f"{sent} bytes sent" + ("" if sent else " (already on every host)")
            outcome["uploaded_bytes"] = sent
        # Record the slot's new content before touching it: whatever happens from here on
        # (a failure, Ctrl-C, a vetoing pre-switch hook), state never claims the idle slot
        # still holds its old release, so rollback never trusts a slot that was reused.
        state.slots[idle] = SlotRecord(release=release_id, version=version,
                                       checksum=art.checksum, artifact=file_name,
                                       deployed_at=time.time(), status="starting")
        self.save_state(state)
        with self.report.phase("stop", f"drain and stop slot {idle} (port "
                                       f"{cfg.port_of(idle)})") as note:
            note.text = self.stop_slot(idle)
        try:
            with self.report.phase("start", f"{release_id} in slot {idle}"):
                self.start_slot(idle, release_id, version, file_name)
            with self.report.phase("health", f"GET {cfg.health.path} on port "
                                             f"{cfg.port_of(idle)}") as note:
                report = self.wait_slot_healthy(idle)
                outcome["health_seconds"] = round(report.elapsed, 3)
                note.text = f"healthy after {report.elapsed:.3f}s ({report.probes} probes)"
        except BluegreenError as exc:
            exc.what += "\n" + self.last_logs(idle)
            with self.report.phase("stop", f"failed release in slot {idle}"):
                self.stop_slot_quietly(idle)
            state.slots[idle].status = "failed"
            self.save_state(state, failing=True)
            exc.hint = (f"traffic was NOT switched: it stays on {state.live or 'nothing'}. "
                        + exc.hint)
            raise
        try:
            self.hook("pre-switch", env)
        except BluegreenError:
            state.slots[idle].status = "vetoed"  # healthy, but not to be switched to
            self.save_state(state, failing=True)
            raise
        self._switch_traffic(state, idle)
        self.hook("post-switch", env)
        self.hook("post-deploy", env)

    def stop_slot_quietly(self, slot: str) -> None:
        try:
            self.stop_slot(slot)
        except BluegreenError as exc:
            self.report.say(f"    warning: could not stop slot {slot}: {exc.what}")

    def _switch_traffic(self, state: State, target: str) -> None:
        """Switch every traffic host to `target` and record it; state is written only after."""
        rec = state.slots[target]
        self.ensure_still_locked()
        with self.report.phase("switch", f"nginx -> {target} (port "
                                         f"{self.cfg.port_of(target)}) on "
                                         f"{len(self.traffic_hosts)} traffic host(s)"):
            try:
                if self.dry_run:
                    traffic.render(self.cfg, target, rec.release, rec.version)
                    self.planned.append(f"[traffic hosts] install {self.cfg.nginx_target}, "
                                        f"{self.cfg.nginx.command} -t, -s reload, verify "
                                        f"{self.cfg.verify_path} answers from {target}")
                else:
                    traffic.switch(self.cfg, self.traffic_hosts, target, rec.release,
                                   rec.version)
            except BluegreenError as exc:
                rec.status = "running"
                self.save_state(state, failing=True)
                exc.hint = (f"{exc.hint}. Traffic stays on {state.live or 'nothing'}; the new "
                            f"release keeps running idle in {target}: fix, then `fab switch` "
                            "or `fab deploy` again")
                raise
        if state.live and state.live != target:
            state.previous = state.live
            state.previous_release = dataclasses.replace(state.slots[state.live])
        state.live = target
        rec.status = "running"
        self.save_state(state)

    def _on_failure(self, exc: BluegreenError, outcome: dict[str, Any]) -> None:
        env = self.hook_env(outcome["action"], outcome.get("to_slot", ""),
                            outcome.get("release", ""), outcome.get("version", ""),
                            {"BLUEGREEN_ERROR": exc.what.splitlines()[0],
                             "BLUEGREEN_FAILED_PHASE": exc.phase,
                             "BLUEGREEN_FAILED_HOST": exc.host})
        try:
            self.hook("on-failure", env)
        except BluegreenError as hook_exc:
            self.report.say(f"    warning: on-failure hook failed too: {hook_exc.what}")

    # ------------------------------------------------------------ switch and rollback

    def switch(self, to: str = "") -> dict[str, Any]:
        """Flip traffic to the other (or the named) slot, health-checked first."""
        began = time.monotonic()
        if to and to not in ("blue", "green"):
            raise BluegreenError(f"--to must be blue or green, not {to!r}", phase="switch",
                                 hint="use --to blue or --to green, or leave it out to switch "
                                      "to the idle slot")
        with self.locked("switch"):
            state = read_state(self.primary, self.layout(self.primary), self.cfg.app)
            if not to:
                self.check_consistency(state)  # an explicit --to is how you converge
                if not state.live:
                    raise BluegreenError("nothing is live yet", phase="switch",
                                         hint="run `fab deploy` first")
            target = to or state.idle
            outcome = {"action": "switch", "from_slot": state.live, "to_slot": target,
                       "release": state.slots[target].release,
                       "version": state.slots[target].version}
            with self.audited(outcome, began):
                self._ensure_warm(state, target)
                env = self.hook_env("switch", target, state.slots[target].release,
                                    state.slots[target].version)
                self.hook("pre-switch", env)
                self._switch_traffic(state, target)
                self.hook("post-switch", env)
        outcome.update(result="ok", seconds=round(time.monotonic() - began, 3))
        self.record(outcome)
        self.report.say(f"=== {self.cfg.app}: live slot {target} "
                        f"({outcome['version'] or outcome['release']}) in "
                        f"{outcome['seconds']:.2f}s")
        return outcome

    def _ensure_warm(self, state: State, slot: str) -> None:
        rec = state.slots[slot]
        if not rec.release:
            raise BluegreenError(f"slot {slot} has never held a release", phase="switch",
                                 hint="run `fab deploy` first")
        if rec.status != "running":
            raise BluegreenError(
                f"slot {slot} holds {rec.version or rec.release}, whose deploy did not finish "
                f"(status: {rec.status})", phase="switch",
                hint="traffic was not touched; `fab deploy` again, or `fab rollback` to "
                     "restart the previous release")
        traffic.render(self.cfg, slot, rec.release, rec.version)  # fail before any change
        with self.report.phase("health", f"slot {slot} ({rec.version or rec.release})"):
            if not self.dry_run:
                backend = self.backend
                down = [h.label for h in self.app_hosts if not backend.running(h, slot)]
                if down:
                    raise BluegreenError(
                        f"slot {slot} ({rec.release}) is not running on {', '.join(down)}",
                        phase="switch", host=",".join(down),
                        hint="traffic was not touched; `fab rollback` restarts the previous "
                             "release, or `fab deploy` ships a new one")
            self.wait_slot_healthy(slot)

    def rollback(self) -> dict[str, Any]:
        """Back to the release that was live before this one: instant while its slot is warm.

        If that slot was reused since (say, by a failed deploy), the previous release is
        started again from its release dir, which keep_releases retains, and health-checked.
        """
        began = time.monotonic()
        with self.locked("rollback"):
            state = read_state(self.primary, self.layout(self.primary), self.cfg.app)
            self.check_consistency(state)
            back_to = state.previous_release
            if not state.live or not back_to.release:
                raise BluegreenError("there is no previous release to roll back to",
                                     phase="rollback", hint="`fab status` shows the history")
            target = state.idle
            outcome = {"action": "rollback", "from_slot": state.live, "to_slot": target,
                       "release": back_to.release, "version": back_to.version,
                       "rolled_back_release": state.slots[state.live].release}
            with self.audited(outcome, began):
                held = state.slots[target]
                warm = (not self.dry_run and held.release == back_to.release
                        and held.status == "running"
                        and all(self.backend.running(h, target) for h in self.app_hosts))
                if not warm:
                    state.slots[target] = dataclasses.replace(back_to, status="starting")
                    self._restart_release(state, target)
                self._ensure_warm(state, target)
                env = self.hook_env("rollback", target, back_to.release, back_to.version)
                self.hook("pre-switch", env)
                self._switch_traffic(state, target)
                self.hook("post-switch", env)
                self.hook("post-rollback", env)
        outcome.update(result="ok", seconds=round(time.monotonic() - began, 3))
        self.record(outcome)
        self.report.say(f"=== rolled back {self.cfg.app} to {back_to.version or back_to.release}"
                        f" (slot {target}) in {outcome['seconds']:.2f}s")
        return outcome

    def _restart_release(self, state: State, slot: str) -> None:
        rec = state.slots[slot]
        missing = [h.label for h in self.app_hosts
                   if not release.has_release(h, self.layout(h), rec.release)]
        if missing:
            raise BluegreenError(f"release {rec.release} is no longer on {', '.join(missing)}",
                                 phase="rollback", host=",".join(missing),
                                 hint="deploy that version again with `fab deploy`")
        self.save_state(state)  # the slot is about to change hands: say so first
        with self.report.phase("stop", f"drain and stop slot {slot}"):
            self.stop_slot(slot)
        with self.report.phase("start", f"{rec.release} again in slot {slot}"):
            self.start_slot(slot, rec.release, rec.version,
                            self.cfg.artifact_name or rec.artifact)
        rec.status = "running"

    # ------------------------------------------------------------ read-only views

    def status(self, history: int = 10) -> dict[str, Any]:
        state = read_state(self.primary, self.layout(self.primary), self.cfg.app)
        owner = lock.status(self.primary, self.layout(self.primary))
        backend = self.backend

        def host_view(h: Host) -> dict[str, Any]:
            view = {}
            for slot in ("blue", "green"):
                try:
                    running = backend.running(h, slot)
                    probe = health.probe(h, self.cfg.port_of(slot), self.cfg.health) \
                        if running else None
                    view[slot] = {"running": running,
                                  "healthy": bool(probe and probe.ok),
                                  "probe": probe.detail if probe else "not running"}
                except BluegreenError as exc:
                    view[slot] = {"running": None, "healthy": False, "probe": exc.what}
            return view

        def traffic_view(h: Host) -> dict[str, Any]:
            routed, in_file = traffic.routed_slot(self.cfg, h)
            marker = traffic.parse_marker(h.read(self.cfg.nginx_target))
            return {"routes_to": routed or None, "file_says": in_file or None,
                    "release": marker.release if marker else None}

        hosts = self.on_all(self.app_hosts, "status", host_view)
        routes = self.on_all(self.traffic_hosts, "status", traffic_view)
        return {
            "app": self.cfg.app,
            "live": state.live or None,
            "previous": state.previous or None,
            "slots": {name: {**rec.__dict__, "port": self.cfg.port_of(name)}
                      for name, rec in state.slots.items()},
            "app_hosts": dict(zip([h.label for h in self.app_hosts], hosts, strict=True)),
            "traffic_hosts": dict(zip([h.label for h in self.traffic_hosts], routes,
                                      strict=True)),
            "consistent": all(r["routes_to"] == (state.live or None) for r in routes),
            "lock": owner.__dict__ if owner else None,
            "history": read_history(self.primary, self.layout(self.primary), history),
        }

    def releases(self) -> dict[str, list[dict[str, Any]]]:
        state = read_state(self.primary, self.layout(self.primary), self.cfg.app)
        in_slot = {rec.release: slot for slot, rec in state.slots.items() if rec.release}
        out = {}
        for h in self.app_hosts:
            out[h.label] = [{"release": name, "mtime": mtime, "slot": in_slot.get(name, ""),
                             "live": in_slot.get(name) == state.live}
                            for name, mtime in release.list_releases(h, self.layout(h))]
        return out

    def unlock(self) -> lock.Owner | None:
        owner = lock.break_lock(self.primary, self.layout(self.primary))
        self.record({"action": "unlock", "result": "ok",
                     "broken_lock": owner.__dict__ if owner else None})
        return owner


__all__ = ["Orchestrator", "Who", "other_slot"]
